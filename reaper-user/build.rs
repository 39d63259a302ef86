//! Builds the eBPF object from `reaper-ebpf` (nightly, bpfel-unknown-none,
//! bpf-linker) and puts it in OUT_DIR, where `hooks` embeds it.
//!
//! `cargo xtask setup` installs what this needs. Packagers with a prebuilt
//! object can set REAPER_BPF_OBJECT=/path/to/object to skip the build.

use std::env;
use std::path::{Path, PathBuf};
use std::process::Command;

fn main() {
    let out = PathBuf::from(env::var("OUT_DIR").unwrap()).join("reaper.bpf.o");
    println!("cargo:rerun-if-env-changed=REAPER_BPF_OBJECT");
    if let Ok(prebuilt) = env::var("REAPER_BPF_OBJECT") {
        println!("cargo:rerun-if-changed={prebuilt}");
        std::fs::copy(&prebuilt, &out)
            .unwrap_or_else(|e| panic!("REAPER_BPF_OBJECT={prebuilt}: {e}"));
        return;
    }
    let manifest = PathBuf::from(env::var("CARGO_MANIFEST_DIR").unwrap());
    let root = manifest.parent().unwrap();
    let ebpf = root.join("reaper-ebpf");
    for p in [
        ebpf.join("src"),
        ebpf.join("Cargo.toml"),
        ebpf.join("Cargo.lock"),
        root.join("reaper-common/src"),
    ] {
        println!("cargo:rerun-if-changed={}", p.display());
    }
    if find_in_path("bpf-linker").is_none() {
        panic!(
            "\n\nreaper: bpf-linker is not installed, so the eBPF side cannot be built.\n\
             Run `cargo xtask setup` (it installs bpf-linker and nightly's rust-src), \
             or use `cargo xtask build`, which does it for you.\n\n"
        );
    }
    // A separate target dir: the outer cargo holds the lock on its own.
    let target_dir = root.join("target").join("bpf");
    let mut cmd = Command::new("rustup");
    cmd.args(["run", "nightly", "cargo", "build", "--release"])
        .args(["--target", "bpfel-unknown-none", "-Z", "build-std=core"])
        .arg("--manifest-path")
        .arg(ebpf.join("Cargo.toml"))
        .arg("--target-dir")
        .arg(&target_dir)
        .current_dir(&ebpf);
    // Nothing of the outer build may leak into the inner one.
    for (key, _) in env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k == "RUSTFLAGS"
            || k == "RUSTUP_TOOLCHAIN"
            || k == "RUSTDOC"
        {
            cmd.env_remove(&key);
        }
    }
    cmd.env(
        "CARGO_ENCODED_RUSTFLAGS",
        "-Cdebuginfo=2\x1f-Clink-arg=--btf",
    );
    let status = cmd.status().unwrap_or_else(|e| {
        panic!("reaper: could not run `rustup run nightly cargo`: {e}. Run `cargo xtask setup`.")
    });
    if !status.success() {
        panic!(
            "\n\nreaper: building the eBPF program failed (see above). \
             `cargo xtask setup` installs the nightly rust-src and bpf-linker it needs.\n\n"
        );
    }
    let obj = target_dir.join("bpfel-unknown-none/release/reaper");
    std::fs::copy(&obj, &out).unwrap_or_else(|e| panic!("copying {}: {e}", obj.display()));
}

fn find_in_path(bin: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = env::var_os("PATH")
        .map(|p| env::split_paths(&p).collect())
        .unwrap_or_default();
    if let Some(home) = env::var_os("CARGO_HOME") {
        dirs.push(Path::new(&home).join("bin"));
    } else if let Some(home) = env::var_os("HOME") {
        dirs.push(Path::new(&home).join(".cargo/bin"));
    }
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

//! `cargo xtask`: the one door for building, running and testing reaper.
//!
//! - `setup`  installs what a fresh machine lacks (nightly's rust-src,
//!   bpf-linker built against a matching LLVM, the test tools) and does
//!   nothing slow when they are there.
//! - `build`  builds the eBPF object and embeds it in target/{debug,release}/reaper.
//! - `run`    builds and runs reaper with the arguments after `--`.
//! - `test`   every test: fmt, the layer order, clippy, unit, integration
//!   (real kernel), fuzz smoke.
//! - `layers` only the layer order of reaper-user's modules (xtask/src/layers.rs).
//! - `bench`  every benchmark; writes bench/results.{md,json}.
//! - `man`    the man page, generated from the clap definitions.
//! - `dist`   the static binary, tarball, .deb and SHA256SUMS in target/dist/.
//! - `image`  the container image (deploy/Dockerfile) from that binary.
//! - `systemd-image` the Debian image (debootstrap) the systemd test boots.
//!
//! Each step says what it does before it does it.

use std::path::{Path, PathBuf};
use std::process::{Command, ExitStatus};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use clap::{Parser, Subcommand};

mod bench;
mod dist;
mod doccheck;
mod layers;
mod licenses;
mod pytools;
mod sysimage;

#[derive(Parser)]
#[command(name = "cargo xtask", about = "Build, run and test reaper")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install what is missing: nightly rust-src, bpf-linker, and (with --test) the test tools.
    Setup {
        /// Also the tools the tests use as oracles (ss, lsof, fuser, bpftrace, promtool, chromium).
        #[arg(long)]
        test: bool,
    },
    /// Build reaper with its eBPF object embedded.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build and run reaper: `cargo xtask run -- who 8080`.
    Run {
        #[arg(long)]
        release: bool,
        /// Arguments for reaper.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every test: fmt, clippy, unit, integration (root, real kernel), fuzz smoke.
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Run every benchmark; write bench/results.md and bench/results.json.
    Bench {
        /// A reduced set that runs in under two minutes.
        #[arg(long)]
        quick: bool,
        /// Only benchmarks whose name contains this.
        #[arg(long)]
        only: Option<String>,
    },
    /// Check that reaper-user's modules import only down the layer order (part of `test`).
    Layers,
    /// Generate the man page into target/man/reaper.1.
    Man,
    /// Build what ships into target/dist/: static reaper (+ reaper.debug), tarball, .deb, SHA256SUMS.
    Dist,
    /// Build the container image (deploy/Dockerfile) from the static binary, with the local Docker Engine.
    Image,
    /// Build the Debian image the systemd test runs (debootstrap + docker import; cached, rebuilt only when missing).
    SystemdImage,
}

fn main() {
    let cli = Cli::parse();
    let r = match cli.cmd {
        Cmd::Setup { test } => setup(test),
        Cmd::Build { release } => setup(false).and_then(|_| build(release)),
        Cmd::Run { release, args } => setup(false).and_then(|_| run(release, &args)),
        Cmd::Test { args } => setup(true).and_then(|_| test(&args)),
        Cmd::Bench { quick, only } => {
            setup(true).and_then(|_| bench::run(&root(), quick, only.as_deref()))
        }
        Cmd::Layers => layers::check(&root()),
        Cmd::Man => setup(false).and_then(|_| man()),
        Cmd::Dist => setup(false).and_then(|_| dist::dist()).map(|_| ()),
        Cmd::Image => setup(false).and_then(|_| dist::build_image()),
        Cmd::SystemdImage => setup(false).and_then(|_| {
            let Some(_engine) = dist::Dockerd::ensure()? else {
                bail!("no Docker Engine (dockerd): `cargo xtask setup --test` installs Debian's docker.io");
            };
            sysimage::ensure()
        }),
    };
    if let Err(e) = r {
        eprintln!("xtask: {e:#}");
        std::process::exit(1);
    }
}

/// The workspace root.
pub fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn say(msg: &str) {
    eprintln!("\x1b[1mxtask:\x1b[0m {msg}");
}

fn status(cmd: &mut Command) -> Result<ExitStatus> {
    cmd.status()
        .with_context(|| format!("could not run {:?}", cmd.get_program()))
}

fn check(cmd: &mut Command) -> Result<()> {
    let desc = format!("{:?}", cmd);
    let st = status(cmd)?;
    if !st.success() {
        bail!("{desc} failed ({st})");
    }
    Ok(())
}

fn output_ok(cmd: &mut Command) -> Option<String> {
    let out = cmd.output().ok()?;
    out.status
        .success()
        .then(|| String::from_utf8_lossy(&out.stdout).into_owned())
}

fn have(bin: &str) -> bool {
    which(bin).is_some()
}

/// Debian's PostgreSQL server (the signal tests run a real postmaster):
/// /usr/lib/postgresql/VERSION/bin/postgres.
fn have_postgres() -> bool {
    std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().any(|e| e.path().join("bin/postgres").is_file()))
        .unwrap_or(false)
}

fn which(bin: &str) -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).collect())
        .unwrap_or_default();
    dirs.push(cargo_home().join("bin"));
    dirs.into_iter().map(|d| d.join(bin)).find(|p| p.is_file())
}

fn cargo_home() -> PathBuf {
    std::env::var_os("CARGO_HOME")
        .map(PathBuf::from)
        .unwrap_or_else(|| {
            PathBuf::from(std::env::var_os("HOME").unwrap_or_default()).join(".cargo")
        })
}

fn is_root() -> bool {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() == 0 }
}

/// The bpf-linker version reaper builds with.
const BPF_LINKER_VERSION: &str = "0.13.0";
/// LLVM major that bpf-linker must link against: at least nightly rustc's.
const LLVM_MAJOR: &str = "22";

fn setup(test_tools: bool) -> Result<()> {
    let t = Instant::now();
    // 1. nightly with rust-src: the eBPF crate is built with -Z build-std=core.
    let toolchains =
        output_ok(Command::new("rustup").args(["toolchain", "list"])).unwrap_or_default();
    if !toolchains.lines().any(|l| l.starts_with("nightly")) {
        say("installing the nightly toolchain (the eBPF crate needs -Z build-std)");
        check(Command::new("rustup").args([
            "toolchain",
            "install",
            "nightly",
            "--profile",
            "minimal",
        ]))?;
    }
    let components = output_ok(Command::new("rustup").args([
        "component",
        "list",
        "--toolchain",
        "nightly",
        "--installed",
    ]))
    .unwrap_or_default();
    if !components.lines().any(|l| l.starts_with("rust-src")) {
        say("adding rust-src to nightly (to build `core` for bpfel-unknown-none)");
        check(Command::new("rustup").args([
            "component",
            "add",
            "rust-src",
            "--toolchain",
            "nightly",
        ]))?;
    }
    // 2. bpf-linker, built against LLVM 22 from Debian's llvm-22-dev.
    let linker_ok = which("bpf-linker")
        .and_then(|p| output_ok(Command::new(p).arg("--version")))
        .is_some_and(|v| v.contains(BPF_LINKER_VERSION));
    if !linker_ok {
        let prefix = format!("/usr/lib/llvm-{LLVM_MAJOR}");
        let dev = format!("llvm-{LLVM_MAJOR}-dev");
        let polly = format!("libpolly-{LLVM_MAJOR}-dev");
        if !Path::new(&prefix).join("bin/llvm-config").exists() {
            apt_install(&[&dev, &polly], "bpf-linker links against LLVM")?;
        }
        say(&format!(
            "building bpf-linker {BPF_LINKER_VERSION} against LLVM {LLVM_MAJOR} (about 90 s, once)"
        ));
        check(
            Command::new("cargo")
                .args([
                    "install",
                    &format!("bpf-linker@{BPF_LINKER_VERSION}"),
                    "--locked",
                ])
                .args([
                    "--no-default-features",
                    "--features",
                    &format!("llvm-{LLVM_MAJOR}"),
                ])
                .env("LLVM_PREFIX", &prefix),
        )?;
    }
    // 3. The static (musl) target for `cargo xtask dist`.
    dist::setup_musl()?;
    // 4. The tools the tests use as independent oracles and real clients.
    if test_tools {
        let mut missing = Vec::new();
        for (bin, pkg) in [
            ("ss", "iproute2"),
            ("ip", "iproute2"),
            ("lsof", "lsof"),
            ("fuser", "psmisc"),
            ("bpftrace", "bpftrace"),
            ("promtool", "prometheus"),
            ("nginx", "nginx-light"),
            ("chromium", "chromium"),
            ("python3", "python3"),
            ("dockerd", "docker.io"),
            ("curl", "curl"),
            ("lintian", "lintian"),
            ("setpriv", "util-linux"),
            // The daemon benchmark's per-program costs (bpf_stats).
            ("bpftool", "bpftool"),
        ] {
            if !have(bin) && !missing.contains(&pkg) {
                missing.push(pkg);
            }
        }
        // PostgreSQL's server is not on PATH: Debian keeps it per version.
        if !have_postgres() {
            missing.push("postgresql");
        }
        if !missing.is_empty() {
            apt_install(&missing, "the tests use them as oracles and clients")?;
        }
        let fuzz_ok = output_ok(Command::new("cargo").args(["fuzz", "--version"])).is_some();
        if !fuzz_ok && root().join("fuzz").exists() {
            say("installing cargo-fuzz (for the fuzz smoke run)");
            check(Command::new("cargo").args(["install", "cargo-fuzz", "--locked"]))?;
        }
        dist::setup_cargo_deb()?;
        pytools::setup()?;
    }
    say(&format!(
        "setup: everything is in place ({:.1} s)",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

fn apt_install(pkgs: &[&str], why: &str) -> Result<()> {
    if !is_root() {
        bail!(
            "missing Debian packages {} ({why}); install them with `sudo apt-get install -y {}` or run this as root",
            pkgs.join(" "),
            pkgs.join(" ")
        );
    }
    say(&format!("installing {} with apt ({why})", pkgs.join(" ")));
    let mut install = Command::new("apt-get");
    install
        .args(["install", "-y", "-q", "--no-install-recommends"])
        .args(pkgs)
        .env("DEBIAN_FRONTEND", "noninteractive");
    if status(&mut install)?.success() {
        return Ok(());
    }
    say("apt-get install failed; refreshing the package lists and trying again");
    check(Command::new("apt-get").args(["update", "-q"]))?;
    check(&mut install)
}

fn cargo() -> Command {
    let mut c = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    c.current_dir(root());
    c
}

fn build(release: bool) -> Result<()> {
    say(&format!(
        "building reaper ({}) with its eBPF object embedded",
        if release { "release" } else { "debug" }
    ));
    let mut c = cargo();
    c.args(["build", "-p", "reaper-user"]);
    if release {
        c.arg("--release");
    }
    check(&mut c)
}

fn run(release: bool, args: &[String]) -> Result<()> {
    build(release)?;
    let bin = root()
        .join("target")
        .join(if release { "release" } else { "debug" })
        .join("reaper");
    if !is_root() {
        say(&format!(
            "not root: reaper needs root for its BPF hooks and to see every process. Run `sudo {} {}`; running it anyway (it will say what it cannot do)",
            bin.display(),
            args.join(" ")
        ));
    }
    let st = status(Command::new(&bin).args(args))?;
    std::process::exit(st.code().unwrap_or(1));
}

fn test(extra: &[String]) -> Result<()> {
    if !is_root() {
        bail!(
            "the integration tests need root (real BPF hooks, network namespaces, other users' processes): run `sudo -E cargo xtask test`"
        );
    }
    let t = Instant::now();
    say("1/6 cargo fmt --check (the workspace, reaper-ebpf, fuzz)");
    check(cargo().args(["fmt", "--all", "--check"]))?;
    for dir in ["reaper-ebpf", "fuzz"] {
        check(
            cargo()
                .args(["fmt", "--all", "--check"])
                .current_dir(root().join(dir)),
        )?;
    }
    say("layer order: every `crate::` path of reaper-user points down (xtask/src/layers.rs)");
    layers::check(&root())?;
    say("2/6 cargo clippy -- -D warnings (the workspace, then reaper-ebpf and fuzz on nightly)");
    check(cargo().args([
        "clippy",
        "--workspace",
        "--all-targets",
        "--",
        "-D",
        "warnings",
    ]))?;
    clippy_ebpf()?;
    clippy_fuzz()?;
    say("3/6 building reaper and the storm benchmark for the integration tests");
    check(cargo().args(["build", "-p", "reaper-user", "-p", "reaper-bench"]))?;
    // The Engine is up before the tests (container tests rely on it) and
    // stopped at the end when this run started it.
    let dockerd = dist::Dockerd::ensure()?;
    say(
        "4/6 what ships: static binary, tarball, .deb (tests/tests/it/ship.rs, packaging.rs check them), the image; the licence check (cargo about: every crate under a licence deploy/licenses/about.toml accepts); the systemd test's image",
    );
    let built = dist::dist()?;
    if dockerd.is_some() {
        dist::image(&built)?;
        sysimage::ensure()?;
    }
    say("5/6 cargo test: unit tests, then integration tests against the real kernel (tests/)");
    let (passed, failed, ignored) = cargo_test(extra)?;
    if root().join("fuzz").exists() {
        say("6/6 fuzz smoke: every fuzz target for a few seconds");
        fuzz_smoke()?;
    } else {
        say("6/6 fuzz smoke: no fuzz/ directory yet, nothing to run");
    }
    say(&format!(
        "all tests passed in {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    // The closing line CI reads: every test of every binary, summed.
    println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
    Ok(())
}

/// `cargo` of the nightly toolchain in `dir`, with nothing of the outer
/// cargo's environment (as reaper-user/build.rs does for the eBPF build).
fn nightly_cargo(dir: &str) -> Command {
    let mut c = Command::new("rustup");
    c.args(["run", "nightly", "cargo"])
        .current_dir(root().join(dir));
    for (key, _) in std::env::vars_os() {
        let k = key.to_string_lossy();
        if (k.starts_with("CARGO_") && k != "CARGO_HOME")
            || k.starts_with("RUSTC")
            || k == "CARGO"
            || k == "RUSTFLAGS"
            || k == "RUSTUP_TOOLCHAIN"
            || k == "RUSTDOC"
        {
            c.env_remove(&key);
        }
    }
    c
}

/// Clippy on the kernel side, for the target it is built for (its own
/// target dir: the outer build holds target/bpf).
fn clippy_ebpf() -> Result<()> {
    say("clippy: reaper-ebpf (nightly, bpfel-unknown-none)");
    let target_dir = root().join("target").join("bpf-clippy");
    check(
        nightly_cargo("reaper-ebpf")
            .args(["clippy", "--release", "--target", "bpfel-unknown-none"])
            .args(["-Z", "build-std=core", "--target-dir"])
            .arg(&target_dir)
            .args(["--", "-D", "warnings"]),
    )
}

/// Clippy on the fuzz targets, built as `cargo fuzz` builds them (nightly).
fn clippy_fuzz() -> Result<()> {
    if !root().join("fuzz").exists() {
        return Ok(());
    }
    say("clippy: fuzz (nightly)");
    check(nightly_cargo("fuzz").args(["clippy", "--all-targets", "--", "-D", "warnings"]))
}

/// Runs `cargo test --workspace`, echoing its output, and sums the counts of
/// every test binary's `test result:` line.
fn cargo_test(extra: &[String]) -> Result<(u64, u64, u64)> {
    use std::io::BufRead;
    let mut child = cargo()
        .args(["test", "--workspace"])
        .args(extra)
        .stdout(std::process::Stdio::piped())
        .spawn()
        .context("running cargo test")?;
    let (mut passed, mut failed, mut ignored) = (0, 0, 0);
    let stdout = child.stdout.take().unwrap();
    for line in std::io::BufReader::new(stdout).lines() {
        let line = line?;
        println!("{line}");
        if let Some(rest) = line.strip_prefix("test result: ") {
            for part in rest.split([';', '.']) {
                let mut w = part.split_whitespace();
                if let (Some(n), Some(what)) = (w.next(), w.next()) {
                    let n: u64 = n.parse().unwrap_or(0);
                    match what {
                        "passed" => passed += n,
                        "failed" => failed += n,
                        "ignored" => ignored += n,
                        _ => {}
                    }
                }
            }
        }
    }
    let st = child.wait()?;
    if !st.success() {
        println!("tests: {passed} passed, {failed} failed, {ignored} skipped");
        bail!("cargo test failed ({st})");
    }
    Ok((passed, failed, ignored))
}

fn fuzz_smoke() -> Result<()> {
    let fuzz = root().join("fuzz");
    let list = output_ok(
        Command::new("cargo")
            .args(["+nightly", "fuzz", "list"])
            .current_dir(&fuzz),
    )
    .context("listing fuzz targets (cargo +nightly fuzz list)")?;
    // 5 s each keeps the smoke under a minute of fuzzing for every target
    // (plus one shared build); REAPER_FUZZ_SECS=600 is the long run.
    let secs = std::env::var("REAPER_FUZZ_SECS").unwrap_or_else(|_| "5".into());
    for target in list.lines().map(str::trim).filter(|l| !l.is_empty()) {
        say(&format!("fuzzing {target} for {secs} s"));
        let mut cmd = Command::new("cargo");
        cmd.args(["+nightly", "fuzz", "run", target])
            .current_dir(&fuzz);
        // Committed seeds (real /proc and netlink captures, past crashes)
        // are read; what the fuzzer finds goes to the ignored corpus/.
        let seeds = fuzz.join("seeds").join(target);
        if seeds.is_dir() {
            let corpus = fuzz.join("corpus").join(target);
            std::fs::create_dir_all(&corpus)
                .with_context(|| format!("creating {}", corpus.display()))?;
            cmd.arg(&corpus).arg(&seeds);
        }
        cmd.args(["--", &format!("-max_total_time={secs}")]);
        check(&mut cmd)?;
    }
    Ok(())
}

fn man() -> Result<()> {
    build(false)?;
    let dir = root().join("target/man");
    std::fs::create_dir_all(&dir)?;
    let out = Command::new(root().join("target/debug/reaper"))
        .arg("man")
        .output()
        .context("running `reaper man`")?;
    if !out.status.success() {
        bail!(
            "`reaper man` failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    let path = dir.join("reaper.1");
    std::fs::write(&path, out.stdout)?;
    say(&format!(
        "wrote {} (view it with `man -l {}`)",
        path.display(),
        path.display()
    ));
    Ok(())
}

//! Integration tests live in tests/tests/*.rs; helpers here.

use std::path::PathBuf;

pub mod procs;

/// The workspace root (where `target/` is).
pub fn workspace_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ sits in the workspace")
        .to_path_buf()
}

/// The `reaper` binary. It belongs to another package, so cargo does not
/// build it for these tests: `cargo build` first.
pub fn reaper_bin() -> PathBuf {
    let p = std::env::var_os("REAPER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace_root().join("target/debug/reaper"));
    if !p.exists() {
        panic!(
            "{} is missing: run `cargo build` first (or set REAPER_BIN)",
            p.display()
        );
    }
    p
}

/// Tests of the real kernel need root: say so loudly rather than pass.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        panic!("this test needs root (real sockets in other processes and namespaces): run `sudo -E cargo test -p reaper-tests`");
    }
}

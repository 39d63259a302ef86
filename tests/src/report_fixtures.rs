//! journal -> report, tested from the outside: helpers for
//! tests/tests/it/report.rs, which runs the real `reaper` binary on fixture
//! journals (tests/fixtures/journals/) and compares its output with golden
//! files (tests/golden/), and opens the HTML in headless Chromium.
//!
//! - Golden files: `REAPER_BLESS=1 cargo test -p reaper-tests --test it report::`
//!   rewrites them from the current output; review the diff, commit it.
//! - The binary: built with `cargo build -p reaper-user --bin reaper` before
//!   the first run (a no-op when fresh), or taken from `REAPER_BIN`.
//! - Chromium: the Debian package `chromium` ([`CHROMIUM_INSTALL`]). The
//!   HTML test fails, loudly, without it: a report nobody checked renders is
//!   not tested.
//! - Artifacts (the screenshot) go to tests/artifacts/, which git ignores.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

/// How to install what the HTML test needs (for people and for xtask).
pub const CHROMIUM_INSTALL: &str = "apt-get install -y chromium";

/// Chromium's flags for a quiet, offline, throwaway run: no sandbox (root
/// in a VM), no GPU, no network chatter, no profile left behind.
pub const CHROMIUM_FLAGS: &[&str] = &[
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
];

pub use crate::{reaper_bin, workspace_root};

/// Runs `reaper ARGS` in the workspace root.
pub fn run_reaper(args: &[&str]) -> Output {
    crate::reaper()
        .args(args)
        .current_dir(workspace_root())
        .env("NO_COLOR", "1")
        .output()
        .unwrap_or_else(|e| panic!("running reaper {args:?}: {e}"))
}

/// Runs `reaper ARGS`, expecting exit 0, and returns stdout.
pub fn report_text(args: &[&str]) -> String {
    let out = run_reaper(args);
    assert_eq!(
        out.status.code(),
        Some(0),
        "reaper {args:?} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("reports are UTF-8")
}

/// Compares `actual` with tests/golden/NAME, or rewrites it with
/// `REAPER_BLESS=1`. On a difference, names the first differing line.
pub fn assert_golden(name: &str, actual: &str) {
    let path = workspace_root().join("tests/golden").join(name);
    if std::env::var_os("REAPER_BLESS").is_some_and(|v| v == "1") {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap_or_else(|e| panic!("writing {}: {e}", path.display()));
        return;
    }
    let expected = std::fs::read_to_string(&path).unwrap_or_else(|e| {
        panic!(
            "reading golden {}: {e}\nCreate it with: REAPER_BLESS=1 cargo test -p reaper-tests --test it report::",
            path.display()
        )
    });
    if expected == actual {
        return;
    }
    let (line, exp, got) = expected
        .lines()
        .zip(actual.lines())
        .enumerate()
        .find(|(_, (e, a))| e != a)
        .map(|(i, (e, a))| (i + 1, e.to_string(), a.to_string()))
        .unwrap_or_else(|| {
            let n = expected.lines().count().min(actual.lines().count());
            (
                n + 1,
                "(end or more lines)".into(),
                "(end or more lines)".into(),
            )
        });
    panic!(
        "{name} differs from tests/golden/{name} at line {line}:\n  expected: {exp}\n  actual:   {got}\n\
         If the change is intended: REAPER_BLESS=1 cargo test -p reaper-tests --test it report::, then review `git diff tests/golden`."
    );
}

/// Chromium's path, or a failure that says how to install it.
pub fn chromium() -> PathBuf {
    for name in ["chromium", "chromium-browser"] {
        for dir in std::env::var_os("PATH")
            .map(|p| std::env::split_paths(&p).collect::<Vec<_>>())
            .unwrap_or_default()
        {
            let p = dir.join(name);
            if p.is_file() {
                return p;
            }
        }
    }
    panic!(
        "headless Chromium is needed to check the HTML report renders, and it is not installed.\n\
         Install it: {CHROMIUM_INSTALL}\n(This test never passes without it.)"
    );
}

/// Runs Chromium headless on `html` with `extra` flags; returns stdout.
pub fn chromium_run(html: &Path, extra: &[&str]) -> String {
    // A fresh profile per run (the lib has no tempfile dependency).
    static RUNS: std::sync::atomic::AtomicUsize = std::sync::atomic::AtomicUsize::new(0);
    let n = RUNS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    let profile = std::env::temp_dir().join(format!("reaper-chromium-{}-{n}", std::process::id()));
    std::fs::create_dir_all(&profile).expect("a temp dir for Chromium's profile");
    let out = Command::new(chromium())
        .args(CHROMIUM_FLAGS)
        .arg(format!("--user-data-dir={}", profile.display()))
        .args(extra)
        .arg(format!("file://{}", html.display()))
        .output()
        .expect("running chromium");
    let _ = std::fs::remove_dir_all(&profile);
    assert!(
        out.status.success(),
        "chromium failed on {}: {}",
        html.display(),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Counts `class="NAME"` attributes (exact class lists) in markup.
pub fn count_class(markup: &str, name: &str) -> usize {
    markup.matches(&format!("class=\"{name}\"")).count()
}

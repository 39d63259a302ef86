//! The command line as users see it: help text (golden files), exit statuses
//! of bad input, no escape codes when piped. No privileges needed.
//!
//! Update the golden files after an intended change with
//! `REAPER_BLESS=1 cargo test -p reaper-user --test cli`.

use std::path::PathBuf;
use std::process::Command;

fn reaper() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_reaper"));
    c.env_remove("NO_COLOR").env_remove("RUST_LOG");
    c
}

fn golden(name: &str, actual: &str) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/golden")
        .join(name);
    if std::env::var_os("REAPER_BLESS").is_some() {
        std::fs::create_dir_all(path.parent().unwrap()).unwrap();
        std::fs::write(&path, actual).unwrap();
        return;
    }
    let want = std::fs::read_to_string(&path).unwrap_or_else(|_| {
        panic!(
            "{} is missing: run with REAPER_BLESS=1 to create it",
            path.display()
        )
    });
    assert_eq!(
        want, actual,
        "{name} changed; if intended, run REAPER_BLESS=1 cargo test -p reaper-user --test cli"
    );
}

#[test]
fn help_texts_match_their_golden_files() {
    for sub in [
        "",
        "watch",
        "doctor",
        "who",
        "ports",
        "free",
        "daemon",
        "report",
        "completions",
    ] {
        let mut c = reaper();
        if !sub.is_empty() {
            c.arg(sub);
        }
        let out = c.arg("--help").output().unwrap();
        assert!(out.status.success(), "reaper {sub} --help");
        let text = String::from_utf8(out.stdout).unwrap();
        assert!(!text.contains('\x1b'), "piped help has no escape codes");
        assert!(
            text.contains("Examples:"),
            "reaper {sub} --help shows examples"
        );
        // The command's own options first, the flags every command takes
        // after them under their own heading.
        let own = text.find("\nOptions:\n");
        let global = text.find("\nGlobal options:\n");
        assert!(
            matches!((own, global), (Some(o), Some(g)) if o < g),
            "reaper {sub} --help: own options, then global ones:\n{text}"
        );
        for flag in ["--no-bpf", "--hooks", "--verbose", "--color"] {
            assert!(
                text.find(flag) > global,
                "reaper {sub} --help: {flag} is not under Global options"
            );
        }
        golden(
            &format!("help-{}.txt", if sub.is_empty() { "reaper" } else { sub }),
            &text,
        );
    }
}

#[test]
fn bad_ports_are_bad_input_with_a_clear_message() {
    for (arg, needle) in [
        ("0", "port 0"),
        ("65536", "out of range"),
        ("http", "not a port number"),
        ("-1", "unexpected argument"),
    ] {
        let out = reaper().args(["who", arg]).output().unwrap();
        assert_eq!(out.status.code(), Some(2), "reaper who {arg}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(needle), "reaper who {arg}: {err}");
        assert!(!err.contains("panicked"), "{err}");
    }
}

#[test]
fn unknown_commands_and_flags_are_bad_input() {
    let out = reaper().arg("frobnicate").output().unwrap();
    assert_eq!(out.status.code(), Some(2));
    let out = reaper()
        .args([
            "watch",
            "--ringbuf-size",
            "1000",
            "--no-bpf",
            "--duration",
            "0",
        ])
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(2),
        "a ring buffer size that is not a power of two"
    );
    assert!(String::from_utf8_lossy(&out.stderr).contains("power of two"));
}

#[test]
fn completions_and_man_page_are_generated() {
    for shell in ["bash", "zsh", "fish"] {
        let out = reaper().args(["completions", shell]).output().unwrap();
        assert!(out.status.success());
        assert!(String::from_utf8_lossy(&out.stdout).contains("reaper"));
    }
    let out = reaper().arg("man").output().unwrap();
    assert!(out.status.success());
    assert!(String::from_utf8_lossy(&out.stdout).starts_with(".ie"));
}

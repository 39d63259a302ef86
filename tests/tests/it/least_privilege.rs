//! Least privilege that can be checked without running anything: reaper
//! runs as root beside untrusted jobs, so it must not start other programs
//! (a PATH, an argument or an environment variable an attacker influences
//! would then run as root). Its own source is the evidence: outside test
//! code, no `Command`, no exec, no `system`. The running daemon's
//! capabilities are checked in daemon_faults.rs.

use std::path::Path;

/// What starting another program looks like in Rust source.
const SPAWNERS: &[&str] = &[
    "Command::new",
    "process::Command",
    "std::process::Command",
    "tokio::process",
    "libc::exec",
    "libc::system",
    "libc::posix_spawn",
    "libc::fork",
    "nix::unistd::exec",
    "nix::unistd::fork",
    "execv",
];

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The part of a file that ships: everything before its `#[cfg(test)]`
/// module (by convention the last item), and never a `tests.rs` module.
fn shipped(path: &Path, text: &str) -> Option<String> {
    if path.file_name().is_some_and(|n| n == "tests.rs") {
        return None;
    }
    Some(match text.find("#[cfg(test)]") {
        Some(i) => text[..i].to_string(),
        None => text.to_string(),
    })
}

#[test]
fn reaper_never_starts_another_program() {
    let src = reaper_tests::workspace().join("reaper-user/src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    assert!(
        files.len() > 20,
        "found only {files:?} under {}",
        src.display()
    );
    let mut hits = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        let Some(code) = shipped(f, &text) else {
            continue;
        };
        for (n, line) in code.lines().enumerate() {
            let l = line.trim_start();
            if l.starts_with("//") {
                continue;
            }
            for s in SPAWNERS {
                if l.contains(s) {
                    hits.push(format!("{}:{}: {}", f.display(), n + 1, line.trim()));
                }
            }
        }
    }
    assert!(
        hits.is_empty(),
        "reaper must not shell out (it runs as root beside untrusted jobs):\n{}",
        hits.join("\n")
    );
}

/// The check above would catch a spawner, shown on a made-up file.
#[test]
fn the_check_sees_a_spawner() {
    let code = "fn f() {\n    let _ = std::process::Command::new(\"ss\");\n}\n#[cfg(test)]\nmod tests { fn g() { Command::new(\"x\"); } }\n";
    let shipped = shipped(Path::new("x.rs"), code).unwrap();
    assert!(SPAWNERS.iter().any(|s| shipped.contains(s)));
    assert!(!shipped.contains("\"x\""), "test code is not shipped");
}

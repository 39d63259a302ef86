//! What people see: tables and colour. A piped run carries no escape codes;
//! `--color always` colours; `NO_COLOR` wins over auto; the exit statuses of
//! the data commands are the documented ones.

use reaper_tests::*;

fn run(args: &[&str], env: &[(&str, &str)]) -> (Option<i32>, String) {
    let mut c = reaper();
    c.args(args).env_remove("NO_COLOR");
    for (k, v) in env {
        c.env(k, v);
    }
    let out = c.output().unwrap();
    (
        out.status.code(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

#[test]
fn piped_output_has_no_escape_codes_and_always_colours_on_request() {
    require_root();
    let (h, port) = hold(&["127.0.0.1", "0", "listen"]);
    let p = port.to_string();
    for args in [
        vec!["who", p.as_str(), "--no-bpf"],
        vec!["ports", "--listening", "--no-bpf"],
        vec!["doctor"],
        vec![
            "free",
            p.as_str(),
            "--match",
            "binder",
            "--dry-run",
            "--no-bpf",
        ],
    ] {
        let (code, out) = run(&args, &[]);
        assert_eq!(code, Some(0), "reaper {args:?}: {out}");
        assert!(
            !out.contains('\x1b'),
            "reaper {args:?} piped printed escape codes:\n{out}"
        );
    }
    let (_, coloured) = run(&["doctor", "--color", "always"], &[]);
    assert!(coloured.contains("\x1b["), "--color always colours");
    let (_, plain) = run(&["doctor", "--color", "auto"], &[("NO_COLOR", "1")]);
    assert!(!plain.contains('\x1b'));
    drop(h);
}

#[test]
fn the_ports_table_aligns_its_columns() {
    require_root();
    let (_h, port) = hold(&["127.0.0.1", "0", "listen"]);
    let (code, out) = run(&["ports", "--listening", "--no-bpf"], &[]);
    assert_eq!(code, Some(0));
    let lines: Vec<&str> = out.lines().filter(|l| !l.trim().is_empty()).collect();
    let header = lines[0];
    let row = lines
        .iter()
        .find(|l| l.contains(&format!(":{port}")))
        .unwrap_or_else(|| panic!("port {port} missing from:\n{out}"));
    // Every column of the row starts where the header's column starts.
    let starts = |s: &str| -> Vec<usize> {
        let b = s.as_bytes();
        (0..b.len())
            .filter(|&i| {
                b[i] != b' ' && (i == 0 || (i >= 2 && b[i - 1] == b' ' && b[i - 2] == b' '))
            })
            .collect()
    };
    let hs = starts(header);
    let rs = starts(row);
    for s in &hs {
        assert!(
            rs.contains(s),
            "column at {s} of '{header}' is not aligned in '{row}'"
        );
    }
}

#[test]
fn who_exit_statuses() {
    require_root();
    let (_h, port) = hold(&["127.0.0.1", "0", "listen"]);
    assert_eq!(run(&["who", &port.to_string(), "--no-bpf"], &[]).0, Some(0));
    let free = free_port();
    assert_eq!(
        run(
            &["who", &free.to_string(), "--no-bpf", "--proto", "tcp"],
            &[]
        )
        .0,
        Some(1)
    );
    assert_eq!(run(&["who", "0"], &[]).0, Some(2));
    assert_eq!(run(&["who", "8080", "--netns", "abc"], &[]).0, Some(2));
}

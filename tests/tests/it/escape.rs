//! Text a process controls never reaches a terminal raw. A holder whose
//! exe file name (so its comm), exe path and argv carry ESC, CSI, OSC 52,
//! BEL, DEL, 8-bit C1 controls and bidi overrides: `who`, `ports` and
//! `watch` print them visibly escaped, and their JSON keeps the exact text.

use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use reaper_tests::fixture::Holder;
use reaper_tests::report_fixtures::report_text;
use reaper_tests::*;
use serde_json::Value;

/// The exe's file name, and so the comm (12 bytes: under the kernel's 15):
/// clear screen, BEL, 8-bit CSI, right-to-left override.
const NAME: &str = "x\x1b[2J\x07\u{9b}\u{202e}y";

/// Extra argv words: an OSC 52 clipboard write, an 8-bit OSC title, a tab,
/// a newline and DEL, a bidi isolate around an override.
const ARGS: [&str; 4] = [
    "\x1b]52;c;cmVhcGVy\x07",
    "\u{9d}0;pwned\u{9c}",
    "a\tb\nc\x7f",
    "\u{2066}\u{202e}gnp.exe\u{2069}",
];

/// A character a terminal acts on or that reorders what it shows. Written
/// out here rather than taken from reaper, so the test judges reaper.
fn raw_control(c: char) -> bool {
    (c < ' ' && c != '\n')
        || ('\u{7f}'..='\u{9f}').contains(&c)
        || matches!(
            c,
            '\u{61c}' | '\u{200e}' | '\u{200f}' | '\u{2028}'..='\u{202e}' | '\u{2066}'..='\u{2069}'
        )
}

/// `text` without reaper's own colour sequences (`ESC [ digits ; m`): what
/// remains must be inert. A clear screen (`ESC [ 2 J`) is not a colour.
fn strip_colour(text: &str) -> String {
    let mut out = String::new();
    let mut rest = text;
    while let Some(i) = rest.find("\x1b[") {
        out.push_str(&rest[..i]);
        let after = &rest[i + 2..];
        let n = after
            .find(|c: char| !(c.is_ascii_digit() || c == ';'))
            .unwrap_or(after.len());
        if after[n..].starts_with('m') {
            rest = &after[n + 1..];
        } else {
            out.push('\x1b');
            rest = &rest[i + 1..];
        }
    }
    out.push_str(rest);
    out
}

fn assert_inert(what: &str, text: &str) {
    let text = &strip_colour(text);
    if let Some((i, c)) = text.char_indices().find(|&(_, c)| raw_control(c)) {
        panic!(
            "{what} printed a raw {c:?} at byte {i}:\n{}",
            text.escape_debug()
        );
    }
}

/// A copy of `binder` under the hostile name, holding a listening socket on
/// an ephemeral port; its argv carries the hostile words.
struct Hostile {
    _dir: tempfile::TempDir,
    exe: PathBuf,
    s: Holder,
    port: u16,
}

impl Hostile {
    fn start() -> Hostile {
        require_root();
        // A hard link, not a copy: a copy is open for writing, and a test
        // forking at that moment keeps it so, which fails our exec (ETXTBSY).
        let dir = tempfile::tempdir_in(workspace().join("target")).unwrap();
        let exe = dir.path().join(NAME);
        std::fs::hard_link(fixture_bin("binder"), &exe).unwrap();
        let mut c = Command::new(&exe);
        c.args(["hold", "127.0.0.1", "0", "listen"]).args(ARGS);
        let (s, port) = hold_with(c);
        Hostile {
            _dir: dir,
            exe,
            s,
            port,
        }
    }

    fn argv(&self) -> Vec<String> {
        let mut v = vec![
            self.exe.to_str().unwrap().to_string(),
            "hold".into(),
            "127.0.0.1".into(),
            "0".into(),
            "listen".into(),
        ];
        v.extend(ARGS.iter().map(|a| a.to_string()));
        v
    }
}

fn run(args: &[&str]) -> (Option<i32>, String, String) {
    let out = reaper().args(args).env_remove("NO_COLOR").output().unwrap();
    (
        out.status.code(),
        String::from_utf8(out.stdout).expect("reaper prints UTF-8"),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn who_shows_the_hostile_holder_escaped_and_its_json_keeps_the_bytes() {
    let h = Hostile::start();
    let port = h.port.to_string();
    for colour in ["never", "always"] {
        let (code, out, err) = run(&["who", &port, "--no-bpf", "--color", colour]);
        assert_eq!(code, Some(0), "who {port}: {out}{err}");
        assert_inert("who", &out);
        assert_inert("who (stderr)", &err);
        // Shown, not dropped: the reader sees what the process tried.
        for want in [
            "x\\x1b[2J\\x07\\u{9b}\\u{202e}y",
            // argv as bash reads it back ($'...').
            "$'\\x1b]52;c;cmVhcGVy\\x07'",
            "$'\\u009d0;pwned\\u009c'",
            "$'a\\tb\\nc\\x7f'",
            "$'\\u2066\\u202egnp.exe\\u2069'",
        ] {
            assert!(out.contains(want), "who lacks {want:?}:\n{out}");
        }
    }

    let (code, out, _) = run(&["who", &port, "--no-bpf", "--json"]);
    assert_eq!(code, Some(0));
    let v: Value = serde_json::from_str(&out).unwrap();
    let p = v["holdings"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|hd| hd["processes"].as_array().unwrap())
        .find(|p| p["pid"] == h.s.pid())
        .unwrap_or_else(|| panic!("pid {} not in {v}", h.s.pid()));
    assert_eq!(p["comm"], NAME, "comm round-trips exactly");
    assert_eq!(p["exe"], h.exe.to_str().unwrap(), "exe round-trips exactly");
    let argv: Vec<String> = serde_json::from_value(p["cmdline"].clone()).unwrap();
    assert_eq!(argv, h.argv(), "cmdline round-trips exactly");
}

#[test]
fn the_ports_table_escapes_the_hostile_holder_and_stays_aligned() {
    let h = Hostile::start();
    let (code, out, err) = run(&["ports", "--listening", "--no-bpf"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_inert("ports", &out);
    let row = out
        .lines()
        .find(|l| l.contains(&format!(":{} ", h.port)))
        .unwrap_or_else(|| panic!("port {} missing:\n{out}", h.port));
    assert!(
        row.ends_with(&format!(
            "{} x\\x1b[2J\\x07\\u{{9b}}\\u{{202e}}y",
            h.s.pid()
        )),
        "{row}"
    );

    let (_, out, _) = run(&["ports", "--listening", "--no-bpf", "--json"]);
    let v: Value = serde_json::from_str(&out).unwrap();
    let found = v
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|hd| hd["processes"].as_array().unwrap())
        .any(|p| p["pid"] == h.s.pid() && p["comm"] == NAME);
    assert!(found, "ports --json keeps the exact comm");
}

#[test]
fn watch_lines_show_the_hostile_binder_escaped() {
    require_root();
    let mut w = Spawned::spawn(reaper().args(["watch", "--color", "never"]));
    w.wait_err("attached", Duration::from_secs(30));
    let h = Hostile::start();
    let pid = h.s.pid();
    let line = w.wait_line("the hostile bind", Duration::from_secs(20), |l| {
        l.contains(&format!("pid {pid} ("))
    });
    assert_inert("watch", &line);
    assert!(
        line.contains(&format!("pid {pid} (x\\x1b[2J\\x07\\u{{9b}}\\u{{202e}}y)")),
        "{line}"
    );
}

/// `free --dry-run` prints the holders it judged, their verdicts' reasons
/// and, when it refuses, a message quoting them: none reaches the terminal raw.
#[test]
fn free_dry_run_shows_the_hostile_holder_escaped() {
    let h = Hostile::start();
    let port = h.port.to_string();
    let (code, out, err) = run(&["free", &port, "--match", NAME, "--dry-run", "--no-bpf"]);
    assert_eq!(code, Some(0), "{out}{err}");
    assert_inert("free --dry-run", &out);
    assert_inert("free --dry-run (stderr)", &err);
    // A refusal quotes the holder too.
    let (code, out, err) = run(&["free", &port, "--match", "nobody", "--dry-run", "--no-bpf"]);
    assert_ne!(code, Some(0), "{out}{err}");
    assert_inert("free refusal", &out);
    assert_inert("free refusal (stderr)", &err);
}

/// What a hostile process left in the journal (comm, exe, cmdline, cgroup,
/// parents): a clipboard write, a bidi override, a newline, and Markdown
/// that would end a table cell, open a link or a code span.
const JOURNALED: &str = "x\x1b]52;c;Zm9v\x07|`[l](http://e)`\n# \u{202e}<b>&amp;";

/// Every text field about a process in a journal record, replaced.
fn poison(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for (k, x) in m.iter_mut() {
                match (k.as_str(), &*x) {
                    ("comm" | "exe" | "cmdline" | "cgroup" | "parent_comm", Value::String(_)) => {
                        *x = Value::String(JOURNALED.into())
                    }
                    ("ancestors", Value::Array(_)) => {
                        *x = serde_json::json!([format!("1:{JOURNALED}")])
                    }
                    _ => poison(x),
                }
            }
        }
        Value::Array(a) => a.iter_mut().for_each(poison),
        _ => {}
    }
}

/// The cells of a Markdown table row: `|` not escaped by a backslash.
fn cell_edges(row: &str) -> usize {
    let mut n = 0;
    let mut chars = row.chars();
    while let Some(c) = chars.next() {
        match c {
            '\\' => {
                chars.next();
            }
            '|' => n += 1,
            _ => {}
        }
    }
    n
}

#[test]
fn reports_of_a_hostile_journal_escape_it_and_keep_their_tables() {
    let src = workspace_root().join("tests/fixtures/journals/torn.jsonl");
    let mut lines = String::new();
    for l in std::fs::read_to_string(&src).unwrap().lines() {
        if let Ok(mut v) = serde_json::from_str::<Value>(l) {
            poison(&mut v);
            lines.push_str(&v.to_string());
            lines.push('\n');
        }
    }
    assert!(lines.contains("\\u001b]52"), "the fixture has processes");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("hostile.jsonl");
    std::fs::write(&journal, lines).unwrap();
    let j = journal.to_str().unwrap();

    let md = report_text(&["report", "--journal", j, "--format", "md"]);
    assert_inert("report --format md", &md);
    // In code spans as it is; in plain text with the markup escaped too.
    assert!(md.contains("``x\\x1b]52;c;Zm9v\\x07\\|`[l]"), "{md}");
    assert!(
        md.contains("x\\\\x1b\\]52;c;Zm9v\\\\x07\\|\\`\\[l\\]"),
        "{md}"
    );
    // Every row of a table has as many cells as its header.
    for table in md.split("\n\n").filter(|b| b.starts_with('|')) {
        let rows: Vec<&str> = table.lines().collect();
        let want = cell_edges(rows[0]);
        for r in &rows {
            assert_eq!(cell_edges(r), want, "a row gained or lost a cell:\n{r}");
        }
    }

    let html = report_text(&["report", "--journal", j, "--format", "html"]);
    assert_inert("report --format html", &html);
    assert!(
        !html.contains("<b>&amp;"),
        "markup from the journal is escaped"
    );

    let json = report_text(&["report", "--journal", j, "--format", "json"]);
    assert!(
        json.contains(&serde_json::to_string(JOURNALED).unwrap()),
        "the JSON report keeps the exact text"
    );
}

//! `reaper report`, the real binary on fixture journals: golden Markdown and
//! JSON, the HTML in headless Chromium, and the exit statuses.
//!
//! Update the goldens after an intended change:
//! `REAPER_BLESS=1 cargo test -p reaper-tests --test it report::`.
//! Needs Chromium (`apt-get install -y chromium`); no root.

use reaper_tests::report_fixtures::*;
use serde_json::Value;

const TORN: &str = "tests/fixtures/journals/torn.jsonl";
const HOST1: &str = "tests/fixtures/journals/fleet/runner-1.jsonl";
const HOST2: &str = "tests/fixtures/journals/fleet/runner-2.jsonl";
const ROTATED: &str = "tests/fixtures/journals/rotated/reaper.jsonl";

fn json_of(args: &[&str]) -> (String, Value) {
    let mut a = args.to_vec();
    a.extend(["--format", "json"]);
    let text = report_text(&a);
    let v = serde_json::from_str(&text).expect("--format json is JSON");
    (text, v)
}

#[test]
fn demo_markdown_and_json_match_their_goldens() {
    let md = report_text(&["report", "--demo", "--format", "md"]);
    assert_golden("demo.md", &md);
    let (text, v) = json_of(&["report", "--demo"]);
    assert_golden("demo.json", &text);
    assert_eq!(v["schema"], "reaper.report/v1");
    // The story: an orphan held :8080, three failed binds, reaped, freed.
    let c = &v["conflicts"][0];
    assert_eq!(c["port"], 8080);
    assert_eq!(c["count"], 3);
    assert_eq!(c["holders"][0]["orphaned"], true);
    assert_eq!(c["holders"][0]["ppid"], 1);
    assert_eq!(c["resolution"], "reaped");
    assert_eq!(c["done"][0]["signals"][0]["signal"], "SIGTERM");
    assert_eq!(c["done"][0]["signals"][0]["ts"], "2024-05-14T10:04:12.405Z");
    assert_eq!(c["rebound_by"]["pid"], 5120);
    assert_eq!(v["summary"]["reapings_by_outcome"]["freed"], 1);
}

#[test]
fn a_torn_last_line_is_counted_and_the_rest_reported() {
    let md = report_text(&["report", "--journal", TORN]);
    assert_golden("torn.md", &md);
    let (text, v) = json_of(&["report", "--journal", TORN]);
    assert_golden("torn.json", &text);
    let q = &v["data_quality"];
    assert_eq!(q["torn_lines"], 1);
    assert_eq!(q["garbage_lines"], 1);
    assert_eq!(q["unknown_version"], 1);
    let bad: Vec<String> = q["bad_lines"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| format!("{}:{}", b["file"].as_str().unwrap(), b["line"]))
        .collect();
    assert_eq!(
        bad,
        [
            format!("{TORN}:4"),
            format!("{TORN}:5"),
            format!("{TORN}:10")
        ]
    );
    // The block ended when its holder let go by itself.
    assert_eq!(v["conflicts"][0]["resolution"], "released");
    assert_eq!(v["conflicts"][0]["blocked_ms"], 30_250);
}

#[test]
fn two_hosts_merge_by_time_and_keep_their_names() {
    let args = ["report", "--journal", HOST1, "--journal", HOST2];
    assert_golden("two-hosts.md", &report_text(&args));
    let (text, v) = json_of(&args);
    assert_golden("two-hosts.json", &text);
    let hosts: Vec<&str> = v["summary"]["hosts"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["name"].as_str().unwrap())
        .collect();
    assert_eq!(hosts, ["runner-1", "runner-2"]);
    // The same port on two hosts is two ports, each with its own story.
    let ports: Vec<(String, u64)> = v["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["host"].as_str().unwrap().to_string(),
                p["port"].as_u64().unwrap(),
            )
        })
        .collect();
    assert!(
        ports.contains(&("runner-1".into(), 8080)) && ports.contains(&("runner-2".into(), 8080))
    );
    // Conflicts in time order across the files: runner-2's came first.
    assert_eq!(v["conflicts"][0]["host"], "runner-2");
    assert_eq!(v["conflicts"][1]["host"], "runner-1");
    assert_eq!(v["conflicts"][1]["resolution"], "open");
    assert_eq!(v["summary"]["still_blocked"], 1);
    let q = &v["data_quality"];
    assert_eq!(q["lost_events"], 17);
    assert_eq!(q["gaps_total"], 1);
    assert_eq!(q["degraded"][0]["ms"], 420_000);

    // Filters: one host, one port.
    let only = [
        "report",
        "--journal",
        HOST1,
        "--journal",
        HOST2,
        "--host",
        "runner-2",
        "--port",
        "8080",
    ];
    assert_golden("two-hosts-runner-2-8080.md", &report_text(&only));
    let (_, v) = json_of(&only);
    assert_eq!(v["summary"]["conflicts"], 1);
    assert_eq!(v["ports"].as_array().unwrap().len(), 1);
}

#[test]
fn rotated_files_are_read_oldest_first_as_one_journal() {
    let md = report_text(&["report", "--journal", ROTATED]);
    assert_golden("rotated.md", &md);
    let (text, v) = json_of(&["report", "--journal", ROTATED]);
    assert_golden("rotated.json", &text);
    let files: Vec<&str> = v["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["path"].as_str().unwrap())
        .collect();
    assert_eq!(files, [format!("{ROTATED}.1"), ROTATED.to_string()]);
    // The holder's claim is in the rotated file, the conflict in the live one.
    let ev: Vec<&str> = v["conflicts"][0]["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e.as_str().unwrap())
        .collect();
    assert_eq!(ev[0], format!("{ROTATED}.1:2"));
    assert_eq!(ev[1], format!("{ROTATED}:1"));
    assert_eq!(v["conflicts"][0]["held_since"], "2024-06-03T07:00:01.000Z");
    assert_eq!(v["conflicts"][0]["done"][0]["outcome"], "refused");
}

#[test]
fn the_html_renders_in_chromium_with_its_timeline() {
    let root = workspace_root();
    let artifacts = root.join("tests/artifacts");
    std::fs::create_dir_all(&artifacts).unwrap();

    for (name, args, bars) in [
        ("report.html", vec!["report", "--demo"], 2usize),
        (
            "two-hosts.html",
            vec!["report", "--journal", HOST1, "--journal", HOST2],
            3,
        ),
    ] {
        let html = artifacts.join(name);
        let mut a = args.clone();
        let out = html.to_string_lossy().into_owned();
        a.extend(["--format", "html", "--output", &out]);
        let o = run_reaper(&a);
        assert_eq!(
            o.status.code(),
            Some(0),
            "{}",
            String::from_utf8_lossy(&o.stderr)
        );
        let source = std::fs::read_to_string(&html).unwrap();
        assert!(
            !source.contains("<script") && !source.contains("<link") && !source.contains("url("),
            "the page must be self-contained"
        );

        // The DOM as Chromium built it: the SVG parsed, every bar there.
        let dom = chromium_run(&html, &["--dump-dom"]);
        assert!(dom.contains("<svg"), "no SVG in the rendered DOM of {name}");
        assert_eq!(
            count_class(&dom, "holder-bar"),
            bars,
            "holder bars in {name}"
        );
        // As many as the JSON report has bars.
        let (_, v) = json_of(&args);
        let json_bars: usize = v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["bars"].as_array().unwrap().len())
            .sum();
        assert_eq!(json_bars, bars);
        let conflicts = v["conflicts"].as_array().unwrap().len();
        assert_eq!(
            count_class(&dom, "failed-bind"),
            conflicts,
            "failed-bind marks in {name}"
        );
        let reapings: usize = v["ports"]
            .as_array()
            .unwrap()
            .iter()
            .map(|p| p["counts"]["reapings"].as_u64().unwrap() as usize)
            .sum();
        assert_eq!(
            count_class(&dom, "reaping"),
            reapings,
            "reaping marks in {name}"
        );
        assert!(dom.contains("Conflict #1"));
    }

    // A picture for people, kept as an artifact (tests/artifacts is ignored).
    let png = artifacts.join("report.png");
    let _ = std::fs::remove_file(&png);
    let shot = format!("--screenshot={}", png.display());
    chromium_run(
        &artifacts.join("report.html"),
        &[&shot, "--window-size=1200,900"],
    );
    let meta = std::fs::metadata(&png).expect("chromium wrote the screenshot");
    assert!(
        meta.len() > 10_000,
        "the screenshot is suspiciously small ({} bytes)",
        meta.len()
    );
}

#[test]
fn exit_statuses_and_messages() {
    // The demo renders.
    let md = report_text(&["report", "--demo", "--format", "md"]);
    assert!(md.contains("### Conflict #1: tcp/8080 on runner-7"));

    // A bad time is bad input, naming the flag and the accepted forms.
    for flag in ["--since", "--until"] {
        let o = run_reaper(&["report", "--demo", flag, "last tuesday"]);
        assert_eq!(o.status.code(), Some(2), "{flag}");
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains(flag) && err.contains("RFC 3339") && err.contains("2h"),
            "{err}"
        );
    }
    let o = run_reaper(&[
        "report",
        "--demo",
        "--since",
        "2024-05-14T11:00:00Z",
        "--until",
        "2024-05-14T10:00:00Z",
    ]);
    assert_eq!(o.status.code(), Some(2));

    // A missing journal says where it looked and what to do.
    let o = run_reaper(&["report", "--journal", "tests/fixtures/journals/nope.jsonl"]);
    assert_eq!(o.status.code(), Some(2));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("tests/fixtures/journals/nope.jsonl") && err.contains("--demo"),
        "{err}"
    );

    // No --journal: the daemon's journal, or a clear message.
    let o = run_reaper(&["report"]);
    if std::path::Path::new("/var/lib/reaper/journal.jsonl").exists() {
        assert_eq!(o.status.code(), Some(0));
    } else {
        assert_eq!(o.status.code(), Some(2));
        let err = String::from_utf8_lossy(&o.stderr);
        assert!(
            err.contains("no journal at /var/lib/reaper/journal.jsonl")
                && err.contains("--journal PATH"),
            "{err}"
        );
    }

    // --output writes what stdout would have shown.
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("r.json");
    let o = run_reaper(&[
        "report",
        "--demo",
        "--format",
        "json",
        "--output",
        file.to_str().unwrap(),
    ]);
    assert_eq!(o.status.code(), Some(0));
    assert!(o.stdout.is_empty());
    assert_eq!(
        std::fs::read_to_string(&file).unwrap(),
        report_text(&["report", "--demo", "--format", "json"])
    );
}

#[test]
fn relative_windows_count_back_from_now() {
    // The fixtures are from 2024: a window of the last hour holds nothing,
    // a window of the last 100000 days holds everything.
    let (_, v) = json_of(&["report", "--journal", TORN, "--since", "1h"]);
    assert_eq!(v["summary"]["records"], 0);
    let (_, v) = json_of(&["report", "--journal", TORN, "--since", "100000d"]);
    assert_eq!(v["summary"]["records"], 7);
    // --until cuts the window, and unresolved blocks end there.
    let (_, v) = json_of(&[
        "report",
        "--journal",
        TORN,
        "--until",
        "2024-06-01T08:02:10Z",
    ]);
    assert_eq!(v["conflicts"][0]["resolution"], "open");
    assert_eq!(v["conflicts"][0]["blocked_ms"], 10_000);
}

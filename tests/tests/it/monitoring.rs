//! The fleet's view of the daemon (metrics -> Prometheus -> Grafana):
//! deploy/prometheus/reaper-rules.yml passes `promtool check rules` and its
//! unit tests, and every query of deploy/grafana/reaper.json names metrics
//! a real daemon exports on GET /metrics, in valid PromQL.
//!
//! Build first: `cargo build -p reaper-user && sudo -E cargo test -p reaper-tests --test it monitoring::`.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

use reaper_tests::daemon::Daemon;
use reaper_tests::{require_root, show, workspace};
use serde_json::Value;

fn deploy(rel: &str) -> PathBuf {
    workspace().join("deploy").join(rel)
}

fn promtool(args: &[&str], dir: &Path) -> Output {
    Command::new("promtool")
        .args(args)
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("promtool is needed (apt-get install -y prometheus; cargo xtask setup --test installs it): {e}")
        })
}

#[test]
fn the_alert_rules_check_and_pass_their_unit_tests() {
    let dir = deploy("prometheus");
    let out = promtool(&["check", "rules", "reaper-rules.yml"], &dir);
    assert!(out.status.success(), "promtool check rules: {}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("SUCCESS: 5 rules found"), "{text}");
    let out = promtool(&["test", "rules", "reaper-rules.test.yml"], &dir);
    assert!(out.status.success(), "promtool test rules: {}", show(&out));
    // Every alert the issue asks for is there and unit-tested.
    let rules = std::fs::read_to_string(dir.join("reaper-rules.yml")).unwrap();
    let tests = std::fs::read_to_string(dir.join("reaper-rules.test.yml")).unwrap();
    for alert in [
        "ReaperConflictsRising",
        "ReaperRingBufferLosses",
        "ReaperDegraded",
        "ReaperReapingsFailing",
        "ReaperJournalErrors",
    ] {
        assert!(
            rules.contains(&format!("alert: {alert}")),
            "{alert} missing"
        );
        assert!(
            tests.contains(&format!("alertname: {alert}")),
            "{alert} has no unit test"
        );
    }
}

/// Metric names in an exposition text: each family's samples, with the
/// histogram series names.
fn exported(text: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in text.lines() {
        if let Some(rest) = line.strip_prefix("# TYPE ") {
            let mut w = rest.split_whitespace();
            let (name, kind) = (w.next().unwrap(), w.next().unwrap_or(""));
            names.insert(name.to_string());
            if kind == "histogram" {
                for suffix in ["_bucket", "_sum", "_count"] {
                    names.insert(format!("{name}{suffix}"));
                }
            }
        } else if !line.starts_with('#') && !line.is_empty() {
            let name = line.split(['{', ' ']).next().unwrap();
            names.insert(name.to_string());
        }
    }
    names
}

/// The metric names a PromQL expression reads (the `reaper_*` identifiers).
fn names_in(expr: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let b = expr.as_bytes();
    let mut i = 0;
    while let Some(at) = expr[i..].find("reaper_") {
        let start = i + at;
        let boundary =
            start == 0 || !(b[start - 1].is_ascii_alphanumeric() || b[start - 1] == b'_');
        let mut end = start;
        while end < b.len() && (b[end].is_ascii_alphanumeric() || b[end] == b'_') {
            end += 1;
        }
        if boundary {
            out.insert(expr[start..end].to_string());
        }
        i = end;
    }
    out
}

/// Every query of the dashboard: panel targets and template variables.
fn dashboard_queries(dash: &Value) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for p in dash["panels"].as_array().expect("panels") {
        for t in p["targets"].as_array().expect("targets") {
            out.push((
                format!("panel '{}'", p["title"].as_str().unwrap()),
                t["expr"].as_str().expect("an expr").to_string(),
            ));
        }
    }
    for v in dash["templating"]["list"].as_array().unwrap() {
        if let Some(q) = v["query"]["query"].as_str() {
            out.push((format!("variable '{}'", v["name"]), q.to_string()));
        }
    }
    out
}

#[test]
fn every_dashboard_query_names_metrics_a_running_daemon_exports() {
    require_root();
    // Every family has its `# HELP`/`# TYPE` lines from the start, the
    // labelled ones (bind failures, reapings, scans) before their first sample.
    let d = Daemon::start("");
    let scrape = d.scrape();
    let have = exported(&scrape);
    for family in [
        "reaper_binds_total",
        "reaper_conflicts_total",
        "reaper_bind_failures_total",
        "reaper_reapings_total",
        "reaper_scan_duration_seconds_bucket",
    ] {
        assert!(
            have.contains(family),
            "the daemon does not export {family}:\n{scrape}"
        );
    }
    // Outcomes and errnos are there from the start, so that increase() sees
    // the first failed reaping (an alert rule on a series born at 1 never
    // fires). This daemon has no rules, so its reaping outcomes stay at 0; its
    // bind failures count the whole host's, and other tests of this binary
    // make failed binds meanwhile: the errno series only has to exist (the
    // metrics unit tests check that it starts at 0).
    for line in [
        "reaper_reapings_total{outcome=\"still_held\"} 0",
        "reaper_reapings_total{outcome=\"failed\"} 0",
        "reaper_job_leftovers_total{provider=\"github\"} 0",
        "reaper_job_leftovers_total{provider=\"buildkite\"} 0",
        "reaper_job_end_freed_total 0",
    ] {
        assert!(
            scrape.lines().any(|l| l == line),
            "a fresh daemon does not export {line}:\n{scrape}"
        );
    }
    let series = "reaper_bind_failures_total{errno=\"EADDRINUSE\"} ";
    assert!(
        scrape.lines().any(|l| l.starts_with(series)),
        "a fresh daemon does not export {series}:\n{scrape}"
    );

    let text = std::fs::read_to_string(deploy("grafana/reaper.json")).unwrap();
    let dash: Value = serde_json::from_str(&text).expect("reaper.json is JSON");
    let queries = dashboard_queries(&dash);
    assert!(queries.len() >= 10, "only {} queries", queries.len());
    let mut used = BTreeSet::new();
    let mut as_rules = String::from("groups:\n  - name: dashboard\n    rules:\n");
    for (i, (whose, expr)) in queries.iter().enumerate() {
        let names = names_in(expr);
        assert!(!names.is_empty(), "{whose}: {expr} reads no reaper metric");
        for n in &names {
            assert!(
                have.contains(n),
                "{whose}: {expr} reads {n}, which the daemon does not export; it exports: {have:?}"
            );
        }
        used.extend(names);
        // Grafana's variables, as Grafana would substitute them, so that
        // promtool can parse the rest as PromQL.
        let promql = expr
            .replace("$__rate_interval", "5m")
            .replace("$instance", ".*");
        if let Some(q) = promql.strip_prefix("label_values(") {
            let metric = q.split(',').next().unwrap().trim();
            as_rules.push_str(&format!("      - record: q{i}\n        expr: '{metric}'\n"));
        } else {
            as_rules.push_str(&format!(
                "      - record: q{i}\n        expr: '{}'\n",
                promql.replace('\'', "''")
            ));
        }
    }
    // The daemon's health figures each have a panel.
    for n in [
        "reaper_degraded",
        "reaper_ringbuf_lost_events_total",
        "reaper_journal_errors_total",
        "reaper_reapings_total",
        "reaper_conflicts_total",
    ] {
        assert!(used.contains(n), "no panel shows {n}");
    }
    let dir = tempfile::tempdir().unwrap();
    std::fs::write(dir.path().join("queries.yml"), &as_rules).unwrap();
    let out = promtool(&["check", "rules", "queries.yml"], dir.path());
    assert!(
        out.status.success(),
        "a dashboard query is not valid PromQL:\n{as_rules}\n{}",
        show(&out)
    );
}

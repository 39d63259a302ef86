//! `reaper daemon` against the real kernel: a real daemon process, real
//! orphaned holders, real failed binds, the journal, /metrics (checked by
//! promtool), the control socket, signals. Needs root (the BPF hooks, the
//! pidfd reaping); without it each test says so and passes vacuously.

use std::process::Command;
use std::time::{Duration, Instant};

use reaper_tests::daemon::*;
use serde_json::Value;

macro_rules! need_root {
    () => {
        // Never a silent pass: without root these tests cannot run at all.
        assert!(
            is_root(),
            "this test needs root (BPF hooks, reaping): run `cargo xtask test` as root"
        );
    };
}

#[test]
fn ring_buffer_losses_are_journaled_and_the_ledger_is_reconciled() {
    need_root!();
    // The smallest ring buffer: a storm must overflow it.
    let d = Daemon::start("ringbuf_size = 4096\n");
    bind_storm(20_000);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    bind_storm(20_000);
    let loss = d.wait_record("a loss record", |r| kind(r) == "loss");
    assert!(loss["lost"].as_u64().unwrap() > 0);
    d.wait_record("a reconcile record", |r| kind(r) == "reconcile");
    assert!(d.metric("reaper_ringbuf_lost_events_total") > Some(0.0));
    // Whether its bind event was lost or not, after reconciling the ledger
    // knows the listener made during the storm.
    wait_for(
        "the ledger to know the listener",
        Duration::from_secs(10),
        || {
            let r = d.query(&format!(r#"{{"cmd":"who","port":{port}}}"#));
            (r["claims"][0]["pid"] == std::process::id()).then_some(())
        },
    );
    promtool_check(&d.scrape()).unwrap();
}

#[test]
fn on_journal_error_chooses_between_running_on_and_exiting() {
    need_root!();
    let dir = tempfile::tempdir().unwrap();
    // A journal whose directory is a regular file: it cannot be opened.
    let blocker = dir.path().join("not-a-dir");
    std::fs::write(&blocker, b"").unwrap();
    let journal = blocker.join("journal.jsonl");
    let config = dir.path().join("exit.toml");
    std::fs::write(
        &config,
        format!(
            "journal = \"{}\"\non_journal_error = \"exit\"\nmetrics_listen = \"\"\ncontrol_socket = \"\"\n",
            journal.display()
        ),
    )
    .unwrap();
    let out = Command::new(reaper_bin())
        .args(["daemon", "--config"])
        .arg(&config)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(5), "{err}");
    assert!(
        err.contains("not-a-dir") && err.contains("on_journal_error"),
        "{err}"
    );

    // keep-running: it starts, counts the error, and still answers.
    let mut d = Daemon::start("");
    d.stop(Duration::from_secs(2));
    let text = std::fs::read_to_string(&d.config).unwrap().replace(
        &format!("journal = \"{}\"", d.journal.display()),
        &format!("journal = \"{}\"", journal.display()),
    );
    std::fs::write(&d.config, text).unwrap();
    let d = d.restart();
    assert!(d.metric("reaper_journal_errors_total") >= Some(1.0));
    assert_eq!(d.query(r#"{"cmd":"ports"}"#)["ok"], true);
}

#[test]
fn report_without_journal_reads_the_running_daemons_journal() {
    need_root!();
    let d = Daemon::start("");
    d.wait_record("the start record", |r| kind(r) == "start");
    let out = std::process::Command::new(reaper_bin())
        .args(["report", "--format", "json"])
        .env("REAPER_CONTROL_SOCKET", &d.socket)
        .output()
        .unwrap();
    assert_eq!(
        out.status.code(),
        Some(0),
        "stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    let text = v.to_string();
    assert!(
        text.contains(&d.journal.display().to_string()),
        "the report names the daemon's journal as its input: {text:.400}"
    );
}

//! `reaper daemon` against the real kernel: a real daemon process, real
//! orphaned holders, real failed binds, the journal, /metrics (checked by
//! promtool), the control socket, signals. Needs root (the BPF hooks, the
//! pidfd reaping); without it each test fails and says so.

use std::process::Command;
use std::time::{Duration, Instant};

use reaper_tests::daemon::*;
use reaper_tests::fixture::Holder;
use reaper_tests::{reaper, try_binds};
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

fn kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or("")
}

#[test]
fn check_config_accepts_the_example_and_names_a_bad_key_and_line() {
    let example = concat!(env!("CARGO_MANIFEST_DIR"), "/../deploy/reaper.toml");
    let out = reaper()
        .args(["daemon", "--check-config", example])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");

    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(
        &bad,
        "journal = \"/tmp/j\"\nhooks = \"cgroup\"\n\nconflict_windw = \"5s\"\n",
    )
    .unwrap();
    let out = reaper()
        .args(["daemon", "--check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 4"), "names the line: {err}");
    assert!(err.contains("conflict_windw"), "names the key: {err}");
    assert!(
        err.contains("conflict_window"),
        "says what is allowed: {err}"
    );

    // A bad value inside a rule: the policy parser's message, the config's line.
    std::fs::write(&bad, "journal = \"/tmp/j\"\n[[rule]]\nname = \"x\"\naction = \"kill\"\nmatch = { name = \"x\" }\n").unwrap();
    let out = reaper()
        .args(["daemon", "--check-config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("line 4") && err.contains("kill"), "{err}");
}

#[test]
fn a_reap_rule_frees_the_port_of_an_orphan_once_per_burst() {
    need_root!();
    let port = free_port();
    let holder = Holder::orphan(port, "rp-reap", &[]);
    assert!(holder.alive());
    // The holder predates the daemon: the seed scan must find it.
    let d = Daemon::start(&holder.rule("stale test holder", Some("reap")));

    // The daemon saw the claim: ask its ledger.
    let (who, _) = d.wait_claim(
        "the daemon's ledger to know the holder",
        Duration::from_secs(10),
        port,
        Some("tcp"),
        |_| true,
    );
    assert_eq!(who["ok"], true);
    assert_eq!(who["tier"], "cgroup");
    let claim = &who["claims"][0];
    assert_eq!(claim["pid"], holder.pid());
    assert_eq!(claim["port"], port);
    assert!(claim["bound_at"].is_string());
    assert!(claim["ppid"].is_number(), "the binder's parent: {claim}");

    // `reaper who` asks the daemon when its socket answers.
    let out = reaper()
        .args(["who", &port.to_string()])
        .env("REAPER_CONTROL_SOCKET", &d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert_eq!(out.status.code(), Some(0), "{text}");
    assert!(
        text.contains("answered by the daemon's ledger (tier cgroup)"),
        "{text}"
    );
    assert!(text.contains(&holder.pid().to_string()), "{text}");

    // A burst of failed binds from another process.
    let (binder, failed) = try_binds(port, 5);
    assert!(failed >= 1, "the port was held, binds must fail");
    let conflict = d.wait_record("a conflict record", |r| {
        kind(r) == "conflict" && r["port"] == port
    });
    assert_eq!(conflict["tried"]["pid"], binder.pid());
    assert!(
        conflict["tried"]["cmdline"]
            .as_str()
            .unwrap_or("")
            .contains("binder tries"),
        "who tried is read from /proc at once: {conflict}"
    );
    assert!(conflict["tried"]["ppid"].is_number(), "{conflict}");
    assert_eq!(conflict["errno"], "EADDRINUSE");
    assert_eq!(conflict["holders"][0]["pid"], holder.pid(), "{conflict}");
    assert_eq!(conflict["action"], "reap", "{conflict}");
    assert_eq!(conflict["verdict"]["decision"], "reap");
    assert_eq!(conflict["verdict"]["rule"], "stale test holder");
    assert!(conflict["held_since"].is_string());

    let reaping = d.wait_record("a reaping record", |r| {
        kind(r) == "reaping" && r["port"] == port && r["outcome"] != "in_progress"
    });
    // Its intent came first, before any signal.
    let intent = d.wait_record("the reaping's intent", |r| {
        kind(r) == "reaping" && r["port"] == port && r["outcome"] == "in_progress"
    });
    assert_eq!(intent["target"]["pid"], holder.pid());
    assert!(intent["signals"].as_array().unwrap().is_empty());
    assert_eq!(reaping["target"]["pid"], holder.pid());
    assert_eq!(reaping["outcome"], "freed", "{reaping}");
    assert_eq!(reaping["signals"][0]["signal"], "SIGTERM");
    wait_for("the holder to be gone", Duration::from_secs(5), || {
        (!holder.alive()).then_some(())
    });
    wait_for("the port to bind again", Duration::from_secs(5), || {
        bindable(port).then_some(())
    });

    // The burst ends: one more record with the final count, still one reaping.
    let last = d.wait_record("the end-of-burst conflict record", |r| {
        kind(r) == "conflict" && r["port"] == port && r["count"].as_u64() >= Some(failed as u64)
    });
    assert_eq!(
        last["first"], conflict["first"],
        "the same conflict, updated"
    );
    let records = d.records();
    assert_eq!(
        records
            .iter()
            .filter(|r| kind(r) == "reaping" && r["outcome"] != "in_progress")
            .count(),
        1,
        "one reaping per holder"
    );
    // The next job binds the port: its claim is the port's next history,
    // and the daemon's own test bind before it is not journaled at all.
    let next = Holder::orphan(port, "rp-next", &[]);
    d.wait_record("the next job's claim", |r| {
        kind(r) == "claim" && r["port"] == port && r["process"]["pid"] == next.pid()
    });
    let own: Vec<Value> = d
        .records()
        .into_iter()
        .filter(|r| {
            matches!(kind(r), "claim" | "listen" | "release")
                && r["port"] == port
                && r["process"]["pid"] == d.pid()
        })
        .collect();
    assert!(
        own.is_empty(),
        "the daemon's probe journaled as the port's history: {own:?}"
    );
    drop(next);
    assert!(
        records
            .iter()
            .filter(|r| kind(r) == "conflict" && r["port"] == port)
            .count()
            <= 2
    );

    // The metrics moved, and promtool accepts them.
    let text = d.scrape();
    promtool_check(&text).unwrap_or_else(|e| panic!("promtool: {e}\n{text}"));
    assert_eq!(
        metric_in(&text, "reaper_reapings_total{outcome=\"freed\"}"),
        Some(1.0),
        "{text}"
    );
    assert!(metric_in(&text, "reaper_conflicts_total") >= Some(1.0));
    assert!(
        metric_in(&text, "reaper_bind_failures_total{errno=\"EADDRINUSE\"}") >= Some(failed as f64),
        "{text}"
    );
    assert!(metric_in(&text, "reaper_binds_total") >= Some(1.0));
    assert_eq!(metric_in(&text, "reaper_degraded"), Some(0.0));
    assert_eq!(metric_in(&text, "reaper_tier{tier=\"cgroup\"}"), Some(1.0));

    // The control socket lists the conflict.
    let c = d.query(r#"{"cmd":"conflicts","limit":10}"#);
    assert!(
        c["conflicts"]
            .as_array()
            .unwrap()
            .iter()
            .any(|r| r["port"] == port),
        "{c}"
    );
}

#[test]
fn a_report_rule_leaves_the_holder_alive() {
    need_root!();
    // No `action`: the daemon's default is to report. The holder starts
    // after the daemon: its claim comes from the BPF hooks.
    let rule = format!(
        "[[rule]]\nname = \"only tell\"\nmatch = {{ exe = \"{}\", comm = \"rp-report\", orphaned = true }}\n",
        reaper_tests::fixture_bin("platform-server").display()
    );
    let mut d = Daemon::start(&rule);
    let port = free_port();
    let holder = Holder::orphan(port, "rp-report", &[]);
    // (free_port's own probe bind is a claim on the port too: skip it.)
    let claim = d.wait_record("the holder's claim from the hooks", |r| {
        kind(r) == "claim" && r["port"] == port && r["process"]["pid"] == holder.pid()
    });
    assert_eq!(claim["source"], "cgroup");
    assert_eq!(claim["process"]["pid"], holder.pid());
    // The parent as /proc showed it when the daemon read it: the job's
    // shell exits at once, so it is usually init by then.
    assert!(claim["process"]["ppid"].is_number(), "{claim}");
    let (_binder, failed) = try_binds(port, 3);
    assert!(failed >= 1);
    let conflict = d.wait_record("a conflict record", |r| {
        kind(r) == "conflict" && r["port"] == port
    });
    assert_eq!(conflict["action"], "report", "{conflict}");
    assert_eq!(conflict["verdict"]["decision"], "keep");
    assert_eq!(conflict["verdict"]["rule"], "only tell");
    assert_eq!(conflict["holders"][0]["pid"], holder.pid());
    // Past the burst window (the final count is journaled), nothing was signalled.
    d.wait_record("the end-of-burst record", |r| {
        kind(r) == "conflict" && r["port"] == port && r["count"].as_u64() >= Some(failed as u64)
    });
    assert!(holder.alive(), "a report rule never signals");
    assert!(!bindable(port));
    assert_eq!(d.stop(Duration::from_secs(2)), Some(0));
    assert!(d.records().iter().all(|r| kind(r) != "reaping"));
}

#[test]
fn sighup_with_a_broken_config_keeps_running_and_a_good_one_applies() {
    need_root!();
    let d = Daemon::start("");
    std::fs::write(&d.config, "journal = \"/tmp/x\"\nhooks = \"kprobe\"\n").unwrap();
    d.signal(libc::SIGHUP);
    wait_for(
        "the log to say the new config was refused",
        Duration::from_secs(10),
        || {
            d.log_text()
                .contains("keeping the running config")
                .then_some(())
        },
    );
    assert!(
        d.log_text().contains("line 2"),
        "says where: {}",
        d.log_text()
    );
    assert_eq!(d.query(r#"{"cmd":"ports"}"#)["ok"], true, "still answers");

    d.write_config("[[rule]]\nname = \"later\"\nmatch = { name = \"nothing-like-this\" }\n");
    d.signal(libc::SIGHUP);
    wait_for("the reload to apply", Duration::from_secs(10), || {
        (d.metric("reaper_config_reloads_total") == Some(1.0)).then_some(())
    });
    assert!(
        d.log_text().contains("1 rules (0 reap, 1 report)"),
        "{}",
        d.log_text()
    );
}

#[test]
fn sigterm_stops_within_a_second_and_journals_stop() {
    need_root!();
    let mut d = Daemon::start("");
    // Least privilege once attached: no BPF, no PERFMON; KILL stays.
    let eff = reaper::caps::effective_of(&d.pid().to_string()).expect("the daemon's CapEff");
    assert_eq!(eff & (1 << 39), 0, "CAP_BPF dropped: {eff:x}");
    assert_eq!(eff & (1 << 38), 0, "CAP_PERFMON dropped: {eff:x}");
    assert_ne!(eff & (1 << 5), 0, "CAP_KILL kept: {eff:x}");
    let t = Instant::now();
    assert_eq!(
        d.stop(Duration::from_secs(1)),
        Some(0),
        "log:\n{}",
        d.log_text()
    );
    eprintln!("stopped in {:?}", t.elapsed());
    let records = d.records();
    assert_eq!(kind(records.first().unwrap()), "start");
    assert_eq!(kind(records.last().unwrap()), "stop");
    assert!(!d.socket.exists(), "the control socket is removed");
}

#[test]
fn kill9_leaves_a_readable_journal_and_the_restart_journals_a_gap() {
    need_root!();
    let mut d = Daemon::start("");
    // Some traffic, so the journal has claims in it.
    let port = free_port();
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    d.wait_record("the test's own claim", |r| {
        kind(r) == "claim" && r["port"] == port
    });
    drop(l);
    d.kill9();
    let (before, bad) = read_journal_counting(&d.journal);
    assert_eq!(bad, 0, "kill -9 between records damages no line");
    let last = before.last().unwrap().clone();
    assert_ne!(kind(&last), "stop");
    // A torn line, as if the crash hit mid-write: tolerated.
    std::fs::OpenOptions::new()
        .append(true)
        .open(&d.journal)
        .and_then(|mut f| std::io::Write::write_all(&mut f, b"{\"v\":1,\"ts\":\"2026-"))
        .unwrap();
    let d = d.restart();
    let gap = d.wait_record("a gap record", |r| kind(r) == "gap");
    assert_eq!(
        gap["after"], last["ts"],
        "the gap starts at the last record before the crash"
    );
    let (after, bad) = read_journal_counting(&d.journal);
    assert_eq!(bad, 1, "the torn line stays one bad line, skipped");
    let i = after.iter().position(|r| kind(r) == "gap").unwrap();
    assert_eq!(kind(&after[i + 1]), "start", "gap, then the new start");
}

#[test]
fn non_root_peers_are_refused() {
    need_root!();
    let d = Daemon::start("");
    let client = r#"
import socket, sys
c = socket.socket(socket.AF_UNIX)
try:
    c.connect(sys.argv[1])
except OSError as e:
    print("connect-errno", e.errno); sys.exit(0)
c.sendall(b'{"cmd":"ports"}\n')
print(c.makefile().readline().strip())
"#;
    // uid 65534, forked and setuid'd by Command: the socket's mode stops it.
    use std::os::unix::process::CommandExt;
    let out = Command::new("python3")
        .args(["-c", client])
        .arg(&d.socket)
        .uid(65534)
        .gid(65534)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("connect-errno {}", libc::EACCES)),
        "{text} {out:?}"
    );

    // uid 65534 that can get past file modes (CAP_DAC_OVERRIDE): SO_PEERCRED
    // still says 65534, and the daemon refuses it.
    let out = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "--inh-caps",
            "+dac_override",
            "--ambient-caps",
            "+dac_override",
            "python3",
            "-c",
            client,
        ])
        .arg(&d.socket)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    let reply: Value =
        serde_json::from_str(text.trim()).unwrap_or_else(|_| panic!("{text} {out:?}"));
    assert_eq!(reply["ok"], false);
    assert!(reply["error"].as_str().unwrap().contains("root"), "{reply}");
    assert!(
        reply["claims"].as_array().is_none_or(|c| c.is_empty()),
        "nothing leaks: {reply}"
    );
    // And root still gets answers.
    assert_eq!(d.query(r#"{"cmd":"ports"}"#)["ok"], true);
}

#[test]
fn degraded_mode_says_so_and_polls() {
    need_root!();
    let d = Daemon::start("hooks = \"none\"\npoll_interval = \"200ms\"\n");
    let records = d.records();
    let start = records.iter().find(|r| kind(r) == "start").unwrap();
    assert_eq!(start["tier"], "proc");
    let mode = records
        .iter()
        .find(|r| kind(r) == "mode")
        .expect("a mode record");
    assert_eq!(mode["mode"], "degraded");
    assert!(mode["reason"].as_str().unwrap().contains("hooks"));
    let text = d.scrape();
    assert_eq!(metric_in(&text, "reaper_degraded"), Some(1.0));
    assert_eq!(metric_in(&text, "reaper_tier{tier=\"proc\"}"), Some(1.0));
    promtool_check(&text).unwrap();

    let port = free_port();
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let claim = d.wait_record("the poll to see a new listener", |r| {
        kind(r) == "claim" && r["port"] == port
    });
    assert_eq!(claim["source"], "proc");
    assert_eq!(claim["process"]["pid"], std::process::id());
    drop(l);
    d.wait_record("the poll to see it released", |r| {
        kind(r) == "release" && r["port"] == port
    });
    assert!(
        d.records().iter().all(|r| r["source"] == "proc"),
        "every record says proc"
    );
}

/// socket + bind(127.0.0.1:0) + close, as fast as this thread can.
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
    let out = reaper()
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
    let out = reaper()
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

/// Other tests on the host may storm binds: 64 MiB of ring buffer keeps
/// this test's failed binds from being lost, and no rotation keeps its
/// records in one file (top-level keys: before any rule).
const BIG_RINGBUF: &str = "ringbuf_size = 67108864\njournal_max_bytes = 0\n";

/// Failed binds on `port` until the daemon journals a conflict for it: a
/// failed bind's event can be dropped when other tests storm binds on the
/// host (the daemon then journals a loss), so the binder tries again.
/// Returns the conflict and the binders (alive: the daemon reads them).
fn conflict_after_binds(d: &Daemon, port: u16) -> (Value, Vec<reaper_tests::Spawned>) {
    let mut binders = Vec::new();
    for _ in 0..6 {
        let (b, failed) = try_binds(port, 3);
        assert!(failed >= 1, "the port was held, binds must fail");
        binders.push(b);
        let found = reaper_tests::poll_for(Duration::from_secs(10), || {
            d.records()
                .into_iter()
                .find(|r| kind(r) == "conflict" && r["port"] == port)
        });
        if let Some(c) = found {
            return (c, binders);
        }
    }
    panic!(
        "no conflict record for port {port} after 6 rounds of failed binds; the daemon's log:\n{}",
        d.log_text()
    );
}

/// The reaping records of one port, in journal order.
fn reapings(d: &Daemon, port: u16) -> Vec<Value> {
    d.records()
        .into_iter()
        .filter(|r| kind(r) == "reaping" && r["port"] == port)
        .collect()
}

#[test]
fn a_child_of_another_program_sharing_the_socket_stops_the_reaping_unless_the_rule_says_tree() {
    need_root!();
    let port = free_port();
    // An orphaned platform-server whose child became another program
    // (sleep) and kept the listening socket.
    let holder = Holder::orphan(
        port,
        "rp-tree",
        &["--fork-child", "--child-exec", "/bin/sleep"],
    );
    let child = holder.fork_child.as_ref().expect("the sharing child");
    let rule = format!(
        "{BIG_RINGBUF}{}",
        holder.rule("stale tree holder", Some("reap"))
    );

    // 1. No tree key: the child keeps the port, so nothing is signalled.
    let d = Daemon::start(&rule);
    let (conflict, _binders) = conflict_after_binds(&d, port);
    assert_eq!(conflict["action"], "report", "{conflict}");
    let verdicts = conflict["verdicts"]
        .as_array()
        .expect("every holder's verdict");
    assert_eq!(verdicts.len(), 2, "{conflict}");
    assert_eq!(verdicts[0]["pid"], holder.pid());
    assert_eq!(verdicts[0]["decision"], "reap");
    assert_eq!(verdicts[1]["pid"], child.pid);
    assert_eq!(verdicts[1]["shares"], holder.pid());
    assert_eq!(verdicts[1]["decision"], "keep");
    assert!(
        verdicts[1]["reasons"][0]
            .as_str()
            .unwrap()
            .contains("set tree = true in rule 'stale tree holder'"),
        "{conflict}"
    );
    // The verdict that decided is the child's.
    assert_eq!(conflict["verdict"]["decision"], "keep", "{conflict}");
    // A reaping's intent is written in the same batch as its conflict: none.
    assert!(reapings(&d, port).is_empty(), "{:?}", reapings(&d, port));
    assert!(holder.alive() && child.alive());
    assert!(!bindable(port));
    drop(d);

    // 2. tree = true in the rule: both stopped (the root first), port free.
    let d = Daemon::start(&rule.replace("match = ", "tree = true\nmatch = "));
    let (conflict, _binders) = conflict_after_binds(&d, port);
    assert_eq!(conflict["action"], "reap", "{conflict}");
    assert_eq!(conflict["verdicts"][1]["decision"], "reap", "{conflict}");
    let done = wait_for(
        "both outcomes on the record",
        Duration::from_secs(20),
        || {
            let r = reapings(&d, port);
            (r.iter().filter(|r| r["outcome"] != "in_progress").count() == 2).then_some(r)
        },
    );
    // Intents first (before any signal), then the outcomes.
    assert_eq!(done[0]["outcome"], "in_progress");
    assert_eq!(done[1]["outcome"], "in_progress");
    assert_eq!(done[2]["target"]["pid"], holder.pid());
    assert_eq!(done[3]["target"]["pid"], child.pid);
    for r in &done[2..] {
        assert_eq!(r["outcome"], "freed", "{r}");
        assert_eq!(r["signals"][0]["signal"], "SIGTERM", "{r}");
    }
    assert!(child.wait_exit(5000));
    wait_for("the holder to be gone", Duration::from_secs(5), || {
        (!holder.alive()).then_some(())
    });
    assert!(bindable(port));
}

#[test]
fn a_stop_during_the_grace_leaves_the_signal_on_the_record_and_report_says_unfinished() {
    need_root!();
    let port = free_port();
    let holder = Holder::orphan(port, "rp-grace", &["--ignore-term"]);
    let mut d = Daemon::start_with_grace(
        &format!("{BIG_RINGBUF}{}", holder.rule("stale holder", Some("reap"))),
        "60s",
        "120s",
    );
    let (_conflict, _binders) = conflict_after_binds(&d, port);
    d.wait_record("the reaping's intent", |r| {
        kind(r) == "reaping" && r["port"] == port && r["outcome"] == "in_progress"
    });
    // The holder ignores SIGTERM and the grace is a minute: stop the daemon
    // in the middle. It waits a bounded while, then records what it did.
    // Bounded well under the grace (the daemon waits at most 5 s; draining
    // a ring buffer under other tests' bind storms takes a few more).
    assert_eq!(d.stop(Duration::from_secs(45)), Some(0));
    let records = d.records();
    let r: Vec<&Value> = records
        .iter()
        .filter(|r| kind(r) == "reaping" && r["port"] == port)
        .collect();
    assert_eq!(r.len(), 2, "{r:?}");
    assert_eq!(r[1]["outcome"], "interrupted", "{}", r[1]);
    assert_eq!(r[1]["target"]["pid"], holder.pid());
    assert_eq!(r[1]["signals"][0]["signal"], "SIGTERM", "{}", r[1]);
    assert_eq!(kind(records.last().unwrap()), "stop");
    assert!(holder.alive(), "no SIGKILL after the daemon stopped");

    // `reaper report` shows it unfinished, in JSON and for people.
    let out = reaper()
        .args(["report", "--format", "json", "--journal"])
        .arg(&d.journal)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{out:?}");
    let doc: Value = serde_json::from_slice(&out.stdout).unwrap();
    let u = &doc["summary"]["unfinished"];
    assert_eq!(u[0]["outcome"], "interrupted", "{doc}");
    assert_eq!(u[0]["target"]["pid"], holder.pid());
    let out = reaper()
        .args(["report", "--journal"])
        .arg(&d.journal)
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("Unfinished reapings"), "{text}");
    assert!(
        text.contains(&format!("pid {} (rp-grace)", holder.pid()))
            && text.contains("interrupted by a daemon stop"),
        "{text}"
    );
}

#[test]
fn reserve_ports_are_added_to_the_kernel_reserved_ports_at_start_and_journaled() {
    if !is_root() {
        panic!("this test needs root (the daemon writes net.ipv4.ip_local_reserved_ports)");
    }
    const PATH: &str = "/proc/sys/net/ipv4/ip_local_reserved_ports";
    let before = std::fs::read_to_string(PATH).unwrap();
    let mut d = Daemon::start("reserve_ports = [\"47391\", \"47400-47402\"]\n");
    let start = d.wait_record("the start record", |r| kind(r) == "start");
    let now = std::fs::read_to_string(PATH).unwrap();
    // Put the host back before asserting anything.
    d.stop(Duration::from_secs(10));
    std::fs::write(PATH, before.trim()).unwrap();
    let words = start["reserved_ports"].as_str().unwrap_or_default();
    for want in ["47391", "47400-47402"] {
        assert!(
            now.contains(want),
            "{want} not in ip_local_reserved_ports: {now}"
        );
        assert!(words.contains(want), "{want} not journaled: {start}");
    }
    // Merged with what was there, not replacing it.
    for kept in before.trim().split(',').filter(|w| !w.is_empty()) {
        assert!(now.contains(kept), "{kept} was dropped: {now}");
    }
}

/// A client: a listener on another port, and a socket bound to PORT and
/// connected to it (no listener on PORT: a client's connection, as when
/// connect() is given the port). Prints `ready`, exits on EOF.
const CLIENT: &str = r#"
import socket, sys
port = int(sys.argv[1])
l = socket.socket(); l.bind(("127.0.0.1", 0)); l.listen()
c = socket.socket(); c.bind(("127.0.0.1", port)); c.connect(l.getsockname())
print("ready", flush=True)
sys.stdin.read()
"#;

#[test]
fn a_conflict_with_a_client_connection_says_so_in_the_record() {
    need_root!();
    use std::io::BufRead;
    let port = free_port();
    let d = Daemon::start("");
    let mut client = Command::new("python3")
        .args(["-c", CLIENT, &port.to_string()])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("python3 for the client");
    let mut line = String::new();
    std::io::BufReader::new(client.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let (_binder, failed) = try_binds(port, 1);
    assert_eq!(failed, 1, "a client's connection blocks a plain bind");
    let conflict = d.wait_record("the conflict record", |r| {
        kind(r) == "conflict" && r["port"] == port
    });
    let _ = client.kill();
    let _ = client.wait();
    let reasons = conflict["verdict"]["reasons"].to_string();
    assert!(reasons.contains("a client's connection"), "{conflict}");
    assert!(
        reasons.contains("net.ipv4.ip_local_reserved_ports"),
        "{conflict}"
    );
    assert!(
        reasons.contains(&format!("pid {}", client.id())),
        "{conflict}"
    );
    assert_eq!(
        conflict["action"], "report",
        "a client is never reaped: {conflict}"
    );
}

/// `reaper who` answered by the daemon shows the holder as a scan does: the
/// daemon reads the holder's details when it answers and sends them, so the
/// client reads no /proc of its own. The kernel (`ss -p`) says who holds it.
#[test]
fn who_through_the_daemon_shows_the_holder_as_a_scan_does() {
    need_root!();
    let port = reaper_tests::free_port();
    let holder = Holder::orphan(port, "rp-who-same", &[]);
    let d = Daemon::start("");
    let (answer, _) = d.wait_claim(
        "the daemon's ledger to know the holder",
        Duration::from_secs(10),
        port,
        Some("tcp"),
        |_| true,
    );
    // The control socket sends the holder's details with the claim.
    assert_eq!(answer["processes"][0]["pid"], holder.pid(), "{answer}");

    // The kernel's word: ss names the holder's pid on the port.
    let ss = Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()
        .expect("ss (iproute2)");
    let ss = String::from_utf8_lossy(&ss.stdout);
    assert!(ss.contains(&format!("pid={},", holder.pid())), "{ss}");

    let who = |through_daemon: bool, json: bool| -> String {
        let mut c = reaper();
        c.args(["who", &port.to_string(), "--proto", "tcp"]);
        if json {
            c.arg("--json");
        }
        if through_daemon {
            c.env("REAPER_CONTROL_SOCKET", &d.socket);
        } else {
            c.arg("--no-bpf");
        }
        let out = c.output().unwrap();
        assert_eq!(out.status.code(), Some(0), "{out:?}");
        String::from_utf8(out.stdout).unwrap()
    };
    let via: Value = serde_json::from_str(&who(true, true)).unwrap();
    let scan: Value = serde_json::from_str(&who(false, true)).unwrap();
    assert_eq!(via["source"], "daemon");
    assert_eq!(scan["source"], "proc");
    let holders = |v: &Value| -> Vec<Value> {
        v["holdings"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|h| h["processes"].as_array().unwrap().clone())
            .map(|mut p| {
                // From two clocks read at each read: within a millisecond.
                let ms = chrono_ms(p["started_at"].as_str().unwrap());
                p["started_at"] = Value::Null;
                serde_json::json!({ "p": p, "ms": ms })
            })
            .collect()
    };
    let (a, b) = (holders(&via), holders(&scan));
    assert_eq!(a.len(), 1, "{via}");
    assert_eq!(a[0]["p"], b[0]["p"], "daemon {via}\nscan {scan}");
    assert!((a[0]["ms"].as_i64().unwrap() - b[0]["ms"].as_i64().unwrap()).abs() <= 1);
    assert_eq!(a[0]["p"]["pid"], holder.pid());
    assert_eq!(a[0]["p"]["comm"], "rp-who-same");

    // And as people read it: the holder's lines are the same, but for the
    // age, which moves, and what only a scan says (its guess of the hold).
    let lines = |text: &str| -> Vec<String> {
        text.lines()
            .skip_while(|l| !l.starts_with("  pid "))
            .take_while(|l| l.starts_with("    ") || l.starts_with("  pid "))
            .filter(|l| !l.starts_with("    started ") && !l.starts_with("    holding "))
            .map(str::to_string)
            .collect()
    };
    let (text_via, text_scan) = (who(true, false), who(false, false));
    assert!(
        text_via.contains("answered by the daemon's ledger"),
        "{text_via}"
    );
    assert!(lines(&text_via).len() >= 5, "{text_via}");
    assert_eq!(
        lines(&text_via),
        lines(&text_scan),
        "{text_via}\n{text_scan}"
    );
}

/// Milliseconds since the epoch of an RFC 3339 time.
fn chrono_ms(t: &str) -> i64 {
    chrono::DateTime::parse_from_rfc3339(t)
        .unwrap_or_else(|e| panic!("{t:?}: {e}"))
        .timestamp_millis()
}

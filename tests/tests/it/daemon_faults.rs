//! The daemon under faults: BPF refused at start, kill -9 at random moments
//! while it writes, and least privilege checked on the running process.
//! The daemon's own tests (daemon.rs) cover the control socket refusing
//! non-root peers, hooks = "none", and one kill -9 between records; these
//! add what they do not. Root; `cargo build` first.

use std::path::Path;
use std::time::{Duration, Instant};

use reaper_tests::daemon::*;
use reaper_tests::{reaper, require_root};
use serde_json::Value;

fn kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or("")
}

fn status_field(pid: &str, task: &str, field: &str) -> u64 {
    let sets = reaper::caps::sets_of(&format!("{pid}/task/{task}"))
        .unwrap_or_else(|| panic!("no /proc/{pid}/task/{task}/status"));
    match field {
        "CapEff:" => Some(sets.effective),
        "CapPrm:" => Some(sets.permitted),
        "CapInh:" => Some(sets.inheritable),
        "CapBnd:" => sets.bounding,
        "CapAmb:" => sets.ambient,
        _ => None,
    }
    .unwrap_or_else(|| panic!("no {field} in /proc/{pid}/task/{task}/status"))
}

/// Once attached, every thread of the daemon has exactly
/// `caps::DAEMON_KEEPS` effective, permitted and in its bounding set, and
/// nothing inheritable or ambient: no CAP_BPF to load more programs, no
/// CAP_DAC_OVERRIDE, no CAP_SETUID.
#[test]
fn the_running_daemon_keeps_exactly_daemon_keeps_in_every_thread() {
    require_root();
    let d = Daemon::start("");
    let want = reaper::caps::mask_of(reaper::caps::DAEMON_KEEPS);
    let pid = d.pid().to_string();
    let tasks: Vec<String> = std::fs::read_dir(format!("/proc/{pid}/task"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
        .collect();
    assert!(tasks.len() > 1, "the daemon runs threads: {tasks:?}");
    for t in &tasks {
        for field in ["CapEff:", "CapPrm:", "CapBnd:"] {
            let got = status_field(&pid, t, field);
            assert_eq!(
                got, want,
                "task {t} {field} {got:#x}, want exactly DAEMON_KEEPS {want:#x}"
            );
        }
        assert_eq!(status_field(&pid, t, "CapInh:"), 0, "task {t}");
        assert_eq!(status_field(&pid, t, "CapAmb:"), 0, "task {t}");
    }
    // And it still does its job with what it kept.
    assert_eq!(d.query(r#"{"cmd":"ports"}"#)["ok"], true);
}

/// Asserts the daemon fell back to the scan, said why, and keeps serving:
/// a `mode: degraded` record naming the refusal, metrics saying degraded,
/// a listener seen by polling, answers on the control socket.
fn falls_back_and_serves(d: &Daemon, why: &str) {
    let mode = d.wait_record("a mode record", |r| kind(r) == "mode");
    assert_eq!(mode["mode"], "degraded", "{mode}");
    let reason = mode["reason"].as_str().unwrap();
    assert!(
        reason.contains("the hooks could not be attached") && reason.contains(why),
        "{reason}"
    );
    assert!(
        d.log_text().contains("degraded mode"),
        "the log says so:\n{}",
        d.log_text()
    );
    assert_eq!(d.metric("reaper_degraded"), Some(1.0));
    let port = free_port();
    let l = std::net::TcpListener::bind(("127.0.0.1", port)).unwrap();
    let claim = d.wait_record("the poll to see a listener", |r| {
        kind(r) == "claim" && r["port"] == port
    });
    assert_eq!(claim["source"], "proc");
    drop(l);
    let answer = d.query(r#"{"cmd":"ports"}"#);
    assert_eq!(answer["ok"], true, "{answer}");
}

/// `hooks = "fexit"`: this kernel (lockdown) refuses fexit programs with
/// EPERM (docs: platform notes). The daemon must not die of it.
#[test]
fn a_refused_hook_tier_falls_back_to_the_scan_and_keeps_serving() {
    require_root();
    let d = Daemon::start("hooks = \"fexit\"\npoll_interval = \"200ms\"\n");
    falls_back_and_serves(&d, "fexit");
}

/// Forced, so it holds on kernels that allow every tier: the daemon starts
/// as root without CAP_BPF, CAP_PERFMON and CAP_SYS_ADMIN in its bounding
/// set (as a hardened unit or a container might), so every BPF load fails.
#[test]
fn bpf_refused_for_lack_of_capabilities_falls_back_to_the_scan() {
    require_root();
    // A daemon the helper configured, then restarted under setpriv.
    let d = Daemon::start("poll_interval = \"200ms\"\n").restart_setpriv(&[
        "--bounding-set",
        "-bpf,-perfmon,-sys_admin",
        "--inh-caps",
        "-all",
    ]);
    falls_back_and_serves(&d, "");
    let eff = status_field(&d.pid().to_string(), &d.pid().to_string(), "CapEff:");
    assert_eq!(eff & (1 << 39), 0, "it really ran without CAP_BPF");
}

/// A tiny deterministic generator for the kill moments (the seed is
/// printed, so a failure can be replayed with REAPER_KILL_SEED).
struct XorShift(u64);

impl XorShift {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

/// Damage in a journal: complete lines that do not parse, and whether the
/// last line is unterminated.
fn damage(path: &Path) -> (Vec<Value>, usize, bool) {
    let bytes = std::fs::read(path).unwrap();
    let torn_tail = !bytes.is_empty() && !bytes.ends_with(b"\n");
    let (records, bad) = read_journal_counting(path);
    (records, bad, torn_tail)
}

/// Whether the journal has rotated (a `journal.jsonl.1` exists).
fn rotated(journal: &Path) -> bool {
    let mut first = journal.as_os_str().to_owned();
    first.push(".1");
    Path::new(&first).exists()
}

/// kill -9 at random moments while the daemon writes claim and release
/// records as fast as a bind loop makes them; after each crash the journal
/// reads (complete lines all parse; at most the unterminated tail is lost),
/// and the restart journals a gap from the last record before the crash.
#[test]
fn kill9_at_random_moments_while_writing_keeps_the_journal_readable() {
    require_root();
    let seed = std::env::var("REAPER_KILL_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap()
                .as_nanos() as u64
                | 1
        });
    eprintln!("kill moments from REAPER_KILL_SEED={seed}");
    let mut rng = XorShift(seed);
    // Large enough that the test's records never rotate a file away.
    let mut d = Daemon::start("journal_max_bytes = 1073741824\n");
    // Paced, not flat out: records keep flowing (about a thousand a
    // second) while the journal stays small enough never to rotate during
    // the test, so every gap stays on disk.
    let _churn = Churn::start(Duration::from_millis(1));
    let mut crashes = 0;
    let mut torn_tails = 0;
    for round in 0..5 {
        // Records are flowing: the journal grows.
        let size = || std::fs::metadata(&d.journal).map(|m| m.len()).unwrap_or(0);
        let before = size();
        wait_for("records to flow", Duration::from_secs(20), || {
            (size() > before + 4096).then_some(())
        });
        let t = Instant::now();
        // The moment: a random point in the next 0-250 ms of writing.
        let at = Instant::now() + Duration::from_micros(rng.next() % 250_000);
        while Instant::now() < at {
            std::hint::spin_loop();
        }
        d.kill9();
        crashes += 1;
        let (records, bad, torn) = damage(&d.journal);
        assert_eq!(
            bad, 0,
            "round {round} (seed {seed}): a complete line was damaged"
        );
        torn_tails += torn as u32;
        let last_ts = records.last().unwrap()["ts"].clone();
        assert_ne!(
            kind(records.last().unwrap()),
            "stop",
            "kill -9 writes no stop"
        );
        d = d.restart();
        let gap = d.wait_record("the gap record", |r| {
            kind(r) == "gap" && r["after"] == last_ts
        });
        assert!(gap["ts"].as_str().is_some());
        // The reader used by `reaper report` agrees: only the torn tail (if
        // any) is damage, and every record it reads parses.
        let out = reaper()
            .args(["report", "--format", "json", "--journal"])
            .arg(&d.journal)
            .output()
            .unwrap();
        assert_eq!(
            out.status.code(),
            Some(0),
            "report: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        let rep: Value = serde_json::from_slice(&out.stdout).unwrap();
        let dq = &rep["data_quality"];
        assert_eq!(dq["garbage_lines"], 0, "{dq}");
        assert!(
            dq["torn_lines"].as_u64().unwrap() <= torn_tails as u64,
            "{dq}"
        );
        // Every crash left a gap record. Rotation drops the oldest files
        // on a host whose other binds fill the journal fast; without it the
        // reader must count every gap, with it at least this round's.
        let gaps = dq["gaps_total"].as_u64().unwrap();
        assert!(gaps >= 1 && gaps <= crashes as u64, "{dq}");
        if !rotated(&d.journal) {
            assert_eq!(gaps, crashes as u64, "{dq}");
        }
        eprintln!(
            "round {round}: {} records, torn tail {torn}, checked in {:?}",
            records.len(),
            t.elapsed()
        );
    }
    eprintln!("{crashes} crashes, {torn_tails} left a torn tail");
}

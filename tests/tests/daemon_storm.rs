//! The daemon under a bind storm that overflows a deliberately small ring
//! buffer: the losses are journaled and counted, and the ledger is repaired
//! from the kernel-side claims map (no /proc scan), so a claim made during
//! the loss window is still answered with its pid and bind time. And a full
//! kernel-side claims map is reported, not silent. In its own test binary so
//! the storm cannot starve the daemons of the other tests (cargo runs test
//! binaries one at a time).

use std::net::UdpSocket;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use reaper_tests::daemon::*;
use serde_json::Value;

/// One test at a time: every daemon's hooks see every bind on the host, so
/// one test's storm would overflow the other's ring buffer.
static ONE_AT_A_TIME: std::sync::Mutex<()> = std::sync::Mutex::new(());

fn kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or("")
}

/// A port free now (the kernel's pick, released at once).
fn free_udp_port() -> u16 {
    UdpSocket::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Binds `port` (a fixed port, so every bind is sent, not summarised) and
/// closes, `n` times or until `stop`.
fn bind_storm(port: u16, n: u32, stop: &AtomicBool) {
    for _ in 0..n {
        if stop.load(Ordering::Relaxed) {
            return;
        }
        // SAFETY: plain syscalls on an fd this loop owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let mut a: libc::sockaddr_in = std::mem::zeroed();
            a.sin_family = libc::AF_INET as u16;
            a.sin_port = port.to_be();
            a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            libc::bind(
                fd,
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            libc::close(fd);
        }
    }
}

/// UDP sockets bound to fixed ports, held.
fn hold_fixed(n: usize) -> Vec<(UdpSocket, chrono::DateTime<chrono::Utc>)> {
    let mut held = Vec::new();
    while held.len() < n {
        let port = free_udp_port();
        let at = chrono::Utc::now();
        if let Ok(s) = UdpSocket::bind(("127.0.0.1", port)) {
            held.push((s, at));
        }
    }
    held
}

#[test]
fn claims_made_in_a_loss_window_are_answered_from_the_kernel_map_without_a_scan() {
    assert!(
        is_root(),
        "this test needs root: run `cargo xtask test` as root"
    );
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // The smallest ring buffer: a storm of fixed-port binds must overflow it.
    let d = Daemon::start("ringbuf_size = 4096\n");
    // Two storms on two ports: the same port from two threads would make
    // conflicts, whose targeted scans are not what this test is about.
    let (storm_port, own_port) = (free_udp_port(), free_udp_port());
    let stop = Arc::new(AtomicBool::new(false));
    let storm = {
        let stop = stop.clone();
        std::thread::spawn(move || bind_storm(storm_port, 200_000, &stop))
    };
    // Claims made while the storm runs: some of their events are lost.
    let mut held = Vec::new();
    for _ in 0..20 {
        held.extend(hold_fixed(2));
        bind_storm(own_port, 500, &AtomicBool::new(false));
    }
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let lport = listener.local_addr().unwrap().port();
    bind_storm(own_port, 5_000, &AtomicBool::new(false));
    stop.store(true, Ordering::Relaxed);
    storm.join().unwrap();

    let loss = d.wait_record("a loss record", |r| kind(r) == "loss");
    assert!(loss["lost"].as_u64().unwrap() > 0);
    d.wait_record("a reconcile record", |r| kind(r) == "reconcile");
    assert!(d.metric("reaper_ringbuf_lost_events_total") > Some(0.0));
    // Every claim is answered with its pid and bind time, whether its event
    // was lost or not.
    let me = std::process::id();
    for (s, at) in &held {
        let port = s.local_addr().unwrap().port();
        let (_, c) = d.wait_claim(
            &format!("the daemon to know the claim on udp/{port}"),
            Duration::from_secs(10),
            port,
            Some("udp"),
            |c| c["pid"] == me,
        );
        let bound: chrono::DateTime<chrono::Utc> = c["bound_at"].as_str().unwrap().parse().unwrap();
        let off = (bound - *at).num_milliseconds().abs();
        assert!(
            off < 1_000,
            "bound_at {bound} is {off} ms from the bind at {at}: {c}"
        );
    }
    wait_for(
        "the daemon to know the listener",
        Duration::from_secs(10),
        || {
            let r = d.query(&format!(r#"{{"cmd":"who","port":{lport}}}"#));
            (r["claims"][0]["pid"] == me).then_some(())
        },
    );
    let claims_journaled = d
        .records()
        .iter()
        .filter(|r| kind(r) == "claim" && r["process"]["pid"] == me && r["proto"] == "udp")
        .count();
    eprintln!(
        "{} of {} held claims were journaled from their events; the rest came from the kernel map",
        claims_journaled,
        held.len()
    );
    // No /proc scan repaired the ledger: the only scan is the start's seed.
    let scrape = d.scrape();
    assert!(
        !scrape.contains("kind=\"reconcile\""),
        "a reconcile scan ran:\n{scrape}"
    );
    assert!(metric_in(&scrape, "reaper_ledger_repairs_total") > Some(0.0));
    promtool_check(&scrape).unwrap();
}

#[test]
fn a_full_kernel_side_claims_map_is_journaled_and_counted() {
    assert!(
        is_root(),
        "this test needs root: run `cargo xtask test` as root"
    );
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // Every release journaled on its own line (no churn summary).
    let d = Daemon::start("claims_max = 16\njournal_churn_window = \"0s\"\n");
    assert_eq!(d.metric("reaper_claims_map_capacity"), Some(16.0));
    let held = hold_fixed(40);
    let full = d.wait_record("a claims_full record", |r| kind(r) == "claims_full");
    assert_eq!(full["capacity"], 16, "{full}");
    assert!(full["unstored"].as_u64().unwrap() > 0, "{full}");
    wait_for(
        "the unstored-claims counter",
        Duration::from_secs(10),
        || (d.metric("reaper_claims_unstored_total") > Some(0.0)).then_some(()),
    );
    // The claims the map had no room for are still known from their events.
    let port = held.last().unwrap().0.local_addr().unwrap().port();
    d.wait_claim(
        "the daemon to know the last claim",
        Duration::from_secs(10),
        port,
        Some("udp"),
        |c| c["pid"] == std::process::id(),
    );
    // And their releases: at least 24 of the 40 claims are remembered only in
    // socket storage (which the programs skip until some socket has any),
    // and the release hook must find them there.
    let ports: Vec<u16> = held
        .iter()
        .map(|(s, _)| s.local_addr().unwrap().port())
        .collect();
    drop(held);
    for port in ports {
        d.wait_record("the release of every held claim", |r| {
            kind(r) == "release" && r["port"] == port
        });
    }
    promtool_check(&d.scrape()).unwrap();
}

/// Binds each of `ports` in turn (TCP, 127.0.0.1) and closes, `n` binds in
/// all; returns the binds that succeeded, per port.
fn fixed_port_storm(ports: &[u16], n: u32) -> std::collections::HashMap<u16, u64> {
    let mut ok = std::collections::HashMap::new();
    for i in 0..n {
        let port = ports[i as usize % ports.len()];
        // SAFETY: plain syscalls on an fd this loop owns.
        let bound = unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let mut a: libc::sockaddr_in = std::mem::zeroed();
            a.sin_family = libc::AF_INET as u16;
            a.sin_port = port.to_be();
            a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            let r = libc::bind(
                fd,
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            libc::close(fd);
            r == 0
        };
        if bound {
            *ok.entry(port).or_default() += 1;
        }
    }
    ok
}

#[test]
fn a_fixed_port_storm_is_journaled_as_churn_summaries_that_count_every_bind() {
    assert!(
        is_root(),
        "this test needs root: run `cargo xtask test` as root"
    );
    let _one = ONE_AT_A_TIME.lock().unwrap_or_else(|e| e.into_inner());
    // A ring large enough that no event is lost: the counts must be exact.
    let mut d = Daemon::start("ringbuf_size = 67108864\n");
    // Picked with UDP binds to port 0 (summarised kernel-side, so they add
    // no records of their own); a TCP bind that fails is just not counted.
    let ports: Vec<u16> = (0..8).map(|_| free_udp_port()).collect();
    let n = 40_000;
    let bound = fixed_port_storm(&ports, n);
    // A claim that lasts keeps its own records, storm or not.
    let kept = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let kept_port = kept.local_addr().unwrap().port();
    let kept_claim = d.wait_record("the lasting listener's claim", |r| {
        kind(r) == "claim" && r["port"] == kept_port
    });
    let lost = d.metric("reaper_ringbuf_lost_events_total");
    let failures: Vec<String> = d
        .scrape()
        .lines()
        .filter(|l| l.starts_with("reaper_bind_failures_total"))
        .map(str::to_string)
        .collect();
    assert_eq!(d.stop(Duration::from_secs(20)), Some(0));
    assert_eq!(
        lost,
        Some(0.0),
        "events were lost: the counts cannot be exact"
    );
    let size = std::fs::metadata(&d.journal).unwrap().len();
    let records = read_journal(&d.journal);
    let me = std::process::id();
    let mut whole = 0;
    for &port in &ports {
        let mine = |r: &&Value| r["port"] == port && r["process"]["pid"] == me;
        // A claim a failed bind collided with (another process may hold the
        // port now and then: it is a free port of the host) keeps its record.
        let claims = records
            .iter()
            .filter(|r| kind(r) == "claim")
            .filter(mine)
            .count() as u64;
        let counted: u64 = records
            .iter()
            .filter(|r| kind(r) == "churn")
            .filter(mine)
            .map(|r| r["count"].as_u64().unwrap())
            .sum();
        let on_port: Vec<&Value> = records
            .iter()
            .filter(|r| r["port"] == port && kind(r) != "churn")
            .collect();
        assert_eq!(
            counted + claims,
            bound[&port],
            "port {port}: every successful bind is in a churn record or a claim of its own; \
             the port's other records: {on_port:?}; {failures:?}"
        );
        whole += claims;
    }
    assert!(
        whole <= 40,
        "{whole} claims of the storm were journaled whole; {failures:?}"
    );
    let total: u64 = bound.values().sum();
    assert!(
        total > u64::from(n) / 2,
        "only {total} of {n} binds succeeded"
    );
    let per_bind = size as f64 / total as f64;
    eprintln!("journal: {size} bytes for {total} binds ({per_bind:.2} bytes per bind)");
    assert!(
        per_bind <= 5.0,
        "the journal grew by {per_bind:.1} bytes per bind ({size} bytes, {total} binds)"
    );
    assert!(records
        .iter()
        .any(|r| kind(r) == "claim" && r["port"] == kept_port));
    // Records are made when they are written, from what was read when the
    // claim was seen: the binder's exe and parent are in the lasting
    // claim's record and in each churn summary.
    let exe = std::fs::read_link("/proc/self/exe").unwrap();
    let ppid = std::os::unix::process::parent_id();
    let churn: Vec<&Value> = records
        .iter()
        .filter(|r| kind(r) == "churn" && r["process"]["pid"] == me)
        .collect();
    assert!(!churn.is_empty());
    for r in std::iter::once(&kept_claim).chain(churn) {
        let p = &r["process"];
        assert_eq!(p["exe"], exe.display().to_string(), "{r}");
        assert_eq!(p["ppid"], ppid, "{r}");
        assert!(
            p["ancestors"][0]
                .as_str()
                .is_some_and(|a| a.starts_with(&format!("{ppid}:"))),
            "{r}"
        );
        assert_eq!(r["addr"], "127.0.0.1", "{r}");
    }
}

//! The eBPF bind ledger against the real kernel: `reaper watch --json` sees
//! binds made by other processes, with their true identities.
//!
//! Every test starts its own `reaper watch` (its own programs on the cgroup
//! root) and filters by the pids of the processes it made, so tests can run
//! in parallel.

use std::process::Command;
use std::time::{Duration, Instant};

use reaper_tests::*;
use serde_json::Value;

const WAIT: Duration = Duration::from_secs(20);

/// A running `reaper watch --json`.
struct Watch {
    s: Spawned,
}

impl Watch {
    fn start(extra: &[&str]) -> Watch {
        require_root();
        let mut cmd = reaper();
        cmd.args(["watch", "--json"]).args(extra);
        let mut s = Spawned::spawn(&mut cmd);
        s.wait_err("attached", Duration::from_secs(30));
        Watch { s }
    }

    /// The next JSON line that satisfies `pred`.
    fn expect<F: Fn(&Value) -> bool>(&mut self, what: &str, pred: F) -> Value {
        let line = self.s.wait_line(what, WAIT, |l| {
            serde_json::from_str::<Value>(l)
                .map(|v| pred(&v))
                .unwrap_or(false)
        });
        serde_json::from_str(&line).unwrap()
    }
}

fn is(v: &Value, kind: &str, pid: u32) -> bool {
    v["kind"] == kind && v["pid"] == pid
}

#[test]
fn successful_tcp_bind_listen_and_release_are_seen_with_identity() {
    let mut w = Watch::start(&[]);
    let (mut h, port) = hold(&["127.0.0.1", "0", "listen"]);
    let pid = h.pid();
    let bind = w.expect("the bind", |v| is(v, "bind", pid));
    assert_eq!(bind["ok"], true, "{bind}");
    assert_eq!(
        bind["port"], port,
        "port 0 resolves to the real ephemeral port: {bind}"
    );
    assert_eq!(bind["requested_port"], 0, "{bind}");
    assert_eq!(bind["comm"], "binder");
    assert_eq!(bind["tid"], pid);
    assert_eq!(bind["uid"], 0);
    assert_eq!(bind["proto"], "tcp");
    assert_eq!(bind["family"], "ipv4");
    assert_eq!(bind["addr"], "127.0.0.1");
    assert_eq!(bind["errno"], Value::Null);
    assert_eq!(bind["source"], "cgroup");
    assert_eq!(bind["netns"], own_netns());
    assert!(bind["cookie"].as_u64().unwrap() > 0);
    let listen = w.expect("the listen", |v| is(v, "listen", pid));
    assert_eq!(listen["port"], port);
    assert_eq!(listen["cookie"], bind["cookie"]);
    h.send("close");
    h.wait_line("closed", WAIT, |l| l == "closed");
    let rel = w.expect("the release", |v| is(v, "release", pid));
    assert_eq!(
        rel["port"], port,
        "the release names the claim's port: {rel}"
    );
    assert_eq!(rel["cookie"], bind["cookie"]);
    assert!(rel["held_ms"].as_u64().is_some());
    // The release record leaves the namespace to the claim.
    assert!(bind["netns_cookie"].as_u64().unwrap() > 0, "{bind}");
    assert_eq!(rel["netns_cookie"], bind["netns_cookie"], "{rel}");
    assert_eq!(rel["netns"], bind["netns"], "{rel}");
    assert_eq!(rel["proto"], "tcp", "{rel}");
    assert_eq!(rel["family"], "ipv4", "{rel}");
}

#[test]
fn eaddrinuse_names_who_tried_and_who_holds() {
    let mut w = Watch::start(&[]);
    let (h, port) = hold(&["127.0.0.1", "0", "listen"]);
    w.expect("the holder's bind", |v| is(v, "bind", h.pid()));
    let (pid, result) = try_bind(&["127.0.0.1", &port.to_string()]);
    assert_eq!(
        result, "err 98",
        "the second bind must fail with EADDRINUSE"
    );
    let f = w.expect("the failed bind", |v| is(v, "bind", pid));
    assert_eq!(f["ok"], false, "{f}");
    assert_eq!(f["port"], port);
    assert_eq!(f["comm"], "binder");
    assert_eq!(f["errno"], "EADDRINUSE");
    assert_eq!(f["errno_exact"], false, "the cgroup tier infers the cause");
    assert_eq!(f["holder_pid"], h.pid());
}

#[test]
fn a_failure_keeps_its_holder_when_the_holder_leaves_at_once() {
    let mut w = Watch::start(&[]);
    let (mut h, port) = hold(&["127.0.0.1", "0", "listen"]);
    let holder = h.pid();
    w.expect("the holder's bind", |v| is(v, "bind", holder));
    let (pid, result) = try_bind(&["127.0.0.1", &port.to_string()]);
    assert_eq!(result, "err 98");
    // The holder goes before reaper has settled the failure.
    h.send("close");
    let f = w.expect("the failed bind", |v| is(v, "bind", pid));
    assert_eq!(f["ok"], false);
    assert_eq!(f["errno"], "EADDRINUSE", "{f}");
    assert_eq!(
        f["holder_pid"], holder,
        "judged against the claims alive at the attempt"
    );
    // The failed socket's own close is no release of a claim.
    w.expect("the holder's release", |v| is(v, "release", holder));
    let stray =
        w.s.out_seen
            .iter()
            .any(|l| serde_json::from_str::<Value>(l).is_ok_and(|v| is(&v, "release", pid)));
    assert!(
        !stray,
        "a release for the failed socket: {:?}",
        w.s.out_seen
    );
}

#[test]
fn a_failed_bind_is_seen_when_another_thread_closes_the_socket() {
    // The kernel side keeps a fixed port's request under the socket, not
    // the thread: whichever task closes the socket finds the failure.
    let mut w = Watch::start(&[]);
    let (h, port) = hold(&["127.0.0.1", "0", "listen"]);
    w.expect("the holder's bind", |v| is(v, "bind", h.pid()));
    let (pid, result) = try_bind(&["127.0.0.1", &port.to_string(), "close-elsewhere"]);
    assert_eq!(result, "err 98");
    let f = w.expect("the failed bind", |v| is(v, "bind", pid));
    assert_eq!(f["ok"], false, "{f}");
    assert_eq!(f["port"], port, "{f}");
    assert_eq!(f["errno"], "EADDRINUSE", "{f}");
    assert_eq!(f["holder_pid"], h.pid(), "{f}");
    assert_ne!(
        f["tid"], pid,
        "the identity is the thread that tried, not the one that closed: {f}"
    );
}

#[test]
fn the_syscalls_tier_reports_the_exact_errno() {
    let mut w = Watch::start(&["--hooks", "syscalls"]);
    let (h, port) = hold(&["127.0.0.1", "0", "listen"]);
    w.expect("the holder's bind", |v| is(v, "bind", h.pid()));
    let (pid, result) = try_bind(&["0.0.0.0", &port.to_string()]);
    assert_eq!(result, "err 98");
    let f = w.expect("the failed bind", |v| is(v, "bind", pid));
    assert_eq!(f["ok"], false);
    assert_eq!(f["errno"], "EADDRINUSE");
    assert_eq!(f["errno_exact"], true, "{f}");
    assert_eq!(f["source"], "syscalls");
}

#[test]
fn ipv6_and_udp_binds_are_seen() {
    // --all: the port-0 UDP bind is summarised kernel-side without it.
    let mut w = Watch::start(&["--all"]);
    let (h6, port6) = hold(&["::1", "0", "listen"]);
    let b = w.expect("the v6 bind", |v| is(v, "bind", h6.pid()));
    assert_eq!(b["family"], "ipv6");
    assert_eq!(b["addr"], "::1");
    assert_eq!(b["port"], port6);
    let (hu, portu) = hold(&["127.0.0.1", "0", "udp"]);
    let b = w.expect("the udp bind", |v| is(v, "bind", hu.pid()));
    assert_eq!(b["proto"], "udp");
    assert_eq!(b["port"], portu);
    // A fixed UDP port asked for, and received.
    let want = free_port();
    let (hf, got) = hold(&["127.0.0.1", &want.to_string(), "udp"]);
    assert_eq!(got, want);
    let b = w.expect("the fixed udp bind", |v| is(v, "bind", hf.pid()));
    assert_eq!(b["port"], want);
    assert!(
        b.get("requested_port").is_none(),
        "asked port = bound port: {b}"
    );
}

#[test]
fn ephemeral_binds_are_counted_not_sent_unless_all_is_asked() {
    let mut w = Watch::start(&["--duration", "8s"]);
    let (he, _) = hold(&["127.0.0.1", "0", "udp"]);
    let want = free_port();
    let (hf, _) = hold(&["127.0.0.1", &want.to_string(), "udp"]);
    // The ring buffer keeps the order of the binds: when the fixed one is
    // out, the ephemeral one would have been before it.
    let fixed = w.expect("the fixed udp bind", |v| {
        assert!(
            !is(v, "bind", he.pid()),
            "an ephemeral bind was sent without --all: {v}"
        );
        is(v, "bind", hf.pid())
    });
    assert_eq!(fixed["port"], want);
    let err = w.s.wait_err("ephemeral", Duration::from_secs(20));
    assert!(err.contains("--all shows each"), "{err}");
}

/// Runs `f` with the calling thread on one CPU (the first it may use), so
/// that the kernel side's per-CPU hints of one socket are all on that CPU.
fn on_one_cpu<T>(f: impl FnOnce() -> T) -> T {
    use nix::sched::{sched_getaffinity, sched_setaffinity, CpuSet};
    use nix::unistd::Pid;
    let was = sched_getaffinity(Pid::from_raw(0)).unwrap();
    let cpu = (0..CpuSet::count())
        .find(|&c| was.is_set(c).unwrap_or(false))
        .unwrap();
    let mut one = CpuSet::new();
    one.set(cpu).unwrap();
    sched_setaffinity(Pid::from_raw(0), &one).unwrap();
    let out = f();
    sched_setaffinity(Pid::from_raw(0), &was).unwrap();
    out
}

#[test]
fn a_port_0_claim_sends_its_release_once_listened_on_and_is_counted_otherwise() {
    let mut w = Watch::start(&[]);
    let me = std::process::id();
    // Bind, listen and close on one CPU: the release finds the hint that
    // post_bind left for a summarised claim, which the listen must have
    // taken back.
    let (quiet, loud) = on_one_cpu(|| {
        let u = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let quiet = u.local_addr().unwrap().port();
        drop(u);
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let loud = l.local_addr().unwrap().port();
        drop(l);
        (quiet, loud)
    });
    let not_quiet = |v: &Value| {
        assert!(
            !(v["pid"] == me && v["port"] == quiet),
            "the unlistened port-0 claim was sent: {v}"
        );
    };
    w.expect("the listened socket's bind", |v| {
        not_quiet(v);
        is(v, "bind", me) && v["port"] == loud
    });
    let rel = w.expect("the listened socket's release", |v| {
        not_quiet(v);
        is(v, "release", me) && v["port"] == loud
    });
    assert_eq!(rel["proto"], "tcp", "{rel}");
}

#[test]
fn a_bind_in_another_network_namespace_carries_that_namespace() {
    let mut w = Watch::start(&[]);
    let ns = Netns::new("bpf");
    let mut cmd = ns.exec(fixture_bin("binder"));
    cmd.args(["hold", "127.0.0.1", "0", "listen"]);
    let (h, port) = hold_with(cmd);
    let b = w.expect("the bind in the namespace", |v| is(v, "bind", h.pid()));
    assert_eq!(b["port"], port);
    assert_eq!(b["netns"], ns.inode(), "{b}");
    assert_ne!(b["netns"], own_netns());
    // The same port in our namespace is no conflict.
    let (h2, p2) = hold(&["127.0.0.1", &port.to_string(), "listen"]);
    assert_eq!(p2, port);
    let b2 = w.expect("the same port here", |v| is(v, "bind", h2.pid()));
    assert_eq!(b2["ok"], true);
    assert_eq!(b2["netns"], own_netns());
}

#[test]
fn bpftrace_agrees_on_a_failed_bind() {
    require_root();
    if !std::path::Path::new("/sys/kernel/tracing/events").exists() {
        let st = Command::new("mount")
            .args(["-t", "tracefs", "tracefs", "/sys/kernel/tracing"])
            .status()
            .unwrap();
        assert!(st.success(), "mounting tracefs for bpftrace failed");
    }
    let mut w = Watch::start(&[]);
    let (h, port) = hold(&["127.0.0.1", "0", "listen"]);
    w.expect("the holder's bind", |v| is(v, "bind", h.pid()));
    let mut bt = Spawned::spawn(Command::new("bpftrace").args([
        "-e",
        r#"tracepoint:syscalls:sys_exit_bind /comm == "binder"/ { printf("bind %d %d\n", pid, args->ret); }"#,
    ]));
    bt.wait_line("bpftrace to attach", Duration::from_secs(60), |l| {
        l.contains("Attaching")
    });
    // bpftrace says "Attaching" before its probe is in place: fail binds
    // until it reports one, and compare on that one.
    let (pid, result, theirs) = poll_until("bpftrace to see a failed bind", WAIT, || {
        let (pid, result) = try_bind(&["127.0.0.1", &port.to_string()]);
        let prefix = format!("bind {pid} ");
        let deadline = Instant::now() + Duration::from_millis(500);
        while let Some(l) = bt.line(deadline.saturating_duration_since(Instant::now())) {
            if l.starts_with(&prefix) {
                return Some((pid, result, l));
            }
        }
        None
    });
    assert_eq!(result, "err 98");
    let ours = w.expect("reaper's failed bind", |v| is(v, "bind", pid));
    assert_eq!(
        theirs,
        format!("bind {pid} -98"),
        "bpftrace saw the kernel return -EADDRINUSE"
    );
    assert_eq!(ours["errno"], "EADDRINUSE");
    assert_eq!(ours["port"], port);
}

#[test]
fn doctor_reports_the_hooks_and_the_tier() {
    require_root();
    let out = reaper().args(["doctor", "--json"]).output().unwrap();
    assert!(out.status.success());
    let v: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["tier"], "cgroup");
    let probes = v["probes"].as_array().unwrap();
    let bind4 = probes.iter().find(|p| p["hook"] == "cgroup/bind4").unwrap();
    assert_eq!(bind4["attaches"], true);
    // As root, the iterator probes keep their BTF answers for the next scan,
    // and a file that says so is named.
    let cache = v["btf_cache"].as_str().expect("btf_cache names a file");
    let text = std::fs::read_to_string(cache).unwrap();
    assert!(text.contains("func bpf_iter_task_file="), "{text}");
    // Refusals carry their errno (fexit is refused on some kernels, allowed on others).
    for p in probes {
        if p["loads"] == false {
            assert!(p["errno"].is_string() || p["error"].is_string(), "{p}");
        }
    }
}

#[test]
fn without_bpf_watch_says_so_and_polls() {
    require_root();
    let mut cmd = reaper();
    cmd.args(["--no-bpf", "watch", "--json", "--poll-interval", "100ms"]);
    let mut w = Spawned::spawn(&mut cmd);
    w.wait_err("cannot stream binds without BPF", Duration::from_secs(10));
    w.wait_err("listening sockets now", Duration::from_secs(10));
    // The first poll is the baseline; a listener that appears after it is news.
    let (h, port) = hold(&["127.0.0.1", "0", "listen"]);
    let line = w.wait_line("the polled listener", WAIT, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["port"] == port && v["kind"] == "bind")
    });
    let v: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(v["source"], "proc", "{v}");
    assert_eq!(v["pid"], h.pid());
    drop(h);
    let line = w.wait_line("the polled release", WAIT, |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["port"] == port && v["kind"] == "release")
    });
    assert!(line.contains("\"source\":\"proc\""));
}

#[test]
fn a_holder_older_than_the_watch_is_found_by_a_live_scan() {
    // Bound before reaper attached: not in its ledger.
    let (h, port) = hold(&["127.0.0.1", "0", "listen"]);
    let mut w = Watch::start(&[]);
    for _ in 0..3 {
        let (pid, result) = try_bind(&["127.0.0.1", &port.to_string()]);
        assert_eq!(result, "err 98");
        let f = w.expect("the failed bind", |v| is(v, "bind", pid));
        assert_eq!(f["errno"], "EADDRINUSE", "{f}");
        assert_eq!(f["holder_pid"], h.pid(), "{f}");
    }
}

//! `reaper who` / `reaper ports` against the real kernel: sockets held by
//! real child processes, in real network namespaces, each answer checked
//! against `ss` run in the same test. Needs root; `cargo build` first.

use std::collections::BTreeSet;
use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::process::Command;

use reaper_tests::fixture::Holder;
use reaper_tests::procs::{holder_pids, reaper, ss_on, Netns};
use reaper_tests::{own_netns, require_root};

const FIXTURE: &str = env!("CARGO_BIN_EXE_reaper-fixture");

fn listen(kind: &str, port: u16, fork: bool) -> Holder {
    let mut cmd = Command::new(FIXTURE);
    cmd.args(["listen", kind, &port.to_string()]);
    if fork {
        cmd.arg("--fork");
    }
    Holder::fixture(cmd)
}

/// `reaper who PORT --json` must exit 0 and name exactly the pids ss names.
fn check_against_ss(kind: &str, fixture: &Holder, env: &[(&str, &str)]) -> serde_json::Value {
    let port = fixture.port;
    let run = reaper(&["who", &port.to_string(), "--json"], env);
    assert_eq!(
        run.code, 0,
        "{kind}: who exit status; stderr: {}",
        run.stderr
    );
    let answer = run.json();
    assert_eq!(answer["held"], true);
    assert_eq!(answer["source"], "proc");
    let ours = holder_pids(&answer, None);
    let ss = ss_on(port, &["-tulpnH"], None);
    assert!(!ss.is_empty(), "{kind}: ss does not see port {port}");
    let theirs: BTreeSet<u32> = ss.iter().flat_map(|s| s.pids.iter().copied()).collect();
    assert_eq!(
        ours, theirs,
        "{kind}: reaper and ss disagree on the holders of {port}"
    );
    assert_eq!(
        ours,
        fixture.pids(),
        "{kind}: the holders are the fixture's processes"
    );
    answer
}

#[test]
fn tcp_and_udp_v4_and_v6_listeners_match_ss() {
    require_root();
    for (kind, proto, family, state, ss_local) in [
        ("tcp4", "tcp", "ipv4", "LISTEN", "0.0.0.0"),
        ("tcp6", "tcp", "ipv6", "LISTEN", "[::]"),
        ("udp4", "udp", "ipv4", "UNCONN", "0.0.0.0"),
        ("udp6", "udp", "ipv6", "UNCONN", "[::]"),
    ] {
        let f = listen(kind, 0, false);
        let answer = check_against_ss(kind, &f, &[]);
        let h = &answer["holdings"][0];
        assert_eq!(
            answer["holdings"].as_array().unwrap().len(),
            1,
            "{kind}: {answer}"
        );
        assert_eq!(h["socket"]["proto"], proto);
        assert_eq!(h["socket"]["family"], family);
        assert_eq!(h["socket"]["state"], state);
        assert_eq!(h["socket"]["dual_stack"], false, "{kind} is v6-only or v4");
        assert_ne!(h["socket"]["inode"], 0);
        assert_ne!(h["socket"]["cookie"], 0, "sock_diag gives the cookie");
        let p = &h["processes"][0];
        assert_eq!(p["comm"], "reaper-fixture");
        assert_eq!(p["cmdline"][1], "listen");
        assert_eq!(p["cmdline"][2], kind);
        assert_eq!(p["uid"], 0);
        assert_eq!(p["user"], "root");
        assert!(
            p["exe"].as_str().unwrap().ends_with("reaper-fixture"),
            "{p}"
        );
        assert_eq!(p["ppid"].as_u64().unwrap() as u32, std::process::id());
        assert_eq!(
            p["ancestors"][0][0].as_u64().unwrap() as u32,
            std::process::id()
        );
        let ss = ss_on(f.port, &["-tulpnH"], None);
        assert_eq!(ss[0].local, format!("{ss_local}:{}", f.port), "{kind}");

        // The human answer says the same.
        let run = reaper(&["who", &f.port.to_string(), "--proto", proto], &[]);
        assert_eq!(run.code, 0);
        for want in [
            format!("{proto} port {} is held", f.port),
            state.to_string(),
            format!("pid {}  reaper-fixture", f.pid()),
            format!("listen {kind} 0"),
            "user      root (0)".to_string(),
            "holding   for ~".to_string(),
            "run `reaper daemon` for bind history".to_string(),
        ] {
            assert!(
                run.stdout.contains(&want),
                "{kind}: missing {want:?} in:\n{}",
                run.stdout
            );
        }
        // The other protocol does not hold it.
        let other = if proto == "tcp" { "udp" } else { "tcp" };
        let run = reaper(&["who", &f.port.to_string(), "--proto", other], &[]);
        assert_eq!(run.code, 1, "{kind}: {other} is free: {}", run.stdout);
    }
}

#[test]
fn dual_stack_v6_wildcard_blocks_v4_and_says_so() {
    require_root();
    for kind in ["tcp6-dual", "udp6-dual"] {
        let f = listen(kind, 0, false);
        let answer = check_against_ss(kind, &f, &[]);
        assert_eq!(
            answer["holdings"][0]["socket"]["dual_stack"], true,
            "{kind}: {answer}"
        );
        // ss prints a dual-stack wildcard as `*`.
        let ss = ss_on(f.port, &["-tulpnH"], None);
        assert_eq!(ss[0].local, format!("*:{}", f.port));
        let run = reaper(&["who", &f.port.to_string()], &[]);
        assert!(
            run.stdout
                .contains(&format!("also blocks IPv4 binds of port {}", f.port)),
            "{}",
            run.stdout
        );
        // And the kernel agrees: an IPv4 bind of the port fails.
        if kind == "tcp6-dual" {
            let e = TcpListener::bind(("0.0.0.0", f.port)).unwrap_err();
            assert_eq!(e.raw_os_error(), Some(libc::EADDRINUSE));
        }
    }
}

#[test]
fn socket_shared_across_fork_lists_both_holders() {
    require_root();
    let f = listen("tcp4", 0, true);
    assert_eq!(f.pids().len(), 2);
    let answer = check_against_ss("tcp4 --fork", &f, &[]);
    let procs = answer["holdings"][0]["processes"].as_array().unwrap();
    assert_eq!(procs.len(), 2, "{answer}");
    // The child's parent chain starts at the fixture.
    let child = procs.iter().find(|p| p["pid"] != f.pid()).unwrap();
    assert_eq!(child["ppid"].as_u64().unwrap() as u32, f.pid());
    let run = reaper(&["who", &f.port.to_string()], &[]);
    assert!(
        run.stdout.contains(&format!("<- {} ", std::process::id())),
        "{}",
        run.stdout
    );
}

#[test]
fn procfs_fallback_gives_the_same_holders() {
    require_root();
    for kind in ["tcp4", "udp6", "tcp6-dual"] {
        let f = listen(kind, 0, true);
        let answer = check_against_ss(kind, &f, &[("REAPER_SOCKET_SOURCE", "procfs")]);
        assert_eq!(answer["gaps"]["socket_source"], "procfs");
        assert_eq!(
            answer["holdings"][0]["socket"]["cookie"], 0,
            "/proc/net has no cookies"
        );
        // bindv6only is 0 here: the fallback assumes dual-stack for every v6 wildcard.
        assert_eq!(
            answer["holdings"][0]["socket"]["dual_stack"],
            kind != "tcp4"
        );
    }
}

#[test]
fn same_port_in_two_namespaces_is_two_answers_and_netns_filters() {
    require_root();
    let ns = Netns::new("who");
    let host = listen("tcp4", 0, false);
    let port = host.port;
    let mut cmd = ns.exec(FIXTURE);
    cmd.args(["listen", "tcp4", &port.to_string()]);
    let inside = Holder::fixture(cmd);
    assert_eq!(
        inside.port, port,
        "the same port binds in another namespace"
    );

    let all = reaper(&["who", &port.to_string(), "--json"], &[]);
    assert_eq!(all.code, 0, "{}", all.stderr);
    let answer = all.json();
    let netns: BTreeSet<u64> = answer["holdings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["socket"]["netns"].as_u64().unwrap())
        .collect();
    assert_eq!(netns.len(), 2, "two namespaces, two answers: {answer}");
    assert!(netns.contains(&ns.inode()));
    assert!(answer["netns_seen"].as_array().unwrap().len() >= 2);

    // Each namespace's holders match ss run inside it.
    let ss_inside: BTreeSet<u32> = ss_on(port, &["-tulpnH"], Some(&ns))
        .iter()
        .flat_map(|s| s.pids.clone())
        .collect();
    assert_eq!(holder_pids(&answer, Some(ns.inode())), ss_inside);
    assert_eq!(ss_inside, inside.pids());
    let ss_host: BTreeSet<u32> = ss_on(port, &["-tulpnH"], None)
        .iter()
        .flat_map(|s| s.pids.clone())
        .collect();
    let host_ns = *netns.iter().find(|&&n| n != ns.inode()).unwrap();
    assert_eq!(holder_pids(&answer, Some(host_ns)), ss_host);

    // --netns keeps one.
    let only = reaper(
        &[
            "who",
            &port.to_string(),
            "--netns",
            &ns.inode().to_string(),
            "--json",
        ],
        &[],
    );
    assert_eq!(only.code, 0);
    let only = only.json();
    assert_eq!(only["holdings"].as_array().unwrap().len(), 1, "{only}");
    assert_eq!(only["holdings"][0]["socket"]["netns"], ns.inode());
    assert_eq!(holder_pids(&only, None), inside.pids());
    // The human answer names the namespace.
    let run = reaper(&["who", &port.to_string()], &[]);
    assert!(
        run.stdout
            .contains(&format!("netns {} ({})", ns.inode(), ns.name)),
        "{}",
        run.stdout
    );

    // Freed inside, still held on the host: --netns says free there.
    drop(inside);
    let run = reaper(
        &["who", &port.to_string(), "--netns", &ns.inode().to_string()],
        &[],
    );
    assert_eq!(run.code, 1, "{}", run.stdout);
    // ports --netns shows only that namespace.
    let ports = reaper(
        &["ports", "--netns", &ns.inode().to_string(), "--json"],
        &[],
    );
    assert_eq!(ports.code, 0);
    assert!(ports
        .json()
        .as_array()
        .unwrap()
        .iter()
        .all(|h| h["socket"]["netns"] == ns.inode()));
}

/// Leaves a TIME_WAIT socket on a loopback port and returns the port.
fn time_wait_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let mut client = TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server, _) = listener.accept().unwrap();
    // The server side closes first: it is the active closer, so its socket
    // (local port = PORT) goes to TIME_WAIT once the client closes too.
    drop(server);
    let mut buf = [0u8; 1];
    assert_eq!(
        client.read(&mut buf).unwrap(),
        0,
        "the client sees the server's FIN"
    );
    let _ = client.write(b"");
    drop(client);
    drop(listener);
    port
}

#[test]
fn time_wait_leftover_is_held_not_free() {
    require_root();
    let port = time_wait_port();
    // Wait (with a deadline) until ss sees the TIME_WAIT: the close handshake is asynchronous.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
    let ss = loop {
        let ss: Vec<_> = ss_on(port, &["-tuanpH"], None)
            .into_iter()
            .filter(|s| s.state == "TIME-WAIT")
            .collect();
        if !ss.is_empty() {
            break ss;
        }
        assert!(
            std::time::Instant::now() < deadline,
            "ss never showed TIME-WAIT on {port}"
        );
        std::thread::yield_now();
    };
    assert!(ss.iter().all(|s| s.pids.is_empty()));

    let run = reaper(&["who", &port.to_string(), "--json"], &[]);
    assert_eq!(run.code, 0, "TIME_WAIT is not free: {}", run.stdout);
    let answer = run.json();
    let holdings = answer["holdings"].as_array().unwrap();
    let tw: Vec<_> = holdings
        .iter()
        .filter(|h| h["socket"]["state"] == "TIME-WAIT")
        .collect();
    assert_eq!(tw.len(), ss.len(), "{answer}");
    for h in tw {
        assert_eq!(h["unowned_reason"], "time-wait");
        assert!(h["processes"].as_array().unwrap().is_empty());
        let ms = h["socket"]["timer_ms"].as_u64().expect("a timer");
        assert!(ms > 0 && ms <= 60_000, "TIME_WAIT lasts 60 s: {ms}");
        assert_eq!(h["socket"]["inode"], 0);
    }
    let run = reaper(&["who", &port.to_string()], &[]);
    assert_eq!(run.code, 0);
    assert!(
        run.stdout.contains("blocked by TIME_WAIT, expires in"),
        "{}",
        run.stdout
    );
    // The procfs fallback sees it too.
    let run = reaper(
        &["who", &port.to_string(), "--json"],
        &[("REAPER_SOCKET_SOURCE", "procfs")],
    );
    assert_eq!(run.code, 0);
    assert_eq!(run.json()["holdings"][0]["unowned_reason"], "time-wait");
}

#[test]
fn bad_input_exits_2_with_a_reason() {
    require_root();
    for (args, says) in [
        (&["who", "0"][..], "port 0"),
        (&["who", "65536"], "out of range"),
        (&["who", "http"], "not a port number"),
        (&["who", "-1"], ""),
        (&["who", "80", "--proto", "sctp"], "unknown protocol"),
        (
            &["who", "80", "--netns", "host"],
            "--netns 'host' is not a network namespace",
        ),
        (
            &["who", "80", "--netns", "1"],
            "no network namespace with that inode",
        ),
        (&["ports", "--netns", "x1"], "is not a network namespace"),
    ] {
        let run = reaper(args, &[]);
        assert_eq!(run.code, 2, "{args:?}: {}{}", run.stdout, run.stderr);
        assert!(run.stderr.contains(says), "{args:?}: {}", run.stderr);
    }
}

#[test]
fn free_port_exits_1() {
    require_root();
    // A port that was bound a moment ago with no connection leaves nothing.
    let port = TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    assert!(
        ss_on(port, &["-tuanH"], None).is_empty(),
        "ss sees something on {port}"
    );
    let run = reaper(&["who", &port.to_string()], &[]);
    assert_eq!(run.code, 1, "{}", run.stdout);
    assert!(
        run.stdout.contains(&format!("port {port} is not held")),
        "{}",
        run.stdout
    );
    let run = reaper(&["who", &port.to_string(), "--json"], &[]);
    assert_eq!(run.code, 1);
    let answer = run.json();
    assert_eq!(answer["held"], false);
    assert!(answer["holdings"].as_array().unwrap().is_empty());
    assert!(answer["duration_ms"].as_f64().unwrap() > 0.0);
    assert!(!answer["netns_seen"].as_array().unwrap().is_empty());
    for key in [
        "unreadable_pids",
        "vanished_pids",
        "unreadable_netns",
        "socket_source",
    ] {
        assert!(answer["gaps"].get(key).is_some(), "gaps.{key}: {answer}");
    }
}

#[test]
fn holders_exiting_during_the_scan_do_not_break_it() {
    require_root();
    let port = TcpListener::bind("0.0.0.0:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let mut cmd = Command::new(FIXTURE);
    cmd.args(["churn", &port.to_string()]);
    let churn = Holder::fixture(cmd);
    let mut held = 0;
    for i in 0..40 {
        let args: &[&str] = if i % 4 == 3 {
            &["ports", "--json"]
        } else {
            &["who", &port.to_string(), "--json"]
        };
        let run = reaper(args, &[]);
        assert!(
            run.code == 0 || run.code == 1,
            "{args:?} exit {}: {}",
            run.code,
            run.stderr
        );
        assert!(!run.stderr.contains("panicked"), "{}", run.stderr);
        let answer = run.json();
        if args[0] == "who" && run.code == 0 {
            held += 1;
            // Whoever was found holding it is (or was) a churn child.
            for h in answer["holdings"].as_array().unwrap() {
                for p in h["processes"].as_array().unwrap() {
                    assert_eq!(p["ppid"].as_u64().unwrap() as u32, churn.pid(), "{p}");
                }
            }
        }
    }
    eprintln!("the port was held in {held} of 30 scans");
}

#[test]
fn ports_lists_listeners_with_holders() {
    require_root();
    let tcp = listen("tcp6-dual", 0, false);
    let udp = listen("udp4", 0, false);
    let run = reaper(&["ports", "--listening", "--json"], &[]);
    assert_eq!(run.code, 0, "{}", run.stderr);
    let list = run.json();
    for (f, proto) in [(&tcp, "tcp"), (&udp, "udp")] {
        let h: Vec<_> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["socket"]["port"] == f.port && h["socket"]["proto"] == proto)
            .collect();
        assert_eq!(h.len(), 1, "{proto} {}: {list}", f.port);
        assert_eq!(
            holder_pids(
                &serde_json::Value::Array(h.into_iter().cloned().collect()),
                None
            ),
            f.pids()
        );
    }
    // Every listener ss knows, reaper knows (same pids per port).
    let ss = reaper_tests::procs::parse_ss(&reaper_tests::procs::run_ok(
        Command::new("ss").arg("-tulpnH"),
    ));
    for s in ss
        .iter()
        .filter(|s| s.port == tcp.port || s.port == udp.port)
    {
        let ours: BTreeSet<u32> = list
            .as_array()
            .unwrap()
            .iter()
            .filter(|h| h["socket"]["port"] == s.port && h["socket"]["proto"] == s.netid)
            .flat_map(|h| {
                h["processes"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| p["pid"].as_u64().unwrap() as u32)
            })
            .collect();
        assert_eq!(ours, s.pids, "{s:?}");
    }
    let run = reaper(&["ports", "--listening"], &[]);
    assert!(
        run.stdout.contains(&format!("[::]:{} (+v4)", tcp.port)),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout
            .contains(&format!("{} reaper-fixture", udp.pid())),
        "{}",
        run.stdout
    );
}

/// The holdings of a `who --json` answer, keyed by socket inode, each with
/// its holders' pids; and which path found the holders.
fn holders_by_inode(answer: &serde_json::Value) -> Vec<(u64, Vec<u64>)> {
    let mut v: Vec<(u64, Vec<u64>)> = answer["holdings"]
        .as_array()
        .expect("holdings")
        .iter()
        .map(|h| {
            let pids = h["processes"]
                .as_array()
                .unwrap()
                .iter()
                .map(|p| p["pid"].as_u64().unwrap())
                .collect();
            (h["socket"]["inode"].as_u64().unwrap(), pids)
        })
        .collect();
    v.sort();
    v
}

#[test]
fn bpf_iterator_and_proc_walk_find_the_same_holders() {
    require_root();
    // doctor probes the iterator for real: it must load and run here (root,
    // Linux 5.8+ with BTF, as CI is). If this fails, `who` falls back to
    // /proc silently: the speed is lost, not the answer.
    let doctor = reaper(&["doctor", "--json"], &[]);
    assert_eq!(doctor.code, 0, "{}", doctor.stderr);
    let d = doctor.json();
    assert_eq!(
        d["holder_source"], "bpf_iter",
        "the task_file iterator did not run here: {}",
        d["holder_source_error"]
    );
    assert_eq!(
        d["process_source"], "bpf_iter",
        "the task environment iterator did not run here: {}",
        d["process_source_error"]
    );
    let no_bpf = reaper(&["doctor", "--json", "--no-bpf"], &[]).json();
    assert_eq!(no_bpf["holder_source"], "proc");
    assert_eq!(no_bpf["process_source"], "proc");
    assert_eq!(no_bpf["process_source_error"], "--no-bpf");

    // Real holders: shared across fork, v6 UDP, dual-stack, another
    // namespace, and a port with many sockets held by this process (a
    // listener and its accepted connections: more sockets than the /proc
    // walk compares by kcmp).
    let forked = listen("tcp4", 0, true);
    let udp = listen("udp6", 0, false);
    let dual = listen("tcp6-dual", 0, true);
    let ns = Netns::new("iter");
    let mut cmd = ns.exec(FIXTURE);
    cmd.args(["listen", "tcp4", &forked.port.to_string()]);
    let inside = Holder::fixture(cmd);
    let many = TcpListener::bind("127.0.0.1:0").unwrap();
    let many_port = many.local_addr().unwrap().port();
    let conns: Vec<(TcpStream, TcpStream)> = (0..20)
        .map(|_| {
            let c = TcpStream::connect(("127.0.0.1", many_port)).unwrap();
            (c, many.accept().unwrap().0)
        })
        .collect();

    for port in [forked.port, udp.port, dual.port, many_port] {
        let p = port.to_string();
        let iter = reaper(&["who", &p, "--json"], &[]);
        let proc = reaper(&["who", &p, "--json"], &[("REAPER_FD_SOURCE", "proc")]);
        let no_bpf = reaper(&["who", &p, "--json", "--no-bpf"], &[]);
        for r in [&iter, &proc, &no_bpf] {
            assert_eq!(r.code, 0, "who {port}: {}", r.stderr);
        }
        let (iter, proc, no_bpf) = (iter.json(), proc.json(), no_bpf.json());
        assert_eq!(iter["gaps"]["holder_source"], "bpf_iter", "{iter}");
        assert_eq!(proc["gaps"]["holder_source"], "proc", "{proc}");
        assert_eq!(no_bpf["gaps"]["holder_source"], "proc", "{no_bpf}");
        let want = holders_by_inode(&proc);
        assert!(
            want.iter().all(|(_, pids)| !pids.is_empty()),
            "port {port}: every socket has a holder: {proc}"
        );
        assert_eq!(
            holders_by_inode(&iter),
            want,
            "port {port}: the iterator and the /proc walk disagree"
        );
        // Everything else about the holdings is the same too.
        assert_eq!(iter["holdings"], proc["holdings"], "port {port}");
        assert_eq!(no_bpf["holdings"], proc["holdings"], "port {port}");
    }
    let many_answer = reaper(&["who", &many_port.to_string(), "--json"], &[]).json();
    assert_eq!(
        holders_by_inode(&many_answer).len(),
        21,
        "the listener and its 20 accepted connections: {many_answer}"
    );
    let two = reaper(&["who", &forked.port.to_string(), "--json"], &[]).json();
    assert_eq!(holder_pids(&two, Some(ns.inode())), inside.pids());
    assert_eq!(holder_pids(&two, Some(own_netns())), forked.pids());
    drop(conns);
}

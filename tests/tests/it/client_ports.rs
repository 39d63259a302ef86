//! A port the kernel lends to a client, recorded as it happens: once a
//! conflict was seen on a port, the daemon watches it, and a `connect()`
//! the kernel gives it later is journaled with its client (found by the
//! socket's cookie) and its peer. The fixture is exact: a network namespace
//! whose ephemeral range is that one port, so `connect()` takes it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Child, Stdio};
use std::time::Duration;

use reaper_tests::daemon::Daemon;
use reaper_tests::{fixture_bin, poll_for, poll_until, require_root, Netns};
use serde_json::Value;

const LENT: u16 = 40_000;

/// A python3 client inside the namespace: connects, prints its local port,
/// holds the connection until its stdin closes.
fn connect(ns: &Netns, addr: &str, port: u16) -> (Child, u16) {
    let mut child = ns
        .exec("python3")
        .args([
            "-c",
            "import socket, sys\n\
             s = socket.create_connection((sys.argv[1], int(sys.argv[2])))\n\
             print(s.getsockname()[1], flush=True)\n\
             sys.stdin.read()\n",
            addr,
            &port.to_string(),
        ])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("python3 runs the client");
    let mut line = String::new();
    BufReader::new(child.stdout.as_mut().unwrap())
        .read_line(&mut line)
        .unwrap();
    let got = line
        .trim()
        .parse()
        .unwrap_or_else(|_| panic!("client said {line:?}"));
    (child, got)
}

fn hold(ns: &Netns, args: &[&str]) -> reaper_tests::fixture::Holder {
    let mut c = ns.exec(fixture_bin("binder"));
    c.arg("hold").args(args);
    reaper_tests::hold_with(c).0
}

fn lent_record(d: &Daemon, peer: &str, pid: u32) -> Option<Value> {
    d.records().into_iter().find(|r| {
        r["kind"] == "client_port"
            && r["port"] == LENT
            && r["peer"] == peer
            && r["process"]["pid"] == pid
    })
}

#[test]
fn a_watched_port_given_to_a_connect_is_journaled_with_its_client_and_peer() {
    require_root();
    let ns = Netns::new("lent");
    let st = ns
        .exec("sh")
        .args([
            "-c",
            &format!("echo {LENT} {LENT} > /proc/sys/net/ipv4/ip_local_port_range"),
        ])
        .status()
        .unwrap();
    assert!(st.success());
    let d = Daemon::start("ringbuf_size = 67108864\n");

    // A conflict on the port: from now on the daemon watches it.
    let mut server = hold(&ns, &["0.0.0.0", &LENT.to_string(), "listen"]);
    poll_until("the conflict on the port", Duration::from_secs(20), || {
        let out = ns
            .exec(fixture_bin("binder"))
            .args(["try", "0.0.0.0", &LENT.to_string()])
            .output()
            .unwrap();
        assert!(String::from_utf8_lossy(&out.stdout).starts_with("err"));
        poll_for(Duration::from_secs(3), || {
            d.records()
                .into_iter()
                .find(|r| r["kind"] == "conflict" && r["port"] == LENT)
        })
    });
    server.send("close");
    drop(server);

    // The kernel gives the port to a client, over IPv4 then IPv6.
    let _v4 = hold(&ns, &["127.0.0.1", "41000", "listen"]);
    let _v6 = hold(&ns, &["::1", "41001", "listen"]);
    for (addr, port, peer) in [
        ("127.0.0.1", 41000, "127.0.0.1:41000"),
        ("::1", 41001, "[::1]:41001"),
    ] {
        // Another run's bind storm may make the kernel drop an event: a
        // new connection (loopback reuses the port's TIME_WAIT) asks again.
        let mut found = None;
        for _attempt in 0..3 {
            let (mut client, got) = connect(&ns, addr, port);
            assert_eq!(got, LENT, "the namespace's range is the one port");
            let pid = client.id();
            match poll_for(Duration::from_secs(10), || lent_record(&d, peer, pid)) {
                Some(r) => {
                    found = Some((client, r));
                    break;
                }
                None => {
                    let _ = client.kill();
                    let _ = client.wait();
                }
            }
        }
        let (mut client, r) = found.unwrap_or_else(|| {
            panic!(
                "the daemon never journaled the port lent to {peer}; log:\n{}",
                d.log_text()
            )
        });
        assert_eq!(r["process"]["pid"], client.id(), "{r:#}\n{}", d.log_text());
        assert_eq!(r["process"]["comm"], "python3", "{r:#}");
        assert_eq!(r["netns"], ns.inode(), "{r:#}");
        let note = r["note"].as_str().unwrap();
        assert!(
            note.contains(&format!("port {LENT} was given to pid {}", client.id()))
                && note.contains(&format!("connecting to {peer}"))
                && note.contains("ip_local_reserved_ports"),
            "{note}"
        );
        client.stdin.take().unwrap().write_all(b"").unwrap();
        let _ = client.kill();
        let _ = client.wait();
    }

    // The report puts it on the port's timeline, in words.
    let out = reaper_tests::reaper()
        .args(["report", "--port", &LENT.to_string(), "--journal"])
        .arg(&d.journal)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", reaper_tests::show(&out));
    let md = String::from_utf8_lossy(&out.stdout);
    // (Markdown escapes the brackets of an IPv6 peer.)
    for peer in ["127.0.0.1:41000", "\\[::1\\]:41001"] {
        assert!(
            md.contains(&format!("given by the kernel to a connect() to {peer}")),
            "{md}"
        );
    }
}

//! holders -> **example**: one holder as the policy's unit tests, the fuzz
//! targets and the benchmarks describe it, built once: a platform-server
//! that a finished CI job left listening on 127.0.0.1:8080 (orphaned, run
//! as `ci`). Values, not a scan: nothing here reads the system.

use super::{Process, Socket};
use crate::vocab::{Family, Proto, SocketState};

/// The platform-server as pid `pid` in network namespace `netns`.
pub fn server(pid: u32, netns: u64) -> Process {
    Process {
        pid,
        ppid: 1,
        comm: "platform-server".into(),
        exe: Some("/usr/local/bin/platform-server".into()),
        cmdline: vec![
            "/usr/local/bin/platform-server".into(),
            "--port".into(),
            "8080".into(),
        ],
        start_ticks: 1000,
        started_at: "2026-11-28T12:01:03.000Z".into(),
        uid: 1001,
        user: Some("ci".into()),
        cgroup: Some("/system.slice/runner.service".into()),
        container: None,
        netns: Some(netns),
        ancestors: vec![(1, "systemd".into())],
        orphaned: true,
        job: None,
    }
}

/// Its socket: TCP 127.0.0.1:8080, listening, in `netns`.
pub fn listener(netns: u64) -> Socket {
    Socket {
        netns,
        proto: Proto::Tcp,
        family: Family::Ipv4,
        addr: "127.0.0.1".parse().expect("an address"),
        port: 8080,
        peer: None,
        state: SocketState::Listen,
        inode: 99,
        cookie: 0,
        uid: 1001,
        dual_stack: false,
        timer_ms: None,
    }
}

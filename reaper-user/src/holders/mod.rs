//! ledger -> **holders** -> conflict.
//!
//! Who holds a socket *now*, from the live system and without BPF: sockets
//! from netlink sock_diag (or /proc/net/{tcp,udp}[6] when netlink is not
//! there), in every network namespace on the host, joined to every process
//! that has the socket open (from /proc/PID/fd), with each process's details.
//! This is both the fallback when BPF is not available and the check that
//! verifies the ledger against the live system.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use crate::util::{Family, Proto};

/// One socket seen in some network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Socket {
    /// Network namespace inode (as in `readlink /proc/PID/ns/net`).
    pub netns: u64,
    pub proto: Proto,
    pub family: Family,
    pub addr: IpAddr,
    pub port: u16,
    /// Remote end for connected sockets.
    pub peer: Option<(IpAddr, u16)>,
    /// Kernel socket state in `ss` words: LISTEN, ESTAB, TIME-WAIT, UNCONN, ...
    pub state: String,
    /// Socket inode (0 for TIME_WAIT sockets, which have none).
    pub inode: u64,
    /// Socket cookie from sock_diag (0 when read from /proc/net).
    pub cookie: u64,
    /// Owner uid of the socket.
    pub uid: u32,
    /// For IPv6 wildcard sockets: true when IPV6_V6ONLY is off, so the socket
    /// also blocks IPv4 binds of the same port.
    pub dual_stack: bool,
    /// Milliseconds left on the socket's timer when the kernel says (TIME_WAIT).
    pub timer_ms: Option<u64>,
}

/// A process that holds a socket, with what a person needs to judge it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Process {
    pub pid: u32,
    pub ppid: u32,
    /// The kernel's comm: at most 15 bytes, possibly a truncation.
    pub comm: String,
    /// Target of /proc/PID/exe; None when unreadable (kernel thread, EPERM).
    pub exe: Option<String>,
    /// argv, lossily decoded.
    pub cmdline: Vec<String>,
    /// Start time in clock ticks since boot (field 22 of /proc/PID/stat):
    /// with the pid, the identity of the process.
    pub start_ticks: u64,
    /// Start time as wall time, RFC 3339.
    pub started_at: String,
    pub uid: u32,
    pub user: Option<String>,
    /// cgroup v2 path (or the first v1 path) from /proc/PID/cgroup.
    pub cgroup: Option<String>,
    /// Container id when the cgroup path carries one (docker, containerd, crio, podman).
    pub container: Option<String>,
    pub netns: Option<u64>,
    /// Parent chain up to init: (pid, comm), nearest first.
    pub ancestors: Vec<(u32, String)>,
    /// Reparented to init or a subreaper: its original parent is gone.
    pub orphaned: bool,
}

/// A socket and every process holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub socket: Socket,
    /// Empty for sockets no process holds (TIME_WAIT, orphaned FIN_WAIT, or an
    /// owner that could not be read): see `unowned_reason`.
    pub processes: Vec<Process>,
    /// Why there is no process: "time-wait", "orphaned", "unreadable".
    pub unowned_reason: Option<String>,
}

/// What a scan could not see, counted rather than hidden.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ScanGaps {
    /// Processes whose /proc entries could not be read (EPERM, hidepid, LSM).
    pub unreadable_pids: u32,
    /// Processes that exited while being scanned.
    pub vanished_pids: u32,
    /// Network namespaces that could not be entered.
    pub unreadable_netns: u32,
    /// Whether sockets came from sock_diag ("netlink") or /proc/net ("procfs").
    pub socket_source: String,
}

/// What to look for.
#[derive(Clone, Debug, Default)]
pub struct Query {
    pub port: Option<u16>,
    pub proto: Option<Proto>,
    /// None: every network namespace on the host.
    pub netns: Option<u64>,
    /// Only listening TCP and bound (unconnected) UDP sockets.
    pub listening_only: bool,
}

/// The answer to a scan.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct Scan {
    pub holdings: Vec<Holding>,
    pub gaps: ScanGaps,
    /// Network namespaces looked at (inodes).
    pub netns_seen: Vec<u64>,
    pub duration_ms: f64,
}

/// Scans the live system. Never fails because one process or namespace is
/// unreadable: those are counted in `gaps`.
pub fn scan(query: &Query) -> anyhow::Result<Scan> {
    let _ = query;
    anyhow::bail!("the holder scan is not built yet")
}

/// Reads one process's details; None when it is gone.
pub fn process(pid: u32) -> Option<Process> {
    let _ = pid;
    None
}

//! ledger -> **holders** -> conflict.
//!
//! Who holds a socket *now*, from the live system and without BPF: sockets
//! from netlink sock_diag (or /proc/net/{tcp,udp}[6] when netlink is not
//! there), in every network namespace on the host, joined to every process
//! that has the socket open (from /proc/PID/fd), with each process's details.
//! This is both the fallback when BPF is not available and the check that
//! verifies the ledger against the live system.
//!
//! Inside, in the order a scan runs:
//!
//! ```text
//! netns     every network namespace; enter each from a short-lived thread
//! sockdiag  its sockets from netlink sock_diag      (procnet: /proc/net fallback)
//! fdmap     socket inode -> every pid holding it     (only the inodes asked for;
//!           readlink until one holder is known, then kcmp against it)
//! process   details of those pids only
//! ```
//!
//! Which /proc reads use the `procfs` crate, and which are written here:
//! - procfs parses /proc/PID/status for the capability sets (`caps`): a
//!   few reads per command, of a file whose process-chosen text (Name) the
//!   kernel escapes, so a tested parser is better than another. A holder's
//!   uid is only the `Uid:` line of it (`proc::euid`): procfs parses every
//!   line into a map, which was a quarter of the daemon's time answering
//!   `who`.
//! - Written here, and fuzzed (fuzz/): the fd walk in `fdmap` (openat +
//!   readlinkat into a stack buffer, then kcmp against one known holder,
//!   never a String or a PathBuf per fd: it visits every fd of every
//!   process; the `who` bench measures the scan at about a quarter of
//!   `ss`'s wall time, and procfs's `fd()` iterator, like `ss`, builds a
//!   path and reads a link target per fd);
//!   /proc/net in `procnet` (the same); and stat, cmdline and cgroup in
//!   `process`, because procfs reads cmdline as UTF-8 and drops its empty
//!   arguments (reaper keeps argv exactly, lossily decoded, for the
//!   identity check before a signal), and stat is read once per ancestor
//!   and per identity check, where its 52 fields would be parsed to use 6.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;
use std::os::fd::AsRawFd;
use std::time::Instant;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use crate::vocab::{Family, Proto, SocketState, UnownedReason};

mod bpfasm;
mod btf;
pub(crate) mod charge;
pub mod container;
pub mod example;
pub mod fditer;
pub(crate) mod fdmap;
pub mod job;
pub mod netns;
pub mod process;
pub mod procnet;
mod records;
pub mod sockdiag;
pub mod taskenv;

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
    pub state: SocketState,
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
    /// The CI job it runs in (from its environment), when one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<job::Job>,
}

/// A socket and every process holding it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Holding {
    pub socket: Socket,
    /// Empty for sockets no process holds (TIME_WAIT, orphaned FIN_WAIT, or an
    /// owner that could not be read): see `unowned_reason`.
    pub processes: Vec<Process>,
    /// Why there is no process: "time-wait", "orphaned", "unreadable".
    pub unowned_reason: Option<UnownedReason>,
    /// The container the port belongs to: the one its holder runs in, or
    /// the one a proxy (docker-proxy) publishes it for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<container::Container>,
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
    /// Whether sockets came from sock_diag ("netlink") or /proc/net ("procfs"),
    /// or "netlink+procfs" when namespaces differed.
    pub socket_source: String,
    /// Unreadable processes by errno name ("EPERM": 1), to say why.
    #[serde(default)]
    pub unreadable_by_errno: BTreeMap<String, u32>,
    /// What went wrong with namespaces: not entered, or read from /proc/net
    /// because netlink failed there.
    #[serde(default)]
    pub netns_errors: Vec<String>,
    /// Where the processes holding the sockets came from: "bpf_iter" (the
    /// kernel's task_file iterator walked every file table) or "proc" (a
    /// walk of /proc/PID/fd). Absent when no socket needed an owner.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub holder_source: String,
    /// The container engine's socket is there but did not answer: containers
    /// are named from their cgroup only.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub engine_error: Option<String>,
}

impl ScanGaps {
    /// True when the scan saw everything it looked for.
    pub fn is_empty(&self) -> bool {
        self.unreadable_pids == 0 && self.vanished_pids == 0 && self.unreadable_netns == 0
    }
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
    /// `ip netns` names of the namespaces that have one.
    #[serde(default)]
    pub netns_names: BTreeMap<u64, String>,
    /// The namespace reaper itself runs in.
    #[serde(default)]
    pub own_netns: Option<u64>,
}

/// Whether a socket answers a query (the namespace is filtered before).
pub fn matches(q: &Query, s: &Socket) -> bool {
    q.port.is_none_or(|p| p == s.port)
        && q.proto.is_none_or(|p| p == s.proto)
        // `--listening` is what `ss -l` shows (a display filter; what blocks
        // a bind is bindmodel's answer).
        && (!q.listening_only || s.state.is_listening())
        // Pending connections (the /proc/net tables list them) are the
        // listener's business; sock_diag is not asked for them either.
        && !(s.inode == 0 && matches!(s.state, SocketState::SynRecv | SocketState::NewSynRecv))
}

/// Why a socket nobody holds is still there (see [`UnownedReason`]).
pub fn unowned_reason(s: &Socket, gaps: &ScanGaps) -> UnownedReason {
    if s.state == SocketState::TimeWait {
        UnownedReason::TimeWait
    } else if s.inode == 0 {
        UnownedReason::Orphaned
    } else if gaps.unreadable_pids > 0 {
        UnownedReason::Unreadable
    } else {
        UnownedReason::NoProcess
    }
}

/// Order of states in answers: what holds a port for new binds first.
fn state_rank(state: SocketState) -> u8 {
    match state {
        SocketState::Listen | SocketState::Unconn => 0,
        SocketState::BoundInactive => 1,
        SocketState::TimeWait => 3,
        _ => 2,
    }
}

/// Threads for the fd walk: one per core, up to 4 (/proc reads scale with
/// cores but contend on the same locks beyond that).
/// REAPER_SCAN_THREADS overrides, to measure.
fn walk_threads() -> usize {
    if let Some(n) = std::env::var("REAPER_SCAN_THREADS")
        .ok()
        .and_then(|v| v.parse().ok())
    {
        return n;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(2)
        .min(4)
}

/// Scans the live system. Never fails because one process or namespace is
/// unreadable: those are counted in `gaps`. Holdings are tied to their
/// containers and jobs ([`enrich`]). What does fail (no /proc, no socket
/// source at all) is [`Error::Scan`](crate::error::Error::Scan).
pub fn scan(query: &Query) -> Result<Scan, crate::error::Error> {
    scan_knowing(query, None)
}

/// [`scan`] for a caller that has read the process table already (a job
/// hook): whether a holder's job has ended is read from `table`, not from
/// a second read of every process.
pub fn scan_knowing(
    query: &Query,
    table: Option<&job::Table>,
) -> Result<Scan, crate::error::Error> {
    let started = Instant::now();
    let mut scan = scan_sockets(query).map_err(crate::error::Error::Scan)?;
    let engine = enrich_knowing(&mut scan.holdings, table);
    scan.gaps.engine_error = engine.error;
    scan.duration_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(scan)
}

/// [`scan`] that looks only at these processes' fds: the sockets they
/// hold, with those processes only (a `reaper job` asks about a job's
/// processes first, without walking every fd on the host).
/// `table` as in [`scan_knowing`].
pub fn scan_of(query: &Query, pids: &[u32], table: Option<&job::Table>) -> anyhow::Result<Scan> {
    let started = Instant::now();
    let mut scan = scan_pids(query, Some(pids))?;
    let engine = enrich_knowing(&mut scan.holdings, table);
    scan.gaps.engine_error = engine.error;
    scan.duration_ms = started.elapsed().as_secs_f64() * 1e3;
    Ok(scan)
}

/// The scan without containers and jobs: sockets and their processes.
pub fn scan_sockets(query: &Query) -> anyhow::Result<Scan> {
    scan_pids(query, None)
}

fn scan_pids(query: &Query, only: Option<&[u32]>) -> anyhow::Result<Scan> {
    let started = Instant::now();
    let mut proc = fdmap::open_proc().context("opening /proc (is procfs mounted?)")?;
    let proc_fd = proc.as_raw_fd();
    // Listed only when a /proc path needs them: the iterators do not.
    let mut pids = Pids {
        proc: &mut proc,
        list: only.map(<[u32]>::to_vec),
    };
    let own = netns::own_inode();
    let mut namespaces = match (query.netns, own) {
        // Our own namespace only: no need to read every process's ns link.
        (Some(want), Some(own)) if want == own => vec![netns::Namespace {
            inode: own,
            entry: crate::proc::path("self", "ns/net"),
            pid: None,
            name: None,
        }],
        // Every process: the kernel's task iterator names each one's
        // namespace in one read; else a readlink per process.
        _ if only.is_none() => match fditer::netns_of_tasks() {
            Ok(pairs) => netns::list_of(pairs),
            Err(why) => {
                tracing::debug!("task iterator not used ({why}); reading /proc/PID/ns/net");
                netns::list(proc_fd, pids.get())
            }
        },
        _ => netns::list(proc_fd, pids.get()),
    };
    if let Some(want) = query.netns {
        namespaces.retain(|n| n.inode == want);
    }
    tracing::debug!(
        pids = pids.list.as_ref().map(Vec::len),
        netns = namespaces.len(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "listed processes and namespaces"
    );
    let mut gaps = ScanGaps::default();
    let mut listed = list_sockets(query, &namespaces, own, &mut gaps);
    tracing::debug!(
        sockets = listed.sockets.len(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "listed sockets"
    );

    let wanted: HashSet<u64> = listed
        .sockets
        .iter()
        .map(|s| s.inode)
        .filter(|&i| i != 0)
        .collect();
    let walk = walk_fds(proc_fd, &mut pids, &wanted, only.is_none(), &mut gaps);
    gaps.unreadable_pids = walk.unreadable.len() as u32;
    gaps.vanished_pids = walk.vanished.len() as u32;
    gaps.unreadable_by_errno = walk.unreadable_by_errno();
    tracing::debug!(
        wanted = wanted.len(),
        ms = started.elapsed().as_secs_f64() * 1e3,
        "walked fd tables"
    );

    let details = read_holders(&walk, &mut gaps);
    let holdings = holdings_of(listed.sockets, &walk, &details, &gaps);
    listed.netns_seen.sort_unstable();
    Ok(Scan {
        holdings,
        gaps,
        netns_seen: listed.netns_seen,
        duration_ms: started.elapsed().as_secs_f64() * 1e3,
        netns_names: listed.netns_names,
        own_netns: own,
    })
}

/// Who holds the wanted sockets: from the kernel's task_file iterator when
/// every process is asked about and it runs here, else from /proc.
fn walk_fds(
    proc_fd: std::os::fd::RawFd,
    pids: &mut Pids,
    wanted: &HashSet<u64>,
    everyone: bool,
    gaps: &mut ScanGaps,
) -> fdmap::FdWalk {
    if wanted.is_empty() {
        return fdmap::FdWalk::default();
    }
    if everyone {
        match fditer::holders_of(wanted) {
            Ok(walk) => {
                gaps.holder_source = "bpf_iter".into();
                return walk;
            }
            Err(why) => tracing::debug!("task_file iterator not used ({why}); walking /proc"),
        }
    }
    gaps.holder_source = "proc".into();
    fdmap::holders_of(proc_fd, pids.get(), wanted, walk_threads())
}

/// The pids of /proc, read on first use.
struct Pids<'a> {
    proc: &'a mut nix::dir::Dir,
    list: Option<Vec<u32>>,
}

impl Pids<'_> {
    fn get(&mut self) -> &[u32] {
        self.list.get_or_insert_with(|| fdmap::list_pids(self.proc))
    }
}

/// The sockets a scan found, and the namespaces it read them from.
struct Listed {
    sockets: Vec<Socket>,
    netns_seen: Vec<u64>,
    netns_names: BTreeMap<u64, String>,
}

/// The query's sockets in every namespace; a namespace that cannot be
/// read is a gap, not an error.
fn list_sockets(
    query: &Query,
    namespaces: &[netns::Namespace],
    own: Option<u64>,
    gaps: &mut ScanGaps,
) -> Listed {
    let protos: Vec<Proto> = match query.proto {
        Some(p) => vec![p],
        None => vec![Proto::Tcp, Proto::Udp],
    };
    let mut sources = std::collections::BTreeSet::new();
    let mut listed = Listed {
        sockets: Vec::new(),
        netns_seen: Vec::new(),
        netns_names: BTreeMap::new(),
    };
    for ns in namespaces {
        match netns::sockets_in(ns, own, &protos, query.listening_only, query.port) {
            Ok(listing) => {
                listed.netns_seen.push(ns.inode);
                sources.insert(listing.source);
                if let Some(e) = listing.netlink_error {
                    gaps.netns_errors.push(format!(
                        "netns {}: sock_diag failed ({e}); read /proc/net instead",
                        ns.inode
                    ));
                }
                listed
                    .sockets
                    .extend(listing.sockets.into_iter().filter(|s| matches(query, s)));
            }
            Err(e) => {
                gaps.unreadable_netns += 1;
                gaps.netns_errors.push(format!(
                    "netns {} (via {}): {e}",
                    ns.inode,
                    ns.entry.display()
                ));
            }
        }
        if let Some(name) = &ns.name {
            listed.netns_names.insert(ns.inode, name.clone());
        }
    }
    gaps.socket_source = sources.into_iter().collect::<Vec<_>>().join("+");
    listed
}

/// The details of every process that holds a wanted socket.
fn read_holders(walk: &fdmap::FdWalk, gaps: &mut ScanGaps) -> HashMap<u32, Process> {
    let mut reader = process::Reader::new();
    let holder_pids: std::collections::BTreeSet<u32> =
        walk.holders.values().flatten().copied().collect();
    let mut details: HashMap<u32, Process> = HashMap::new();
    for pid in holder_pids {
        match reader.process(pid) {
            Some(p) => {
                details.insert(pid, p);
            }
            // Held when the fds were walked, gone before its details were read.
            None => gaps.vanished_pids += 1,
        }
    }
    details
}

/// One holding per socket with its processes, in the order people read:
/// port, proto, netns, state.
fn holdings_of(
    sockets: Vec<Socket>,
    walk: &fdmap::FdWalk,
    details: &HashMap<u32, Process>,
    gaps: &ScanGaps,
) -> Vec<Holding> {
    let mut holdings: Vec<Holding> = sockets
        .into_iter()
        .map(|socket| {
            let processes: Vec<Process> = walk
                .holders
                .get(&socket.inode)
                .into_iter()
                .flatten()
                .filter_map(|pid| details.get(pid).cloned())
                .collect();
            let unowned_reason = processes.is_empty().then(|| unowned_reason(&socket, gaps));
            Holding {
                socket,
                processes,
                unowned_reason,
                container: None,
            }
        })
        .collect();
    holdings.sort_by(|a, b| {
        let key = |h: &Holding| {
            let s = &h.socket;
            (
                s.port,
                s.proto,
                s.netns,
                state_rank(s.state),
                s.addr,
                s.peer,
                s.inode,
            )
        };
        key(a).cmp(&key(b))
    });
    holdings
}

/// Ties holdings to their containers and marks the jobs of their
/// processes that ended. The engine is asked only when a holder is in a
/// container or is a proxy; what it said is returned (for DNAT look-ups).
pub fn enrich(holdings: &mut [Holding]) -> container::EngineView {
    enrich_knowing(holdings, None)
}

/// [`enrich`], with the process table when the caller has it (see
/// [`scan_knowing`]).
pub fn enrich_knowing(
    holdings: &mut [Holding],
    table: Option<&job::Table>,
) -> container::EngineView {
    job::mark_ended(
        holdings.iter_mut().flat_map(|h| h.processes.iter_mut()),
        table,
    );
    let wanted = holdings.iter().flat_map(|h| &h.processes).any(|p| {
        container::is_proxy(p)
            || p.cgroup
                .as_deref()
                .and_then(container::from_cgroup)
                .is_some()
    });
    if !wanted {
        return container::EngineView::default();
    }
    let asked = Instant::now();
    let view = container::EngineView::query();
    tracing::debug!(
        containers = view.containers.len(),
        answered = view.answered,
        ms = asked.elapsed().as_secs_f64() * 1e3,
        "asked the container engine"
    );
    for h in holdings.iter_mut() {
        h.container = container::attribute(h, &view);
        if let Some(c) = h.container.as_mut() {
            if c.via == Some(container::Via::Proxy) && !c.stale && !c.id.is_empty() {
                let t = Instant::now();
                c.listeners = listeners_inside(c, h.socket.proto, h.socket.port);
                tracing::debug!(
                    listeners = c.listeners.len(),
                    ms = t.elapsed().as_secs_f64() * 1e3,
                    "scanned inside the container"
                );
            }
        }
    }
    view
}

/// The processes inside a container that listen on the port it publishes
/// as `host_port`: a scan of the container's network namespace.
pub fn listeners_inside(c: &container::Container, proto: Proto, host_port: u16) -> Vec<Process> {
    let Some(port) = c
        .ports
        .iter()
        .find(|p| p.host_port == host_port && p.proto == proto.to_string())
        .map(|p| p.container_port)
    else {
        return Vec::new();
    };
    let pid = match c.pid {
        Some(p) => Some(p),
        None => container::engine::main_pid(&c.id).ok().flatten(),
    };
    let Some(netns) = pid.and_then(netns::netns_of_pid) else {
        return Vec::new();
    };
    let query = Query {
        port: Some(port),
        proto: Some(proto),
        netns: Some(netns),
        listening_only: true,
    };
    let mut found: Vec<Process> = scan_sockets(&query)
        .map(|s| s.holdings.into_iter().flat_map(|h| h.processes).collect())
        .unwrap_or_default();
    found.sort_by_key(|p| p.pid);
    found.dedup_by_key(|p| p.pid);
    found
}

/// Reads one process's details; None when it is gone.
pub fn process(pid: u32) -> Option<Process> {
    process::Reader::new().process(pid)
}

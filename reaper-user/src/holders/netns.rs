//! holders: **network namespaces** -> sockets -> fd map -> process details.
//!
//! A port is per network namespace: the same port bound in two namespaces is
//! two holders and no conflict. So a scan first finds every namespace on the
//! host — the distinct inodes of /proc/PID/ns/net, plus the ones `ip netns
//! add` pinned in /run/netns, which may have no process in them at all — and
//! then lists each one's sockets from inside it: a short-lived thread enters
//! it with setns(CLONE_NEWNET) and opens the sock_diag socket there (a
//! socket answers for the namespace it was created in). Reading
//! /proc/thread-self/net from that thread is the fallback when netlink fails.

use std::fs::File;
use std::io;
use std::os::fd::{AsFd, RawFd};
use std::os::unix::fs::MetadataExt;
use std::path::PathBuf;

use nix::fcntl::readlinkat;
use nix::sched::{setns, CloneFlags};

pub use crate::proc::{netns_of_pid, parse_ns_link};

use super::{procnet, sockdiag, Socket};
use crate::vocab::Proto;

/// One network namespace and a way into it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Namespace {
    /// Inode of the namespace (as in `readlink /proc/PID/ns/net`).
    pub inode: u64,
    /// A file that refers to it: /proc/PID/ns/net or /run/netns/NAME.
    pub entry: PathBuf,
    /// A process in it, when one was seen.
    pub pid: Option<u32>,
    /// Its `ip netns` name, when it has one.
    pub name: Option<String>,
}

/// Where `ip netns` pins named namespaces.
const NAMED: &str = "/run/netns";

/// The namespace this process is in.
pub fn own_inode() -> Option<u64> {
    crate::proc::metadata("thread-self", "ns/net")
        .ok()
        .map(|m| m.ino())
}

/// Every network namespace on the host, by inode, ascending. A process whose
/// ns link cannot be read is skipped here: it is counted when its fds are.
pub fn list(proc_fd: RawFd, pids: &[u32]) -> Vec<Namespace> {
    list_of(pids.iter().filter_map(|&pid| {
        let link = readlinkat(Some(proc_fd), format!("{pid}/ns/net").as_str()).ok()?;
        Some((pid, parse_ns_link(&link.to_string_lossy())?))
    }))
}

/// The namespaces of these (pid, namespace inode) pairs and the ones
/// `ip netns add` pinned, by inode, ascending; each entered through
/// /proc/PID/ns/net of its first pid (or its /run/netns file).
pub fn list_of(pairs: impl IntoIterator<Item = (u32, u64)>) -> Vec<Namespace> {
    let mut found: std::collections::BTreeMap<u64, Namespace> = Default::default();
    if let Ok(entries) = std::fs::read_dir(NAMED) {
        for e in entries.flatten() {
            let path = e.path();
            if let Ok(m) = std::fs::metadata(&path) {
                found.entry(m.ino()).or_insert(Namespace {
                    inode: m.ino(),
                    entry: path,
                    pid: None,
                    name: Some(e.file_name().to_string_lossy().into_owned()),
                });
            }
        }
    }
    for (pid, inode) in pairs {
        let ns = found.entry(inode).or_insert(Namespace {
            inode,
            entry: PathBuf::from(format!("/proc/{pid}/ns/net")),
            pid: Some(pid),
            name: None,
        });
        ns.pid.get_or_insert(pid);
    }
    found.into_values().collect()
}

/// The cookie of a namespace (what the kernel side's `bpf_get_netns_cookie`
/// reports), read from a socket made inside it by a short-lived thread.
pub fn cookie_of(ns: &Namespace, own: Option<u64>) -> io::Result<u64> {
    let here = || {
        let fd = crate::sys::socket(libc::AF_UNIX, libc::SOCK_DGRAM)?;
        crate::sys::netns_cookie(fd.as_fd())
    };
    if Some(ns.inode) == own {
        return here();
    }
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<u64> {
            let file = File::open(&ns.entry)?;
            if file.metadata()?.ino() != ns.inode {
                return Err(io::Error::other("the namespace's entry changed"));
            }
            crate::sys::setns_net(file.as_fd())?;
            here()
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Every namespace reaper can see (as [`list`] finds them), by the cookie
/// the kernel side reports: how an event of a process reaper cannot see
/// (outside its pid namespace) still names its namespace's inode.
pub fn by_cookie() -> Vec<(u64, u64)> {
    let Ok(mut proc) = super::fdmap::open_proc() else {
        return Vec::new();
    };
    let pids = super::fdmap::list_pids(&mut proc);
    let own = own_inode();
    list(std::os::fd::AsRawFd::as_raw_fd(&proc), &pids)
        .iter()
        .filter_map(|ns| Some((cookie_of(ns, own).ok()?, ns.inode)))
        .collect()
}

/// The sockets of one namespace, and where they came from.
#[derive(Debug)]
pub struct Listing {
    pub sockets: Vec<Socket>,
    /// "netlink" or "procfs".
    pub source: &'static str,
    /// Why netlink was not used, when it was not.
    pub netlink_error: Option<String>,
}

/// Set REAPER_SOCKET_SOURCE=procfs to skip netlink (to test the fallback
/// against the same oracle, or on a kernel whose sock_diag misbehaves).
pub fn forced_procfs() -> bool {
    std::env::var_os("REAPER_SOCKET_SOURCE").is_some_and(|v| v == "procfs")
}

/// Lists the sockets of `ns`, entering it from a short-lived thread unless
/// it is our own. Fails when the namespace cannot be entered or read.
pub fn sockets_in(
    ns: &Namespace,
    own: Option<u64>,
    protos: &[Proto],
    listening_only: bool,
    port: Option<u16>,
) -> io::Result<Listing> {
    if Some(ns.inode) == own {
        return Ok(list_here(ns.inode, protos, listening_only, port));
    }
    let entered = std::thread::scope(|s| {
        s.spawn(|| -> io::Result<Listing> {
            let file = File::open(&ns.entry)?;
            // The pid may have been reused by a process in another namespace
            // since the listing: trust the file, not the path.
            let inode = file.metadata()?.ino();
            if inode != ns.inode {
                return Err(io::Error::other(format!(
                    "{} now refers to namespace {inode}, not {}",
                    ns.entry.display(),
                    ns.inode
                )));
            }
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok(list_here(inode, protos, listening_only, port))
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    });
    match (entered, ns.pid) {
        (Ok(l), _) => Ok(l),
        // Without CAP_SYS_ADMIN, /proc/PID/net still shows that process's namespace.
        (Err(e), Some(pid)) if e.kind() == io::ErrorKind::PermissionDenied => {
            let dir = crate::proc::path(pid, "net");
            let sockets =
                read_procfs(&dir, ns.inode, protos, listening_only, false).map_err(|e2| {
                    io::Error::other(format!(
                        "cannot enter it ({e}) nor read {} ({e2})",
                        dir.display()
                    ))
                })?;
            Ok(Listing {
                sockets,
                source: "procfs",
                netlink_error: Some(format!("cannot enter the namespace: {e}")),
            })
        }
        (Err(e), _) => Err(e),
    }
}

/// Lists the sockets of the namespace the calling thread is in; with
/// `port`, sock_diag sends only that port's (the /proc/net fallback reads
/// every socket: the caller filters).
fn list_here(inode: u64, protos: &[Proto], listening_only: bool, port: Option<u16>) -> Listing {
    let netlink = if forced_procfs() {
        Err(io::Error::other("REAPER_SOCKET_SOURCE=procfs"))
    } else {
        sockdiag::open().and_then(|fd| sockdiag::dump_all(&fd, inode, protos, listening_only, port))
    };
    match netlink {
        Ok(sockets) => Listing {
            sockets,
            source: "netlink",
            netlink_error: None,
        },
        Err(e) => {
            let bindv6only = crate::proc::sysctl("net/ipv6/bindv6only").is_ok_and(|s| s == "1");
            let dir = crate::proc::path("thread-self", "net");
            let sockets =
                read_procfs(&dir, inode, protos, listening_only, bindv6only).unwrap_or_default();
            Listing {
                sockets,
                source: "procfs",
                netlink_error: Some(e.to_string()),
            }
        }
    }
}

/// Reads the /proc/net tables under `dir`. A missing table (no IPv6 on the
/// host) is empty; failing to read every table is an error.
fn read_procfs(
    dir: &std::path::Path,
    inode: u64,
    protos: &[Proto],
    listening_only: bool,
    bindv6only: bool,
) -> io::Result<Vec<Socket>> {
    let ms_per_tick = 1000 / crate::proc::clock_ticks().max(1);
    let mut sockets = Vec::new();
    let mut last_err = None;
    let mut read_any = false;
    for (file, proto, family) in procnet::FILES {
        if !protos.contains(&proto) {
            continue;
        }
        match std::fs::read(dir.join(file)) {
            Ok(text) => {
                read_any = true;
                let t = procnet::Table {
                    proto,
                    family,
                    netns: inode,
                    ms_per_tick,
                    bindv6only,
                };
                sockets.extend(
                    procnet::parse_table(&text, t)
                        .into_iter()
                        .filter(|s| !listening_only || s.state.is_listening()),
                );
            }
            Err(e) => last_err = Some(e),
        }
    }
    match (read_any, last_err) {
        (false, Some(e)) => Err(e),
        _ => Ok(sockets),
    }
}

//! bindmodel: **the facts** a judgement reads, and where each comes from.
//!
//! | fact                 | source                                                    |
//! |----------------------|-----------------------------------------------------------|
//! | netns, proto, port   | the namespace sock_diag was asked in; the dump's family   |
//! | local address        | sock_diag `idiag_src`                                     |
//! | state -> activity    | sock_diag `idiag_state` (TCP CLOSE in a dump = bound)     |
//! | uid                  | sock_diag `idiag_uid` (`sk_uid`)                          |
//! | IPV6_V6ONLY          | sock_diag `INET_DIAG_SKV6ONLY`, sent for LISTEN and CLOSE |
//! |                      | sockets only; forced on for a bound specific IPv6 address |
//! | SO_REUSEADDR,        | not in sock_diag: read exactly with `pidfd_getfd` +       |
//! | SO_REUSEPORT (and    | `getsockopt` from a process that holds the socket (needs  |
//! | v6only of the rest)  | root, or ptrace rights over the holder)                   |
//!
//! What cannot be known here: the reuse flags (and v6only) of a socket no
//! process holds (TIME_WAIT, orphaned connections). The kernel's socket
//! iterators (`bpf_iter_tcp`) could read them; reaper does not load one yet,
//! so they stay `None` and the answer lists both outcomes.

use std::net::IpAddr;
use std::os::fd::{AsFd, OwnedFd};
use std::os::unix::fs::MetadataExt;

use super::{Activity, Existing};
use crate::holders::{Holding, Socket};
use crate::vocab::{Proto, SocketState};

/// A socket's activity from its state in `ss` words.
pub fn activity(s: &Socket) -> Activity {
    match (s.proto, s.state) {
        (Proto::Tcp, SocketState::Listen) => Activity::Listen,
        (Proto::Tcp, SocketState::TimeWait) => Activity::TimeWait,
        // BOUND: a claim the daemon's ledger knows as bound, not listening.
        (Proto::Tcp, SocketState::BoundInactive | SocketState::Unconn | SocketState::Bound) => {
            Activity::Bound
        }
        (Proto::Tcp, _) => Activity::Connected,
        (Proto::Udp, _) if s.peer.is_some() => Activity::Connected,
        (Proto::Udp, _) => Activity::Bound,
    }
}

/// Whether sock_diag's facts alone show that `s` keeps the next server
/// from binding ([`super::blocks_next_server`]): a listener, any UDP
/// socket, and not a TIME_WAIT or a connection whose options are not read.
pub fn surely_blocks_next_server(s: &Socket) -> bool {
    super::blocks_next_server(&from_socket(s)) == Some(true)
}

/// Socket options read from the socket itself.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Flags {
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// None for IPv4 sockets.
    pub v6only: Option<bool>,
}

/// What sock_diag alone says of a socket (reuse flags unknown).
pub fn from_socket(s: &Socket) -> Existing {
    let act = activity(s);
    let v6only = match s.addr {
        IpAddr::V4(_) => Some(false),
        IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => Some(false),
        // sock_diag's INET_DIAG_SKV6ONLY (LISTEN, CLOSE); `dual_stack` keeps
        // it for wildcards.
        IpAddr::V6(a)
            if a.is_unspecified() && matches!(act, Activity::Listen | Activity::Bound) =>
        {
            Some(!s.dual_stack)
        }
        // bind() to a specific IPv6 address sets IPV6_V6ONLY.
        IpAddr::V6(_) if matches!(act, Activity::Listen | Activity::Bound) => Some(true),
        IpAddr::V6(_) => None,
    };
    Existing {
        netns: s.netns,
        proto: s.proto,
        addr: s.addr,
        port: s.port,
        activity: act,
        uid: s.uid,
        v6only,
        reuseaddr: None,
        reuseport: None,
    }
}

/// Everything known of a holding: sock_diag's facts, then the flags read
/// from the first holder that lets us (`read_flags`).
pub fn of_holding(h: &Holding) -> Existing {
    let mut e = from_socket(&h.socket);
    if h.socket.inode == 0 {
        return e;
    }
    if let Some(f) = h
        .processes
        .iter()
        .find_map(|p| read_flags(p.pid, h.socket.inode))
    {
        e.reuseaddr = Some(f.reuseaddr);
        e.reuseport = Some(f.reuseport);
        if f.v6only.is_some() {
            e.v6only = f.v6only;
        }
    }
    e
}

/// Reads SO_REUSEADDR, SO_REUSEPORT and IPV6_V6ONLY of the socket `inode`
/// that `pid` holds: finds its fd in /proc/PID/fd, duplicates it into this
/// process with `pidfd_getfd` (PTRACE_MODE_ATTACH: root, or the same user
/// without restrictions), checks the duplicate is that inode, and asks
/// `getsockopt`. None when any step is refused or the socket went away.
pub fn read_flags(pid: u32, inode: u64) -> Option<Flags> {
    let fd = fd_of(pid, inode)?;
    let pidfd = crate::sys::pidfd_open(pid).ok()?;
    let sock = crate::sys::pidfd_getfd(pidfd.as_fd(), fd).ok()?;
    // The fd may have been reused between the readlink and the copy.
    let meta = std::fs::File::from(sock.try_clone().ok()?)
        .metadata()
        .ok()?;
    if meta.ino() != inode {
        return None;
    }
    let domain = int_opt(&sock, libc::SOL_SOCKET, libc::SO_DOMAIN)?;
    Some(Flags {
        reuseaddr: int_opt(&sock, libc::SOL_SOCKET, libc::SO_REUSEADDR)? != 0,
        reuseport: int_opt(&sock, libc::SOL_SOCKET, libc::SO_REUSEPORT)? != 0,
        v6only: if domain == libc::AF_INET6 {
            Some(int_opt(&sock, libc::IPPROTO_IPV6, libc::IPV6_V6ONLY)? != 0)
        } else {
            None
        },
    })
}

fn int_opt(fd: &OwnedFd, level: i32, name: i32) -> Option<i32> {
    crate::sys::getsockopt_int(fd.as_fd(), level, name).ok()
}

/// The fd number under which `pid` holds socket `inode`.
fn fd_of(pid: u32, inode: u64) -> Option<i32> {
    let dir = crate::proc::read_dir(pid, "fd").ok()?;
    for ent in dir.flatten() {
        let Ok(target) = std::fs::read_link(ent.path()) else {
            continue;
        };
        let t = target.to_string_lossy();
        if crate::holders::fdmap::parse_socket_link(t.as_bytes()) == Some(inode) {
            return ent.file_name().to_str()?.parse().ok();
        }
    }
    None
}

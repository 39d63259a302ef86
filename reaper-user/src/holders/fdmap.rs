//! holders: sockets -> **fd map** -> process details.
//!
//! Joins socket inodes to the processes that hold them, from the links in
//! /proc/PID/fd (`socket:[INODE]`). This is the expensive step of a scan: one
//! readlink per open file on the host. So it is done only for the inodes a
//! query needs (skipped entirely when no socket matched), relative to an open
//! directory fd (`openat`/`getdents`/`readlinkat`, no path walk from / for
//! each link), and split across threads. Every process is walked: a socket
//! inherited across fork is held by all of them, and `ss -p` lists them all.
//!
//! A process that cannot be read (EPERM even as root: init on some VMs,
//! hidepid, an LSM) or that exits mid-walk is counted, never fatal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::ffi::CStr;
use std::os::fd::{AsRawFd, RawFd};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::{readlinkat, OFlag};
use nix::sys::stat::Mode;

/// What walking the fd tables found.
#[derive(Debug, Default)]
pub struct FdWalk {
    /// Socket inode -> pids holding it, ascending.
    pub holders: HashMap<u64, Vec<u32>>,
    /// Pids whose fd table could not be read, with the errno.
    pub unreadable: Vec<(u32, Errno)>,
    /// Pids that exited while being walked.
    pub vanished: Vec<u32>,
}

impl FdWalk {
    fn merge(&mut self, other: FdWalk) {
        for (inode, pids) in other.holders {
            self.holders.entry(inode).or_default().extend(pids);
        }
        self.unreadable.extend(other.unreadable);
        self.vanished.extend(other.vanished);
    }

    /// Unreadable pids counted by errno name ("EPERM": 3).
    pub fn unreadable_by_errno(&self) -> BTreeMap<String, u32> {
        let mut m = BTreeMap::new();
        for (_, e) in &self.unreadable {
            *m.entry(crate::util::errno_name(*e as i32)).or_default() += 1;
        }
        m
    }
}

/// The inode in a `socket:[INODE]` link target; None for anything else
/// (files, pipes `pipe:[N]`, anon inodes, a truncated read).
pub fn parse_socket_link(target: &[u8]) -> Option<u64> {
    let digits = target.strip_prefix(b"socket:[")?.strip_suffix(b"]")?;
    if digits.is_empty() || digits.len() > 20 || !digits.iter().all(u8::is_ascii_digit) {
        return None;
    }
    std::str::from_utf8(digits).ok()?.parse().ok()
}

/// A pid from a /proc entry name; None for `self`, `sys`, `1a`, `01`...
pub fn parse_pid(name: &[u8]) -> Option<u32> {
    if name.is_empty() || name.len() > 10 || name[0] == b'0' || !name.iter().all(u8::is_ascii_digit)
    {
        return None;
    }
    std::str::from_utf8(name).ok()?.parse().ok()
}

/// Opens /proc as a directory: the fd every other lookup is relative to.
pub fn open_proc() -> nix::Result<Dir> {
    Dir::open(
        "/proc",
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    )
}

/// Every pid (thread-group leader) in /proc, ascending.
pub fn list_pids(proc: &mut Dir) -> Vec<u32> {
    let mut pids: Vec<u32> = proc
        .iter()
        .filter_map(|e| e.ok())
        .filter_map(|e| parse_pid(e.file_name().to_bytes()))
        .collect();
    pids.sort_unstable();
    pids
}

/// Finds every pid holding one of `wanted`, walking `pids` on `threads` threads.
pub fn holders_of(proc_fd: RawFd, pids: &[u32], wanted: &HashSet<u64>, threads: usize) -> FdWalk {
    let threads = threads.clamp(1, pids.len().max(1));
    let mut total = FdWalk::default();
    if wanted.is_empty() {
        return total;
    }
    let parts: Vec<FdWalk> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                // Interleaved, so that neither thread gets all the big
                // processes that cluster at low or high pids.
                s.spawn(move || {
                    let mut out = FdWalk::default();
                    for pid in pids.iter().skip(k).step_by(threads) {
                        walk_one(proc_fd, *pid, wanted, &mut out);
                    }
                    out
                })
            })
            .collect();
        workers
            .into_iter()
            .map(|w| w.join().unwrap_or_default())
            .collect()
    });
    for p in parts {
        total.merge(p);
    }
    for pids in total.holders.values_mut() {
        pids.sort_unstable();
        pids.dedup();
    }
    total.unreadable.sort_unstable_by_key(|(p, _)| *p);
    total.vanished.sort_unstable();
    total
}

fn is_gone(e: Errno) -> bool {
    matches!(e, Errno::ENOENT | Errno::ESRCH)
}

/// Walks one process's fd table.
fn walk_one(proc_fd: RawFd, pid: u32, wanted: &HashSet<u64>, out: &mut FdWalk) {
    let path = format!("{pid}/fd");
    let mut dir = match Dir::openat(
        Some(proc_fd),
        path.as_str(),
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        Mode::empty(),
    ) {
        Ok(d) => d,
        Err(e) if is_gone(e) => return out.vanished.push(pid),
        Err(e) => return out.unreadable.push((pid, e)),
    };
    let dir_fd = dir.as_raw_fd();
    let mut closed_fds = false;
    for entry in dir.iter() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) if is_gone(e) => return out.vanished.push(pid),
            Err(e) => return out.unreadable.push((pid, e)),
        };
        let name: &CStr = entry.file_name();
        if name.to_bytes().first() == Some(&b'.') {
            continue;
        }
        match readlinkat(Some(dir_fd), name) {
            Ok(target) => {
                use std::os::unix::ffi::OsStrExt;
                if let Some(inode) = parse_socket_link(target.as_bytes()) {
                    if wanted.contains(&inode) {
                        let pids = out.holders.entry(inode).or_default();
                        if pids.last() != Some(&pid) {
                            pids.push(pid);
                        }
                    }
                }
            }
            // The fd was closed since getdents, or the whole process exited.
            Err(e) if is_gone(e) => closed_fds = true,
            // Every other link of this process will fail the same way.
            Err(e) => return out.unreadable.push((pid, e)),
        }
    }
    if closed_fds
        && nix::sys::stat::fstatat(
            Some(proc_fd),
            pid.to_string().as_str(),
            nix::fcntl::AtFlags::empty(),
        )
        .is_err()
    {
        out.vanished.push(pid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn socket_links() {
        assert_eq!(parse_socket_link(b"socket:[12345]"), Some(12345));
        assert_eq!(
            parse_socket_link(b"socket:[18446744073709551615]"),
            Some(u64::MAX)
        );
        for bad in [
            &b"socket:[18446744073709551616]"[..],
            b"socket:[]",
            b"socket:[12",
            b"socket:[-1]",
            b"socket:[+1]",
            b"socket:[1 ]",
            b"pipe:[12345]",
            b"/dev/null",
            b"/tmp/socket:[1]",
            b"anon_inode:[eventfd]",
            b"socket:[\xff]",
            b"",
        ] {
            assert_eq!(
                parse_socket_link(bad),
                None,
                "{:?}",
                String::from_utf8_lossy(bad)
            );
        }
    }

    #[test]
    fn pids() {
        assert_eq!(parse_pid(b"1"), Some(1));
        assert_eq!(parse_pid(b"4194304"), Some(4194304));
        for bad in [
            &b"self"[..],
            b"thread-self",
            b"01",
            b"",
            b"1a",
            b"99999999999",
            b"4294967296",
            b"-1",
        ] {
            assert_eq!(parse_pid(bad), None);
        }
    }

    #[test]
    fn walks_our_own_socket() {
        // Our own process is always readable: a socket we open must be found.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let inode = {
            use std::os::fd::AsRawFd;
            let t = std::fs::read_link(format!("/proc/self/fd/{}", l.as_raw_fd())).unwrap();
            parse_socket_link(t.as_os_str().as_encoded_bytes()).unwrap()
        };
        let mut proc = open_proc().unwrap();
        let pids = list_pids(&mut proc);
        let me = std::process::id();
        assert!(pids.contains(&me));
        let walk = holders_of(proc.as_raw_fd(), &pids, &HashSet::from([inode]), 2);
        assert_eq!(walk.holders.get(&inode), Some(&vec![me]));
        // A pid that does not exist counts as vanished.
        let walk = holders_of(
            proc.as_raw_fd(),
            &[u32::MAX - 1],
            &HashSet::from([inode]),
            2,
        );
        assert_eq!(walk.vanished, vec![u32::MAX - 1]);
    }
}

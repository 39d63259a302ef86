//! holders: sockets -> **fd map** -> process details.
//!
//! Joins socket inodes to the processes that hold them, from the links in
//! /proc/PID/fd (`socket:[INODE]`). This is the expensive step of a scan: one
//! look per open file on the host. So it is done only for the inodes a
//! query needs (skipped entirely when no socket matched), split across
//! threads, with readlinkat relative to an open /proc/PID/fd (no path walk
//! from / for each link) until each wanted socket has one known holder, then
//! with kcmp(KCMP_FILE) against that holder's fd, which is ~2.5x cheaper
//! (see [`holders_of`]). Every process is walked: a socket
//! inherited across fork is held by all of them, and `ss -p` lists them all.
//!
//! A process that cannot be read (EPERM even as root: init on some VMs,
//! hidepid, an LSM) or that exits mid-walk is counted, never fatal.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::fd::{AsRawFd, IntoRawFd, OwnedFd, RawFd};

use nix::dir::Dir;
use nix::errno::Errno;
use nix::fcntl::OFlag;
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
        crate::proc::ROOT,
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
///
/// Each fd is examined with readlink (`socket:[INODE]`) until every wanted
/// socket has been seen once; from then on, when there are at most
/// [`KCMP_MAX_SOCKETS`] of them, the remaining fds are compared with that
/// first holder's fd by kcmp(KCMP_FILE): a socket has exactly one struct
/// file, so "same file" is "same socket", and kcmp skips the path lookup,
/// the revalidation and the d_path that make a readlink of /proc/PID/fd/N
/// cost ~2.5x more. The reference fds are checked again at the end; if one
/// was closed meanwhile, the processes compared against it are read again
/// with readlink.
pub fn holders_of(proc_fd: RawFd, pids: &[u32], wanted: &HashSet<u64>, threads: usize) -> FdWalk {
    let threads = threads.clamp(1, pids.len().max(1));
    let mut total = FdWalk::default();
    if wanted.is_empty() {
        return total;
    }
    let refs =
        (wanted.len() <= KCMP_MAX_SOCKETS && kcmp_works(proc_fd)).then(|| Refs::new(wanted.len()));
    let refs = refs.as_ref();
    let parts: Vec<FdWalk> = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|k| {
                // Interleaved, so that neither thread gets all the big
                // processes that cluster at low or high pids.
                s.spawn(move || {
                    walk_share(
                        proc_fd,
                        pids.iter().copied().skip(k).step_by(threads),
                        wanted,
                        refs,
                    )
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

/// Above this many wanted sockets, kcmp (one call per socket per fd) costs
/// more than one readlink per fd.
pub const KCMP_MAX_SOCKETS: usize = 2;

/// A holder's fd of a wanted socket, to compare other fds with.
#[derive(Clone, Copy, Debug)]
struct Ref {
    inode: u64,
    pid: u32,
    fd: i32,
}

/// The references found so far, shared by the walking threads.
struct Refs {
    wanted: usize,
    found: std::sync::Mutex<HashMap<u64, Ref>>,
    ready: std::sync::atomic::AtomicBool,
}

impl Refs {
    fn new(wanted: usize) -> Refs {
        Refs {
            wanted,
            found: Default::default(),
            ready: Default::default(),
        }
    }
    fn offer(&self, r: Ref) {
        if self.is_ready() {
            return;
        }
        let mut found = self.found.lock().unwrap_or_else(|e| e.into_inner());
        found.entry(r.inode).or_insert(r);
        if found.len() == self.wanted {
            self.ready.store(true, std::sync::atomic::Ordering::Release);
        }
    }
    fn is_ready(&self) -> bool {
        self.ready.load(std::sync::atomic::Ordering::Acquire)
    }
    fn snapshot(&self) -> Vec<Ref> {
        self.found
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .copied()
            .collect()
    }
}

/// Whether a reference fd still refers to its socket.
fn still_holds(r: &Ref) -> bool {
    crate::proc::read_link(r.pid, &format!("fd/{}", r.fd))
        .ok()
        .and_then(|t| parse_socket_link(t.as_os_str().as_encoded_bytes()))
        == Some(r.inode)
}

/// kcmp needs CONFIG_KCMP (checkpoint/restore support); probe it once.
fn kcmp_works(fd: RawFd) -> bool {
    let me = std::process::id();
    crate::sys::kcmp_file(me, me, fd, fd) == Ok(true)
}

/// How one fd of a process is examined.
#[derive(Clone, Copy)]
enum Probe<'a> {
    /// readlink: the truth for any number of sockets; offers references.
    Readlink(&'a HashSet<u64>, Option<&'a Refs>),
    /// kcmp against the references.
    Kcmp(&'a [Ref]),
}

impl Probe<'_> {
    /// Ok(true) when the fd is open; wanted inodes it holds go to `hits`.
    fn examine(self, dir_fd: RawFd, pid: u32, fd: i32, hits: &mut Vec<u64>) -> Result<bool, Errno> {
        match self {
            Probe::Readlink(wanted, refs) => match readlink_fd(dir_fd, fd) {
                Ok(link) => {
                    if let Some(inode) = parse_socket_link(link.as_slice()) {
                        if wanted.contains(&inode) {
                            hits.push(inode);
                            if let Some(refs) = refs {
                                refs.offer(Ref { inode, pid, fd });
                            }
                        }
                    }
                    Ok(true)
                }
                Err(Errno::ENOENT) => Ok(false),
                Err(e) => Err(e),
            },
            Probe::Kcmp(refs) => {
                for r in refs {
                    match crate::sys::kcmp_file(r.pid, pid, r.fd, fd) {
                        Ok(true) => {
                            hits.push(r.inode);
                            return Ok(true);
                        }
                        Ok(false) => {}
                        Err(Errno::EBADF) => return Ok(false),
                        Err(e) => return Err(e),
                    }
                }
                Ok(true)
            }
        }
    }
}

/// One thread's share of the walk.
fn walk_share(
    proc_fd: RawFd,
    pids: impl Iterator<Item = u32>,
    wanted: &HashSet<u64>,
    refs: Option<&Refs>,
) -> FdWalk {
    let mut out = FdWalk::default();
    let mut hits = Vec::new();
    let mut snapshot: Option<Vec<Ref>> = None;
    // Processes walked by kcmp, with what they hold: kept aside until the
    // references are known to have stayed valid.
    let mut tentative: Vec<(u32, Vec<u64>)> = Vec::new();
    let readlink = Probe::Readlink(wanted, refs);
    for pid in pids {
        crate::progress::PIDS_WALKED.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if snapshot.is_none() && refs.is_some_and(Refs::is_ready) {
            snapshot = refs.map(Refs::snapshot);
        }
        hits.clear();
        if let Some(r) = &snapshot {
            match walk_one(proc_fd, pid, Probe::Kcmp(r), &mut hits, &mut out) {
                Ok(()) => {
                    tentative.push((pid, hits.clone()));
                    continue;
                }
                // Denied, gone, or a reference went away: readlink says which.
                Err(_) => hits.clear(),
            }
        }
        if walk_one(proc_fd, pid, readlink, &mut hits, &mut out).is_ok() {
            commit(&mut out, pid, &hits);
        }
    }
    if let Some(r) = &snapshot {
        if r.iter().all(still_holds) {
            for (pid, held) in &tentative {
                commit(&mut out, *pid, held);
            }
        } else {
            tracing::debug!(
                "a reference socket fd closed during the walk; reading those processes again"
            );
            for (pid, _) in tentative {
                hits.clear();
                if walk_one(proc_fd, pid, readlink, &mut hits, &mut out).is_ok() {
                    commit(&mut out, pid, &hits);
                }
            }
        }
    }
    out
}

fn commit(out: &mut FdWalk, pid: u32, hits: &[u64]) {
    for &inode in hits {
        let pids = out.holders.entry(inode).or_default();
        if pids.last() != Some(&pid) {
            pids.push(pid);
        }
    }
}

fn is_gone(e: Errno) -> bool {
    matches!(e, Errno::ENOENT | Errno::ESRCH)
}

/// Walks one process's fd table with `probe`.
///
/// The fd numbers: the size of /proc/PID/fd is its number of open fds
/// (Linux 6.2+), and fd tables are mostly dense, so fds 0, 1, 2... are
/// examined by number until that many were found. This skips getdents, which
/// costs the kernel a dentry lookup per entry (proc_fill_cache). At the first
/// run of misses (a hole, or a lone high fd like 255), the directory is
/// listed from that fd on: its offset is fd + 2, so the listing costs only
/// the tail. On kernels where the size is 0, the whole directory is listed.
///
/// A process that is gone or unreadable is recorded in `out` and is Ok; an
/// error of the probe itself is returned (a readlink walk records it).
fn walk_one(
    proc_fd: RawFd,
    pid: u32,
    probe: Probe,
    hits: &mut Vec<u64>,
    out: &mut FdWalk,
) -> Result<(), Errno> {
    let path = format!("{pid}/fd");
    let open_dir = || crate::sys::openat_dir(proc_fd, &path);
    // kcmp needs no directory fd: count the fds with one fstatat and open
    // the directory only if it must be listed. readlink resolves names
    // relative to it, so it is opened first.
    let (dir, open_fds) = match probe {
        Probe::Kcmp(_) => match nix::sys::stat::fstatat(
            Some(proc_fd),
            path.as_str(),
            nix::fcntl::AtFlags::empty(),
        ) {
            Ok(st) => (None, st.st_size.max(0) as u64),
            Err(e) => return record(probe, pid, e, out),
        },
        Probe::Readlink(..) => {
            let dir = match open_dir() {
                Ok(d) => d,
                Err(e) => return record(probe, pid, e, out),
            };
            match nix::sys::stat::fstat(dir.as_raw_fd()) {
                Ok(st) => (Some(dir), st.st_size.max(0) as u64),
                Err(e) => return record(probe, pid, e, out),
            }
        }
    };
    let dir_fd = dir.as_ref().map(|d| d.as_raw_fd()).unwrap_or(-1);
    let mut found = 0u64;
    let mut fd = 0i32;
    let mut misses = 0u32;
    while found < open_fds && misses < PROBE_MISSES {
        match probe.examine(dir_fd, pid, fd, hits) {
            Ok(true) => {
                found += 1;
                misses = 0;
            }
            Ok(false) => misses += 1,
            Err(e) => return record(probe, pid, e, out),
        }
        fd += 1;
    }
    if open_fds > 0 && found >= open_fds {
        return Ok(());
    }
    let dir = match dir {
        Some(d) => d,
        None => match open_dir() {
            Ok(d) => d,
            Err(e) => return record(probe, pid, e, out),
        },
    };
    list_from(dir, proc_fd, pid, fd, probe, hits, out)
}

/// A readlink walk records a failure (the process is gone or unreadable:
/// every other link would fail the same way); a kcmp walk hands it back.
fn record(probe: Probe, pid: u32, e: Errno, out: &mut FdWalk) -> Result<(), Errno> {
    match probe {
        Probe::Kcmp(_) => Err(e),
        Probe::Readlink(..) if is_gone(e) => {
            out.vanished.push(pid);
            Ok(())
        }
        Probe::Readlink(..) => {
            out.unreadable.push((pid, e));
            Ok(())
        }
    }
}

/// Consecutive misses while examining fds by number before listing instead.
const PROBE_MISSES: u32 = 2;

/// A link target short enough to be `socket:[INODE]`, on the stack.
struct Link {
    buf: [u8; 40],
    len: usize,
}

impl Link {
    fn as_slice(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// readlinkat(dir, "FD") into a small stack buffer: this runs once per open
/// file on the host, so no allocation and no path formatting on the heap. A
/// target that fills the buffer is cut, which is fine: it is no socket link.
fn readlink_fd(dir: RawFd, fd: i32) -> Result<Link, Errno> {
    let mut name = [0u8; 12];
    let mut n = fd.unsigned_abs();
    let mut digits = [0u8; 10];
    let mut i = digits.len();
    loop {
        i -= 1;
        digits[i] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    let len = digits.len() - i;
    name[..len].copy_from_slice(&digits[i..]);
    let mut link = Link {
        buf: [0; 40],
        len: 0,
    };
    // Zero-filled past the digits: NUL-terminated.
    let name = std::ffi::CStr::from_bytes_until_nul(&name).map_err(|_| Errno::EINVAL)?;
    link.len = crate::sys::readlinkat(dir, name, &mut link.buf)?;
    Ok(link)
}

/// Lists /proc/PID/fd from fd `first` on and examines each entry.
fn list_from(
    dir: OwnedFd,
    proc_fd: RawFd,
    pid: u32,
    first: i32,
    probe: Probe,
    hits: &mut Vec<u64>,
    out: &mut FdWalk,
) -> Result<(), Errno> {
    // Offsets 0 and 1 are "." and ".."; fd N is at offset N + 2.
    if let Err(e) = nix::unistd::lseek(
        dir.as_raw_fd(),
        first as i64 + 2,
        nix::unistd::Whence::SeekSet,
    ) {
        return record(probe, pid, e, out);
    }
    let mut dir = match Dir::from_fd(dir.into_raw_fd()) {
        Ok(d) => d,
        Err(e) => return record(probe, pid, e, out),
    };
    let dir_fd = dir.as_raw_fd();
    let mut closed_fds = false;
    for entry in dir.iter() {
        let entry = match entry {
            Ok(e) => e,
            Err(e) => return record(probe, pid, e, out),
        };
        let Some(fd) = std::str::from_utf8(entry.file_name().to_bytes())
            .ok()
            .and_then(|n| n.parse::<i32>().ok())
        else {
            continue;
        };
        if fd < first {
            continue;
        }
        match probe.examine(dir_fd, pid, fd, hits) {
            Ok(true) => {}
            // The fd was closed since getdents, or the whole process exited.
            Ok(false) => closed_fds = true,
            Err(e) => return record(probe, pid, e, out),
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
    Ok(())
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
    fn kcmp_says_same_file_for_a_dup_only() {
        use std::os::fd::AsRawFd;
        let a = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let b = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
        let dup = a.try_clone().unwrap();
        let me = std::process::id();
        if !kcmp_works(a.as_raw_fd()) {
            eprintln!("kcmp is not available on this kernel (CONFIG_KCMP off): readlink only");
            return;
        }
        assert_eq!(
            crate::sys::kcmp_file(me, me, a.as_raw_fd(), dup.as_raw_fd()),
            Ok(true)
        );
        assert_eq!(
            crate::sys::kcmp_file(me, me, a.as_raw_fd(), b.as_raw_fd()),
            Ok(false)
        );
        assert_eq!(
            crate::sys::kcmp_file(me, me, a.as_raw_fd(), 1 << 20),
            Err(Errno::EBADF)
        );
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

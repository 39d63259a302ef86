//! The /proc readers, in one place: a process's stat, argv, exe and network
//! namespace, read for a scan (holders), a verdict (policy) and the identity
//! re-read before a signal (reap) alike. The parsers are pure functions over
//! bytes (fuzzed): what /proc shows is partly chosen by the process (comm,
//! argv) and nothing in it is trusted to be UTF-8 or well-formed.

use std::io;
use std::path::PathBuf;

/// The fields of /proc/PID/stat that reaper uses.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Stat {
    pub pid: u32,
    /// Between the first '(' and the last ')': may hold spaces, parentheses
    /// and bytes that are not UTF-8 (decoded lossily).
    pub comm: String,
    pub state: char,
    pub ppid: u32,
    /// Field 5: the process group.
    pub pgrp: u32,
    pub session: i32,
    /// Field 9: the kernel's PF_* flags (PF_KTHREAD marks kernel threads).
    pub flags: u32,
    /// Field 22: start time in clock ticks since boot.
    pub start_ticks: u64,
}

/// Parses /proc/PID/stat. The comm is cut at the LAST ')' because a process
/// may name itself `a) b (c`; everything after it is numeric fields.
pub fn parse_stat(b: &[u8]) -> Option<Stat> {
    let open = b.iter().position(|&c| c == b'(')?;
    let close = b.iter().rposition(|&c| c == b')')?;
    if close < open {
        return None;
    }
    let pid: u32 = std::str::from_utf8(&b[..open]).ok()?.trim().parse().ok()?;
    let comm = String::from_utf8_lossy(&b[open + 1..close]).into_owned();
    let rest = std::str::from_utf8(b.get(close + 1..)?).ok()?;
    // Field 3 (state) is the first token after the comm, so field N is at N - 3.
    let fields: Vec<&str> = rest.split_ascii_whitespace().collect();
    let field = |n: usize| fields.get(n - 3).copied();
    let state = field(3)?.chars().next()?;
    let ppid = field(4)?.parse().ok()?;
    let pgrp = field(5)?.parse().ok()?;
    let session = field(6)?.parse().ok()?;
    let flags = field(9)?.parse().ok()?;
    let start_ticks = field(22)?.parse().ok()?;
    Some(Stat {
        pid,
        comm,
        state,
        ppid,
        pgrp,
        session,
        flags,
        start_ticks,
    })
}

/// argv from /proc/PID/cmdline: NUL-separated, lossily decoded. Empty
/// arguments in the middle are kept (they are real argv entries); the
/// trailing NUL does not make an extra one. A process that rewrote its argv
/// (setproctitle) may leave no NUL at all: then it is one argument; the
/// padding such a process leaves after its new title (nginx fills the old
/// argv area with spaces or NULs) is trimmed, so "nginx: worker process"
/// reads as itself. An empty file is no argv at all (a kernel thread, a
/// zombie); "\0" is an argv of one empty string, which a process can be
/// exec'd with. The one parser of the crate: the identity compared before a signal
/// ([`cmdline`]) reads argv alike.
pub fn parse_cmdline(b: &[u8]) -> Vec<String> {
    if b.is_empty() {
        return Vec::new();
    }
    let body = b.strip_suffix(b"\0").unwrap_or(b);
    // Padding: trailing spaces and NULs after the last argument's text.
    let body = match body.iter().rposition(|&c| c != 0 && c != b' ') {
        Some(end) => &body[..=end],
        None => body,
    };
    body.split(|&c| c == 0)
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect()
}

/// Whether a process looks orphaned, from its stat alone.
///
/// The heuristic: its parent is init (ppid 1) and it is not a session leader.
/// Init's own children by design (services) are started with `setsid`, so
/// they lead their session; a process left behind when the shell or job that
/// started it exited keeps that job's session and lands on init. Limits:
/// a double-forking daemon looks orphaned (it is, on purpose: its cmdline and
/// cgroup tell it apart); orphans adopted by a subreaper (systemd --user, a
/// container's init, a CI runner) are not flagged, because whether a parent
/// set PR_SET_CHILD_SUBREAPER cannot be read from /proc.
pub fn looks_orphaned(stat: &Stat) -> bool {
    stat.pid > 1 && stat.ppid == 1 && stat.session != stat.pid as i32
}

pub use crate::sys::clock_ticks;

/// Where procfs is mounted: every path of this module starts here.
pub const ROOT: &str = "/proc";

/// `/proc/WHO/NAME`: `who` is a pid, `self` or `thread-self`.
pub fn path(who: impl std::fmt::Display, name: &str) -> PathBuf {
    PathBuf::from(format!("{ROOT}/{who}/{name}"))
}

/// Reads a /proc file whole; None when the process is gone or unreadable.
///
/// For the small per-process files it serves (stat, cmdline, cgroup,
/// environ, status) the kernel fills as much of a read as the file has, so
/// a read shorter than asked is the whole file: one read of a 4 KiB buffer
/// does for most, where std's reader probes with 32 bytes and doubles (five
/// to seven reads, and an fstat for a size /proc does not give).
pub fn read(who: impl std::fmt::Display, name: &str) -> Option<Vec<u8>> {
    read_path(&path(who, name)).ok()
}

fn read_path(path: &std::path::Path) -> io::Result<Vec<u8>> {
    use std::io::Read as _;
    let mut f = crate::sys::open_read(path)?;
    let mut buf = vec![0u8; 4096];
    let mut n = 0;
    loop {
        match f.read(&mut buf[n..]) {
            Ok(0) => break,
            Ok(k) => {
                n += k;
                if n < buf.len() {
                    break;
                }
                let grown = buf.len() * 2;
                buf.resize(grown, 0);
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    buf.truncate(n);
    Ok(buf)
}

/// Reads a /proc file as text, its trailing newline kept.
pub fn read_string(who: impl std::fmt::Display, name: &str) -> io::Result<String> {
    std::fs::read_to_string(path(who, name))
}

/// The target of a /proc link (`exe`, `ns/net`, `fd/3`).
pub fn read_link(who: impl std::fmt::Display, name: &str) -> io::Result<PathBuf> {
    std::fs::read_link(path(who, name))
}

/// The entries of a /proc directory (`fd`).
pub fn read_dir(who: impl std::fmt::Display, name: &str) -> io::Result<std::fs::ReadDir> {
    std::fs::read_dir(path(who, name))
}

/// Opens a /proc file (a namespace link to enter, `environ` to read into a
/// buffer of the caller's).
pub fn open(who: impl std::fmt::Display, name: &str) -> io::Result<std::fs::File> {
    std::fs::File::open(path(who, name))
}

/// The metadata of a /proc entry (a namespace link's inode and device).
pub fn metadata(who: impl std::fmt::Display, name: &str) -> io::Result<std::fs::Metadata> {
    std::fs::metadata(path(who, name))
}

/// The effective uid from /proc/PID/status (the second field of `Uid:`):
/// the one `ps -o user` shows and the one permissions are checked against.
pub fn euid(pid: u32) -> Option<u32> {
    parse_euid(&read(pid, "status")?)
}

/// The effective uid in the text of a status file.
pub fn parse_euid(status: &[u8]) -> Option<u32> {
    let line = status
        .split(|&c| c == b'\n')
        .find_map(|l| l.strip_prefix(b"Uid:"))?;
    let text = std::str::from_utf8(line).ok()?;
    text.split_ascii_whitespace().nth(1)?.parse().ok()
}

/// /proc/WHO/status as procfs parses it (uids, capability sets).
pub fn status(who: impl std::fmt::Display) -> Option<procfs::process::Status> {
    use procfs::FromRead;
    procfs::process::Status::from_file(path(who, "status")).ok()
}

/// The pids in /proc (thread-group leaders), in directory order; an entry
/// that is not a number (`self`, `sys`) is passed over.
pub fn pids() -> io::Result<impl Iterator<Item = u32>> {
    Ok(std::fs::read_dir(ROOT)?
        .flatten()
        .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok())))
}

/// Reads small /proc files of many processes (a walk of every process:
/// stat and environ) with one /proc fd, each file opened as PID/NAME
/// relative to it (no lookup of "/proc" per file), one path and one read
/// buffer, zeroed once, that grows only for a file larger than it.
pub struct Reader {
    dir: Option<std::fs::File>,
    path: String,
    buf: Vec<u8>,
}

impl Default for Reader {
    fn default() -> Reader {
        Reader::new()
    }
}

impl Reader {
    pub fn new() -> Reader {
        Reader {
            dir: std::fs::File::open(ROOT).ok(),
            path: String::with_capacity(32),
            buf: Vec::new(),
        }
    }

    /// /proc/PID/NAME whole; None when the process is gone or unreadable.
    /// For the files it is used for (stat: one record; environ: copied
    /// until its end or the buffer's), a read shorter than asked is the
    /// whole file: the read that would return 0 is saved.
    pub fn read(&mut self, pid: u32, name: &str) -> Option<&[u8]> {
        use std::fmt::Write as _;
        use std::io::Read as _;
        use std::os::fd::AsRawFd as _;
        self.path.clear();
        let _ = write!(self.path, "{pid}/{name}");
        let mut f = match &self.dir {
            Some(d) => crate::sys::openat_read(d.as_raw_fd(), &self.path).ok()?,
            None => std::fs::File::open(format!("{ROOT}/{}", self.path)).ok()?,
        };
        if self.buf.is_empty() {
            self.buf.resize(64 * 1024, 0);
        }
        let mut n = 0;
        loop {
            if n == self.buf.len() {
                let grown = self.buf.len() * 2;
                self.buf.resize(grown, 0);
            }
            match f.read(&mut self.buf[n..]) {
                Ok(0) => return Some(&self.buf[..n]),
                Ok(k) => {
                    n += k;
                    if n < self.buf.len() {
                        return Some(&self.buf[..n]);
                    }
                }
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(_) => return None,
            }
        }
    }
}

/// /proc/sys/NAME (`net/ipv4/ip_local_port_range`), trimmed. A namespaced
/// setting (net.*) answers for the reading thread's namespace.
pub fn sysctl(name: &str) -> io::Result<String> {
    Ok(std::fs::read_to_string(format!("{ROOT}/sys/{name}"))?
        .trim()
        .to_string())
}

/// Writes /proc/sys/NAME.
pub fn write_sysctl(name: &str, value: &str) -> io::Result<()> {
    std::fs::write(format!("{ROOT}/sys/{name}"), value)
}

/// A number from /proc/sys/NAME, else `default` (unreadable, not a number).
pub fn sysctl_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    sysctl(name)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

/// Reads /proc/PID/stat.
pub fn read_stat(pid: u32) -> Option<Stat> {
    parse_stat(&read(pid, "stat")?)
}

/// The netns inode of a process, from /proc/PID/ns/net; None when the
/// process is gone or its links are not ours to read.
pub fn netns_of_pid(pid: u32) -> Option<u64> {
    let link = read_link(pid, "ns/net").ok()?;
    parse_ns_link(&link.to_string_lossy())
}

/// Parses "net:[4026531840]", the target of /proc/PID/ns/net.
pub fn parse_ns_link(s: &str) -> Option<u64> {
    s.strip_prefix("net:[")?.strip_suffix(']')?.parse().ok()
}

/// PF_KTHREAD in the `flags` field of /proc/PID/stat (include/linux/sched.h).
pub const PF_KTHREAD: u32 = 0x0020_0000;

impl Stat {
    /// Reads /proc/PID/stat; NotFound when the process is gone.
    pub fn read(pid: u32) -> io::Result<Stat> {
        let text = read_path(&path(pid, "stat"))?;
        parse_stat(&text).ok_or_else(|| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("/proc/{pid}/stat is not in the expected format"),
            )
        })
    }

    /// Parses a stat line (see [`parse_stat`]).
    pub fn parse(text: &str) -> Option<Stat> {
        parse_stat(text.as_bytes())
    }

    pub fn is_kernel_thread(&self) -> bool {
        self.flags & PF_KTHREAD != 0
    }
}

/// argv from /proc/PID/cmdline, parsed by [`parse_cmdline`]: the identity
/// compared at signal time is read exactly as the judged one was (padding
/// of a rewritten argv trimmed alike). Err (NotFound) when it is gone.
pub fn cmdline(pid: u32) -> io::Result<Vec<String>> {
    Ok(parse_cmdline(&std::fs::read(path(pid, "cmdline"))?))
}

/// The target of /proc/PID/exe; None when unreadable (a kernel thread,
/// EPERM, gone).
pub fn exe(pid: u32) -> Option<String> {
    read_link(pid, "exe")
        .ok()
        .map(|p| p.to_string_lossy().into_owned())
}

/// The network namespace inode of a process (`readlink /proc/PID/ns/net`).
pub fn netns_of(pid: u32) -> io::Result<u64> {
    let link = read_link(pid, "ns/net")?;
    let s = link.to_string_lossy();
    parse_ns_link(&s).ok_or_else(|| {
        io::Error::new(
            io::ErrorKind::InvalidData,
            format!("/proc/{pid}/ns/net points at '{s}'"),
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn euid_is_the_second_uid_field() {
        let status = b"Name:\tUid: 7\\nx\nUmask:\t0022\nState:\tS (sleeping)\nUid:\t1000\t0\t0\t0\nGid:\t5\t5\t5\t5\n";
        assert_eq!(parse_euid(status), Some(0));
        assert_eq!(parse_euid(b"Name:\tx\nGid:\t1\t1\t1\t1\n"), None);
        assert_eq!(parse_euid(b"Uid:\t1000\n"), None);
        assert_eq!(parse_euid(b"Uid:\t1\tx\t1\t1\n"), None);
    }

    #[test]
    fn reads_a_file_longer_than_the_first_buffer_whole_and_agrees_with_procfs() {
        // environ and cmdline can pass 4 KiB; this process's status is read
        // the same way the holders' are.
        let me = std::process::id();
        let status = read(me, "status").unwrap();
        assert!(status.ends_with(b"\n"));
        let procfs = status_of_self();
        assert_eq!(parse_euid(&status), Some(procfs));
        assert_eq!(euid(me), Some(procfs));
        let long = std::env::temp_dir().join(format!("reaper-proc-read-{me}"));
        let text: Vec<u8> = (0..20_000u32).map(|i| b'a' + (i % 26) as u8).collect();
        std::fs::write(&long, &text).unwrap();
        assert_eq!(read_path(&long).unwrap(), text);
        std::fs::remove_file(&long).unwrap();
        assert!(read(u32::MAX, "status").is_none());
    }

    fn status_of_self() -> u32 {
        status("self").unwrap().euid
    }
}

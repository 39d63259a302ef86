//! bindmodel: **the namespace's settings** that decide a bind besides its
//! sockets, read from /proc/sys/net/ipv4 as the namespace sees them (these
//! sysctls are per network namespace: a thread reads them after entering it).

use std::fs::File;
use std::io;
use std::os::fd::AsFd;

use nix::sched::{setns, CloneFlags};

use crate::holders::netns::Namespace;

/// The sysctls a bind depends on, in one namespace.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Sysctls {
    /// `net.ipv4.ip_unprivileged_port_start` (1024 when unreadable).
    pub unprivileged_port_start: u16,
    /// `net.ipv4.ip_local_port_range`.
    pub ephemeral: Option<(u16, u16)>,
    /// `net.ipv4.ip_local_reserved_ports`, as ranges.
    pub reserved: Vec<(u16, u16)>,
}

impl Sysctls {
    pub fn is_reserved(&self, port: u16) -> bool {
        self.reserved
            .iter()
            .any(|&(lo, hi)| (lo..=hi).contains(&port))
    }
}

/// Reads them in `ns`, or here when `ns` is None or our own namespace.
pub fn read(ns: Option<&Namespace>, own: Option<u64>) -> io::Result<Sysctls> {
    let Some(ns) = ns.filter(|n| Some(n.inode) != own) else {
        return Ok(read_here());
    };
    std::thread::scope(|s| {
        s.spawn(|| -> io::Result<Sysctls> {
            let file = File::open(&ns.entry)?;
            setns(file.as_fd(), CloneFlags::CLONE_NEWNET).map_err(io::Error::from)?;
            Ok(read_here())
        })
        .join()
        .unwrap_or_else(|_| Err(io::Error::other("the namespace thread panicked")))
    })
}

/// Reads them in the namespace with inode `netns`, found as a scan finds
/// namespaces (a process in it, or an `ip netns` name).
pub fn read_netns(netns: u64) -> io::Result<Sysctls> {
    use std::os::fd::AsRawFd;
    let own = crate::holders::netns::own_inode();
    if Some(netns) == own {
        return Ok(read_here());
    }
    let mut proc = crate::holders::fdmap::open_proc().map_err(io::Error::from)?;
    let pids = crate::holders::fdmap::list_pids(&mut proc);
    let namespaces = crate::holders::netns::list(proc.as_raw_fd(), &pids);
    let ns = namespaces
        .iter()
        .find(|n| n.inode == netns)
        .ok_or_else(|| io::Error::other(format!("no network namespace {netns}")))?;
    read(Some(ns), own)
}

fn read_here() -> Sysctls {
    // /proc/sys/net answers for the reading thread's namespace (the
    // kernel looks at current->nsproxy), so a thread that entered another
    // namespace reads that one's.
    let get = |name: &str| crate::proc::sysctl(&format!("net/ipv4/{name}")).unwrap_or_default();
    Sysctls {
        unprivileged_port_start: get("ip_unprivileged_port_start")
            .trim()
            .parse()
            .unwrap_or(1024),
        ephemeral: parse_range(&get("ip_local_port_range")),
        reserved: parse_port_list(&get("ip_local_reserved_ports")).unwrap_or_default(),
    }
}

/// "32768\t60999" -> (32768, 60999).
pub fn parse_range(s: &str) -> Option<(u16, u16)> {
    let mut it = s.split_whitespace().map(|w| w.parse::<u16>());
    match (it.next(), it.next()) {
        (Some(Ok(lo)), Some(Ok(hi))) if lo <= hi => Some((lo, hi)),
        _ => None,
    }
}

/// "8080,9000-9100" (the kernel's format, also the config's words) -> ranges.
pub fn parse_port_list(s: &str) -> Option<Vec<(u16, u16)>> {
    let mut out = Vec::new();
    for part in s.trim().split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (lo, hi) = match part.split_once('-') {
            Some((a, b)) => (a.trim().parse().ok()?, b.trim().parse().ok()?),
            None => {
                let p = part.parse().ok()?;
                (p, p)
            }
        };
        if lo > hi || lo == 0 {
            return None;
        }
        out.push((lo, hi));
    }
    Some(out)
}

/// `ranges` merged into `have`: sorted, overlapping and adjacent ranges
/// joined, in the kernel's words ("8080,9000-9100").
pub fn merge_ranges(have: &[(u16, u16)], add: &[(u16, u16)]) -> String {
    let mut all: Vec<(u16, u16)> = have.iter().chain(add).copied().collect();
    all.sort_unstable();
    let mut out: Vec<(u16, u16)> = Vec::new();
    for (lo, hi) in all {
        match out.last_mut() {
            Some(last) if lo as u32 <= last.1 as u32 + 1 => last.1 = last.1.max(hi),
            _ => out.push((lo, hi)),
        }
    }
    out.iter()
        .map(|&(lo, hi)| {
            if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            }
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// Adds `ranges` to this namespace's `net.ipv4.ip_local_reserved_ports`
/// (merged with what is there) and returns the list as the kernel has it
/// afterwards. Needs CAP_NET_ADMIN and a writable /proc/sys.
pub fn reserve(ranges: &[(u16, u16)]) -> io::Result<String> {
    const NAME: &str = "net/ipv4/ip_local_reserved_ports";
    let have = parse_port_list(&crate::proc::sysctl(NAME)?).unwrap_or_default();
    crate::proc::write_sysctl(NAME, &merge_ranges(&have, ranges))?;
    crate::proc::sysctl(NAME)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranges_and_lists_parse_as_the_kernel_prints_them() {
        assert_eq!(parse_range("32768\t60999\n"), Some((32768, 60999)));
        assert_eq!(parse_range("40000 40000"), Some((40000, 40000)));
        assert_eq!(parse_range("x"), None);
        assert_eq!(
            parse_port_list("8080,9000-9100\n"),
            Some(vec![(8080, 8080), (9000, 9100)])
        );
        assert_eq!(parse_port_list("\n"), Some(vec![]));
        assert_eq!(parse_port_list("9100-9000"), None);
    }

    #[test]
    fn reserved_ports_merge_with_what_is_there() {
        assert_eq!(
            merge_ranges(&[], &[(8080, 8080), (9000, 9100)]),
            "8080,9000-9100"
        );
        assert_eq!(
            merge_ranges(&[(9050, 9200), (8081, 8081)], &[(8080, 8080), (9000, 9100)]),
            "8080-8081,9000-9200"
        );
        assert_eq!(merge_ranges(&[], &[]), "");
    }
}

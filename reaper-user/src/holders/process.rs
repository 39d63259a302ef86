//! holders: sockets -> fd map -> **process details**.
//!
//! Who a holder is, from /proc/PID/{stat,status,cmdline,cgroup,exe,ns/net}:
//! name, command line, user, start time, parent chain, cgroup and container,
//! and whether it looks orphaned. Read only for the few pids that hold a
//! matching socket. Of status only the `Uid:` line is read (proc.rs);
//! stat, cmdline and cgroup are parsed by the pure functions here, fuzzed,
//! because /proc content there is partly chosen by the process (comm,
//! argv) and nothing in it is trusted to be UTF-8 or well-formed (see
//! holders/mod.rs for why not procfs).

use std::collections::HashMap;

use crate::proc::read;
pub use crate::proc::{clock_ticks, looks_orphaned, parse_cmdline, parse_stat, read_stat, Stat};

use super::Process;
use crate::util::{rfc3339, BootClock};

/// The most telling cgroup path in /proc/PID/cgroup: the v2 path (`0::/x`)
/// unless it is the root, then the first non-root v1 path (hybrid hosts keep
/// the useful path there), else whatever the v2 line says.
pub fn parse_cgroup(b: &[u8]) -> Option<String> {
    let text = String::from_utf8_lossy(b);
    let mut v2 = None;
    let mut v1 = None;
    for line in text.lines() {
        // hierarchy-ID:controllers:path; the path itself may contain ':'.
        let mut parts = line.splitn(3, ':');
        let (Some(id), Some(_), Some(path)) = (parts.next(), parts.next(), parts.next()) else {
            continue;
        };
        if id == "0" {
            v2 = Some(path.to_string());
        } else if v1.is_none() && path != "/" && !path.is_empty() {
            v1 = Some(path.to_string());
        }
    }
    match v2 {
        Some(p) if p != "/" => Some(p),
        other => v1.or(other),
    }
}

/// A container id carried by a cgroup path: a 64-hex-digit component, bare
/// (`/docker/<id>`, `/kubepods/.../<id>`) or wrapped by the runtime's
/// systemd unit name (`docker-<id>.scope`, `cri-containerd-<id>.scope`,
/// `crio-<id>.scope`, `libpod-<id>.scope`). The innermost one wins.
pub fn container_id(cgroup_path: &str) -> Option<String> {
    cgroup_path.rsplit('/').find_map(|component| {
        let name = component.strip_suffix(".scope").unwrap_or(component);
        let id = name.rsplit('-').next().unwrap_or(name);
        (id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit()))
            .then(|| id.to_ascii_lowercase())
    })
}

/// Reads processes' details, remembering the stats of parents it walked so
/// that holders sharing ancestors cost one read each.
pub struct Reader {
    stats: HashMap<u32, Option<Stat>>,
    clock: BootClock,
    ticks: u64,
    users: HashMap<u32, Option<String>>,
}

impl Default for Reader {
    fn default() -> Self {
        Reader::new()
    }
}

/// How deep a parent chain is followed: pid namespaces nest at most 32 deep,
/// and real trees are shallow; a bound guards against a cycle made by pid reuse.
const MAX_ANCESTORS: usize = 64;

impl Reader {
    pub fn new() -> Reader {
        Reader {
            stats: HashMap::new(),
            clock: BootClock::now(),
            ticks: clock_ticks(),
            users: HashMap::new(),
        }
    }

    fn stat(&mut self, pid: u32) -> Option<Stat> {
        self.stats
            .entry(pid)
            .or_insert_with(|| read_stat(pid))
            .clone()
    }

    fn user(&mut self, uid: u32) -> Option<String> {
        self.users
            .entry(uid)
            .or_insert_with(|| crate::users::name_of(uid))
            .clone()
    }

    /// One process's details; None when it is gone (or its stat unreadable).
    pub fn process(&mut self, pid: u32) -> Option<Process> {
        let stat = self.stat(pid)?;
        let uid = crate::proc::euid(pid).unwrap_or(u32::MAX);
        let cmdline = read(pid, "cmdline")
            .map(|b| parse_cmdline(&b))
            .unwrap_or_default();
        let exe = crate::proc::exe(pid);
        let cgroup = read(pid, "cgroup").and_then(|b| parse_cgroup(&b));
        let container = cgroup.as_deref().and_then(container_id);
        let start_ns = stat.start_ticks.saturating_mul(1_000_000_000) / self.ticks;
        let mut ancestors = Vec::new();
        let mut next = stat.ppid;
        while next != 0 && ancestors.len() < MAX_ANCESTORS {
            match self.stat(next) {
                Some(parent) => {
                    ancestors.push((parent.pid, parent.comm.clone()));
                    next = parent.ppid;
                }
                None => {
                    // Unreadable or gone between the reads: name the pid anyway.
                    ancestors.push((next, String::from("?")));
                    break;
                }
            }
        }
        Some(Process {
            pid,
            ppid: stat.ppid,
            comm: stat.comm.clone(),
            exe,
            cmdline,
            start_ticks: stat.start_ticks,
            started_at: rfc3339(self.clock.to_wall(start_ns)),
            uid,
            user: if uid == u32::MAX {
                None
            } else {
                self.user(uid)
            },
            cgroup,
            container,
            netns: super::netns::netns_of_pid(pid),
            ancestors,
            orphaned: looks_orphaned(&stat),
            job: super::job::of_pid(pid),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stat_line(comm: &[u8]) -> Vec<u8> {
        let mut v = b"4242 (".to_vec();
        v.extend_from_slice(comm);
        v.extend_from_slice(
            b") S 1 4242 4000 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000000 200 18446744073709551615 1 1 0 0 0 0 0 0 0 0 0 0 17 1 0 0 0 0 0\n",
        );
        v
    }

    #[test]
    fn stat_comm_with_spaces_and_parentheses() {
        let s = parse_stat(&stat_line(b"a) b (c")).unwrap();
        assert_eq!(s.pid, 4242);
        assert_eq!(s.comm, "a) b (c");
        assert_eq!(s.state, 'S');
        assert_eq!(s.ppid, 1);
        assert_eq!(s.session, 4000);
        assert_eq!(s.start_ticks, 987654);
    }

    #[test]
    fn stat_comm_that_fakes_fields() {
        // A comm that looks like the rest of the line must not shift fields.
        let s = parse_stat(&stat_line(b") R 99 99 99 0 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 1")).unwrap();
        assert_eq!(s.ppid, 1);
        assert_eq!(s.start_ticks, 987654);
    }

    #[test]
    fn stat_non_utf8_comm_and_empty_comm() {
        let s = parse_stat(&stat_line(b"\xff\xfe\x00x")).unwrap();
        assert!(s.comm.contains('\u{fffd}'));
        assert_eq!(parse_stat(&stat_line(b"")).unwrap().comm, "");
    }

    #[test]
    fn stat_garbage_is_none() {
        for bad in [
            &b""[..],
            b"(",
            b")(",
            b"12 (x",
            b"12 (x) S",
            b"12 (x) S 1 2 3",
            b"x (y) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5",
            b"12 (y) S -1 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 5",
            b"12 (y) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 0 \xff",
        ] {
            assert_eq!(parse_stat(bad), None, "{:?}", String::from_utf8_lossy(bad));
        }
        // Exactly up to field 22 is enough.
        let s = parse_stat(b"12 (y) S 1 1 1 0 -1 0 0 0 0 0 0 0 0 0 0 0 0 0 5").unwrap();
        assert_eq!(s.start_ticks, 5);
    }

    #[test]
    fn cmdline_nuls_and_bytes() {
        assert_eq!(parse_cmdline(b""), Vec::<String>::new());
        assert_eq!(
            parse_cmdline(b"python3\0-m\0http.server\0"),
            ["python3", "-m", "http.server"]
        );
        assert_eq!(parse_cmdline(b"a\0\0b\0"), ["a", "", "b"]);
        assert_eq!(parse_cmdline(b"\0"), [""]);
        assert_eq!(
            parse_cmdline(b"nginx: worker process"),
            ["nginx: worker process"]
        );
        assert_eq!(
            parse_cmdline(b"nginx: worker process                  "),
            ["nginx: worker process"]
        );
        assert_eq!(
            parse_cmdline(b"nginx: master process nginx -c x\0\0\0\0"),
            ["nginx: master process nginx -c x"]
        );
        assert_eq!(parse_cmdline(b"x\xff\0y"), ["x\u{fffd}", "y"]);
    }

    /// Beyond the fuzzer's input size: a 4 MiB argv with 100k arguments,
    /// bytes that are not UTF-8 and no trailing NUL, parsed in one pass.
    #[test]
    fn huge_cmdline_is_parsed_whole() {
        let mut b = Vec::new();
        for i in 0..100_000u32 {
            b.extend_from_slice(format!("arg{i}\u{fffd}").as_bytes());
            b.push(0xff);
            b.push(0);
        }
        b.extend(std::iter::repeat_n(b'x', 2 << 20));
        let v = parse_cmdline(&b);
        assert_eq!(v.len(), 100_001);
        assert_eq!(v[99_999], "arg99999\u{fffd}\u{fffd}");
        assert_eq!(v[100_000].len(), 2 << 20);
    }

    #[test]
    fn cgroup_prefers_useful_paths() {
        assert_eq!(
            parse_cgroup(b"0::/system.slice/a.service\n").as_deref(),
            Some("/system.slice/a.service")
        );
        let hybrid = b"9:name=systemd:/\n4:memory:/process_api/62e4\n0::/\n";
        assert_eq!(parse_cgroup(hybrid).as_deref(), Some("/process_api/62e4"));
        assert_eq!(parse_cgroup(b"1:cpu:/\n0::/\n").as_deref(), Some("/"));
        assert_eq!(parse_cgroup(b"0::/a:b:c\n").as_deref(), Some("/a:b:c"));
        assert_eq!(parse_cgroup(b"garbage\n\xff\n"), None);
        assert_eq!(parse_cgroup(b""), None);
    }

    #[test]
    fn container_ids_from_runtimes() {
        let id = "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";
        for path in [
            format!("/system.slice/docker-{id}.scope"),
            format!("/docker/{id}"),
            format!("/kubepods.slice/kubepods-pod1.slice/cri-containerd-{id}.scope"),
            format!("/machine.slice/libpod-{id}.scope/container"),
            format!("/kubepods/besteffort/pod12/{id}"),
            format!("/crio-{}.scope", id.to_uppercase()),
        ] {
            assert_eq!(container_id(&path).as_deref(), Some(id), "{path}");
        }
        assert_eq!(container_id("/"), None);
        assert_eq!(
            container_id("/user.slice/user-1000.slice/session-3.scope"),
            None
        );
        assert_eq!(
            container_id("/process_api/62e4421f3f1f3c0dcc4c4f918070dd99"),
            None
        );
        assert_eq!(container_id(&format!("/docker-{}x.scope", &id[1..])), None);
        assert_eq!(container_id(""), None);
    }

    #[test]
    fn orphan_heuristic() {
        let mut s = parse_stat(&stat_line(b"srv")).unwrap();
        assert!(looks_orphaned(&s), "ppid 1, session of a gone shell");
        s.session = 4242;
        assert!(
            !looks_orphaned(&s),
            "a session leader under init is a service"
        );
        s.session = 4000;
        s.ppid = 300;
        assert!(!looks_orphaned(&s));
        s.pid = 1;
        s.ppid = 0;
        assert!(!looks_orphaned(&s));
    }
}

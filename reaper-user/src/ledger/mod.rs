//! ring buffer -> **ledger** -> holders.
//!
//! The in-memory record of claims: which socket (cookie) holds which
//! (netns, proto, addr, port), bound by whom and when, listening since when;
//! and the recent failed binds. Fed by `events::Observation`s (BPF) or by a
//! scan (seeding, degraded mode). Each applied observation also yields a
//! [`Fact`]: the self-contained line `reaper watch` prints and the daemon
//! journals.

use std::collections::{HashSet, VecDeque};
use std::net::IpAddr;

use chrono::{DateTime, Utc};
use reaper_common::Event;
use serde::Serialize;

use crate::events::{event_addr, event_family, event_proto, BindResult, Observation};
use crate::util::{comm_from_bytes, errno_name, rfc3339, BootClock};
use crate::vocab::{Charge, Family, Proto, Source};

mod change;
pub use change::{Bound, Change, Released};

/// Where a claim sits. Two namespaces with the same port are two keys.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ClaimKey {
    pub netns: u64,
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
}

/// A socket bound to a port, as the kernel side saw it happen.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Claim {
    pub key: ClaimKey,
    pub family: Family,
    pub cookie: u64,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub cgroup_id: u64,
    /// The kernel's cookie of its network namespace (0: unknown), for the
    /// release, whose record does not carry it.
    #[serde(skip)]
    pub netns_cookie: u64,
    pub bound_at: DateTime<Utc>,
    pub listening_at: Option<DateTime<Utc>>,
    /// The port asked for, when it differs (0: ephemeral).
    pub requested_port: Option<u16>,
    /// Tier name, or "proc" for claims found by a scan.
    pub source: Source,
    /// The CI job it is charged to, read when it was made (the daemon).
    /// Boxed: a claim is moved in and out of the ledger's maps per bind.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub job: Option<Box<Charge>>,
}

/// A bind that failed.
#[derive(Clone, Debug, Serialize)]
pub struct FailedBind {
    pub ts: DateTime<Utc>,
    pub key: ClaimKey,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    pub cgroup_id: u64,
    pub errno: Option<i32>,
    pub errno_exact: bool,
}

/// One line of `reaper watch --json` (and the facts the daemon journals).
/// Field names are an interface: scripts read them.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Fact {
    pub ts: String,
    /// "bind", "listen" or "release".
    pub kind: &'static str,
    pub pid: u32,
    pub tid: u32,
    pub comm: String,
    pub uid: u32,
    /// Network namespace inode; null when the process left before it was read.
    pub netns: Option<u64>,
    pub proto: Option<Proto>,
    pub family: Option<Family>,
    pub addr: Option<String>,
    pub port: Option<u16>,
    pub ok: bool,
    /// Errno name of a failed bind ("EADDRINUSE"); null on success or when
    /// the cause could not be found.
    pub errno: Option<String>,
    /// True when the kernel reported the errno; false when reaper inferred it.
    pub errno_exact: bool,
    /// The hook tier ("cgroup", "syscalls", "fexit") or "proc".
    pub source: Source,
    pub cookie: u64,
    pub netns_cookie: u64,
    pub cgroup_id: u64,
    /// For binds: the port asked for (0 = any) when it differs from `port`.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub requested_port: Option<u16>,
    /// For releases: how long the claim was held.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub held_ms: Option<u64>,
    /// For failed binds: the claim that held the port, when known.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub holder_comm: Option<String>,
    /// For failed binds: that claim itself (for the daemon's conflict
    /// record); not printed.
    #[serde(skip)]
    pub holder_claim: Option<Claim>,
    /// The container the process runs in, when `watch` found one (from the
    /// cgroup, named by the engine when it answers).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<crate::holders::container::Container>,
    /// The process is outside reaper's pid namespace (reaper runs in a
    /// container without the host's pids): `pid` and `tid` are 0.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub outside_pidns: bool,
}

/// Maps BPF netns cookies to the inode numbers people see in
/// `/proc/PID/ns/net`: learnt from the process of the event when reaper can
/// see it (its pid is reaper's pid namespace's), else by asking each
/// namespace reaper can see for its cookie (`SO_NETNS_COOKIE`), at most
/// once a second.
#[derive(Default)]
pub struct NetnsNames {
    by_cookie: foldhash::HashMap<u64, u64>,
    /// When every visible namespace was last asked for its cookie.
    asked_at: Option<std::time::Instant>,
}

/// How often an unknown cookie may make reaper ask every namespace.
const NETNS_ASK_EVERY: std::time::Duration = std::time::Duration::from_secs(1);

impl NetnsNames {
    /// The inode of the namespace with `cookie`; `tgid` 0 is a process
    /// reaper cannot see (outside its pid namespace).
    pub fn resolve(&mut self, cookie: u64, tgid: u32) -> Option<u64> {
        if cookie != 0 {
            if let Some(ino) = self.by_cookie.get(&cookie) {
                return Some(*ino);
            }
        }
        if tgid != 0 {
            if let Some(ino) = crate::holders::netns::netns_of_pid(tgid) {
                self.learn(cookie, ino);
                return Some(ino);
            }
        }
        if cookie == 0 || self.asked_at.is_some_and(|t| t.elapsed() < NETNS_ASK_EVERY) {
            return None;
        }
        self.asked_at = Some(std::time::Instant::now());
        for (c, ino) in crate::holders::netns::by_cookie() {
            self.learn(c, ino);
        }
        self.by_cookie.get(&cookie).copied()
    }
    /// Teaches a mapping learnt elsewhere.
    pub fn learn(&mut self, cookie: u64, ino: u64) {
        if cookie != 0 {
            self.by_cookie.insert(cookie, ino);
        }
    }
}

/// How many failed binds the ledger keeps (oldest dropped first).
pub const FAILURES_KEPT: usize = 4096;

/// The ledger.
pub struct Ledger {
    claims: foldhash::HashMap<u64, Claim>,
    /// Claims released lately, with when: a failed bind is judged against
    /// the claims alive at its attempt, and its outcome can be learnt after
    /// the holder already left (the cgroup tier resolves failures late).
    released: VecDeque<(Claim, DateTime<Utc>)>,
    failures: VecDeque<FailedBind>,
    /// Claims whose bind the kernel side could not keep in its claims map
    /// (it was full): a repair from that map must not drop them.
    unstored: foldhash::HashSet<u64>,
    pub netns: NetnsNames,
    clock: BootClock,
    source: Source,
    unprivileged_port_start: u16,
}

impl Ledger {
    pub fn new(source: impl Into<Source>) -> Ledger {
        let start = crate::proc::sysctl_or("net/ipv4/ip_unprivileged_port_start", 1024);
        Ledger {
            claims: Default::default(),
            released: VecDeque::new(),
            failures: VecDeque::new(),
            unstored: Default::default(),
            netns: NetnsNames::default(),
            clock: BootClock::now(),
            source: source.into(),
            unprivileged_port_start: start,
        }
    }

    pub fn len(&self) -> usize {
        self.claims.len()
    }

    pub fn is_empty(&self) -> bool {
        self.claims.is_empty()
    }

    pub fn claims(&self) -> impl Iterator<Item = &Claim> {
        self.claims.values()
    }

    pub fn failures(&self) -> impl Iterator<Item = &FailedBind> {
        self.failures.iter()
    }

    /// Claims on a port (any address, any namespace unless given).
    pub fn claims_on(&self, port: u16, proto: Option<Proto>, netns: Option<u64>) -> Vec<&Claim> {
        let mut v: Vec<&Claim> = self
            .claims
            .values()
            .filter(|c| {
                c.key.port == port
                    && proto.is_none_or(|p| p == c.key.proto)
                    && netns.is_none_or(|n| n == c.key.netns)
            })
            .collect();
        v.sort_by_key(|c| c.bound_at);
        v
    }

    /// Failed binds of a port, oldest first.
    pub fn failures_on(&self, port: u16) -> Vec<&FailedBind> {
        self.failures
            .iter()
            .filter(|f| f.key.port == port)
            .collect()
    }

    /// Adds a claim found by a scan (holders that predate the hooks).
    pub fn seed(&mut self, claim: Claim) {
        self.claims.entry(claim.cookie).or_insert(claim);
    }

    /// Charges a claim to its CI job (read when it was made); a claim
    /// already charged keeps its first charge.
    pub fn charge(&mut self, cookie: u64, job: Charge) {
        if let Some(c) = self.claims.get_mut(&cookie) {
            c.job.get_or_insert_with(|| Box::new(job));
        }
    }

    /// Whether a claim still needs its job read.
    pub fn uncharged(&self, cookie: u64) -> bool {
        self.claims.get(&cookie).is_some_and(|c| c.job.is_none())
    }

    /// Removes a claim found stale by a scan; returns it.
    pub fn forget(&mut self, cookie: u64) -> Option<Claim> {
        self.claims.remove(&cookie)
    }

    /// Applies one observation and returns the fact it makes.
    pub fn apply(&mut self, obs: &Observation) -> Option<Fact> {
        let change = self.apply_change(obs)?;
        Some(self.fact_of(change))
    }

    /// A fact's common part; `netns` as resolved for it.
    fn base_fact(&self, kind: &'static str, ev: &Event, netns: Option<u64>) -> Fact {
        let outside_pidns = ev.flags & reaper_common::FLAG_OUTSIDE_PIDNS != 0;
        Fact {
            ts: rfc3339(self.clock.to_wall(ev.ts_ns)),
            kind,
            pid: ev.tgid,
            // Outside reaper's pid namespace the event's tid is the host's:
            // not a number anything reaper reads knows.
            tid: if outside_pidns { 0 } else { ev.tid },
            comm: comm_from_bytes(&ev.comm),
            uid: ev.uid,
            netns,
            proto: event_proto(ev),
            family: event_family(ev),
            addr: Some(event_addr(ev).to_string()),
            port: Some(ev.port),
            ok: true,
            errno: None,
            errno_exact: true,
            source: self.source.clone(),
            cookie: ev.cookie,
            netns_cookie: ev.netns_cookie,
            cgroup_id: ev.cgroup_id,
            requested_port: None,
            held_ms: None,
            holder_pid: None,
            holder_comm: None,
            holder_claim: None,
            container: None,
            outside_pidns,
        }
    }

    /// A failed bind: its holder and errno, kept among the failures.
    fn apply_failed(&mut self, b: &BindResult) -> Fact {
        let ev = &b.attempt;
        let netns = self.netns.resolve(ev.netns_cookie, ev.tgid);
        let mut fact = self.base_fact("bind", ev, netns);
        let key = ClaimKey {
            netns: netns.unwrap_or(0),
            proto: fact.proto.unwrap_or(Proto::Tcp),
            addr: b.addr(),
            port: b.port(),
        };
        fact.ok = false;
        let attempted_at = self.clock.to_wall(b.attempt.ts_ns);
        let holder = self.holder_at(&key, ev.cookie, attempted_at).cloned();
        let errno = match b.errno {
            Some(e) => Some(e),
            None => self.infer_errno(&key, &b.attempt, holder.is_some()),
        };
        fact.errno = errno.map(errno_name);
        fact.errno_exact = b.errno_exact;
        if let Some(c) = holder {
            fact.holder_pid = Some(c.pid);
            fact.holder_comm = Some(c.comm.clone());
            fact.holder_claim = Some(c);
        }
        self.failures.push_back(FailedBind {
            ts: self.clock.to_wall(ev.ts_ns),
            key,
            pid: ev.tgid,
            tid: ev.tid,
            comm: fact.comm.clone(),
            uid: ev.uid,
            cgroup_id: ev.cgroup_id,
            errno,
            errno_exact: b.errno_exact,
        });
        while self.failures.len() > FAILURES_KEPT {
            self.failures.pop_front();
        }
        fact
    }

    /// A claim (other than the socket itself) that a bind of `key` collides
    /// with: same namespace, protocol and port, and the same address or a
    /// wildcard on either side (an IPv6 wildcard also covers IPv4 unless it is
    /// v6-only, which the ledger cannot see, so it is counted).
    /// The claim a bind of `key` attempted at `at` collided with: one alive
    /// now and bound before `at`, or one released since `at`.
    pub fn holder_at(&self, key: &ClaimKey, cookie: u64, at: DateTime<Utc>) -> Option<&Claim> {
        self.conflicting_claim(key, cookie)
            .filter(|c| c.bound_at <= at)
            .or_else(|| {
                self.released
                    .iter()
                    .rev()
                    .find(|(c, gone)| {
                        *gone >= at
                            && c.bound_at <= at
                            && c.cookie != cookie
                            && c.key.netns == key.netns
                            && c.key.proto == key.proto
                            && c.key.port == key.port
                            && addrs_collide(c.key.addr, key.addr)
                    })
                    .map(|(c, _)| c)
            })
    }

    pub fn conflicting_claim(&self, key: &ClaimKey, cookie: u64) -> Option<&Claim> {
        self.claims
            .values()
            .filter(|c| {
                c.cookie != cookie
                    && c.key.netns == key.netns
                    && c.key.proto == key.proto
                    && c.key.port == key.port
                    && addrs_collide(c.key.addr, key.addr)
            })
            .min_by_key(|c| c.bound_at)
    }

    /// The cause of a failure the tier could not see, from evidence only.
    fn infer_errno(&self, key: &ClaimKey, attempt: &Event, held: bool) -> Option<i32> {
        if held {
            return Some(libc::EADDRINUSE);
        }
        if self.claims.contains_key(&attempt.cookie) {
            // The socket was bound already.
            return Some(libc::EINVAL);
        }
        if key.port != 0 && key.port < self.unprivileged_port_start && attempt.uid != 0 {
            return Some(libc::EACCES);
        }
        None
    }

    fn apply_listen(&mut self, ev: &Event) -> Fact {
        let at = self.clock.to_wall(ev.ts_ns);
        let netns = self.netns.resolve(ev.netns_cookie, ev.tgid);
        let mut fact = self.base_fact("listen", ev, netns);
        if let Some(c) = self.claims.get_mut(&ev.cookie) {
            c.listening_at = Some(at);
            fact.netns = Some(c.key.netns);
            fact.addr = Some(c.key.addr.to_string());
            fact.family = Some(c.family);
        } else {
            // listen() without bind(): the kernel picked a port (autobind).
            let netns = fact.netns.unwrap_or(0);
            let family = fact.family.unwrap_or(Family::Ipv4);
            let addr: IpAddr = match family {
                Family::Ipv4 => IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
                Family::Ipv6 => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
            };
            fact.addr = Some(addr.to_string());
            let key = ClaimKey {
                netns,
                proto: Proto::Tcp,
                addr,
                port: ev.port,
            };
            let claim = self.claim(ev, key, true, None);
            self.claims.insert(ev.cookie, claim);
        }
        fact
    }
}

impl Ledger {
    /// Repairs the ledger from the kernel side's claims map, read whole
    /// (`kernel`, the read having started at `read_at_ns` CLOCK_BOOTTIME):
    /// a claim the map holds and the ledger lacks (its event was lost, or it
    /// was summarised) is added with its pid and bind time; a claim of this
    /// tier the ledger holds and the map no longer does (its release was
    /// lost) is dropped, unless it is newer than the read or the map had no
    /// room for it. Claims found by a scan ("proc") are left alone: the
    /// kernel side never saw them. Returns (added, removed).
    pub fn repair(&mut self, kernel: &[Event], read_at_ns: u64) -> (Vec<Claim>, Vec<Claim>) {
        let mut added = Vec::new();
        for ev in kernel {
            if self.claims.contains_key(&ev.cookie) {
                continue;
            }
            if let Some(c) = self.claim_of(ev) {
                added.push(c.clone());
                self.claims.insert(ev.cookie, c);
            }
        }
        let read_at = self.clock.to_wall(read_at_ns);
        let live: HashSet<u64> = kernel.iter().map(|e| e.cookie).collect();
        let stale: Vec<u64> = self
            .claims
            .values()
            .filter(|c| {
                c.source == self.source
                    && c.bound_at < read_at
                    && !live.contains(&c.cookie)
                    && !self.unstored.contains(&c.cookie)
            })
            .map(|c| c.cookie)
            .collect();
        let removed = stale
            .into_iter()
            .filter_map(|cookie| self.claims.remove(&cookie))
            .collect();
        (added, removed)
    }

    /// A claim from a record of the kernel side's claims map.
    fn claim_of(&mut self, ev: &Event) -> Option<Claim> {
        let key = ClaimKey {
            netns: self.netns.resolve(ev.netns_cookie, ev.tgid).unwrap_or(0),
            proto: event_proto(ev)?,
            addr: event_addr(ev),
            port: ev.port,
        };
        let listening = ev.kind == reaper_common::KIND_LISTEN;
        let requested_port = (ev.flags & reaper_common::FLAG_EPHEMERAL != 0).then_some(0);
        Some(self.claim(ev, key, listening, requested_port))
    }

    /// The claim an event of the kernel makes on `key`: who, when, and
    /// (when `listening`) listening since the bind.
    fn claim(
        &self,
        ev: &Event,
        key: ClaimKey,
        listening: bool,
        requested_port: Option<u16>,
    ) -> Claim {
        let at = self.clock.to_wall(ev.ts_ns);
        Claim {
            key,
            family: event_family(ev).unwrap_or(Family::Ipv4),
            cookie: ev.cookie,
            pid: ev.tgid,
            tid: ev.tid,
            comm: comm_from_bytes(&ev.comm),
            uid: ev.uid,
            cgroup_id: ev.cgroup_id,
            netns_cookie: ev.netns_cookie,
            bound_at: at,
            listening_at: listening.then_some(at),
            requested_port,
            source: self.source.clone(),
            job: None,
        }
    }
}

/// How many released claims the ledger remembers for late failures.
pub const RELEASED_KEPT: usize = 1024;

/// Whether two local addresses of the same port collide.
pub fn addrs_collide(a: IpAddr, b: IpAddr) -> bool {
    // The bind model's address rule (a claim on `a`, a bind of `b`).
    crate::bindmodel::addresses_overlap(a, b)
}

#[cfg(test)]
mod tests {
    use super::*;
    use reaper_common::{KIND_ATTEMPT, KIND_BOUND, KIND_RELEASE};

    fn ev(kind: u8, pid: u32, cookie: u64, port: u16, addr: [u8; 4]) -> Event {
        let mut e = Event::zeroed();
        e.kind = kind;
        e.tgid = pid;
        e.tid = pid;
        e.cookie = cookie;
        e.port = port;
        e.family = reaper_common::AF_INET;
        e.protocol = reaper_common::IPPROTO_TCP;
        e.addr[..4].copy_from_slice(&addr);
        e.comm[..6].copy_from_slice(b"server");
        e.uid = 1000;
        e
    }

    fn bound(pid: u32, cookie: u64, port: u16) -> Observation {
        Observation::Bind(BindResult {
            attempt: ev(KIND_ATTEMPT, pid, cookie, port, [127, 0, 0, 1]),
            bound: Some(ev(KIND_BOUND, pid, cookie, port, [127, 0, 0, 1])),
            errno: None,
            errno_exact: true,
        })
    }

    #[test]
    fn a_failed_bind_names_the_holder_and_infers_eaddrinuse() {
        let mut l = Ledger::new("cgroup");
        l.apply(&bound(100, 1, 8080));
        let fail = Observation::Bind(BindResult {
            attempt: ev(KIND_ATTEMPT, 200, 2, 8080, [0, 0, 0, 0]),
            bound: None,
            errno: None,
            errno_exact: false,
        });
        let f = l.apply(&fail).unwrap();
        assert!(!f.ok);
        assert_eq!(f.errno.as_deref(), Some("EADDRINUSE"));
        assert!(!f.errno_exact);
        assert_eq!(f.holder_pid, Some(100));
        assert_eq!(l.failures_on(8080).len(), 1);
    }

    #[test]
    fn a_failure_learnt_after_the_holder_left_still_names_it() {
        let mut l = Ledger::new("cgroup");
        let mut b = bound(100, 1, 8080);
        if let Observation::Bind(r) = &mut b {
            r.attempt.ts_ns = 1_000;
            r.bound.as_mut().unwrap().ts_ns = 1_000;
        }
        l.apply(&b);
        let mut attempt = ev(KIND_ATTEMPT, 200, 2, 8080, [127, 0, 0, 1]);
        attempt.ts_ns = 2_000;
        let mut release = ev(KIND_RELEASE, 100, 1, 0, [0; 4]);
        release.ts_ns = 3_000;
        assert!(l.apply(&Observation::Release(release)).is_some());
        // The failure is resolved after the release (the settle window).
        let f = l
            .apply(&Observation::Bind(BindResult {
                attempt,
                bound: None,
                errno: None,
                errno_exact: false,
            }))
            .unwrap();
        assert_eq!(f.errno.as_deref(), Some("EADDRINUSE"));
        assert_eq!(f.holder_pid, Some(100));
        // A bind attempted after the release is not blamed on it.
        let mut later = ev(KIND_ATTEMPT, 300, 3, 8080, [127, 0, 0, 1]);
        later.ts_ns = 4_000;
        let f = l
            .apply(&Observation::Bind(BindResult {
                attempt: later,
                bound: None,
                errno: None,
                errno_exact: false,
            }))
            .unwrap();
        assert_eq!(f.holder_pid, None);
    }

    #[test]
    fn releases_of_sockets_that_never_held_a_port_make_no_fact() {
        let mut l = Ledger::new("cgroup");
        assert!(l
            .apply(&Observation::Release(ev(KIND_RELEASE, 100, 42, 0, [0; 4])))
            .is_none());
    }

    #[test]
    fn release_ends_the_claim_and_reports_its_port() {
        let mut l = Ledger::new("cgroup");
        l.apply(&bound(100, 1, 8080));
        assert_eq!(l.claims_on(8080, None, None).len(), 1);
        let f = l
            .apply(&Observation::Release(ev(KIND_RELEASE, 100, 1, 0, [0; 4])))
            .unwrap();
        assert_eq!(f.port, Some(8080));
        assert!(f.held_ms.is_some());
        assert!(l.is_empty());
    }

    #[test]
    fn a_repair_from_the_kernel_map_adds_lost_claims_and_drops_lost_releases() {
        let mut l = Ledger::new("cgroup");
        let mut old = bound(100, 1, 8080);
        if let Observation::Bind(r) = &mut old {
            r.bound.as_mut().unwrap().ts_ns = 1_000;
        }
        l.apply(&old);
        // The kernel map: claim 1 was released (its release lost), claim 2
        // was made (its event lost), ephemeral claim 3 was summarised.
        let mut lost = ev(KIND_BOUND, 200, 2, 9090, [127, 0, 0, 1]);
        lost.ts_ns = 2_000;
        let mut eph = ev(KIND_BOUND, 300, 3, 41000, [127, 0, 0, 1]);
        eph.flags |= reaper_common::FLAG_EPHEMERAL;
        let (added, removed) = l.repair(&[lost, eph], 3_000);
        assert_eq!(added.len(), 2);
        assert_eq!(removed.len(), 1);
        assert_eq!(removed[0].cookie, 1);
        let c = l.claims_on(9090, None, None)[0].clone();
        assert_eq!(c.pid, 200);
        assert_eq!(c.bound_at, l.clock.to_wall(2_000));
        assert_eq!(l.claims_on(41000, None, None)[0].requested_port, Some(0));
        // A claim newer than the read stays.
        l.apply(&bound(400, 4, 7070));
        let (_, removed) = l.repair(&[], 0);
        assert!(removed.iter().all(|c| c.cookie != 4));
    }

    #[test]
    fn privileged_ports_fail_with_eacces_without_a_holder() {
        let mut l = Ledger::new("cgroup");
        let f = l
            .apply(&Observation::Bind(BindResult {
                attempt: ev(KIND_ATTEMPT, 200, 2, 80, [0; 4]),
                bound: None,
                errno: None,
                errno_exact: false,
            }))
            .unwrap();
        assert_eq!(f.errno.as_deref(), Some("EACCES"));
    }

    #[test]
    fn address_collisions() {
        let any4: IpAddr = "0.0.0.0".parse().unwrap();
        let lo4: IpAddr = "127.0.0.1".parse().unwrap();
        let other4: IpAddr = "127.0.0.2".parse().unwrap();
        let any6: IpAddr = "::".parse().unwrap();
        let lo6: IpAddr = "::1".parse().unwrap();
        assert!(addrs_collide(any4, lo4));
        assert!(!addrs_collide(lo4, other4));
        assert!(addrs_collide(any6, lo4), "dual-stack wildcard blocks v4");
        assert!(!addrs_collide(any4, lo6));
        assert!(addrs_collide(lo6, lo6));
    }
}

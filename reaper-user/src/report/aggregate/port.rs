//! aggregate -> **port**: the state of one port while records fold.
//!
//! A port keeps its counts, its open claims and, once a conflict or a
//! reaping made it interesting, a bounded timeline; a block (an episode)
//! runs from a conflict's first failed bind until a release, a reaping that
//! freed the port or another process's claim.

use std::collections::VecDeque;
use std::rc::Rc;

use super::{dur_ms, rfc, Aggregator};
use crate::journal::reader::Location;
use crate::journal::{Endpoint, ProcessRef, VerdictRecord};
use crate::report::model::{ConflictReport, Happened, PortCounts, ReapingNote, Rebind, Resolution};

/// The port map is looked up once per record with small integer keys that
/// no one outside chooses (interned indices): a multiply-rotate hash beats
/// SipHash's flooding defence, which is not needed here.
#[derive(Default, Clone, Copy)]
pub(super) struct BuildPortHasher;

#[derive(Default)]
pub(super) struct PortHasher(u64);

impl std::hash::Hasher for PortHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
}

impl std::hash::BuildHasher for BuildPortHasher {
    type Hasher = PortHasher;
    fn build_hasher(&self) -> PortHasher {
        PortHasher::default()
    }
}

/// A port on a host: (host, proto, port), interned. The netns is a detail
/// of each entry: a host's port is what people ask about.
pub(super) type PortKey = (u32, u32, u16);

/// A kept timeline entry, with what it needs to become a
/// [`TimelineEntry`](crate::report::model::TimelineEntry).
pub(super) struct Entry {
    pub(super) ms: i64,
    pub(super) what: Happened,
    pub(super) pid: u32,
    pub(super) comm: Box<str>,
    pub(super) process: Option<Rc<ProcessRef>>,
    pub(super) verdict: Option<Box<VerdictRecord>>,
    pub(super) netns: Option<u64>,
    pub(super) cookie: Option<u64>,
    pub(super) conflict: Option<u64>,
    pub(super) at: Location,
}

impl Entry {
    /// An entry about `p`, with nothing else known yet.
    pub(super) fn about(what: Happened, ms: i64, at: Location, p: Rc<ProcessRef>) -> Entry {
        Entry {
            ms,
            what,
            pid: p.pid,
            comm: p.comm.as_str().into(),
            process: Some(p),
            verdict: None,
            netns: None,
            cookie: None,
            conflict: None,
            at,
        }
    }
}

pub(super) struct OpenClaim {
    pub(super) ms: i64,
    pub(super) pid: u32,
    pub(super) netns: Option<u64>,
    pub(super) cookie: Option<u64>,
    pub(super) process: Rc<ProcessRef>,
    pub(super) listening: bool,
    pub(super) at: Location,
    /// What the claim entry says, and the listen's time and place: a quiet
    /// port keeps no timeline, so these rebuild it if the port turns
    /// interesting while the claim is open.
    pub(super) addr: Option<String>,
    pub(super) requested_port: Option<u16>,
    pub(super) listen: Option<(i64, Location)>,
    /// The CI job the daemon charged the claim to, in words.
    pub(super) job: Option<String>,
}

impl OpenClaim {
    /// A claim of `ep` seen at `ms` (its record at `at`), not listening yet.
    pub(super) fn new(
        ms: i64,
        at: Location,
        ep: &Endpoint,
        process: Rc<ProcessRef>,
        cookie: Option<u64>,
        requested_port: Option<u16>,
    ) -> OpenClaim {
        OpenClaim {
            ms,
            pid: process.pid,
            netns: ep.netns,
            cookie,
            process,
            listening: false,
            at,
            addr: ep.addr.clone(),
            requested_port,
            listen: None,
            job: None,
        }
    }
}

pub(super) struct Episode {
    pub(super) start_ms: i64,
    pub(super) ids: Vec<u64>,
    /// Holders still holding; `all_pids`: every holder named.
    pub(super) holder_pids: Vec<u32>,
    pub(super) all_pids: Vec<u32>,
}

#[derive(Default)]
pub(super) struct PortState {
    pub(super) counts: PortCounts,
    pub(super) first_ms: i64,
    pub(super) last_ms: i64,
    pub(super) interesting: bool,
    pub(super) entries: VecDeque<Entry>,
    pub(super) dropped: u64,
    pub(super) open: Vec<OpenClaim>,
    pub(super) episode: Option<Box<Episode>>,
    pub(super) last_episode: Option<Box<Episode>>,
    pub(super) blocked_ms: u64,
    pub(super) netns: Vec<u64>,
}

impl Aggregator {
    pub(super) fn port(&mut self, key: PortKey, ms: i64, netns: Option<u64>) -> &mut PortState {
        let interesting = self.filter.port.is_some();
        let port = self.ports.entry(key).or_insert_with(|| PortState {
            first_ms: ms,
            interesting,
            ..PortState::default()
        });
        if port.first_ms == 0 {
            port.first_ms = ms;
        }
        port.interesting |= interesting;
        port.last_ms = port.last_ms.max(ms);
        if let Some(n) = netns {
            if !port.netns.contains(&n) && port.netns.len() < 8 {
                port.netns.push(n);
            }
        }
        port
    }

    /// A conflict or a reaping makes a port interesting: from now on it
    /// keeps a timeline, which starts with its open claims (and their
    /// listens), rebuilt from what the open claims remember.
    pub(super) fn promote(&mut self, key: PortKey) {
        let Some(port) = self.ports.get_mut(&key) else {
            return;
        };
        if port.interesting {
            return;
        }
        port.interesting = true;
        let mut rebuilt = Vec::new();
        for c in &port.open {
            rebuilt.push(Entry {
                ms: c.ms,
                what: Happened::Claim {
                    addr: c.addr.clone(),
                    port: key.2,
                    requested_port: c.requested_port,
                    job: c.job.clone(),
                },
                pid: c.pid,
                comm: c.process.comm.as_str().into(),
                process: Some(c.process.clone()),
                verdict: None,
                netns: c.netns,
                cookie: c.cookie,
                conflict: None,
                at: c.at,
            });
            if let Some((ms, at)) = c.listen {
                rebuilt.push(Entry {
                    ms,
                    what: Happened::Listen,
                    pid: c.pid,
                    comm: c.process.comm.as_str().into(),
                    process: Some(c.process.clone()),
                    verdict: None,
                    netns: c.netns,
                    cookie: c.cookie,
                    conflict: None,
                    at,
                });
            }
        }
        rebuilt.sort_by_key(|e| (e.ms, e.at));
        // Those were counted as not kept; they are kept after all.
        port.dropped = port.dropped.saturating_sub(rebuilt.len() as u64);
        port.entries.extend(rebuilt);
    }

    pub(super) fn entry(&mut self, key: PortKey, e: Entry) {
        let Some(port) = self.ports.get_mut(&key) else {
            return;
        };
        if !port.interesting {
            // Most ports are quiet (ephemeral ports above all): they keep
            // counts and open claims, no timeline. See `promote`.
            port.dropped += 1;
            return;
        }
        let cap = self.limits.timeline;
        port.entries.push_back(e);
        while port.entries.len() > cap {
            port.entries.pop_front();
            port.dropped += 1;
        }
    }

    /// A conflict names its holders fully: attach that identity to the
    /// holders' kept entries that lack it (a port turning interesting).
    pub(super) fn remember_identity(
        &mut self,
        key: PortKey,
        p: &ProcessRef,
        verdict: Option<&VerdictRecord>,
    ) {
        let Some(port) = self.ports.get_mut(&key) else {
            return;
        };
        // The identity at bind time (the open claim's: the job that started
        // it) is better evidence for a claim than the one at conflict time
        // (maybe orphaned since).
        for e in port.entries.iter_mut().filter(|e| e.process.is_none()) {
            if let Some(c) = port
                .open
                .iter()
                .find(|c| c.pid == e.pid && (e.cookie.is_none() || c.cookie == e.cookie))
            {
                e.process = Some(c.process.clone());
            }
        }
        let rc = Rc::new(p.clone());
        for e in port
            .entries
            .iter_mut()
            .filter(|e| e.pid == p.pid && e.process.is_none())
        {
            e.process = Some(rc.clone());
        }
        if let Some(v) = verdict {
            if let Some(e) = port
                .entries
                .iter_mut()
                .rev()
                .find(|e| e.pid == p.pid && !matches!(e.what, Happened::Conflict { .. }))
            {
                if e.verdict.is_none() {
                    e.verdict = Some(Box::new(v.clone()));
                }
            }
        }
    }

    pub(super) fn conflict_mut(&mut self, id: u64) -> Option<&mut ConflictReport> {
        let front = self.conflicts.front()?.id;
        let idx = id.checked_sub(front)? as usize;
        self.conflicts.get_mut(idx)
    }

    pub(super) fn resolve(&mut self, key: PortKey, at_ms: i64, how: Resolution) -> Option<u64> {
        let port = self.ports.get_mut(&key)?;
        let ep = port.episode.take()?;
        port.blocked_ms += dur_ms(ep.start_ms, at_ms);
        let ids = ep.ids.clone();
        port.last_episode = Some(ep);
        for id in &ids {
            if let Some(c) = self.conflict_mut(*id) {
                let first = crate::journal::reader::parse_ms(&c.first).unwrap_or(at_ms);
                c.blocked_ms = dur_ms(first, at_ms);
                c.blocked_until = Some(rfc(at_ms));
                c.resolution = how;
            }
        }
        ids.last().copied()
    }

    pub(super) fn close_episode_on_release(
        &mut self,
        key: PortKey,
        pid: Option<u32>,
        ms: i64,
        at: Location,
    ) -> Option<u64> {
        let port = self.ports.get_mut(&key)?;
        let ep = port.episode.as_mut()?;
        let done = match pid {
            Some(p) => {
                ep.holder_pids.retain(|h| *h != p);
                ep.holder_pids.is_empty()
            }
            None => true,
        };
        let id = *ep.ids.last()?;
        let place = self.place(at);
        for i in self.ports[&key]
            .episode
            .as_ref()
            .map(|e| e.ids.clone())
            .unwrap_or_default()
        {
            if let Some(c) = self.conflict_mut(i) {
                c.evidence.push(place.clone());
            }
        }
        if done {
            self.resolve(key, ms, Resolution::Released);
        }
        Some(id)
    }

    pub(super) fn close_episode_on_claim(
        &mut self,
        key: PortKey,
        by: &ProcessRef,
        ms: i64,
        at: Location,
    ) -> Option<u64> {
        let place = self.place(at);
        let port = self.ports.get_mut(&key)?;
        let rebind = Rebind {
            pid: by.pid,
            comm: by.comm.clone(),
            ts: rfc(ms),
            evidence: place.clone(),
        };
        if let Some(ep) = &port.episode {
            if ep.holder_pids.contains(&by.pid) {
                return None;
            }
            let ids = ep.ids.clone();
            self.resolve(key, ms, Resolution::Rebound);
            for id in &ids {
                if let Some(c) = self.conflict_mut(*id) {
                    c.rebound_by = Some(rebind.clone());
                    c.evidence.push(place.clone());
                }
            }
            return ids.last().copied();
        }
        // The first claim after a resolved block: who got the port next.
        let ep = port.last_episode.as_ref()?;
        let ids = ep.ids.clone();
        let mut linked = None;
        for id in &ids {
            if let Some(c) = self.conflict_mut(*id) {
                if c.rebound_by.is_none() {
                    c.rebound_by = Some(rebind.clone());
                    c.evidence.push(place.clone());
                    linked = Some(*id);
                }
            }
        }
        linked
    }

    pub(super) fn attach_reaping(
        &mut self,
        key: PortKey,
        note: ReapingNote,
        freed: bool,
        free_ms: i64,
    ) -> Option<u64> {
        let port = self.ports.get_mut(&key)?;
        let target = note.target.pid;
        let (ids, open) = match (&port.episode, &port.last_episode) {
            (Some(ep), _) => (ep.ids.clone(), true),
            // The release usually comes first (the reaping is written once
            // the wait is over): attach to the block it ended.
            (None, Some(ep)) if ep.all_pids.contains(&target) || ep.all_pids.is_empty() => {
                (ep.ids.clone(), false)
            }
            _ => return None,
        };
        for id in &ids {
            if let Some(c) = self.conflict_mut(*id) {
                if open || matches!(c.resolution, Resolution::Released | Resolution::Rebound) {
                    if !open && freed {
                        c.resolution = Resolution::Reaped;
                    }
                    c.evidence.push(note.evidence.clone());
                    c.done.push(note.clone());
                }
            }
        }
        if open && freed {
            self.resolve(key, free_ms, Resolution::Reaped);
        }
        ids.last().copied()
    }
}

/// The claims that show the hold, in time order, and the earliest of them:
/// those of the named holders (all open claims when none is named).
pub(super) fn hold_evidence(port: &PortState, holder_pids: &[u32]) -> (Vec<Location>, Option<i64>) {
    let mut claims: Vec<(Location, i64)> = port
        .open
        .iter()
        .filter(|c| holder_pids.is_empty() || holder_pids.contains(&c.pid))
        .map(|c| (c.at, c.ms))
        .collect();
    let since = claims.iter().map(|(_, ms)| *ms).min();
    claims.sort();
    (claims.into_iter().map(|(at, _)| at).collect(), since)
}

/// A conflict opens the port's block, or joins the one already open.
pub(super) fn join_episode(port: &mut PortState, id: u64, first_ms: i64, holder_pids: &[u32]) {
    match &mut port.episode {
        Some(ep) => {
            ep.ids.push(id);
            for p in holder_pids {
                if !ep.holder_pids.contains(p) {
                    ep.holder_pids.push(*p);
                }
                if !ep.all_pids.contains(p) {
                    ep.all_pids.push(*p);
                }
            }
        }
        None => {
            port.episode = Some(Box::new(Episode {
                start_ms: first_ms,
                ids: vec![id],
                holder_pids: holder_pids.to_vec(),
                all_pids: holder_pids.to_vec(),
            }));
        }
    }
}

pub(super) fn push_open(port: &mut PortState, cap: usize, c: OpenClaim) {
    // Lost releases would let open claims pile up: keep the newest.
    if port.open.len() >= cap {
        port.open.remove(0);
    }
    port.open.push(c);
}

pub(super) fn same_socket(
    c: &OpenClaim,
    netns: Option<u64>,
    cookie: Option<u64>,
    pid: u32,
) -> bool {
    match (c.cookie, cookie) {
        (Some(a), Some(b)) => a == b,
        _ => c.pid == pid && c.netns == netns,
    }
}

pub(super) fn take_open(
    port: &mut PortState,
    netns: Option<u64>,
    cookie: Option<u64>,
    pid: Option<u32>,
) -> Option<OpenClaim> {
    let i = port
        .open
        .iter()
        .position(|c| match (c.cookie, cookie, pid) {
            (Some(a), Some(b), _) => a == b,
            (_, _, Some(p)) => c.pid == p && (c.netns == netns || netns.is_none()),
            // No cookie, no process: the oldest claim in that netns.
            (_, _, None) => c.netns == netns,
        })?;
    Some(port.open.remove(i))
}

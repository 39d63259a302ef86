//! The journal's delay line: churn is summarised, not written line by line.
//!
//! A claim released within [`Config::journal_churn_window`] of its bind,
//! that never listened and that no failed bind collided with, is *churn*:
//! a test suite starting and stopping a server on a fixed port, a "find a
//! free port" loop. Such a claim and its release get no journal lines of
//! their own; they are counted in one `churn` record per process and port
//! (count, first and last bind, shortest and longest hold), written when
//! the summary is [`SUMMARY_EVERY`] old and at a clean stop. Claims that
//! listen, last or collide keep their full `claim` (and `release`) records.
//! The ledger is not touched: it sees every claim and release as before.
//!
//! How: every record waits in a queue for the window before it is written,
//! so a claim can still be taken out when its release comes in time. Records
//! keep their order and their `ts` (the time they were queued). What must
//! be on disk at once (a reaping's intent, a stop) flushes the whole queue
//! first: [`Churn::drain_all`].
//!
//! [`Config::journal_churn_window`]: super::config::Config::journal_churn_window

use std::collections::VecDeque;
use std::net::IpAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use crate::control::Binder;
use crate::journal::{Body, Endpoint, ProcessRef, Record};
use crate::ledger::ClaimKey;
use crate::util::{comm_from_bytes, rfc3339};
use crate::vocab::{Charge, Family, Proto};

/// A summary is written once it is this old (and at a clean stop).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// A claim whose record may never be needed: what the record is made of,
/// as the kernel sent it. Nothing is formatted until the record is due
/// ([`PendingClaim::body`]) or the claim opens a summary.
#[derive(Clone, Debug)]
pub struct PendingClaim {
    /// When it was queued (wall clock, ns): the record's `ts`.
    pub ts_ns: i64,
    /// Where; `key.netns` is 0 when `netns` is unknown.
    pub key: ClaimKey,
    pub netns: Option<u64>,
    pub family: Option<Family>,
    pub cookie: u64,
    pub pid: u32,
    pub uid: u32,
    /// The kernel's comm, NUL padded.
    pub comm: [u8; 16],
    pub outside_pidns: bool,
    pub requested_port: Option<u16>,
    /// The binder's parent and exe, read when the claim was seen.
    pub binder: Arc<Binder>,
    pub charge: Option<Arc<Charge>>,
}

impl PendingClaim {
    pub fn endpoint(&self) -> Endpoint {
        Endpoint {
            netns: self.netns,
            proto: self.key.proto,
            family: self.family,
            addr: Some(self.key.addr.to_string()),
            port: self.key.port,
        }
    }

    pub fn process(&self) -> ProcessRef {
        let b = &self.binder;
        ProcessRef {
            pid: self.pid,
            comm: comm_from_bytes(&self.comm),
            uid: Some(self.uid),
            ppid: b.ppid,
            exe: b.exe.clone(),
            ancestors: match (b.ppid, &b.parent_comm) {
                (Some(p), Some(c)) => vec![format!("{p}:{c}")],
                _ => Vec::new(),
            },
            outside_pidns: self.outside_pidns.then_some(true),
            ..ProcessRef::default()
        }
    }

    /// The claim's record.
    pub fn body(&self) -> Body {
        Body::Claim {
            at: self.endpoint(),
            process: self.process(),
            cookie: Some(self.cookie),
            requested_port: self.requested_port,
            job: self.charge.as_ref().map(|c| c.job.clone()),
            job_via: self.charge.as_ref().map(|c| c.via.clone()),
        }
    }
}

/// The queue's entries: a record, or the claim of a cookie whose record
/// is made when it is due (if it was not folded by then).
enum Item {
    Record(Box<Record>),
    Claim(u64),
}

struct Queued {
    at: Instant,
    item: Item,
}

/// A claim whose record waits in the queue.
struct Waiting {
    /// Its place in the queue.
    seq: u64,
    /// False once it listened, met a conflict or was held too long.
    foldable: bool,
    claim: PendingClaim,
}

/// What the queue hands out: a record, or a claim to make one of.
pub enum Due {
    Record(Box<Record>),
    Claim(Box<PendingClaim>),
}

/// Churn of one process on one port.
struct Summary {
    started: Instant,
    /// The first claim counted: the summary's place and process.
    first: PendingClaim,
    count: u64,
    /// Wall clock, ns: when the first and the last claim were queued.
    last_ns: i64,
    held_ms_min: u64,
    held_ms_max: u64,
}

/// Which summary a folded claim counts in: pid, netns, proto, address, port.
type Key = (u32, Option<u64>, Proto, IpAddr, u16);

pub struct Churn {
    window: Duration,
    queue: VecDeque<Queued>,
    /// Sequence number of `queue[0]`.
    head: u64,
    /// The claims whose record waits, by cookie.
    waiting: foldhash::HashMap<u64, Waiting>,
    summaries: foldhash::HashMap<Key, Summary>,
}

impl Churn {
    /// `window` zero: nothing is summarised, records are written at once.
    pub fn new(window: Duration) -> Churn {
        Churn {
            window,
            queue: VecDeque::new(),
            head: 0,
            waiting: Default::default(),
            summaries: Default::default(),
        }
    }

    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Queues a record.
    pub fn push(&mut self, record: Record, now: Instant) {
        self.queue.push_back(Queued {
            at: now,
            item: Item::Record(Box::new(record)),
        });
    }

    /// Queues a claim that may turn out to be churn; its record is made
    /// when it is due.
    pub fn push_claim(&mut self, claim: PendingClaim, now: Instant) {
        let seq = self.head + self.queue.len() as u64;
        let cookie = claim.cookie;
        self.queue.push_back(Queued {
            at: now,
            item: Item::Claim(cookie),
        });
        self.waiting.insert(
            cookie,
            Waiting {
                seq,
                foldable: !self.window.is_zero(),
                claim,
            },
        );
    }

    /// The claim of `cookie` listened or met a conflict: it keeps its record.
    pub fn pin(&mut self, cookie: u64) {
        if let Some(w) = self.waiting.get_mut(&cookie) {
            w.foldable = false;
        }
    }

    /// The claim of `cookie` was released after `held_ms`: true when it was
    /// churn, folded into its summary (its release is then not written).
    pub fn fold_release(&mut self, cookie: u64, held_ms: Option<u64>, now: Instant) -> bool {
        let held_ms = held_ms.unwrap_or(0);
        let Some(mut w) = self.waiting.remove(&cookie) else {
            return false;
        };
        if !w.foldable || u128::from(held_ms) >= self.window.as_millis() {
            // It keeps its record (the rare case: put back).
            w.foldable = false;
            self.waiting.insert(cookie, w);
            return false;
        }
        self.count(w.claim, held_ms, now);
        true
    }

    /// A repair found the claim of `cookie` released (its release event
    /// may still come) at most `held_ms` after its bind: folded as
    /// [`Churn::fold_release`] when that is within the window; otherwise
    /// left for its release event to decide.
    pub fn fold_repaired(&mut self, cookie: u64, held_ms: u64, now: Instant) -> bool {
        if u128::from(held_ms) >= self.window.as_millis() {
            return false;
        }
        self.fold_release(cookie, Some(held_ms), now)
    }

    /// Counts a folded claim in its summary.
    fn count(&mut self, claim: PendingClaim, held_ms: u64, now: Instant) {
        let key: Key = (
            claim.pid,
            claim.netns,
            claim.key.proto,
            claim.key.addr,
            claim.key.port,
        );
        match self.summaries.get_mut(&key) {
            Some(s) => {
                s.count += 1;
                s.last_ns = claim.ts_ns;
                s.held_ms_min = s.held_ms_min.min(held_ms);
                s.held_ms_max = s.held_ms_max.max(held_ms);
            }
            None => {
                self.summaries.insert(
                    key,
                    Summary {
                        started: now,
                        count: 1,
                        last_ns: claim.ts_ns,
                        held_ms_min: held_ms,
                        held_ms_max: held_ms,
                        first: claim,
                    },
                );
            }
        }
    }

    /// Summaries due (older than [`SUMMARY_EVERY`], or all when `all`), as
    /// records to queue, in the order of their first claim.
    pub fn summaries_due(&mut self, now: Instant, all: bool) -> Vec<Body> {
        if self.summaries.is_empty() {
            return Vec::new();
        }
        let due: Vec<Key> = self
            .summaries
            .iter()
            .filter(|(_, s)| all || now.duration_since(s.started) >= SUMMARY_EVERY)
            .map(|(k, _)| *k)
            .collect();
        let mut out: Vec<Summary> = due
            .into_iter()
            .filter_map(|k| self.summaries.remove(&k))
            .collect();
        // By first claim, then by place: the same summaries, the same order.
        out.sort_by_key(|s| (s.first.ts_ns, s.first.key, s.first.pid));
        out.into_iter()
            .map(|s| Body::Churn {
                at: s.first.endpoint(),
                process: s.first.process(),
                count: s.count,
                first: wall(s.first.ts_ns),
                last: wall(s.last_ns),
                held_ms_min: s.held_ms_min,
                held_ms_max: s.held_ms_max,
            })
            .collect()
    }

    /// Entries whose window has passed, in order.
    pub fn drain_due(&mut self, now: Instant, out: &mut Vec<Due>) {
        while let Some(q) = self.queue.front() {
            if now.duration_since(q.at) < self.window {
                break;
            }
            self.pop(out);
        }
    }

    /// Every queued entry, in order.
    pub fn drain_all(&mut self, out: &mut Vec<Due>) {
        while !self.queue.is_empty() {
            self.pop(out);
        }
    }

    fn pop(&mut self, out: &mut Vec<Due>) {
        let Some(q) = self.queue.pop_front() else {
            return;
        };
        let seq = self.head;
        self.head += 1;
        match q.item {
            Item::Record(r) => out.push(Due::Record(r)),
            Item::Claim(cookie) => {
                // Gone: folded into a summary.
                if self.waiting.get(&cookie).is_some_and(|w| w.seq == seq) {
                    if let Some(w) = self.waiting.remove(&cookie) {
                        out.push(Due::Claim(Box::new(w.claim)));
                    }
                }
            }
        }
    }

    /// Entries waiting.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

/// A wall-clock time in ns, as the journal writes times.
pub fn wall(ns: i64) -> String {
    rfc3339(chrono::DateTime::from_timestamp_nanos(ns))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A claim queued `ms` after the epoch, with cookie `cookie`.
    fn claim(port: u16, pid: u32, cookie: u64, ms: i64) -> PendingClaim {
        PendingClaim {
            ts_ns: ms * 1_000_000,
            key: ClaimKey {
                netns: 1,
                proto: Proto::Tcp,
                addr: "127.0.0.1".parse().unwrap(),
                port,
            },
            netns: Some(1),
            family: Some(Family::Ipv4),
            cookie,
            pid,
            uid: 0,
            comm: *b"t\0\0\0\0\0\0\0\0\0\0\0\0\0\0\0",
            outside_pidns: false,
            requested_port: None,
            binder: Arc::default(),
            charge: None,
        }
    }

    #[test]
    fn churn_is_counted_once_per_process_and_port() {
        let t0 = Instant::now();
        let mut c = Churn::new(Duration::from_secs(1));
        for i in 0..100u64 {
            c.push_claim(claim(8080, 7, i, i as i64), t0);
            assert!(c.fold_release(i, Some(i % 5), t0));
        }
        // A claim that lasts, one that listens, one released too late.
        c.push_claim(claim(8080, 7, 100, 100), t0);
        c.push_claim(claim(8080, 7, 101, 101), t0);
        c.pin(101);
        assert!(!c.fold_release(101, Some(0), t0));
        c.push_claim(claim(8080, 7, 102, 102), t0);
        assert!(!c.fold_release(102, Some(1000), t0));
        let mut out = Vec::new();
        c.drain_due(t0 + Duration::from_millis(999), &mut out);
        assert!(out.is_empty());
        c.drain_due(t0 + Duration::from_secs(1), &mut out);
        let cookies: Vec<u64> = out
            .iter()
            .map(|d| match d {
                Due::Claim(c) => c.cookie,
                Due::Record(r) => panic!("{r:?}"),
            })
            .collect();
        assert_eq!(
            cookies,
            [100, 101, 102],
            "the three claims that are not churn"
        );
        assert!(c
            .summaries_due(t0 + Duration::from_secs(1), false)
            .is_empty());
        let s = c.summaries_due(t0 + SUMMARY_EVERY, false);
        assert_eq!(s.len(), 1);
        match &s[0] {
            Body::Churn {
                count,
                first,
                last,
                held_ms_min,
                held_ms_max,
                process,
                at,
            } => {
                assert_eq!(*count, 100);
                assert_eq!(
                    (first.as_str(), last.as_str()),
                    ("1970-01-01T00:00:00.000Z", "1970-01-01T00:00:00.099Z")
                );
                assert_eq!((*held_ms_min, *held_ms_max), (0, 4));
                assert_eq!((process.pid, process.comm.as_str()), (7, "t"));
                assert_eq!((at.port, at.addr.as_deref()), (8080, Some("127.0.0.1")));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.queued(), 0);
    }

    #[test]
    fn a_zero_window_writes_every_claim() {
        let t0 = Instant::now();
        let mut c = Churn::new(Duration::ZERO);
        c.push_claim(claim(1, 1, 1, 0), t0);
        assert!(!c.fold_release(1, Some(0), t0));
        let mut out = Vec::new();
        c.drain_due(t0, &mut out);
        assert_eq!(out.len(), 1);
    }

    #[test]
    fn records_and_claims_keep_their_order() {
        let t0 = Instant::now();
        let mut c = Churn::new(Duration::from_secs(1));
        c.push_claim(claim(1, 1, 1, 0), t0);
        c.push(Record::new("cgroup", Body::Stop { reason: "x".into() }), t0);
        c.push_claim(claim(2, 1, 2, 1), t0);
        assert!(c.fold_release(2, Some(0), t0));
        let mut out = Vec::new();
        c.drain_all(&mut out);
        assert!(matches!(&out[..], [Due::Claim(a), Due::Record(_)] if a.cookie == 1));
        assert!(
            !c.fold_release(1, Some(0), t0),
            "written: no longer foldable"
        );
    }
}

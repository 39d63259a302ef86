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

use std::collections::{HashMap, VecDeque};
use std::time::{Duration, Instant};

use crate::journal::{Body, Endpoint, ProcessRef, Record};

/// A summary is written once it is this old (and at a clean stop).
pub const SUMMARY_EVERY: Duration = Duration::from_secs(10);

/// One record waiting to be written; `None` once folded into a summary.
struct Queued {
    at: Instant,
    /// The claim's socket cookie while it may still be folded.
    cookie: Option<u64>,
    /// Boxed: a storm leaves a window's worth of folded (empty) entries.
    record: Option<Box<Record>>,
}

/// Churn of one process on one port.
struct Summary {
    started: Instant,
    at: Endpoint,
    process: ProcessRef,
    count: u64,
    first: String,
    last: String,
    held_ms_min: u64,
    held_ms_max: u64,
}

/// Which summary a folded claim counts in: pid, netns, proto, address, port.
type Key = (u32, Option<u64>, &'static str, Option<String>, u16);

pub struct Churn {
    window: Duration,
    queue: VecDeque<Queued>,
    /// Sequence number of `queue[0]`.
    head: u64,
    /// Claims still foldable: cookie -> sequence number.
    foldable: HashMap<u64, u64>,
    summaries: HashMap<Key, Summary>,
}

impl Churn {
    /// `window` zero: nothing is summarised, records are written at once.
    pub fn new(window: Duration) -> Churn {
        Churn {
            window,
            queue: VecDeque::new(),
            head: 0,
            foldable: HashMap::new(),
            summaries: HashMap::new(),
        }
    }

    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    /// Queues a record.
    pub fn push(&mut self, record: Record, now: Instant) {
        self.queue.push_back(Queued {
            at: now,
            cookie: None,
            record: Some(Box::new(record)),
        });
    }

    /// Queues a claim that may turn out to be churn.
    pub fn push_claim(&mut self, record: Record, cookie: u64, now: Instant) {
        if self.window.is_zero() {
            return self.push(record, now);
        }
        let seq = self.head + self.queue.len() as u64;
        self.queue.push_back(Queued {
            at: now,
            cookie: Some(cookie),
            record: Some(Box::new(record)),
        });
        self.foldable.insert(cookie, seq);
    }

    /// The claim of `cookie` listened or met a conflict: it keeps its record.
    pub fn pin(&mut self, cookie: u64) {
        if let Some(seq) = self.foldable.remove(&cookie) {
            if let Some(q) = self.queue.get_mut((seq - self.head) as usize) {
                q.cookie = None;
            }
        }
    }

    /// The claim of `cookie` was released after `held_ms`: true when it was
    /// churn, folded into its summary (its release is then not written).
    pub fn fold_release(&mut self, cookie: u64, held_ms: Option<u64>, now: Instant) -> bool {
        let Some(seq) = self.foldable.remove(&cookie) else {
            return false;
        };
        self.fold(seq, held_ms, now)
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

    fn fold(&mut self, seq: u64, held_ms: Option<u64>, now: Instant) -> bool {
        let Some(q) = self.queue.get_mut((seq - self.head) as usize) else {
            return false;
        };
        q.cookie = None;
        let held_ms = held_ms.unwrap_or(0);
        if u128::from(held_ms) >= self.window.as_millis() {
            return false;
        }
        let Some(Record {
            ts,
            body: Body::Claim { at, process, .. },
            ..
        }) = q.record.take().map(|r| *r)
        else {
            return false;
        };
        let key: Key = (
            process.pid,
            at.netns,
            at.proto.as_str(),
            at.addr.clone(),
            at.port,
        );
        match self.summaries.get_mut(&key) {
            Some(s) => {
                s.count += 1;
                s.last = ts;
                s.held_ms_min = s.held_ms_min.min(held_ms);
                s.held_ms_max = s.held_ms_max.max(held_ms);
            }
            None => {
                self.summaries.insert(
                    key,
                    Summary {
                        started: now,
                        at,
                        process,
                        count: 1,
                        first: ts.clone(),
                        last: ts,
                        held_ms_min: held_ms,
                        held_ms_max: held_ms,
                    },
                );
            }
        }
        true
    }

    /// Summaries due (older than [`SUMMARY_EVERY`], or all when `all`), as
    /// records to queue.
    pub fn summaries_due(&mut self, now: Instant, all: bool) -> Vec<Body> {
        if self.summaries.is_empty() {
            return Vec::new();
        }
        let due: Vec<Key> = self
            .summaries
            .iter()
            .filter(|(_, s)| all || now.duration_since(s.started) >= SUMMARY_EVERY)
            .map(|(k, _)| k.clone())
            .collect();
        let mut out: Vec<Body> = due
            .into_iter()
            .filter_map(|k| self.summaries.remove(&k))
            .map(|s| Body::Churn {
                at: s.at,
                process: s.process,
                count: s.count,
                first: s.first,
                last: s.last,
                held_ms_min: s.held_ms_min,
                held_ms_max: s.held_ms_max,
            })
            .collect();
        // A stable order (by first bind) for the file.
        out.sort_by(|a, b| match (a, b) {
            (Body::Churn { first: x, .. }, Body::Churn { first: y, .. }) => x.cmp(y),
            _ => std::cmp::Ordering::Equal,
        });
        out
    }

    /// Records whose window has passed, in order.
    pub fn drain_due(&mut self, now: Instant, out: &mut Vec<Record>) {
        while let Some(q) = self.queue.front() {
            if now.duration_since(q.at) < self.window {
                break;
            }
            self.pop(out);
        }
    }

    /// Every queued record, in order.
    pub fn drain_all(&mut self, out: &mut Vec<Record>) {
        while !self.queue.is_empty() {
            self.pop(out);
        }
    }

    fn pop(&mut self, out: &mut Vec<Record>) {
        let Some(q) = self.queue.pop_front() else {
            return;
        };
        self.head += 1;
        if let Some(c) = q.cookie {
            self.foldable.remove(&c);
        }
        if let Some(r) = q.record {
            out.push(*r);
        }
    }

    /// Records waiting.
    #[cfg(test)]
    pub fn queued(&self) -> usize {
        self.queue.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vocab::Proto;

    fn claim(port: u16, pid: u32, ts: &str) -> Record {
        Record {
            v: 1,
            ts: ts.into(),
            host: "h".into(),
            source: "cgroup".into(),
            body: Body::Claim {
                at: Endpoint {
                    netns: Some(1),
                    proto: Proto::Tcp,
                    family: None,
                    addr: Some("127.0.0.1".into()),
                    port,
                },
                process: ProcessRef {
                    pid,
                    comm: "t".into(),
                    ..ProcessRef::default()
                },
                cookie: None,
                requested_port: None,
                job: None,
                job_via: None,
            },
        }
    }

    #[test]
    fn churn_is_counted_once_per_process_and_port() {
        let t0 = Instant::now();
        let mut c = Churn::new(Duration::from_secs(1));
        for i in 0..100u64 {
            c.push_claim(claim(8080, 7, &format!("t{i:03}")), i, t0);
            assert!(c.fold_release(i, Some(i % 5), t0));
        }
        // A claim that lasts, one that listens, one released too late.
        c.push_claim(claim(8080, 7, "t100"), 100, t0);
        c.push_claim(claim(8080, 7, "t101"), 101, t0);
        c.pin(101);
        assert!(!c.fold_release(101, Some(0), t0));
        c.push_claim(claim(8080, 7, "t102"), 102, t0);
        assert!(!c.fold_release(102, Some(1000), t0));
        let mut out = Vec::new();
        c.drain_due(t0 + Duration::from_millis(999), &mut out);
        assert!(out.is_empty());
        c.drain_due(t0 + Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 3, "the three claims that are not churn");
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
                ..
            } => {
                assert_eq!(*count, 100);
                assert_eq!((first.as_str(), last.as_str()), ("t000", "t099"));
                assert_eq!((*held_ms_min, *held_ms_max), (0, 4));
            }
            other => panic!("{other:?}"),
        }
        assert_eq!(c.queued(), 0);
    }

    #[test]
    fn a_zero_window_writes_every_claim() {
        let t0 = Instant::now();
        let mut c = Churn::new(Duration::ZERO);
        c.push_claim(claim(1, 1, "a"), 1, t0);
        assert!(!c.fold_release(1, Some(0), t0));
        let mut out = Vec::new();
        c.drain_due(t0, &mut out);
        assert_eq!(out.len(), 1);
    }
}

//! holders -> **conflict** -> policy.
//!
//! A failed bind joined with who holds the port now (the ledger's claim,
//! verified against the live system), grouped so that a burst of failures
//! for one port is one conflict with a count.
//!
//! This module is the pure part: which failures are conflicts, how bursts
//! group, and the "at most one reaping per holder identity" memory. The
//! daemon (`daemon::run`) does the I/O around it: reads the trying process
//! from /proc at once, runs the targeted scan, asks the policy, journals.
//!
//! Bursts: the first failed bind of a (netns, proto, port) opens a conflict
//! that lasts `window`. It is journaled once when first seen (count = the
//! failures seen by then, usually 1). Failures inside the window only count.
//! When the window ends and more failures came, the same conflict (same
//! `first`) is journaled again with the final count and `last`; a reader
//! keeps the record with the highest count per (endpoint, first). The next
//! failure after the window opens a new conflict.

use std::collections::{HashMap, HashSet, VecDeque};
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::journal::Body;
use crate::vocab::Proto;

/// Where a conflict happens: two namespaces with the same port are two
/// conflicts (or none).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
pub struct ConflictKey {
    pub netns: u64,
    pub proto: Proto,
    pub port: u16,
}

/// Whether a failed bind with this errno (None: the tier could not say and
/// reaper could not infer it) is about someone else holding the port.
/// EACCES (a low port without the capability) or EINVAL (the socket was bound
/// already) are the binder's own business: counted, not conflicts.
pub fn is_conflict_errno(errno: Option<&str>) -> bool {
    matches!(errno, None | Some("EADDRINUSE"))
}

/// One burst of failed binds.
#[derive(Clone, Debug)]
pub struct Burst {
    pub id: u64,
    pub first: DateTime<Utc>,
    pub last: DateTime<Utc>,
    pub count: u64,
    opened: Instant,
    /// The conflict as first journaled, once the daemon has verified it;
    /// the end-of-window update reuses it with the final count.
    pub record: Option<Body>,
    /// The count that went into the journal last.
    pub journaled_count: u64,
}

/// What a failed bind did to the bursts.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Noted {
    /// It opened a new conflict: read the process, verify, judge, journal.
    New { id: u64 },
    /// It joined an open one: only counted.
    Joined { id: u64, count: u64 },
}

/// The open bursts.
pub struct Bursts {
    window: Duration,
    open: HashMap<ConflictKey, Burst>,
    next_id: u64,
}

impl Bursts {
    pub fn new(window: Duration) -> Bursts {
        Bursts {
            window,
            open: HashMap::new(),
            next_id: 1,
        }
    }

    /// A new window applies to bursts opened from now on (SIGHUP).
    pub fn set_window(&mut self, window: Duration) {
        self.window = window;
    }

    pub fn note(&mut self, key: ConflictKey, at: DateTime<Utc>, now: Instant) -> Noted {
        if let Some(b) = self.open.get_mut(&key) {
            if now.duration_since(b.opened) < self.window {
                b.count += 1;
                b.last = b.last.max(at);
                return Noted::Joined {
                    id: b.id,
                    count: b.count,
                };
            }
        }
        // Opening over an expired burst that was not collected yet: the old
        // one is replaced; `expire` is called often enough that this only
        // happens when its verification is still pending.
        let id = self.next_id;
        self.next_id += 1;
        self.open.insert(
            key,
            Burst {
                id,
                first: at,
                last: at,
                count: 1,
                opened: now,
                record: None,
                journaled_count: 0,
            },
        );
        Noted::New { id }
    }

    pub fn get_mut(&mut self, key: &ConflictKey, id: u64) -> Option<&mut Burst> {
        self.open.get_mut(key).filter(|b| b.id == id)
    }

    /// Forgets a burst that turned out not to be a conflict.
    pub fn remove(&mut self, key: &ConflictKey, id: u64) {
        if self.open.get(key).is_some_and(|b| b.id == id) {
            self.open.remove(key);
        }
    }

    /// Closes the bursts whose window has ended and whose first record was
    /// written (a burst still being verified stays open until it is).
    pub fn expire(&mut self, now: Instant) -> Vec<Burst> {
        let done: Vec<ConflictKey> = self
            .open
            .iter()
            .filter(|(_, b)| now.duration_since(b.opened) >= self.window && b.record.is_some())
            .map(|(k, _)| *k)
            .collect();
        done.into_iter()
            .filter_map(|k| self.open.remove(&k))
            .collect()
    }
}

/// A process as the reaper remembers it across its life: the pid and the
/// start time (a reused pid has another).
pub type HolderIdentity = (u32, u64);

/// "At most one reaping per holder identity": a holder that survived one
/// reaping (or was already reaped) is never queued again, however many
/// failures keep coming. Bounded: the oldest identities are forgotten first.
pub struct Reaped {
    set: HashSet<HolderIdentity>,
    order: VecDeque<HolderIdentity>,
    cap: usize,
}

impl Reaped {
    pub fn new(cap: usize) -> Reaped {
        Reaped {
            set: HashSet::new(),
            order: VecDeque::new(),
            cap,
        }
    }

    /// Whether an identity was reaped (or is being reaped) already.
    pub fn seen(&self, id: &HolderIdentity) -> bool {
        self.set.contains(id)
    }

    /// True the first time an identity is seen (go ahead and reap it).
    pub fn first_time(&mut self, id: HolderIdentity) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > self.cap {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(port: u16) -> ConflictKey {
        ConflictKey {
            netns: 1,
            proto: Proto::Tcp,
            port,
        }
    }

    #[test]
    fn a_burst_is_one_conflict_with_a_count() {
        let mut b = Bursts::new(Duration::from_secs(5));
        let t0 = Instant::now();
        let now = Utc::now();
        let Noted::New { id } = b.note(key(8080), now, t0) else {
            panic!("first failure opens a conflict")
        };
        for i in 2..=100 {
            assert_eq!(
                b.note(key(8080), now, t0 + Duration::from_millis(i * 10)),
                Noted::Joined { id, count: i }
            );
        }
        // Another port, or the same port in another namespace, is its own.
        assert!(matches!(b.note(key(9090), now, t0), Noted::New { .. }));
        let mut other = key(8080);
        other.netns = 2;
        assert!(matches!(b.note(other, now, t0), Noted::New { .. }));
        // Not verified yet: stays open past the window.
        assert!(b.expire(t0 + Duration::from_secs(6)).is_empty());
        b.get_mut(&key(8080), id).unwrap().record = Some(Body::Loss { lost: 0 });
        let closed = b.expire(t0 + Duration::from_secs(6));
        assert_eq!(closed.len(), 1);
        assert_eq!(closed[0].count, 100);
        // After the window, a new conflict.
        assert!(matches!(
            b.note(key(8080), now, t0 + Duration::from_secs(7)),
            Noted::New { .. }
        ));
    }

    #[test]
    fn each_identity_is_reaped_at_most_once() {
        let mut r = Reaped::new(2);
        assert!(r.first_time((10, 100)));
        assert!(!r.first_time((10, 100)));
        assert!(r.first_time((10, 200)), "a reused pid is another process");
        assert!(r.first_time((11, 1)));
        assert!(r.first_time((10, 100)), "forgotten past the cap");
    }

    #[test]
    fn only_port_collisions_are_conflicts() {
        assert!(is_conflict_errno(Some("EADDRINUSE")));
        assert!(is_conflict_errno(None));
        assert!(!is_conflict_errno(Some("EACCES")));
        assert!(!is_conflict_errno(Some("EINVAL")));
    }
}

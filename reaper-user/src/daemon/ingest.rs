//! daemon: **ingest**: the ring buffer's events, through the matcher, into
//! the ledger; each fact journaled and counted, a failed bind handed to
//! [`super::conflicts`].

use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::control;
use crate::events::{event_family, EventStream, Matcher, Observation};
use crate::hooks::Attached;
use crate::journal::{Body, Endpoint, ProcessRef};
use crate::ledger::{Bound, Change, Claim, ClaimKey, Fact, Released};
use crate::util::{clock_ns, comm_from_bytes};
use crate::vocab::{Charge, Family, Proto};

use super::churn::PendingClaim;
use super::{procinfo, Daemon, TICK};

/// The events' way in.
pub(super) struct Ingest {
    /// The ring buffer (None in degraded mode).
    pub(super) stream: Option<EventStream>,
    pub(super) matcher: Matcher,
    /// The binder's parent and exe by pid, for a second: a process that binds
    /// in a loop is read once, not once per bind.
    binders: foldhash::HashMap<u32, (Instant, Arc<control::Binder>)>,
    /// Each claim's CI job, read when it is made.
    pub(super) jobs: crate::holders::charge::Charger,
    /// The binder's job by pid, for a second, as `binders`: the charger
    /// remembers jobs by pid and start time, which costs a read of
    /// /proc/PID/stat per bind (most of the daemon's CPU under a storm).
    charges: foldhash::HashMap<u32, (Instant, Option<Arc<Charge>>)>,
    /// Reused per batch: observations, the ledger's changes, and what the
    /// control socket's state still needs from them.
    obs: Vec<Observation>,
    changes: Vec<Change>,
    updates: Vec<Update>,
}

/// What a batch changes in [`control::Shared`] beside the ledger, applied
/// under one lock.
enum Update {
    Bound {
        cookie: u64,
        binder: Arc<control::Binder>,
        charge: Option<Arc<Charge>>,
    },
    Released(u64),
}

impl Ingest {
    pub(super) fn new(stream: Option<EventStream>, matcher: Matcher) -> Ingest {
        Ingest {
            stream,
            matcher,
            binders: Default::default(),
            jobs: crate::holders::charge::Charger::new(),
            charges: Default::default(),
            obs: Vec::new(),
            changes: Vec::new(),
            updates: Vec::new(),
        }
    }
}

pub(super) async fn next_events(
    stream: &mut Option<EventStream>,
    raw: &mut Vec<reaper_common::Event>,
) -> Result<u64> {
    match stream {
        Some(s) => s.next_batch(raw, TICK).await,
        None => {
            tokio::time::sleep(TICK).await;
            Ok(0)
        }
    }
}

/// Where a claim is, as the journal writes it.
pub(super) fn key_endpoint(key: &ClaimKey, family: Family) -> Endpoint {
    Endpoint {
        netns: Some(key.netns),
        proto: key.proto,
        family: Some(family),
        addr: Some(key.addr.to_string()),
        port: key.port,
    }
}

/// Where a fact happened, as the journal writes it.
pub(super) fn endpoint(f: &Fact) -> Endpoint {
    Endpoint {
        netns: f.netns,
        // A fact the ledger journals is of a TCP or UDP claim.
        proto: f.proto.unwrap_or(Proto::Tcp),
        family: f.family,
        addr: f.addr.clone(),
        port: f.port.unwrap_or(0),
    }
}

/// The attached programs' ring buffer, read from the daemon's loop.
pub(super) fn event_stream(a: &mut Attached) -> Result<EventStream> {
    EventStream::new(
        a.events
            .take()
            .context("the ring buffer was taken already")?,
    )
}

/// How long a binder's /proc details are reused for its next binds.
pub(super) const BINDER_TTL: Duration = Duration::from_secs(1);

impl Daemon {
    /// Drains decoded events through the matcher into the ledger.
    pub(super) fn events(&mut self, raw: &mut Vec<reaper_common::Event>) {
        if self.ingest.stream.is_none() {
            return;
        }
        let mut obs = std::mem::take(&mut self.ingest.obs);
        let own = std::process::id();
        for ev in raw.drain(..) {
            // The daemon's own binds (its test bind after a reaping, its
            // metrics listener) are reaper at work, not the port's history:
            // "bound next by" must name the next job, not tokio-rt-worker.
            if ev.tgid == own {
                continue;
            }
            self.ingest.matcher.feed(ev, &mut obs);
        }
        self.ingest
            .matcher
            .settle(clock_ns(libc::CLOCK_BOOTTIME), &mut obs);
        if !obs.is_empty() {
            self.apply(&mut obs);
        }
        self.ingest.obs = obs;
        if let Some(a) = self.attached.as_mut() {
            if let Some(logger) = a.logger.as_mut() {
                logger.flush();
            }
        }
    }

    /// Applies `obs` (emptied) to the ledger under one lock, then records
    /// what changed. A claim made and released within the churn window
    /// costs a ledger update and a count: nothing is formatted for it.
    pub(super) fn apply(&mut self, obs: &mut Vec<Observation>) {
        let mut changes = std::mem::take(&mut self.ingest.changes);
        {
            let mut shared = self.shared.lock().unwrap();
            changes.extend(obs.iter().filter_map(|o| shared.ledger.apply_change(o)));
            self.metrics
                .ledger_claims
                .store(shared.ledger.len() as u64, Relaxed);
        }
        // One monotonic time per batch, for the binder caches and the queue.
        let now = Instant::now();
        for change in changes.drain(..) {
            match change {
                Change::Bound(b) => self.bound(b, now),
                Change::Released(r) => self.released(r, now),
                Change::Fact(f) => {
                    // What the fact's handling reads of the shared state
                    // is up to date first.
                    self.update_shared();
                    let holder = if f.ok { None } else { f.holder_claim.clone() };
                    self.fact(*f, holder);
                }
            }
        }
        self.ingest.changes = changes;
        self.update_shared();
        for o in obs.drain(..) {
            if let Observation::Connect(ev) = o {
                self.client_port(ev);
            }
        }
    }

    /// The batch's binders and charges, and its released claims' binders
    /// forgotten, in order, under one lock.
    fn update_shared(&mut self) {
        if self.ingest.updates.is_empty() {
            return;
        }
        let mut shared = self.shared.lock().unwrap();
        for u in self.ingest.updates.drain(..) {
            match u {
                Update::Bound {
                    cookie,
                    binder,
                    charge,
                } => {
                    shared.binders.insert(cookie, binder);
                    if let Some(c) = charge {
                        shared.ledger.charge(cookie, Charge::clone(&c));
                    }
                }
                Update::Released(cookie) => {
                    shared.binders.remove(&cookie);
                }
            }
        }
    }

    /// A claim made: counted, its binder and job noted, its record queued
    /// (made only if it is written).
    fn bound(&mut self, b: Bound, now: Instant) {
        self.metrics.binds.fetch_add(1, Relaxed);
        let pid = b.ev.tgid;
        let binder = self.binder(pid, now);
        let charge = self.charge(pid, now);
        self.ingest.updates.push(Update::Bound {
            cookie: b.ev.cookie,
            binder: binder.clone(),
            charge: charge.clone(),
        });
        let claim = PendingClaim {
            // When it was queued, as every record's `ts` (one vDSO read).
            ts_ns: clock_ns(libc::CLOCK_REALTIME) as i64,
            key: b.key,
            netns: b.netns,
            family: event_family(&b.ev),
            cookie: b.ev.cookie,
            pid,
            uid: b.ev.uid,
            comm: b.ev.comm,
            outside_pidns: b.ev.flags & reaper_common::FLAG_OUTSIDE_PIDNS != 0,
            requested_port: b.requested_port,
            binder,
            charge,
        };
        self.journal_claim(claim, now);
    }

    /// A claim ended: churn is folded into its summary; otherwise the
    /// release is recorded.
    fn released(&mut self, r: Released, now: Instant) {
        let cookie = r.ev.cookie;
        self.ingest.updates.push(Update::Released(cookie));
        self.metrics.releases.fetch_add(1, Relaxed);
        if self.sink.churn.fold_release(cookie, Some(r.held_ms), now) {
            self.metrics.churn_folded.fetch_add(1, Relaxed);
            return;
        }
        self.journal(Body::Release {
            at: key_endpoint(&r.key, r.family),
            process: Some(ProcessRef {
                pid: r.ev.tgid,
                comm: comm_from_bytes(&r.ev.comm),
                uid: Some(r.ev.uid),
                outside_pidns: (r.ev.flags & reaper_common::FLAG_OUTSIDE_PIDNS != 0)
                    .then_some(true),
                ..ProcessRef::default()
            }),
            held_ms: Some(r.held_ms),
            cookie: Some(cookie),
        });
    }

    /// A listen or a failed bind: journaled in full; a failed bind opens
    /// or joins a conflict.
    pub(super) fn fact(&mut self, fact: Fact, holder: Option<Claim>) {
        match (fact.kind, fact.ok) {
            ("listen", _) => {
                self.metrics.listens.fetch_add(1, Relaxed);
                self.sink.churn.pin(fact.cookie);
                self.charge_unbound(fact.cookie, fact.pid);
                self.journal(Body::Listen {
                    at: endpoint(&fact),
                    process: ProcessRef {
                        pid: fact.pid,
                        comm: fact.comm.clone(),
                        uid: Some(fact.uid),
                        outside_pidns: fact.outside_pidns.then_some(true),
                        ..ProcessRef::default()
                    },
                    cookie: Some(fact.cookie),
                });
            }
            ("bind", false) => self.failed_bind(fact, holder),
            _ => {}
        }
    }

    /// A claim made by listen() without a bind (the kernel picked the
    /// port) is charged when it listens.
    fn charge_unbound(&mut self, cookie: u64, pid: u32) {
        if !self.shared.lock().unwrap().ledger.uncharged(cookie) {
            return;
        }
        if let Some(c) = self.charge(pid, Instant::now()) {
            self.shared
                .lock()
                .unwrap()
                .ledger
                .charge(cookie, Charge::clone(&c));
        }
    }

    /// The job of a claim `pid` just made, read at most once per
    /// [`BINDER_TTL`] for a process that binds in a loop.
    fn charge(&mut self, pid: u32, now: Instant) -> Option<Arc<Charge>> {
        if let Some((at, c)) = self.ingest.charges.get(&pid) {
            if now.duration_since(*at) < BINDER_TTL {
                return c.clone();
            }
        }
        if self.ingest.charges.len() > 4096 {
            self.ingest
                .charges
                .retain(|_, (at, _)| now.duration_since(*at) < BINDER_TTL);
        }
        let c = self.ingest.jobs.charge(pid).map(Arc::new);
        self.ingest.charges.insert(pid, (now, c.clone()));
        c
    }

    /// The binder's parent and exe, read from /proc at most once per
    /// [`BINDER_TTL`] for a process that binds in a loop.
    pub(super) fn binder(&mut self, pid: u32, now: Instant) -> Arc<control::Binder> {
        if pid == 0 {
            // Outside reaper's pid namespace: nothing of it to read.
            return Arc::default();
        }
        if let Some((at, b)) = self.ingest.binders.get(&pid) {
            if now.duration_since(*at) < BINDER_TTL {
                return b.clone();
            }
        }
        if self.ingest.binders.len() > 4096 {
            self.ingest
                .binders
                .retain(|_, (at, _)| now.duration_since(*at) < BINDER_TTL);
        }
        let b = Arc::new(procinfo::binder(pid));
        self.ingest.binders.insert(pid, (now, b.clone()));
        b
    }
}

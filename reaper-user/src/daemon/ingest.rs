//! daemon: **ingest**: the ring buffer's events, through the matcher, into
//! the ledger; each fact journaled and counted, a failed bind handed to
//! [`super::conflicts`].

use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use crate::control;
use crate::events::{EventStream, Matcher};
use crate::hooks::Attached;
use crate::journal::{Body, Endpoint, ProcessRef};
use crate::ledger::{Claim, Fact};
use crate::util::clock_ns;
use crate::vocab::{Charge, Proto};

use super::{procinfo, Daemon, TICK};

/// The events' way in.
pub(super) struct Ingest {
    /// The ring buffer (None in degraded mode).
    pub(super) stream: Option<EventStream>,
    pub(super) matcher: Matcher,
    /// The binder's parent and exe by pid, for a second: a process that binds
    /// in a loop is read once, not once per bind.
    binders: std::collections::HashMap<u32, (Instant, control::Binder)>,
    /// Each claim's CI job, read when it is made.
    pub(super) jobs: crate::holders::charge::Charger,
    /// The binder's job by pid, for a second, as `binders`: the charger
    /// remembers jobs by pid and start time, which costs a read of
    /// /proc/PID/stat per bind (most of the daemon's CPU under a storm).
    charges: std::collections::HashMap<u32, (Instant, Option<Charge>)>,
}

impl Ingest {
    pub(super) fn new(stream: Option<EventStream>, matcher: Matcher) -> Ingest {
        Ingest {
            stream,
            matcher,
            binders: std::collections::HashMap::new(),
            jobs: crate::holders::charge::Charger::new(),
            charges: std::collections::HashMap::new(),
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
        let mut obs = Vec::new();
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
            self.apply(obs);
        }
        if let Some(a) = self.attached.as_mut() {
            if let Some(logger) = a.logger.as_mut() {
                logger.flush();
            }
        }
    }

    pub(super) fn apply(&mut self, obs: Vec<crate::events::Observation>) {
        let facts: Vec<(Fact, Option<Claim>)> = {
            let mut shared = self.shared.lock().unwrap();
            let mut facts = Vec::with_capacity(obs.len());
            for o in &obs {
                if let Some(f) = shared.ledger.apply(o) {
                    let holder = if f.ok { None } else { f.holder_claim.clone() };
                    facts.push((f, holder));
                }
            }
            self.metrics
                .ledger_claims
                .store(shared.ledger.len() as u64, Relaxed);
            facts
        };
        for (fact, holder) in facts {
            self.fact(fact, holder);
        }
        for o in &obs {
            if let crate::events::Observation::Connect(ev) = o {
                self.client_port(*ev);
            }
        }
    }

    /// One fact: journal it, count it, and open a conflict for a failed bind.
    pub(super) fn fact(&mut self, fact: Fact, holder: Option<Claim>) {
        let at = endpoint(&fact);
        match (fact.kind, fact.ok) {
            ("bind", true) => {
                self.metrics.binds.fetch_add(1, Relaxed);
                let binder = self.binder(fact.pid);
                let process = ProcessRef {
                    pid: fact.pid,
                    comm: fact.comm.clone(),
                    uid: Some(fact.uid),
                    ppid: binder.ppid,
                    exe: binder.exe.clone(),
                    ancestors: match (binder.ppid, &binder.parent_comm) {
                        (Some(p), Some(c)) => vec![format!("{p}:{c}")],
                        _ => Vec::new(),
                    },
                    outside_pidns: fact.outside_pidns.then_some(true),
                    ..ProcessRef::default()
                };
                let charge = self.charge(fact.pid);
                {
                    let mut shared = self.shared.lock().unwrap();
                    shared.binders.insert(fact.cookie, binder);
                    if let Some(c) = &charge {
                        shared.ledger.charge(fact.cookie, c.clone());
                    }
                }
                let (job, job_via) = charge.map(|c| (c.job, c.via)).unzip();
                self.journal_claim(
                    Body::Claim {
                        at,
                        process,
                        cookie: Some(fact.cookie),
                        requested_port: fact.requested_port,
                        job,
                        job_via,
                    },
                    fact.cookie,
                );
            }
            ("listen", _) => {
                self.metrics.listens.fetch_add(1, Relaxed);
                self.sink.churn.pin(fact.cookie);
                self.charge_unbound(fact.cookie, fact.pid);
                self.journal(Body::Listen {
                    at,
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
            ("release", _) => {
                self.shared.lock().unwrap().binders.remove(&fact.cookie);
                if fact.port.is_none() {
                    // A socket the ledger never knew (bound before the daemon
                    // and not seen by the seed scan): nothing to release.
                    return;
                }
                self.metrics.releases.fetch_add(1, Relaxed);
                if self
                    .sink
                    .churn
                    .fold_release(fact.cookie, fact.held_ms, Instant::now())
                {
                    self.metrics.churn_folded.fetch_add(1, Relaxed);
                    return;
                }
                self.journal(Body::Release {
                    at,
                    process: Some(ProcessRef {
                        pid: fact.pid,
                        comm: fact.comm.clone(),
                        uid: Some(fact.uid),
                        outside_pidns: fact.outside_pidns.then_some(true),
                        ..ProcessRef::default()
                    }),
                    held_ms: fact.held_ms,
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
        if let Some(c) = self.charge(pid) {
            self.shared.lock().unwrap().ledger.charge(cookie, c);
        }
    }

    /// The job of a claim `pid` just made, read at most once per
    /// [`BINDER_TTL`] for a process that binds in a loop.
    fn charge(&mut self, pid: u32) -> Option<Charge> {
        let now = Instant::now();
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
        let c = self.ingest.jobs.charge(pid);
        self.ingest.charges.insert(pid, (now, c.clone()));
        c
    }

    /// The binder's parent and exe, read from /proc at most once per
    /// [`BINDER_TTL`] for a process that binds in a loop.
    pub(super) fn binder(&mut self, pid: u32) -> control::Binder {
        if pid == 0 {
            // Outside reaper's pid namespace: nothing of it to read.
            return control::Binder::default();
        }
        let now = Instant::now();
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
        let b = procinfo::binder(pid);
        self.ingest.binders.insert(pid, (now, b.clone()));
        b
    }
}

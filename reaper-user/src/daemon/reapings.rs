//! daemon: **reapings**: a verified conflict's plan executed on a blocking
//! thread through `reap::execute` (the path `reaper free` takes), its intent
//! journaled before the first signal and its outcome after; a clean stop
//! waits (bounded) for the reapings in flight and records the rest as
//! `interrupted`.

use std::time::{Duration, Instant};

use tokio::sync::mpsc;

use crate::conflict::{ConflictKey, Reaped};
use crate::policy::Context as PolicyContext;
use crate::reap::records::{self, Holder, Holders, Ran};
use crate::reap::{self, Plan, StopOptions};
use crate::text::term;
use crate::util::rfc3339;
use crate::vocab::Decision;

use super::conflicts::Finding;
use super::{Daemon, Work, STOP_WAIT};

/// The reapings the daemon started.
pub(super) struct Reapings {
    /// Holder identities reaped once already (never twice).
    reaped: Reaped,
    /// Reapings started and not finished, by id.
    pub(super) in_flight: std::collections::BTreeMap<u64, InFlight>,
    next_reaping: u64,
}

impl Default for Reapings {
    fn default() -> Reapings {
        Reapings {
            reaped: Reaped::new(65536),
            in_flight: std::collections::BTreeMap::new(),
            next_reaping: 0,
        }
    }
}

/// A reaping the daemon started and has not journaled the outcome of.
pub(super) struct InFlight {
    pub(super) plan: Plan,
    /// Signals sent so far, by target pid.
    pub(super) signals: Vec<reap::SignalSent>,
    pub(super) started: Instant,
    /// When its last wave's grace ends: how long a clean stop waits for it.
    pub(super) grace_end: Instant,
}

pub(super) struct ReapDone {
    pub(super) reaping: u64,
    pub(super) execution: reap::Execution,
}

/// Runs the plan on a blocking thread; its signals and its end come back
/// as `Work`.
pub(super) fn spawn_execution(
    tx: mpsc::UnboundedSender<Work>,
    id: u64,
    plan: Plan,
    ctx: PolicyContext,
    key: ConflictKey,
    opts: StopOptions,
) {
    tokio::task::spawn_blocking(move || {
        // The probes pin the port's namespace while the holders live.
        let probes = plan.probes(&ctx, key.proto, key.port);
        let signals = tx.clone();
        let mut on_signal = |s: &reap::SignalSent| {
            let _ = signals.send(Work::Signalled {
                reaping: id,
                sent: s.clone(),
            });
        };
        let execution = match reap::execute(&plan, &probes, &opts, &mut on_signal) {
            Ok(e) => e,
            Err(_) => reap::Execution {
                targets: Vec::new(),
                free_at: None,
                last_error: None,
                containers: Vec::new(),
            },
        };
        let _ = tx.send(Work::Reaped(Box::new(ReapDone {
            reaping: id,
            execution,
        })));
    });
}

impl Daemon {
    /// Starts the reaping of a journaled conflict's plan, unless it refuses
    /// or has nothing to stop.
    pub(super) fn reap_conflict(&mut self, f: Finding, refusal: Option<String>) {
        let (Some(plan), Some(ctx)) = (f.plan, f.ctx) else {
            return;
        };
        if let Some(why) = refusal {
            if plan
                .judged
                .iter()
                .any(|j| j.verdict.decision == Decision::Reap)
            {
                tracing::info!(
                    "conflict on {}/{}: nothing is signalled, the port is held by {}",
                    f.key.port,
                    f.key.proto,
                    term(&why)
                );
            }
            return;
        }
        if plan.judged.is_empty() && plan.container_targets().is_empty() {
            return;
        }
        self.start_reaping(plan, ctx, f.key);
    }

    /// Executes a plan on a blocking thread: its intent is on the record
    /// (flushed) before the first signal, at most one reaping per holder
    /// identity however long the burst.
    pub(super) fn start_reaping(&mut self, plan: Plan, ctx: PolicyContext, key: ConflictKey) {
        if !self.first_reaping_of(&plan) {
            return;
        }
        self.record_intent(&plan, key);
        let started = Instant::now();
        let id = self.track_in_flight(&plan, started);
        let opts = StopOptions {
            grace: self.config.reap_grace,
            deadline: started + self.config.reap_deadline,
            start: started,
            pause_fifo: None,
        };
        spawn_execution(self.tx.clone(), id, plan, ctx, key, opts);
    }

    /// Whether no holder of the plan was reaped before; marks them all.
    pub(super) fn first_reaping_of(&mut self, plan: &Plan) -> bool {
        // A container is known by the process inside that listens.
        let ids: Vec<(u32, u64)> = plan
            .judged
            .iter()
            .map(|j| &j.process)
            .chain(
                plan.container_targets()
                    .into_iter()
                    .filter_map(|c| c.container.listeners.first()),
            )
            .map(|p| (p.pid, p.start_ticks))
            .collect();
        if ids.iter().any(|id| self.reapings.reaped.seen(id)) {
            return false;
        }
        for id in ids {
            self.reapings.reaped.first_time(id);
        }
        true
    }

    /// The log lines and the `in_progress` records, flushed.
    pub(super) fn record_intent(&mut self, plan: &Plan, key: ConflictKey) {
        for r in records::reapings(plan, Ran::Starting, Holders::Targets, None, None, false) {
            match r.holder {
                Holder::Container(c) => tracing::warn!(
                    "reaping container {} publishing {}/{}: stopping it through the engine: {}",
                    crate::text::term(&c.container.words()),
                    key.port,
                    key.proto,
                    c.verdict
                ),
                Holder::Process(j) => tracing::warn!(
                    "reaping pid {} ({}) holding {}/{}: {}",
                    j.process.pid,
                    term(&j.process.comm),
                    key.port,
                    key.proto,
                    term(&j.verdict.to_string())
                ),
            }
            self.journal(r.body);
        }
        // The intent is on disk before the first signal (and so is every
        // record queued before it).
        self.flush_all();
    }

    /// A new reaping id, with the plan kept until its execution reports.
    pub(super) fn track_in_flight(&mut self, plan: &Plan, started: Instant) -> u64 {
        let id = self.reapings.next_reaping;
        self.reapings.next_reaping += 1;
        let waves = plan.judged.iter().map(|j| j.wave()).max().unwrap_or(0) as u32 + 1;
        self.reapings.in_flight.insert(
            id,
            InFlight {
                plan: plan.clone(),
                signals: Vec::new(),
                started,
                grace_end: started + self.config.reap_grace * waves,
            },
        );
        id
    }

    pub(super) fn reaped(&mut self, r: ReapDone) {
        let Some(flight) = self.reapings.in_flight.remove(&r.reaping) else {
            return;
        };
        let free_at = r.execution.free_at.map(|t| rfc3339(reap::wall_of(t)));
        let elapsed = Some(flight.started.elapsed().as_millis() as u64);
        let ran = Ran::Executed(&r.execution);
        for r in records::reapings(&flight.plan, ran, Holders::Targets, free_at, elapsed, false) {
            let outcome = &r.outcome;
            self.metrics.reaping(outcome.as_str());
            match r.holder {
                Holder::Container(c) => tracing::warn!(
                    "reaping of container {} on {}/{}: {outcome}",
                    crate::text::term(&c.container.words()),
                    c.socket.port,
                    c.socket.proto
                ),
                Holder::Process(j) => tracing::warn!(
                    "reaping of pid {} ({}) on {}/{}: {outcome}",
                    j.process.pid,
                    term(&j.process.comm),
                    j.sockets[0].port,
                    j.sockets[0].proto
                ),
            }
            self.journal(r.body);
        }
    }

    /// A clean stop: wait (bounded by their grace, and by [`STOP_WAIT`]) for
    /// the reapings in flight to end; record the rest as interrupted, with
    /// the signals they sent.
    pub(super) fn finish_reapings(&mut self) {
        let until = self
            .reapings
            .in_flight
            .values()
            .map(|r| r.grace_end)
            .max()
            .map(|t| t.min(Instant::now() + STOP_WAIT));
        if let Some(until) = until {
            tracing::info!(
                "stopping: waiting up to {:?} for {} reaping(s) in flight",
                until.saturating_duration_since(Instant::now()),
                self.reapings.in_flight.len()
            );
        }
        while let Some(until) = until.filter(|_| !self.reapings.in_flight.is_empty()) {
            let left = until.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            // Only reaping news is handled now; a scan's result is moot.
            match self.rx.try_recv() {
                Ok(w @ (Work::Signalled { .. } | Work::Reaped(_))) => self.work(w),
                Ok(_) => {}
                Err(mpsc::error::TryRecvError::Empty) => {
                    std::thread::sleep(left.min(Duration::from_millis(10)))
                }
                Err(mpsc::error::TryRecvError::Disconnected) => break,
            }
        }
        // Signals reported just before the deadline.
        while let Ok(w) = self.rx.try_recv() {
            if matches!(w, Work::Signalled { .. } | Work::Reaped(_)) {
                self.work(w);
            }
        }
        self.journal_interrupted();
    }

    /// The reapings still in flight, journaled `interrupted` with the
    /// signals they sent.
    fn journal_interrupted(&mut self) {
        for (_, flight) in std::mem::take(&mut self.reapings.in_flight) {
            let elapsed = Some(flight.started.elapsed().as_millis() as u64);
            let ran = Ran::Interrupted(&flight.signals);
            for r in records::reapings(&flight.plan, ran, Holders::Targets, None, elapsed, false) {
                self.metrics.reaping(r.outcome.as_str());
                if let Holder::Process(j) = r.holder {
                    tracing::warn!(
                        "reaping of pid {} ({}) interrupted by the stop after {}",
                        j.process.pid,
                        term(&j.process.comm),
                        if r.signals.is_empty() {
                            "no signal".to_string()
                        } else {
                            r.signals
                                .iter()
                                .map(|s| s.signal.as_str())
                                .collect::<Vec<_>>()
                                .join(" and ")
                        }
                    );
                }
                self.journal(r.body);
            }
        }
    }
}

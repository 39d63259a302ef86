//! `reaper daemon`: the whole flow, running all day beside CI jobs.
//!
//! ```text
//! hooks -> events (Matcher) -> ledger --(failed bind)--> conflict
//!                                 ^                         |  targeted scan (holders)
//!   holders::scan (seed, degraded |                         v
//!   polling, reconcile on loss) --+       policy -> plan (reap::plan, as
//!                                         `free`) -> reap (pidfd, waves)
//!                                                           |
//!          journal <---- every claim, listen, release, conflict, reaping
//!          metrics (/metrics), control socket (who/ports/conflicts)
//! ```
//!
//! One tokio thread runs the loop: it drains the ring buffer, applies
//! observations to the ledger (shared with the control socket behind a
//! mutex held only per batch), journals each fact, and hands slow work
//! (scans, reapings) to blocking threads whose results come back on a
//! channel. Nothing slow runs on the loop, so SIGTERM is answered at once;
//! a stop then waits (bounded) for the reapings in flight and records the
//! rest as `interrupted`. A SIGHUP reload leaves reapings in flight alone:
//! they finish on their thread with the grace they started with.

pub mod config;
mod procinfo;
pub mod recovery;

use std::collections::HashSet;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::conflict::{is_conflict_errno, Burst, Bursts, ConflictKey, Noted, Reaped};
use crate::control::{self, Shared};
use crate::error::Exit;
use crate::events::{EventStream, Matcher};
use crate::holders::{self, Holding, Process, Query, Scan};
use crate::hooks::{self, Attached};
use crate::journal::writer::{JournalWriter, WriterOptions};
use crate::journal::{self, Body, Endpoint, HolderVerdict, ProcessRef, Record, VerdictRecord};
use crate::ledger::{addrs_collide, Claim, ClaimKey, Fact, Ledger};
use crate::metrics::{self, Metrics};
use crate::policy::{Context as PolicyContext, Policy};
use crate::reap::{self, Plan, StopOptions, Tree};
use crate::text::term;
use crate::util::{clock_ns, rfc3339};
use crate::vocab::{Action, Decision, Outcome, Proto, SocketState, Source};
use config::{Config, OnJournalError};

/// The line the daemon logs when it is ready (tests and supervisors wait for it).
pub const READY: &str = "reaper daemon ready";

/// How long a binder's /proc details are reused for its next binds.
const BINDER_TTL: Duration = Duration::from_secs(1);

/// The longest a clean stop waits for reapings in flight (their grace
/// bounds it first); what is still running then is journaled `interrupted`.
pub const STOP_WAIT: Duration = Duration::from_secs(5);

/// How long the loop waits on the ring buffer before it looks at timers.
const TICK: Duration = Duration::from_millis(50);
/// At most one repair of the ledger from the kernel-side claims map per
/// interval, however many losses or summarised claims come.
const REPAIR_INTERVAL: Duration = Duration::from_secs(1);

/// Runs the daemon until SIGTERM/SIGINT. `config_path` None: all defaults.
pub fn run(config: Config, config_path: Option<PathBuf>) -> Result<Exit> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let result = rt.block_on(async move {
        let mut d = Daemon::start(config, config_path).await?;
        d.run().await
    });
    // Blocking work still running (a scan, a reaping's wait) must not hold
    // the exit: the kernel detaches the hooks when the process ends anyway.
    rt.shutdown_timeout(Duration::from_millis(200));
    result
}

/// Slow work finished on a blocking thread.
enum Work {
    /// A conflict's targeted scan and verdicts.
    Verified(Box<Finding>),
    /// A signal a reaping in flight sent (kept for a stop in the middle).
    Signalled {
        reaping: u64,
        sent: reap::SignalSent,
    },
    /// A reaping's outcome.
    Reaped(Box<ReapDone>),
    /// A full scan: "seed", "poll" or "reconcile".
    Scanned {
        kind: &'static str,
        started: DateTime<Utc>,
        scan: Box<Result<Scan>>,
        took: Duration,
    },
}

struct Finding {
    key: ConflictKey,
    id: u64,
    fact: Fact,
    tried: ProcessRef,
    /// The ledger's claim on the port when the failure was seen.
    ledger_holder: Option<Claim>,
    /// The live processes holding colliding sockets (listeners and
    /// connections alike), for the record.
    holders: Vec<Process>,
    /// The decision over the colliding blocking sockets, the one
    /// `reaper free` makes (None when the holders could not be verified).
    plan: Option<Plan>,
    /// The context the plan was judged in (its netns, for the bind probes).
    ctx: Option<PolicyContext>,
    /// Why the live system could not be asked, when it could not.
    scan_error: Option<String>,
    scan: Option<Scan>,
    took: Duration,
}

/// A reaping the daemon started and has not journaled the outcome of.
struct InFlight {
    plan: Plan,
    /// Signals sent so far, by target pid.
    signals: Vec<reap::SignalSent>,
    started: Instant,
    /// When its last wave's grace ends: how long a clean stop waits for it.
    grace_end: Instant,
}

struct ReapDone {
    reaping: u64,
    execution: reap::Execution,
}

struct Daemon {
    config: Config,
    config_path: Option<PathBuf>,
    journal: Option<JournalWriter>,
    /// The tier name, or "proc" in degraded mode: every record's `source`.
    source: Source,
    attached: Option<Attached>,
    stream: Option<EventStream>,
    matcher: Matcher,
    metrics: Arc<Metrics>,
    shared: Arc<Mutex<Shared>>,
    bursts: Bursts,
    reaped: Reaped,
    /// Reapings started and not finished, by id.
    in_flight: std::collections::BTreeMap<u64, InFlight>,
    next_reaping: u64,
    tx: mpsc::UnboundedSender<Work>,
    rx: mpsc::UnboundedReceiver<Work>,
    /// A full scan is running (one at a time).
    scanning: bool,
    /// Losses were seen while a scan ran: reconcile again after it.
    reconcile_pending: bool,
    lost_seen: u64,
    /// A repair from the kernel-side claims map is due: after losses
    /// (journaled as a reconcile), or to learn summarised ephemeral claims.
    repair_after_loss: bool,
    repair_for_summary: bool,
    last_repair: Option<Instant>,
    /// The kernel side's counters as last read: claims it had no room for,
    /// and ephemeral binds + releases it summarised.
    unstored_seen: u64,
    summarised_seen: u64,
    /// The claims map as last read (reused: no allocation per repair).
    kernel_claims: Vec<reaper_common::Event>,
    /// Set when a journal error must stop the daemon.
    fatal: Option<anyhow::Error>,
    control_path: Option<PathBuf>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    host: String,
    /// Encoded records waiting for [`Daemon::flush`].
    pending: Vec<u8>,
    pending_records: usize,
    /// The binder's parent and exe by pid, for a second: a process that binds
    /// in a loop is read once, not once per bind.
    binders: std::collections::HashMap<u32, (Instant, control::Binder)>,
}

impl Daemon {
    async fn start(config: Config, config_path: Option<PathBuf>) -> Result<Daemon> {
        // 1. The journal, and whether the last run ended cleanly.
        let last = last_record(&config.journal);
        let metrics = Metrics::new("proc");
        let journal = open_journal(&config, &metrics)?;

        // 2. The hooks, or degraded mode; then least privilege.
        let (mut attached, degraded_reason) = attach_or_degrade(&config);
        drop_capabilities();
        let source = publish_tier(&metrics, attached.as_ref(), degraded_reason.is_some());
        let stream = attached.as_mut().map(event_stream).transpose()?;
        let exact = attached.as_ref().is_some_and(|a| a.tier.exact_errno());

        let (tx, rx) = mpsc::unbounded_channel();
        let mut shared = Shared::new(
            Ledger::new(source.clone()),
            source.as_str(),
            degraded_reason.is_some(),
        );
        shared.journal = Some(config.journal.display().to_string());
        let shared = Arc::new(Mutex::new(shared));
        let mut d = Daemon {
            bursts: Bursts::new(config.conflict_window),
            reaped: Reaped::new(65536),
            in_flight: std::collections::BTreeMap::new(),
            next_reaping: 0,
            config,
            config_path,
            journal,
            source,
            attached,
            stream,
            matcher: Matcher::new(exact),
            metrics,
            shared,
            tx,
            rx,
            scanning: false,
            reconcile_pending: false,
            lost_seen: 0,
            repair_after_loss: false,
            repair_for_summary: false,
            last_repair: None,
            unstored_seen: 0,
            summarised_seen: 0,
            kernel_claims: Vec::new(),
            fatal: None,
            control_path: None,
            _tasks: Vec::new(),
            host: crate::journal::hostname(),
            pending: Vec::new(),
            pending_records: 0,
            binders: std::collections::HashMap::new(),
        };

        // 3. The records of the start.
        d.journal_start(last.as_ref(), degraded_reason.as_deref());

        // 4. Seed the ledger with holders that predate the daemon.
        d.seed().await?;

        // 5. The interfaces.
        d.serve().await?;
        d.flush();
        if let Some(e) = d.fatal.take() {
            return Err(e);
        }
        tracing::info!(
            tier = %d.source,
            degraded = degraded_reason.is_some(),
            claims = d.shared.lock().unwrap().ledger.len(),
            "{READY}: tier {}, journal {}, {}",
            d.source,
            d.config.journal.display(),
            d.config.summary()
        );
        Ok(d)
    }

    /// Seeds the ledger with the holders that predate the daemon.
    async fn seed(&mut self) -> Result<()> {
        let started = Utc::now();
        let t = Instant::now();
        let seed = tokio::task::spawn_blocking(|| holders::scan(&listening_query()))
            .await
            .context("the seed scan panicked")?;
        self.scanned("seed", started, seed, t.elapsed());
        Ok(())
    }

    /// A gap when the last run did not stop cleanly, the start, and the
    /// mode when degraded.
    fn journal_start(&mut self, last: Option<&recovery::LastRecord>, degraded: Option<&str>) {
        if let Some(last) = last {
            if last.kind != "stop" {
                tracing::warn!(
                    "the previous run ended without a stop record (last record: {} at {}): journaling a gap",
                    last.kind,
                    last.ts
                );
                self.journal(Body::Gap {
                    after: last.ts.clone(),
                });
            }
        }
        self.journal(Body::Start {
            version: env!("CARGO_PKG_VERSION").to_string(),
            tier: self.source.to_string(),
            pid: Some(std::process::id()),
        });
        match degraded {
            Some(reason) => {
                tracing::warn!(
                    "degraded mode: {reason}; polling the sockets every {:?} instead (failed binds are not seen; claims are seen at poll granularity)",
                    self.config.poll_interval
                );
                self.journal(Body::Mode {
                    mode: "degraded".into(),
                    reason: reason.to_string(),
                });
            }
            None => {
                let a = self.attached.as_ref().unwrap();
                tracing::info!(
                    "attached tier {} (errno {}; listens {}; cgroup {})",
                    a.tier.as_str(),
                    if a.tier.exact_errno() {
                        "exact"
                    } else {
                        "inferred"
                    },
                    if a.listens { "seen" } else { "not seen" },
                    a.cgroup.display()
                );
            }
        }
    }

    /// The metrics endpoint and the control socket, when configured.
    async fn serve(&mut self) -> Result<()> {
        if let Some(addr) = self.config.metrics_listen {
            let listener = metrics::bind(addr).await?;
            self._tasks
                .push(tokio::spawn(metrics::serve(listener, self.metrics.clone())));
            tracing::info!("metrics on http://{addr}/metrics");
        }
        if let Some(path) = self.config.control_socket.clone() {
            let listener = control::bind(&path)?;
            self._tasks
                .push(tokio::spawn(control::serve(listener, self.shared.clone())));
            tracing::info!("control socket {}", path.display());
            self.control_path = Some(path);
        }
        Ok(())
    }

    async fn run(&mut self) -> Result<Exit> {
        let mut sigterm =
            signal(SignalKind::terminate()).context("installing the SIGTERM handler")?;
        let mut sigint =
            signal(SignalKind::interrupt()).context("installing the SIGINT handler")?;
        let mut sighup = signal(SignalKind::hangup()).context("installing the SIGHUP handler")?;
        let mut poll = tokio::time::interval(self.config.poll_interval);
        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut raw = Vec::new();
        let reason = loop {
            tokio::select! {
                r = next_events(&mut self.stream, &mut raw) => {
                    let bad = r?;
                    if bad > 0 {
                        tracing::error!("{bad} ring buffer records were too short to decode (the eBPF object and reaper disagree: rebuild)");
                    }
                }
                _ = poll.tick(), if self.stream.is_none() => self.start_scan("poll"),
                Some(w) = self.rx.recv() => self.work(w),
                _ = sigterm.recv() => break "SIGTERM",
                _ = sigint.recv() => break "SIGINT",
                _ = sighup.recv() => {
                    if self.reload() {
                        poll = tokio::time::interval(self.config.poll_interval);
                        poll.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                    }
                }
            }
            self.events(&mut raw);
            self.check_losses();
            for burst in self.bursts.expire(Instant::now()) {
                self.close_burst(burst);
            }
            self.flush();
            if let Some(e) = self.fatal.take() {
                self.shutdown("journal error");
                return Err(e);
            }
        };
        tracing::info!("{reason}: stopping");
        self.shutdown(reason);
        Ok(Exit::Ok)
    }

    /// Detaches, resolves what is pending, journals the stop.
    fn shutdown(&mut self, reason: &str) {
        // The reapings first: their signals are real, and the drain below
        // can take seconds under a bind storm.
        self.finish_reapings();
        self.flush();
        if let Some(stream) = self.stream.as_mut() {
            let mut raw = Vec::new();
            stream.drain_now(&mut raw);
            let mut obs = Vec::new();
            for ev in raw {
                self.matcher.feed(ev, &mut obs);
            }
            self.matcher.flush(&mut obs);
            self.apply(obs);
        }
        self.stream = None;
        // Dropping the links detaches every program.
        self.attached = None;
        for burst in self
            .bursts
            .expire(Instant::now() + Duration::from_secs(86400))
        {
            self.close_burst(burst);
        }
        self.journal(Body::Stop {
            reason: reason.to_string(),
        });
        self.flush();
        if let Some(p) = &self.control_path {
            let _ = std::fs::remove_file(p);
        }
    }

    /// Drains decoded events through the matcher into the ledger.
    fn events(&mut self, raw: &mut Vec<reaper_common::Event>) {
        if self.stream.is_none() {
            return;
        }
        let mut obs = Vec::new();
        for ev in raw.drain(..) {
            self.matcher.feed(ev, &mut obs);
        }
        self.matcher
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

    fn apply(&mut self, obs: Vec<crate::events::Observation>) {
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
    }

    /// One fact: journal it, count it, and open a conflict for a failed bind.
    fn fact(&mut self, fact: Fact, holder: Option<Claim>) {
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
                    ..ProcessRef::default()
                };
                self.shared
                    .lock()
                    .unwrap()
                    .binders
                    .insert(fact.cookie, binder);
                self.journal(Body::Claim {
                    at,
                    process,
                    cookie: Some(fact.cookie),
                    requested_port: fact.requested_port,
                });
            }
            ("listen", _) => {
                self.metrics.listens.fetch_add(1, Relaxed);
                self.journal(Body::Listen {
                    at,
                    process: ProcessRef {
                        pid: fact.pid,
                        comm: fact.comm.clone(),
                        uid: Some(fact.uid),
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
                self.journal(Body::Release {
                    at,
                    process: Some(ProcessRef {
                        pid: fact.pid,
                        comm: fact.comm.clone(),
                        uid: Some(fact.uid),
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

    fn failed_bind(&mut self, fact: Fact, holder: Option<Claim>) {
        self.metrics
            .bind_failure(fact.errno.as_deref().unwrap_or("UNKNOWN"));
        let (Some(port), Some(proto)) = (fact.port, fact.proto) else {
            return;
        };
        if port == 0 || !is_conflict_errno(fact.errno.as_deref()) {
            return;
        }
        let key = ConflictKey {
            netns: fact.netns.unwrap_or(0),
            proto,
            port,
        };
        let at = chrono::DateTime::parse_from_rfc3339(&fact.ts)
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|_| Utc::now());
        match self.bursts.note(key, at, Instant::now()) {
            Noted::Joined { .. } => {}
            Noted::New { id } => {
                // Now, before it exits: who tried.
                let tried = procinfo::now(fact.pid, &fact.comm, fact.uid);
                tracing::info!(
                    "conflict: pid {} ({}) failed to bind {}/{} in netns {} ({}){}",
                    fact.pid,
                    term(&fact.comm),
                    port,
                    proto,
                    key.netns,
                    fact.errno.as_deref().unwrap_or("cause unknown"),
                    holder
                        .as_ref()
                        .map(|c| format!(
                            "; the ledger says pid {} ({}) holds it",
                            c.pid,
                            term(&c.comm)
                        ))
                        .unwrap_or_default()
                );
                let policy = self.config.policy.clone();
                let tx = self.tx.clone();
                tokio::task::spawn_blocking(move || {
                    let finding = verify(key, id, fact, tried, holder, &policy);
                    let _ = tx.send(Work::Verified(Box::new(finding)));
                });
            }
        }
    }

    fn work(&mut self, w: Work) {
        match w {
            Work::Verified(f) => self.verified(*f),
            Work::Signalled { reaping, sent } => {
                if let Some(r) = self.in_flight.get_mut(&reaping) {
                    r.signals.push(sent);
                }
            }
            Work::Reaped(r) => self.reaped(*r),
            Work::Scanned {
                kind,
                started,
                scan,
                took,
            } => self.scanned(kind, started, *scan, took),
        }
    }

    /// A conflict's holders are known: repair the ledger, journal the
    /// conflict, reap what the policy says to.
    fn verified(&mut self, f: Finding) {
        self.metrics.scan("conflict", f.took);
        if let Some(scan) = &f.scan {
            self.repair_port(&f, scan);
        }
        if f.scan.is_some() && f.holders.is_empty() && f.fact.errno.is_none() {
            // The cause was unknown and nothing holds the port: not a
            // collision (a bad address, a permission), only a failed bind.
            tracing::debug!(
                "failed bind of {}/{} by pid {}: nothing holds it, not a conflict",
                f.key.port,
                f.key.proto,
                f.fact.pid
            );
            self.bursts.remove(&f.key, f.id);
            return;
        }
        let Some(burst) = self.bursts.get_mut(&f.key, f.id) else {
            return;
        };
        let refusal = f.plan.as_ref().and_then(|p| p.refusal());
        let body = conflict_body(&f, burst, refusal.is_none());
        self.metrics.conflicts.fetch_add(1, Relaxed);
        burst.record = Some(body.clone());
        burst.journaled_count = burst.count;
        let record = self.journal(body);
        self.shared.lock().unwrap().push_conflict(record);
        self.reap_conflict(f, refusal);
    }

    /// Starts the reaping of a journaled conflict's plan, unless it refuses
    /// or has nothing to stop.
    fn reap_conflict(&mut self, f: Finding, refusal: Option<String>) {
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
    fn start_reaping(&mut self, plan: Plan, ctx: PolicyContext, key: ConflictKey) {
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
    fn first_reaping_of(&mut self, plan: &Plan) -> bool {
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
        if ids.iter().any(|id| self.reaped.seen(id)) {
            return false;
        }
        for id in ids {
            self.reaped.first_time(id);
        }
        true
    }

    /// The log lines and the `in_progress` records, flushed.
    fn record_intent(&mut self, plan: &Plan, key: ConflictKey) {
        for c in plan.container_targets() {
            tracing::warn!(
                "reaping container {} publishing {}/{}: stopping it through the engine: {}",
                crate::text::term(&c.container.words()),
                key.port,
                key.proto,
                c.verdict
            );
            self.journal(journal::container_reaping(
                c,
                None,
                Outcome::InProgress,
                None,
                None,
                false,
            ));
        }
        for j in &plan.judged {
            tracing::warn!(
                "reaping pid {} ({}) holding {}/{}: {}",
                j.process.pid,
                term(&j.process.comm),
                key.port,
                key.proto,
                term(&j.verdict.to_string())
            );
            self.journal(journal::reaping(
                j,
                &[],
                Outcome::InProgress,
                None,
                None,
                false,
            ));
        }
        self.flush();
    }

    /// A new reaping id, with the plan kept until its execution reports.
    fn track_in_flight(&mut self, plan: &Plan, started: Instant) -> u64 {
        let id = self.next_reaping;
        self.next_reaping += 1;
        let waves = plan.judged.iter().map(|j| j.wave()).max().unwrap_or(0) as u32 + 1;
        self.in_flight.insert(
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

    /// The targeted scan is the truth about this port: a ledger claim it
    /// does not confirm is dropped, a holder the ledger missed is added.
    fn repair_port(&mut self, f: &Finding, scan: &Scan) {
        let mut shared = self.shared.lock().unwrap();
        if let Some(c) = &f.ledger_holder {
            let live = scan.holdings.iter().any(|h| {
                h.socket.netns == c.key.netns
                    && h.socket.addr == c.key.addr
                    && h.processes.iter().any(|p| p.pid == c.pid)
            });
            if !live {
                tracing::info!(
                    "ledger repair: pid {} ({}) no longer holds {}/{}; dropped",
                    c.pid,
                    term(&c.comm),
                    c.key.port,
                    c.key.proto
                );
                shared.ledger.forget(c.cookie);
            }
        }
        for h in scan.holdings.iter().filter(|h| holds_for_binds(h)) {
            if let Some(claim) = claim_of(h) {
                if let Some(b) = binder_of(h) {
                    shared.binders.entry(claim.cookie).or_insert(b);
                }
                shared.ledger.seed(claim);
            }
        }
        self.metrics
            .ledger_claims
            .store(shared.ledger.len() as u64, Relaxed);
    }

    fn reaped(&mut self, r: ReapDone) {
        let Some(flight) = self.in_flight.remove(&r.reaping) else {
            return;
        };
        let free_at = r.execution.free_at.map(|t| rfc3339(reap::wall_of(t)));
        let elapsed = Some(flight.started.elapsed().as_millis() as u64);
        for (c, stop) in flight
            .plan
            .container_targets()
            .into_iter()
            .zip(&r.execution.containers)
        {
            let outcome = reap::plan::container_outcome(stop, free_at.is_some());
            self.metrics.reaping(outcome);
            tracing::warn!(
                "reaping of container {} on {}/{}: {outcome}",
                crate::text::term(&c.container.words()),
                c.socket.port,
                c.socket.proto
            );
            self.journal(journal::container_reaping(
                c,
                Some(stop),
                Outcome::from(outcome),
                free_at.clone(),
                elapsed,
                false,
            ));
        }
        for (j, t) in flight.plan.judged.iter().zip(&r.execution.targets) {
            let outcome = t.outcome.outcome(r.execution.free_at.is_some());
            self.metrics.reaping(outcome.as_str());
            tracing::warn!(
                "reaping of pid {} ({}) on {}/{}: {outcome}",
                j.process.pid,
                term(&j.process.comm),
                j.sockets[0].port,
                j.sockets[0].proto
            );
            self.journal(journal::reaping(
                j,
                &t.signals,
                outcome,
                free_at.clone(),
                elapsed,
                false,
            ));
        }
    }

    /// A clean stop: wait (bounded by their grace, and by [`STOP_WAIT`]) for
    /// the reapings in flight to end; record the rest as interrupted, with
    /// the signals they sent.
    fn finish_reapings(&mut self) {
        let until = self
            .in_flight
            .values()
            .map(|r| r.grace_end)
            .max()
            .map(|t| t.min(Instant::now() + STOP_WAIT));
        if let Some(until) = until {
            tracing::info!(
                "stopping: waiting up to {:?} for {} reaping(s) in flight",
                until.saturating_duration_since(Instant::now()),
                self.in_flight.len()
            );
        }
        while let Some(until) = until.filter(|_| !self.in_flight.is_empty()) {
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
        for (_, flight) in std::mem::take(&mut self.in_flight) {
            let elapsed = Some(flight.started.elapsed().as_millis() as u64);
            for c in flight.plan.container_targets() {
                self.metrics.reaping(Outcome::Interrupted.as_str());
                self.journal(journal::container_reaping(
                    c,
                    None,
                    Outcome::Interrupted,
                    None,
                    elapsed,
                    false,
                ));
            }
            for j in &flight.plan.judged {
                let sent: Vec<reap::SignalSent> = flight
                    .signals
                    .iter()
                    .filter(|s| s.pid == j.process.pid)
                    .cloned()
                    .collect();
                self.metrics.reaping(Outcome::Interrupted.as_str());
                tracing::warn!(
                    "reaping of pid {} ({}) interrupted by the stop after {}",
                    j.process.pid,
                    term(&j.process.comm),
                    if sent.is_empty() {
                        "no signal".to_string()
                    } else {
                        sent.iter()
                            .map(|s| s.signal.as_str())
                            .collect::<Vec<_>>()
                            .join(" and ")
                    }
                );
                self.journal(journal::reaping(
                    j,
                    &sent,
                    Outcome::Interrupted,
                    None,
                    elapsed,
                    false,
                ));
            }
        }
    }

    fn close_burst(&mut self, burst: crate::conflict::Burst) {
        if burst.count <= burst.journaled_count {
            return;
        }
        let Some(Body::Conflict {
            at,
            tried,
            errno,
            errno_exact,
            holders,
            held_since,
            first,
            verdict,
            verdicts,
            action,
            ..
        }) = burst.record
        else {
            return;
        };
        tracing::info!(
            "conflict on {}/{} ended: {} failed binds",
            at.port,
            at.proto,
            burst.count
        );
        let body = Body::Conflict {
            at,
            tried,
            errno,
            errno_exact,
            holders,
            held_since,
            count: burst.count,
            first: first.clone(),
            last: rfc3339(burst.last),
            verdict,
            verdicts,
            action,
        };
        let record = self.journal(body);
        let mut shared = self.shared.lock().unwrap();
        // The control socket shows the final count in place of the first.
        if let Some(old) = shared.conflicts.iter_mut().rev().find(|r| match &r.body {
            Body::Conflict {
                first: f, at: a, ..
            } => *f == first && Some(a) == endpoint_of(&record).as_ref(),
            _ => false,
        }) {
            *old = record;
        } else {
            shared.push_conflict(record);
        }
    }

    /// The kernel side's counters: ring-buffer losses (journaled), a full
    /// claims map (journaled, counted), summarised ephemeral claims. Each
    /// makes a repair of the ledger from the kernel-side claims map due; at
    /// most one runs per [`REPAIR_INTERVAL`], however many losses come, and
    /// it never scans /proc.
    fn check_losses(&mut self) {
        let Some(a) = &self.attached else {
            return;
        };
        let lost = a.lost_total();
        let unstored = a.claims_full_total();
        let summarised = a.count(reaper_common::COUNT_EPHEMERAL)
            + a.count(reaper_common::COUNT_EPHEMERAL_RELEASES);
        let capacity = a.claims.capacity();
        if lost > self.lost_seen {
            let n = lost - self.lost_seen;
            self.lost_seen = lost;
            self.metrics.ringbuf_lost.store(lost, Relaxed);
            tracing::warn!("{n} events lost (ring buffer full; {lost} in all): the ledger will be repaired from the kernel-side claims map (a larger ringbuf_size helps)");
            self.journal(Body::Loss { lost: n });
            self.repair_after_loss = true;
        }
        if unstored > self.unstored_seen {
            self.unstored_seen = unstored;
            self.metrics.claims_unstored.store(unstored, Relaxed);
            tracing::warn!("the kernel-side claims map is full ({capacity} entries): {unstored} claims in all are known from their events only (raise claims_max)");
            self.journal(Body::ClaimsFull {
                unstored,
                capacity: capacity as u64,
            });
        }
        if summarised != self.summarised_seen {
            self.summarised_seen = summarised;
            self.metrics.ephemeral_summarised.store(
                self.attached
                    .as_ref()
                    .map(|a| a.count(reaper_common::COUNT_EPHEMERAL))
                    .unwrap_or(0),
                Relaxed,
            );
            self.repair_for_summary = true;
        }
        let due = self
            .last_repair
            .is_none_or(|t| t.elapsed() >= REPAIR_INTERVAL);
        if due && (self.repair_after_loss || self.repair_for_summary) {
            self.repair();
        }
    }

    /// Repairs the ledger from the kernel-side claims map: claims whose
    /// event was lost or summarised are added, claims whose release was
    /// lost are dropped.
    fn repair(&mut self) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        let after_loss = std::mem::take(&mut self.repair_after_loss);
        self.repair_for_summary = false;
        self.last_repair = Some(Instant::now());
        let t = Instant::now();
        let read_at = clock_ns(libc::CLOCK_BOOTTIME);
        if let Err(e) = a.claims.read_all(&mut self.kernel_claims) {
            tracing::warn!("reading the kernel-side claims map failed: {e}");
            return;
        }
        let (added, removed) = {
            let mut shared = self.shared.lock().unwrap();
            let (added, removed) = shared.ledger.repair(&self.kernel_claims, read_at);
            for c in &removed {
                shared.binders.remove(&c.cookie);
            }
            self.metrics
                .ledger_claims
                .store(shared.ledger.len() as u64, Relaxed);
            (added.len() as u64, removed.len() as u64)
        };
        self.metrics.repairs.fetch_add(1, Relaxed);
        self.metrics.scan("repair", t.elapsed());
        if after_loss {
            tracing::info!(
                "repaired the ledger from the kernel-side claims map ({} claims, {:.1} ms): {added} added, {removed} removed",
                self.kernel_claims.len(),
                t.elapsed().as_secs_f64() * 1e3
            );
            self.journal(Body::Reconcile { added, removed });
        }
    }

    fn start_scan(&mut self, kind: &'static str) {
        if self.scanning {
            return;
        }
        self.scanning = true;
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = Utc::now();
            let t = Instant::now();
            let scan = holders::scan(&Query::default());
            let _ = tx.send(Work::Scanned {
                kind,
                started,
                scan: Box::new(scan),
                took: t.elapsed(),
            });
        });
    }

    /// A full scan came back: seed, poll (degraded mode) or reconcile.
    fn scanned(
        &mut self,
        kind: &'static str,
        started: DateTime<Utc>,
        scan: Result<Scan>,
        took: Duration,
    ) {
        if kind != "seed" {
            self.scanning = false;
        }
        self.metrics.scan(kind, took);
        let scan = match scan {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("the {kind} scan failed: {e:#}");
                return;
            }
        };
        let (added, removed) = self.merge_scan(kind, started, &scan);
        match kind {
            "seed" => tracing::info!(
                "seeded the ledger with {} claims that predate the daemon ({:.1} ms)",
                added.len(),
                took.as_secs_f64() * 1e3
            ),
            "reconcile" => {
                tracing::info!(
                    "reconciled the ledger: {} added, {} removed",
                    added.len(),
                    removed.len()
                );
                self.journal(Body::Reconcile {
                    added: added.len() as u64,
                    removed: removed.len() as u64,
                });
                if self.reconcile_pending {
                    self.reconcile_pending = false;
                    self.start_scan("reconcile");
                }
            }
            _ => self.journal_polled(added, removed),
        }
    }

    /// Seeds the ledger with the scan's claims it lacks and (but for the
    /// seed scan) forgets the claims no socket backs; returns both.
    fn merge_scan(
        &mut self,
        kind: &str,
        started: DateTime<Utc>,
        scan: &Scan,
    ) -> (Vec<Claim>, Vec<Claim>) {
        let live: Vec<(Claim, Option<control::Binder>)> = scan
            .holdings
            .iter()
            .filter(|h| holds_for_binds(h))
            .filter_map(|h| claim_of(h).map(|c| (c, binder_of(h))))
            .collect();
        let mut added = Vec::new();
        let mut removed = Vec::new();
        let mut shared = self.shared.lock().unwrap();
        let known: HashSet<(u64, Proto, IpAddr, u16)> =
            shared.ledger.claims().map(|c| key_tuple(&c.key)).collect();
        for (c, b) in &live {
            if !known.contains(&key_tuple(&c.key)) {
                added.push(c.clone());
                if let Some(b) = b {
                    shared.binders.insert(c.cookie, b.clone());
                }
                shared.ledger.seed(c.clone());
            }
        }
        if kind != "seed" {
            // A claim no socket backs any more. Claims made after the
            // scan began may be newer than it: they stay.
            let backed: HashSet<(u64, Proto, IpAddr, u16)> = scan
                .holdings
                .iter()
                .filter(|h| h.socket.state != SocketState::TimeWait)
                .map(|h| (h.socket.netns, h.socket.proto, h.socket.addr, h.socket.port))
                .collect();
            let stale: Vec<u64> = shared
                .ledger
                .claims()
                .filter(|c| c.bound_at < started && !backed.contains(&key_tuple(&c.key)))
                .map(|c| c.cookie)
                .collect();
            for cookie in stale {
                if let Some(c) = shared.ledger.forget(cookie) {
                    shared.binders.remove(&cookie);
                    removed.push(c);
                }
            }
        }
        self.metrics
            .ledger_claims
            .store(shared.ledger.len() as u64, Relaxed);
        (added, removed)
    }

    /// Degraded polling: the changes are the claims and releases.
    fn journal_polled(&mut self, added: Vec<Claim>, removed: Vec<Claim>) {
        for c in added {
            self.metrics.binds.fetch_add(1, Relaxed);
            let process = procinfo::now(c.pid, &c.comm, c.uid);
            self.journal(Body::Claim {
                at: claim_endpoint(&c),
                process,
                cookie: Some(c.cookie),
                requested_port: None,
            });
        }
        for c in removed {
            self.metrics.releases.fetch_add(1, Relaxed);
            self.journal(Body::Release {
                at: claim_endpoint(&c),
                process: Some(ProcessRef {
                    pid: c.pid,
                    comm: c.comm.clone(),
                    uid: Some(c.uid),
                    ..ProcessRef::default()
                }),
                held_ms: Some((Utc::now() - c.bound_at).num_milliseconds().max(0) as u64),
                cookie: Some(c.cookie),
            });
        }
    }

    /// SIGHUP: a new config replaces the old one only when it is valid.
    /// Returns whether it was applied.
    fn reload(&mut self) -> bool {
        let Some(path) = self.config_path.clone() else {
            tracing::warn!("SIGHUP: the daemon runs on defaults (no --config), nothing to reload");
            return false;
        };
        let new = match Config::load(&path) {
            Ok(c) => c,
            Err(e) => {
                tracing::error!("SIGHUP: keeping the running config, the new one is refused: {e}");
                return false;
            }
        };
        for (what, changed) in [
            ("hooks", new.hooks != self.config.hooks),
            ("ringbuf_size", new.ringbuf_size != self.config.ringbuf_size),
            ("claims_max", new.claims_max != self.config.claims_max),
            (
                "metrics_listen",
                new.metrics_listen != self.config.metrics_listen,
            ),
            (
                "control_socket",
                new.control_socket != self.config.control_socket,
            ),
        ] {
            if changed {
                tracing::warn!(
                    "SIGHUP: `{what}` changed; it takes effect when the daemon restarts"
                );
            }
        }
        let journal_changed = new.journal != self.config.journal
            || new.journal_max_bytes != self.config.journal_max_bytes
            || new.journal_keep != self.config.journal_keep
            || new.fsync != self.config.fsync;
        if journal_changed {
            match JournalWriter::open(&new.journal, writer_options(&new)) {
                Ok(j) => self.journal = Some(j),
                Err(e) => {
                    tracing::error!("SIGHUP: keeping the running config, the new journal {} cannot be opened: {e}", new.journal.display());
                    return false;
                }
            }
        }
        self.bursts.set_window(new.conflict_window);
        let summary = new.summary();
        let hooks = self.config.hooks;
        let ringbuf = self.config.ringbuf_size;
        let claims_max = self.config.claims_max;
        let metrics = self.config.metrics_listen;
        let control = self.config.control_socket.clone();
        self.config = new;
        // What needs a restart keeps its running value, so the config shown
        // and acted on is what really runs.
        self.config.hooks = hooks;
        self.config.ringbuf_size = ringbuf;
        self.config.claims_max = claims_max;
        self.config.metrics_listen = metrics;
        self.config.control_socket = control;
        self.metrics.reloads.fetch_add(1, Relaxed);
        tracing::info!("SIGHUP: reloaded {}: {summary}", path.display());
        true
    }

    /// Appends a record; returns it (for the control socket).
    fn binder(&mut self, pid: u32) -> control::Binder {
        let now = Instant::now();
        if let Some((at, b)) = self.binders.get(&pid) {
            if now.duration_since(*at) < BINDER_TTL {
                return b.clone();
            }
        }
        if self.binders.len() > 4096 {
            self.binders
                .retain(|_, (at, _)| now.duration_since(*at) < BINDER_TTL);
        }
        let b = procinfo::binder(pid);
        self.binders.insert(pid, (now, b.clone()));
        b
    }

    /// Queues a record; returns it (for the control socket). Records are
    /// written by [`Daemon::flush`] at the end of each turn of the loop, all
    /// queued lines in one write(2): still whole lines at the end of the file
    /// (O_APPEND), one syscall per batch instead of one per bind under a
    /// storm. A crash loses at most the records of the turn in progress.
    fn journal(&mut self, body: Body) -> Record {
        let record = Record {
            v: crate::journal::SCHEMA_VERSION,
            ts: rfc3339(Utc::now()),
            host: self.host.clone(),
            source: self.source.clone(),
            body,
        };
        if self.journal.is_some() {
            match serde_json::to_writer(&mut self.pending, &record) {
                Ok(()) => {
                    self.pending.push(b'\n');
                    self.pending_records += 1;
                }
                Err(e) => {
                    self.metrics.journal_errors.fetch_add(1, Relaxed);
                    tracing::error!("journal: a record could not be encoded ({e}); it is lost");
                }
            }
        }
        record
    }

    /// Writes the queued records.
    fn flush(&mut self) {
        if self.pending.is_empty() {
            return;
        }
        let n = std::mem::take(&mut self.pending_records);
        let batch = std::mem::take(&mut self.pending);
        let Some(j) = self.journal.as_mut() else {
            return;
        };
        if let Err(e) = j.append_line(&batch) {
            self.metrics.journal_errors.fetch_add(n as u64, Relaxed);
            match self.config.on_journal_error {
                OnJournalError::KeepRunning => tracing::error!(
                    "journal: {e} ({n} records lost; running on, on_journal_error = \"keep-running\")"
                ),
                OnJournalError::Exit => {
                    tracing::error!("journal: {e}; stopping (on_journal_error = \"exit\")");
                    if self.fatal.is_none() {
                        self.fatal = Some(
                            anyhow::Error::new(e)
                                .context("writing the journal (on_journal_error = \"exit\")"),
                        );
                    }
                }
            }
        }
        // Reuse the allocation.
        self.pending = batch;
        self.pending.clear();
    }
}

/// The hook tier the daemon runs on ("proc" in degraded mode), published
/// in the metrics with the claims map's capacity.
fn publish_tier(metrics: &Metrics, attached: Option<&Attached>, degraded: bool) -> Source {
    let source = attached.map_or(Source::Proc, |a| Source::from(a.tier.as_str()));
    metrics.set_tier(source.as_str());
    if let Some(a) = attached {
        metrics
            .claims_capacity
            .store(a.claims.capacity() as u64, Relaxed);
    }
    metrics.degraded.store(degraded as u64, Relaxed);
    source
}

/// Runs the plan on a blocking thread; its signals and its end come back
/// as `Work`.
fn spawn_execution(
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

/// The conflict record of a verified finding; `not_refused` when its plan
/// (if any) does not refuse.
fn conflict_body(f: &Finding, burst: &Burst, not_refused: bool) -> Body {
    let judged: &[reap::Judged] = f.plan.as_ref().map(|p| p.judged.as_slice()).unwrap_or(&[]);
    let reap_all = not_refused && !judged.is_empty();
    let holders = conflict_holders(f);
    let errno = f
        .fact
        .errno
        .clone()
        .or_else(|| (!holders.is_empty()).then(|| "EADDRINUSE".to_string()))
        .unwrap_or_else(|| "UNKNOWN".to_string());
    Body::Conflict {
        at: endpoint(&f.fact),
        tried: f.tried.clone(),
        errno,
        errno_exact: f.fact.errno_exact,
        holders,
        held_since: held_since(f),
        count: burst.count,
        first: rfc3339(burst.first),
        last: rfc3339(burst.last),
        verdict: deciding_verdict(f, judged).or_else(|| {
            f.scan_error.as_ref().map(|e| VerdictRecord {
                decision: Decision::Keep,
                reasons: vec![format!(
                    "the holders could not be verified, so nothing is judged: {e}"
                )],
                rule: None,
            })
        }),
        verdicts: judged.iter().map(HolderVerdict::of).collect(),
        action: if reap_all {
            Action::Reap
        } else {
            Action::Report
        },
    }
}

/// The verdict that decided: a holder that keeps the port from being
/// reaped, else the first holder's, else why a blocking socket could not
/// be judged.
fn deciding_verdict(f: &Finding, judged: &[reap::Judged]) -> Option<VerdictRecord> {
    judged
        .iter()
        .find(|j| j.verdict.decision != Decision::Reap)
        .or_else(|| judged.first())
        .map(|j| VerdictRecord::from(&j.verdict))
        .or_else(|| {
            f.plan
                .as_ref()
                .and_then(|p| p.unjudgeable().first().map(|u| (*u).clone()))
                .map(|u| VerdictRecord {
                    decision: Decision::Keep,
                    reasons: vec![format!("{}: {}", u.socket, u.reason)],
                    rule: None,
                })
        })
}

/// The live holders, or the ledger's word (marked as such) when the live
/// system could not be asked.
fn conflict_holders(f: &Finding) -> Vec<ProcessRef> {
    let mut holders: Vec<ProcessRef> = f.holders.iter().map(ProcessRef::from).collect();
    if f.scan.is_none() {
        if let Some(c) = &f.ledger_holder {
            holders.push(ProcessRef {
                pid: c.pid,
                comm: c.comm.clone(),
                uid: Some(c.uid),
                ..ProcessRef::default()
            });
        }
    }
    holders
}

/// Since when the port is held: the ledger's bind, else the first
/// holder's start.
fn held_since(f: &Finding) -> Option<String> {
    f.ledger_holder
        .as_ref()
        .map(|c| rfc3339(c.bound_at))
        .or_else(|| {
            f.holders
                .first()
                .map(|p| p.started_at.clone())
                .filter(|s| !s.is_empty())
        })
}

/// The journal's last record (to know whether the last run stopped
/// cleanly); a torn last line is closed so that appends start clean.
fn last_record(journal: &Path) -> Option<recovery::LastRecord> {
    let (last, torn) = recovery::last_record(journal).unwrap_or_else(|e| {
        tracing::warn!("cannot read the end of the journal: {e:#}");
        (None, false)
    });
    if torn {
        tracing::warn!(
            "the journal {} ends in a torn line (the last run died mid-write); it is kept and skipped by readers",
            journal.display()
        );
        if let Err(e) = recovery::close_torn_line(journal) {
            tracing::warn!("{e:#}");
        }
    }
    last
}

/// The journal for appending; when it cannot be opened, `on_journal_error`
/// decides between running without it and not starting.
fn open_journal(config: &Config, metrics: &Metrics) -> Result<Option<JournalWriter>> {
    match JournalWriter::open(&config.journal, writer_options(config)) {
        Ok(j) => Ok(Some(j)),
        Err(e) if config.on_journal_error == OnJournalError::KeepRunning => {
            metrics.journal_errors.fetch_add(1, Relaxed);
            tracing::error!(
                "cannot open the journal {}: {e}; running without it (on_journal_error = \"keep-running\")",
                config.journal.display()
            );
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "opening the journal {} (on_journal_error = \"exit\")",
                config.journal.display()
            )
        }),
    }
}

/// The configured hook tier attached, or why the daemon runs degraded.
fn attach_or_degrade(config: &Config) -> (Option<Attached>, Option<String>) {
    match config.hooks.tier() {
        None => (None, Some("hooks = \"none\" in the config".to_string())),
        Some(_) if !crate::util::is_root() => (
            None,
            Some(
                "not running as root (the BPF hooks need CAP_BPF, CAP_PERFMON, CAP_SYS_ADMIN)"
                    .to_string(),
            ),
        ),
        Some(tier) => match hooks::attach_with(
            tier,
            &hooks::Options {
                claims_max: config.claims_max,
                ..hooks::Options::new(config.ringbuf_size)
            },
        ) {
            Ok(a) => (Some(a), None),
            Err(e) => (
                None,
                Some(format!("the hooks could not be attached: {e:#}")),
            ),
        },
    }
}

/// The attached programs' ring buffer, read from the daemon's loop.
fn event_stream(a: &mut Attached) -> Result<EventStream> {
    EventStream::new(
        a.events
            .take()
            .context("the ring buffer was taken already")?,
    )
}

/// Least privilege from here on: the programs are attached (their fds stay
/// valid); what is left to do needs only these capabilities. Called before
/// any thread starts, so every later thread inherits the drop.
fn drop_capabilities() {
    if !crate::util::is_root() {
        return;
    }
    match crate::caps::drop_except(crate::caps::DAEMON_KEEPS) {
        Ok(left) => tracing::info!("capabilities: {}", left.describe()),
        Err(e) => tracing::warn!(
            "could not drop capabilities: {e:#}; running with: {}",
            crate::caps::sets_of("self")
                .map(|s| format!(
                    "effective {}; bounding {}",
                    crate::caps::names(s.effective),
                    s.bounding.map_or("unknown".into(), crate::caps::names)
                ))
                .unwrap_or_else(|| "unknown (no /proc/self/status)".into())
        ),
    }
}

fn writer_options(c: &Config) -> WriterOptions {
    WriterOptions {
        max_bytes: (c.journal_max_bytes > 0).then_some(c.journal_max_bytes),
        keep: c.journal_keep,
        sync: c.fsync,
    }
}

fn listening_query() -> Query {
    Query {
        listening_only: true,
        ..Query::default()
    }
}

async fn next_events(
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

/// The ledger's claim a failed bind collided with, if it knows one.
fn endpoint(f: &Fact) -> Endpoint {
    Endpoint {
        netns: f.netns,
        // A fact the ledger journals is of a TCP or UDP claim.
        proto: f.proto.unwrap_or(Proto::Tcp),
        family: f.family,
        addr: f.addr.clone(),
        port: f.port.unwrap_or(0),
    }
}

fn endpoint_of(r: &Record) -> Option<Endpoint> {
    match &r.body {
        Body::Conflict { at, .. } => Some(at.clone()),
        _ => None,
    }
}

fn claim_endpoint(c: &Claim) -> Endpoint {
    Endpoint {
        netns: Some(c.key.netns),
        proto: c.key.proto,
        family: Some(c.family),
        addr: Some(c.key.addr.to_string()),
        port: c.key.port,
    }
}

fn key_tuple(k: &ClaimKey) -> (u64, Proto, IpAddr, u16) {
    (k.netns, k.proto, k.addr, k.port)
}

/// A scanned socket as a ledger claim (source "proc"). Sockets read from
/// /proc/net carry no cookie; their inode, marked by the top bit so it never
/// equals a kernel cookie, keys them instead.
/// A listening TCP or bound UDP socket: a claim in the ledger's sense
/// (connections and TIME-WAIT hold ports too, but are not claims).
fn holds_for_binds(h: &Holding) -> bool {
    h.socket.state.is_listening()
}

/// The binder details a scan knows: the holder's parent now (for a holder
/// that predates the daemon, the best there is).
fn binder_of(h: &Holding) -> Option<control::Binder> {
    let p = h.processes.first()?;
    Some(control::Binder {
        ppid: Some(p.ppid),
        parent_comm: p.ancestors.first().map(|(_, c)| c.clone()),
        exe: p.exe.clone(),
    })
}

fn claim_of(h: &Holding) -> Option<Claim> {
    let s = &h.socket;
    let p = h.processes.first()?;
    let cookie = if s.cookie != 0 {
        s.cookie
    } else {
        s.inode | (1 << 63)
    };
    let started = chrono::DateTime::parse_from_rfc3339(&p.started_at)
        .map(|t| t.with_timezone(&Utc))
        .unwrap_or_else(|_| Utc::now());
    Some(Claim {
        key: ClaimKey {
            netns: s.netns,
            proto: s.proto,
            addr: s.addr,
            port: s.port,
        },
        family: s.family,
        cookie,
        pid: p.pid,
        tid: p.pid,
        comm: p.comm.clone(),
        uid: s.uid,
        cgroup_id: 0,
        // The bind itself was not seen: the process start is the earliest
        // the claim can be.
        bound_at: started,
        listening_at: (s.state == SocketState::Listen).then_some(started),
        requested_port: None,
        source: Source::Proc,
    })
}

/// The blocking half of a conflict: ask the live system who holds the port
/// in that namespace, and build the plan over the colliding sockets (the
/// one `reaper free` builds; the rules' `tree` keys give tree semantics).
fn verify(
    key: ConflictKey,
    id: u64,
    fact: Fact,
    tried: ProcessRef,
    ledger_holder: Option<Claim>,
    policy: &Policy,
) -> Finding {
    let t = Instant::now();
    let q = Query {
        port: Some(key.port),
        proto: Some(key.proto),
        netns: Some(key.netns),
        listening_only: false,
    };
    let want: Option<IpAddr> = fact.addr.as_deref().and_then(|a| a.parse().ok());
    let mut finding = Finding {
        key,
        id,
        fact,
        tried,
        ledger_holder,
        holders: Vec::new(),
        plan: None,
        ctx: None,
        scan_error: None,
        scan: None,
        took: Duration::ZERO,
    };
    match holders::scan(&q) {
        Ok(scan) => {
            // The colliding sockets, without the failed binder's own.
            let colliding: Vec<Holding> = scan
                .holdings
                .iter()
                .filter(|h| want.is_none_or(|w| addrs_collide(h.socket.addr, w)))
                .filter(|h| {
                    !(h.socket.cookie == finding.fact.cookie
                        && h.processes.iter().any(|p| p.pid == finding.fact.pid))
                })
                .cloned()
                .collect();
            for p in colliding.iter().flat_map(|h| &h.processes) {
                if !finding.holders.iter().any(|q| q.pid == p.pid) {
                    finding.holders.push(p.clone());
                }
            }
            match PolicyContext::current(Some(key.netns)) {
                Ok(mut ctx) => {
                    finding.plan = Some(Plan::build(&colliding, policy, &mut ctx, Tree::Rules));
                    finding.ctx = Some(ctx);
                }
                Err(e) => {
                    finding.scan_error = Some(format!(
                        "reaper cannot read its own context ({e}), so nothing is judged"
                    ))
                }
            }
            finding.scan = Some(scan);
        }
        Err(e) => finding.scan_error = Some(format!("{e:#}")),
    }
    finding.took = t.elapsed();
    finding
}

/// `--check-config`: validates and says what the file sets up.
pub fn check_config(path: &Path) -> Result<String, config::ConfigError> {
    let c = Config::load(path)?;
    Ok(format!(
        "{}: valid. journal {}, hooks {}, metrics {}, control socket {}, {}",
        path.display(),
        c.journal.display(),
        format!("{:?}", c.hooks).to_lowercase(),
        c.metrics_listen
            .map(|a| a.to_string())
            .unwrap_or_else(|| "off".into()),
        c.control_socket
            .as_ref()
            .map(|p| p.display().to_string())
            .unwrap_or_else(|| "off".into()),
        c.summary()
    ))
}

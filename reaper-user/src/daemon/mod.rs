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

mod churn;
mod clientports;
pub mod config;
mod conflicts;
mod ingest;
mod jobs;
mod procinfo;
mod reapings;
mod reconcile;
mod recovery;
mod sink;

use std::path::{Path, PathBuf};
use std::sync::atomic::Ordering::Relaxed;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::mpsc;

use crate::conflict::Bursts;
use crate::control::{self, Shared};
use crate::error::Exit;
use crate::events::Matcher;
use crate::holders::Scan;
use crate::hooks::{self, Attached};
use crate::journal::writer::JournalWriter;
use crate::journal::Body;
use crate::ledger::Ledger;
use crate::metrics::{self, Metrics};
use crate::reap::{self};
use crate::vocab::Source;
use config::Config;
use conflicts::Finding;
use ingest::{event_stream, next_events, Ingest};
use reapings::{ReapDone, Reapings};
use reconcile::Reconcile;
use sink::{last_record, open_journal, writer_options, Sink};

/// The line the daemon logs when it is ready (tests and supervisors wait for it).
pub const READY: &str = "reaper daemon ready";

/// The longest a clean stop waits for reapings in flight (their grace
/// bounds it first); what is still running then is journaled `interrupted`.
pub const STOP_WAIT: Duration = Duration::from_secs(5);

/// How long the loop waits on the ring buffer before it looks at timers.
const TICK: Duration = Duration::from_millis(50);

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
    /// A port lent to a `connect()`, with its owner when found.
    ClientPort(Box<clientports::Lent>),
    /// A full scan: "seed", "poll" or "reconcile".
    Scanned {
        kind: &'static str,
        started: DateTime<Utc>,
        scan: Box<Result<Scan>>,
        took: Duration,
    },
}

/// The daemon's loop state: the core here, each part's own state in its
/// file.
struct Daemon {
    config: Config,
    config_path: Option<PathBuf>,
    attached: Option<Attached>,
    metrics: Arc<Metrics>,
    shared: Arc<Mutex<Shared>>,
    tx: mpsc::UnboundedSender<Work>,
    rx: mpsc::UnboundedReceiver<Work>,
    control_path: Option<PathBuf>,
    _tasks: Vec<tokio::task::JoinHandle<()>>,
    ingest: Ingest,
    /// Open conflicts, one burst of failed binds each.
    bursts: Bursts,
    reapings: Reapings,
    reconcile: Reconcile,
    sink: Sink,
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
        shared.job_ports = config.job.ports.clone();
        let shared = Arc::new(Mutex::new(shared));
        let mut d = Daemon {
            bursts: Bursts::new(config.conflict_window),
            ingest: Ingest::new(stream, Matcher::new(exact)),
            reapings: Reapings::default(),
            reconcile: Reconcile::default(),
            sink: Sink::new(journal, source),
            config,
            config_path,
            attached,
            metrics,
            shared,
            tx,
            rx,
            control_path: None,
            _tasks: Vec::new(),
        };
        d.sink.churn.set_window(d.config.journal_churn_window);

        // 3. The records of the start.
        d.journal_start(last.as_ref(), degraded_reason.as_deref());

        // 4. Seed the ledger with holders that predate the daemon.
        d.seed().await?;

        // 5. The interfaces.
        d.serve().await?;
        // The start's records are on disk before the daemon says it is ready.
        d.flush_all();
        if let Some(e) = d.sink.fatal.take() {
            return Err(e);
        }
        tracing::info!(
            tier = %d.sink.source,
            degraded = degraded_reason.is_some(),
            claims = d.shared.lock().unwrap().ledger.len(),
            "{READY}: tier {}, journal {}, {}",
            d.sink.source,
            d.config.journal.display(),
            d.config.summary()
        );
        Ok(d)
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
        let reserved_ports = reserve_ports(&self.config.reserve_ports);
        self.journal(Body::Start {
            version: env!("CARGO_PKG_VERSION").to_string(),
            tier: self.sink.source.to_string(),
            pid: Some(std::process::id()),
            reserved_ports,
        });
        self.watch_reserved_ports();
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
                r = next_events(&mut self.ingest.stream, &mut raw) => {
                    let bad = r?;
                    if bad > 0 {
                        tracing::error!("{bad} ring buffer records were too short to decode (the eBPF object and reaper disagree: rebuild)");
                    }
                }
                _ = poll.tick(), if self.ingest.stream.is_none() => self.start_scan("poll"),
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
            self.job_records();
            self.check_losses();
            for burst in self.bursts.expire(Instant::now()) {
                self.close_burst(burst);
            }
            self.flush();
            if let Some(e) = self.sink.fatal.take() {
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
        self.flush_all();
        if let Some(stream) = self.ingest.stream.as_mut() {
            let mut raw = Vec::new();
            stream.drain_now(&mut raw);
            let mut obs = Vec::new();
            for ev in raw {
                self.ingest.matcher.feed(ev, &mut obs);
            }
            self.ingest.matcher.flush(&mut obs);
            self.apply(&mut obs);
        }
        self.ingest.stream = None;
        // Dropping the links detaches every program.
        self.attached = None;
        for burst in self
            .bursts
            .expire(Instant::now() + Duration::from_secs(86400))
        {
            self.close_burst(burst);
        }
        self.journal_all_churn();
        self.journal(Body::Stop {
            reason: reason.to_string(),
        });
        self.flush_all();
        if let Some(p) = &self.control_path {
            let _ = std::fs::remove_file(p);
        }
    }

    fn work(&mut self, w: Work) {
        match w {
            Work::Verified(f) => self.verified(*f),
            Work::Signalled { reaping, sent } => {
                if let Some(r) = self.reapings.in_flight.get_mut(&reaping) {
                    r.signals.push(sent);
                }
            }
            Work::Reaped(r) => self.reaped(*r),
            Work::ClientPort(l) => self.client_port_found(*l),
            Work::Scanned {
                kind,
                started,
                scan,
                took,
            } => self.scanned(kind, started, *scan, took),
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
                Ok(j) => self.sink.journal = Some(j),
                Err(e) => {
                    tracing::error!("SIGHUP: keeping the running config, the new journal {} cannot be opened: {e}", new.journal.display());
                    return false;
                }
            }
        }
        self.bursts.set_window(new.conflict_window);
        self.sink.churn.set_window(new.journal_churn_window);
        let summary = new.summary();
        let hooks = self.config.hooks;
        let ringbuf = self.config.ringbuf_size;
        let claims_max = self.config.claims_max;
        let metrics = self.config.metrics_listen;
        let control = self.config.control_socket.clone();
        self.shared.lock().unwrap().job_ports = new.job.ports.clone();
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

/// `reserve_ports` of the config added to the host's
/// net.ipv4.ip_local_reserved_ports, for the start record: the list the
/// kernel has now, or why it could not be written.
fn reserve_ports(ranges: &[(u16, u16)]) -> Option<String> {
    if ranges.is_empty() {
        return None;
    }
    Some(match crate::bindmodel::setting::reserve(ranges) {
        Ok(now) => {
            tracing::info!("net.ipv4.ip_local_reserved_ports is now {now}: connect() never lends these ports to a client");
            now
        }
        Err(e) => {
            tracing::warn!("could not add reserve_ports to net.ipv4.ip_local_reserved_ports: {e}");
            format!("error: {e}")
        }
    })
}

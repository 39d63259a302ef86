//! daemon: **reconcile**: the ledger kept true to the kernel: seeded by a
//! scan at the start, polled in degraded mode, repaired from the
//! kernel-side claims map after ring-buffer losses or summarised claims.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::{DateTime, Utc};

use crate::control;
use crate::holders::{self, Holding, Query, Scan};
use crate::journal::{Body, Endpoint, ProcessRef};
use crate::ledger::{Claim, ClaimKey};
use crate::util::clock_ns;
use crate::vocab::{Proto, SocketState, Source};

use super::{procinfo, Daemon, Work};

/// What the ledger's repairs and scans need to remember.
#[derive(Default)]
pub(super) struct Reconcile {
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
    /// When the kernel side's counters were last read.
    counters_read: Option<Instant>,
}

pub(super) fn listening_query() -> Query {
    Query {
        listening_only: true,
        ..Query::default()
    }
}

pub(super) fn claim_endpoint(c: &Claim) -> Endpoint {
    Endpoint {
        netns: Some(c.key.netns),
        proto: c.key.proto,
        family: Some(c.family),
        addr: Some(c.key.addr.to_string()),
        port: c.key.port,
    }
}

pub(super) fn key_tuple(k: &ClaimKey) -> (u64, Proto, IpAddr, u16) {
    (k.netns, k.proto, k.addr, k.port)
}

/// A claim in the ledger's sense: what the bind model says keeps the next
/// server from binding, from sock_diag's facts alone (a listener, any UDP
/// socket, connected ones too). Connections and TIME-WAIT hold ports too,
/// but are not claims.
pub(super) fn claims_port(h: &Holding) -> bool {
    crate::bindmodel::facts::surely_blocks_next_server(&h.socket)
}

/// The binder details a scan knows: the holder's parent now (for a holder
/// that predates the daemon, the best there is).
pub(super) fn binder_of(h: &Holding) -> Option<control::Binder> {
    let p = h.processes.first()?;
    Some(control::Binder {
        ppid: Some(p.ppid),
        parent_comm: p.ancestors.first().map(|(_, c)| c.clone()),
        exe: p.exe.clone(),
    })
}

/// A scanned socket as a ledger claim (source "proc"). Sockets read from
/// /proc/net carry no cookie; their inode, marked by the top bit so it never
/// equals a kernel cookie, keys them instead.
pub(super) fn claim_of(h: &Holding) -> Option<Claim> {
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
        netns_cookie: 0,
        // The bind itself was not seen: the process start is the earliest
        // the claim can be.
        bound_at: started,
        listening_at: (s.state == SocketState::Listen).then_some(started),
        requested_port: None,
        source: Source::Proc,
        job: None,
    })
}

/// At most one repair of the ledger from the kernel-side claims map per
/// interval, however many losses or summarised claims come.
pub(super) const REPAIR_INTERVAL: Duration = Duration::from_secs(1);

/// The kernel side's counters are read at most this often: each read is
/// four bpf(2) calls, and a storm turns the loop every few milliseconds.
const COUNTERS_EVERY: Duration = Duration::from_millis(20);

impl Daemon {
    /// Seeds the ledger with the holders that predate the daemon.
    pub(super) async fn seed(&mut self) -> Result<()> {
        let started = Utc::now();
        let t = Instant::now();
        let seed = tokio::task::spawn_blocking(|| holders::scan(&listening_query()))
            .await
            .context("the seed scan panicked")?;
        self.scanned("seed", started, seed.map_err(Into::into), t.elapsed());
        Ok(())
    }

    /// The kernel side's counters: ring-buffer losses (journaled), a full
    /// claims map (journaled, counted), summarised ephemeral claims. Each
    /// makes a repair of the ledger from the kernel-side claims map due; at
    /// most one runs per [`REPAIR_INTERVAL`], however many losses come, and
    /// it never scans /proc. The counters are read at most every
    /// [`COUNTERS_EVERY`].
    pub(super) fn check_losses(&mut self) {
        let Some(a) = &self.attached else {
            return;
        };
        let now = Instant::now();
        if self
            .reconcile
            .counters_read
            .is_some_and(|t| now.duration_since(t) < COUNTERS_EVERY)
        {
            return;
        }
        self.reconcile.counters_read = Some(now);
        let lost = a.lost_total();
        let unstored = a.claims_full_total();
        let summarised = a.count(reaper_common::COUNT_EPHEMERAL)
            + a.count(reaper_common::COUNT_EPHEMERAL_RELEASES);
        let capacity = a.claims.capacity();
        if lost > self.reconcile.lost_seen {
            let n = lost - self.reconcile.lost_seen;
            self.reconcile.lost_seen = lost;
            self.metrics.ringbuf_lost.store(lost, Relaxed);
            tracing::warn!("{n} events lost (ring buffer full; {lost} in all): the ledger will be repaired from the kernel-side claims map (a larger ringbuf_size helps)");
            self.journal(Body::Loss { lost: n });
            self.reconcile.repair_after_loss = true;
        }
        if unstored > self.reconcile.unstored_seen {
            self.reconcile.unstored_seen = unstored;
            self.metrics.claims_unstored.store(unstored, Relaxed);
            tracing::warn!("the kernel-side claims map is full ({capacity} entries): {unstored} claims in all are known from their events only (raise claims_max)");
            self.journal(Body::ClaimsFull {
                unstored,
                capacity: capacity as u64,
            });
        }
        if summarised != self.reconcile.summarised_seen {
            self.reconcile.summarised_seen = summarised;
            self.metrics.ephemeral_summarised.store(
                self.attached
                    .as_ref()
                    .map(|a| a.count(reaper_common::COUNT_EPHEMERAL))
                    .unwrap_or(0),
                Relaxed,
            );
            self.reconcile.repair_for_summary = true;
        }
        let due = self
            .reconcile
            .last_repair
            .is_none_or(|t| t.elapsed() >= REPAIR_INTERVAL);
        if due && (self.reconcile.repair_after_loss || self.reconcile.repair_for_summary) {
            self.repair();
        }
    }

    /// Repairs the ledger from the kernel-side claims map: claims whose
    /// event was lost or summarised are added, claims whose release was
    /// lost are dropped.
    pub(super) fn repair(&mut self) {
        let Some(a) = self.attached.as_mut() else {
            return;
        };
        let after_loss = std::mem::take(&mut self.reconcile.repair_after_loss);
        self.reconcile.repair_for_summary = false;
        self.reconcile.last_repair = Some(Instant::now());
        let t = Instant::now();
        let read_at = clock_ns(libc::CLOCK_BOOTTIME);
        if let Err(e) = a.claims.read_all(&mut self.reconcile.kernel_claims) {
            tracing::warn!("reading the kernel-side claims map failed: {e}");
            return;
        }
        let (added, removed) = {
            let mut shared = self.shared.lock().unwrap();
            let (added, removed) = shared.ledger.repair(&self.reconcile.kernel_claims, read_at);
            for c in &removed {
                shared.binders.remove(&c.cookie);
            }
            self.metrics
                .ledger_claims
                .store(shared.ledger.len() as u64, Relaxed);
            (added.len() as u64, removed)
        };
        // A claim whose release the repair found before its event came (the
        // kernel map no longer has it) is churn when its record still waits.
        let now = Utc::now();
        for c in &removed {
            let held_ms = (now - c.bound_at).num_milliseconds().max(0) as u64;
            if self
                .sink
                .churn
                .fold_repaired(c.cookie, held_ms, Instant::now())
            {
                self.metrics.churn_folded.fetch_add(1, Relaxed);
            }
        }
        let removed = removed.len() as u64;
        self.metrics.repairs.fetch_add(1, Relaxed);
        self.metrics.scan("repair", t.elapsed());
        if after_loss {
            tracing::info!(
                "repaired the ledger from the kernel-side claims map ({} claims, {:.1} ms): {added} added, {removed} removed",
                self.reconcile.kernel_claims.len(),
                t.elapsed().as_secs_f64() * 1e3
            );
            self.journal(Body::Reconcile { added, removed });
        }
    }

    pub(super) fn start_scan(&mut self, kind: &'static str) {
        if self.reconcile.scanning {
            return;
        }
        self.reconcile.scanning = true;
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let started = Utc::now();
            let t = Instant::now();
            let scan = holders::scan(&Query::default()).map_err(Into::into);
            let _ = tx.send(Work::Scanned {
                kind,
                started,
                scan: Box::new(scan),
                took: t.elapsed(),
            });
        });
    }

    /// A full scan came back: seed, poll (degraded mode) or reconcile.
    pub(super) fn scanned(
        &mut self,
        kind: &'static str,
        started: DateTime<Utc>,
        scan: Result<Scan>,
        took: Duration,
    ) {
        if kind != "seed" {
            self.reconcile.scanning = false;
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
                if self.reconcile.reconcile_pending {
                    self.reconcile.reconcile_pending = false;
                    self.start_scan("reconcile");
                }
            }
            _ => self.journal_polled(added, removed),
        }
    }

    /// Seeds the ledger with the scan's claims it lacks and (but for the
    /// seed scan) forgets the claims no socket backs; returns both.
    pub(super) fn merge_scan(
        &mut self,
        kind: &str,
        started: DateTime<Utc>,
        scan: &Scan,
    ) -> (Vec<Claim>, Vec<Claim>) {
        let jobs = &mut self.ingest.jobs;
        let live: Vec<(Claim, Option<control::Binder>)> = scan
            .holdings
            .iter()
            .filter(|h| claims_port(h))
            .filter_map(|h| claim_of(h).map(|c| (c, binder_of(h))))
            .map(|(mut c, b)| {
                // Found by a scan: its job as its process and parents name it now.
                c.job = jobs.charge(c.pid).map(Box::new);
                (c, b)
            })
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
                    shared
                        .binders
                        .insert(c.cookie, std::sync::Arc::new(b.clone()));
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
    pub(super) fn journal_polled(&mut self, added: Vec<Claim>, removed: Vec<Claim>) {
        for c in added {
            self.metrics.binds.fetch_add(1, Relaxed);
            let process = procinfo::now(c.pid, &c.comm, c.uid);
            self.journal(Body::Claim {
                at: claim_endpoint(&c),
                process,
                cookie: Some(c.cookie),
                requested_port: None,
                job: c.job.as_ref().map(|j| j.job.clone()),
                job_via: c.job.as_ref().map(|j| j.via.clone()),
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
}

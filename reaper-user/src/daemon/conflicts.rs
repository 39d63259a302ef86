//! daemon: **conflicts**: a failed bind opens (or joins) a burst; a blocking
//! thread asks the live system who holds the port and builds the plan
//! (`reaper free`'s); the conflict is journaled once verified and again,
//! with its final count, when the burst ends.

use std::net::IpAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use chrono::Utc;

use crate::conflict::{is_conflict_errno, Burst, ConflictKey, Noted};
use crate::holders::{self, Holding, Process, Query, Scan};
use crate::journal::{Body, Endpoint, HolderVerdict, ProcessRef, Record, VerdictRecord};
use crate::ledger::{addrs_collide, Claim, Fact};
use crate::policy::{Context as PolicyContext, Policy};
use crate::reap::{self, Plan, Tree};
use crate::text::term;
use crate::util::rfc3339;
use crate::vocab::{Action, Decision};

use super::ingest::endpoint;
use super::reconcile::{binder_of, claim_of, claims_port};
use super::{procinfo, Daemon, Work};

pub(super) struct Finding {
    pub(super) key: ConflictKey,
    pub(super) id: u64,
    pub(super) fact: Fact,
    pub(super) tried: ProcessRef,
    /// The ledger's claim on the port when the failure was seen.
    pub(super) ledger_holder: Option<Claim>,
    /// The live processes holding colliding sockets (listeners and
    /// connections alike), for the record.
    pub(super) holders: Vec<Process>,
    /// The decision over the colliding blocking sockets, the one
    /// `reaper free` makes (None when the holders could not be verified).
    pub(super) plan: Option<Plan>,
    /// The context the plan was judged in (its netns, for the bind probes).
    pub(super) ctx: Option<PolicyContext>,
    /// Why the live system could not be asked, when it could not.
    pub(super) scan_error: Option<String>,
    pub(super) scan: Option<Scan>,
    pub(super) took: Duration,
}

/// The blocking half of a conflict: ask the live system who holds the port
/// in that namespace, and build the plan over the colliding sockets (the
/// one `reaper free` builds; the rules' `tree` keys give tree semantics).
pub(super) fn verify(
    key: ConflictKey,
    id: u64,
    fact: Fact,
    tried: ProcessRef,
    ledger_holder: Option<Claim>,
    policy: &Policy,
) -> Finding {
    let t = Instant::now();
    let netns_unknown = fact.netns.is_none();
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
    if netns_unknown {
        // Scanning namespace 0 would find no holders and say nothing.
        finding.scan_error = Some(format!(
            "the failed bind's network namespace (cookie {}) is none reaper can see: no process in it is in reaper's pid namespace and none is pinned in /run/netns{}; run reaper in the host's pid namespace (Kubernetes: hostPID: true; Docker: --pid=host)",
            finding.fact.netns_cookie,
            if finding.fact.outside_pidns {
                ", and the binder itself is outside reaper's pid namespace"
            } else {
                ""
            }
        ));
        finding.took = t.elapsed();
        return finding;
    }
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

/// The conflict record of a verified finding; `not_refused` when its plan
/// (if any) does not refuse.
pub(super) fn conflict_body(f: &Finding, burst: &Burst, not_refused: bool) -> Body {
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
        verdicts: judged.iter().map(HolderVerdict::from).collect(),
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
pub(super) fn deciding_verdict(f: &Finding, judged: &[reap::Judged]) -> Option<VerdictRecord> {
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
pub(super) fn conflict_holders(f: &Finding) -> Vec<ProcessRef> {
    let mut holders: Vec<ProcessRef> = f.holders.iter().map(ProcessRef::from).collect();
    if f.scan.is_none() {
        if let Some(c) = &f.ledger_holder {
            holders.push(ProcessRef {
                pid: c.pid,
                comm: c.comm.clone(),
                uid: Some(c.uid),
                // The kernel side's pid 0: outside reaper's pid namespace.
                outside_pidns: (c.pid == 0).then_some(true),
                ..ProcessRef::default()
            });
        }
    }
    holders
}

/// Since when the port is held: the ledger's bind, else the first
/// holder's start.
pub(super) fn held_since(f: &Finding) -> Option<String> {
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

pub(super) fn endpoint_of(r: &Record) -> Option<Endpoint> {
    match &r.body {
        Body::Conflict { at, .. } => Some(at.clone()),
        _ => None,
    }
}

impl Daemon {
    pub(super) fn failed_bind(&mut self, fact: Fact, holder: Option<Claim>) {
        if let Some(h) = &holder {
            // A claim something collided with keeps its full record.
            self.sink.churn.pin(h.cookie);
        }
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
                // A connect() the kernel gives this port from now on is
                // recorded with its client.
                self.watch_client_port(port);
                // Now, before it exits: who tried.
                let mut tried = procinfo::now(fact.pid, &fact.comm, fact.uid);
                tried.outside_pidns = fact.outside_pidns.then_some(true);
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

    /// A conflict's holders are known: repair the ledger, journal the
    /// conflict, reap what the policy says to.
    pub(super) fn verified(&mut self, f: Finding) {
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

    /// The targeted scan is the truth about this port: a ledger claim it
    /// does not confirm is dropped, a holder the ledger missed is added.
    pub(super) fn repair_port(&mut self, f: &Finding, scan: &Scan) {
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
        for h in scan.holdings.iter().filter(|h| claims_port(h)) {
            if let Some(claim) = claim_of(h) {
                if let Some(b) = binder_of(h) {
                    shared
                        .binders
                        .entry(claim.cookie)
                        .or_insert_with(|| std::sync::Arc::new(b));
                }
                shared.ledger.seed(claim);
            }
        }
        self.metrics
            .ledger_claims
            .store(shared.ledger.len() as u64, Relaxed);
    }

    pub(super) fn close_burst(&mut self, burst: crate::conflict::Burst) {
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
}

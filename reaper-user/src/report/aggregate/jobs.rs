//! aggregate -> **jobs**: the report's "leaks by job".
//!
//! Two sources: the `job` records of `job start`/`job end` hooks (each
//! leftover a hook judged stale, with what became of it), and the claims
//! the daemon charged to a job that are still held at the end of the
//! window although that job's `job end` ran (nothing freed them: a hook
//! that ran without the daemon, a rule that kept it). Bounded like the
//! rest: at most [`OPEN_KEPT`] charged claims are followed, [`ROWS_KEPT`]
//! rows kept.

use std::collections::HashMap;

use super::super::model::JobLeak;
use crate::journal::{Body, JobRecord, Record};
use crate::vocab::{Decision, Job};

/// Charged claims followed at once (the oldest forgotten past it).
const OPEN_KEPT: usize = 10_000;
/// Rows kept (the first ones).
const ROWS_KEPT: usize = 1_000;

/// A claim the daemon charged to a job, still held.
struct Charged {
    job: Job,
    ts: String,
    ms: i64,
    pid: u32,
    comm: String,
    evidence: String,
}

/// (host, proto, port, pid).
type Key = (String, String, u16, u32);

#[derive(Default)]
pub(super) struct Jobs {
    open: HashMap<Key, Charged>,
    /// Charged claims released lately: a hook's record comes after the
    /// release of what it stopped.
    released: HashMap<Key, Charged>,
    /// When each job's `job end` ran, by (provider, id).
    ended: HashMap<(String, String), i64>,
    rows: Vec<JobLeak>,
    /// Rows of a hook's leftover whose claim the journal has not shown yet
    /// (the daemon writes a claim once its churn window has passed, maybe
    /// after the hook's record): by key, the row and the hook's time.
    sinceless: HashMap<Key, (usize, i64)>,
}

fn key_of(j: &Job) -> (String, String) {
    (j.provider.clone(), j.id.clone())
}

impl Jobs {
    /// Whether a record feeds this section: a charged claim, a job
    /// record, a release while charged claims are followed.
    pub(super) fn wants(&self, r: &Record) -> bool {
        match &r.body {
            Body::Claim { job, .. } => job.is_some(),
            Body::Release { .. } => !self.open.is_empty(),
            // (a release of no charged claim changes nothing here)
            Body::Job(_) => true,
            _ => false,
        }
    }

    /// Takes one record; `place` names its file and line.
    pub(super) fn see(&mut self, r: &Record, ms: i64, place: impl FnOnce() -> String) {
        match &r.body {
            Body::Claim {
                at,
                process,
                job: Some(job),
                ..
            } => {
                let key = (r.host.clone(), at.proto.to_string(), at.port, process.pid);
                let charged = Charged {
                    job: job.clone(),
                    ts: r.ts.clone(),
                    ms,
                    pid: process.pid,
                    comm: process.comm.clone(),
                    evidence: place(),
                };
                self.claim(key, charged);
            }
            Body::Release { at, process, .. } => {
                let (host, proto) = (r.host.as_str(), at.proto.to_string());
                let gone: Vec<Key> = match process {
                    Some(p) => vec![(host.to_string(), proto, at.port, p.pid)],
                    None => self
                        .open
                        .keys()
                        .filter(|k| k.0 == host && k.1 == proto && k.2 == at.port)
                        .cloned()
                        .collect(),
                };
                self.release(gone);
            }
            Body::Job(rec) if !rec.dry_run => self.hook(r, rec, ms, place()),
            _ => {}
        }
    }

    /// A claim charged to a job: followed until released, unless a hook
    /// already judged it (then it gives that row its time).
    fn claim(&mut self, key: Key, charged: Charged) {
        if let Some(&(row, hook_ms)) = self.sinceless.get(&key) {
            if charged.ms <= hook_ms {
                // The claim a hook already judged: its time only.
                self.sinceless.remove(&key);
                self.rows[row].since = Some(charged.ts);
                return;
            }
        }
        if self.open.len() >= OPEN_KEPT {
            if let Some(k) = self
                .open
                .iter()
                .min_by_key(|(_, c)| c.ms)
                .map(|(k, _)| k.clone())
            {
                self.open.remove(&k);
            }
        }
        self.open.insert(key, charged);
    }

    /// Charged claims released: kept a while for a hook's later record.
    fn release(&mut self, gone: Vec<Key>) {
        for k in gone {
            if let Some(c) = self.open.remove(&k) {
                if self.released.len() >= OPEN_KEPT {
                    self.released.clear();
                }
                self.released.insert(k, c);
            }
        }
    }

    /// A hook's `job` record: a row for each leftover it judged stale.
    fn hook(&mut self, r: &Record, rec: &JobRecord, ms: i64, evidence: String) {
        if rec.phase == "end" {
            self.ended.insert(key_of(&rec.job), ms);
        }
        let hook = format!(
            "job {} of {} job {}",
            rec.phase, rec.job.provider, rec.job.id
        );
        for l in rec
            .leftovers
            .iter()
            .filter(|l| l.decision == Decision::Reap)
        {
            let status = rec
                .ports
                .iter()
                .find(|p| p.port == l.port && p.proto == l.proto)
                .map(|p| p.outcome.clone())
                .unwrap_or_default();
            let claim = l.pid.and_then(|pid| {
                let k = (r.host.clone(), l.proto.to_string(), l.port, pid);
                self.open.remove(&k).or_else(|| self.released.remove(&k))
            });
            let holder = match (&l.container, l.pid, &l.comm) {
                (Some(c), _, _) => format!("container {c}"),
                (None, Some(pid), Some(comm)) => format!("pid {pid} {comm}"),
                (None, Some(pid), None) => format!("pid {pid}"),
                _ => "?".into(),
            };
            if let (None, Some(pid)) = (&claim, l.pid) {
                if self.rows.len() < ROWS_KEPT {
                    self.sinceless.insert(
                        (r.host.clone(), l.proto.to_string(), l.port, pid),
                        (self.rows.len(), ms),
                    );
                }
            }
            self.row(JobLeak {
                job: l
                    .job
                    .clone()
                    .or_else(|| claim.as_ref().map(|c| c.job.clone()))
                    .unwrap_or_else(|| rec.job.clone()),
                host: r.host.clone(),
                proto: l.proto.to_string(),
                port: l.port,
                holder,
                since: claim.map(|c| c.ts),
                freed_by: (status == "freed").then(|| hook.clone()),
                status,
                evidence: evidence.clone(),
            });
        }
    }

    fn row(&mut self, leak: JobLeak) {
        if self.rows.len() < ROWS_KEPT {
            self.rows.push(leak);
        }
    }

    /// The rows: the hooks' leftovers, then the charged claims still held
    /// after their job's `job end`.
    pub(super) fn finish(mut self) -> Vec<JobLeak> {
        let mut held: Vec<(Key, Charged)> = std::mem::take(&mut self.open)
            .into_iter()
            .filter(|(_, c)| {
                self.ended
                    .get(&key_of(&c.job))
                    .is_some_and(|&end| end >= c.ms)
            })
            .collect();
        held.sort_by(|a, b| (a.1.ms, &a.0).cmp(&(b.1.ms, &b.0)));
        for ((host, proto, port, _), c) in held {
            self.row(JobLeak {
                job: c.job,
                host,
                proto,
                port,
                holder: format!("pid {} {}", c.pid, c.comm),
                since: Some(c.ts),
                status: "still_held".into(),
                freed_by: None,
                evidence: c.evidence,
            });
        }
        self.rows
    }
}

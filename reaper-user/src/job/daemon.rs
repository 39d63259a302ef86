//! job -> **daemon**: the daemon's ledger, when one runs: every claim
//! charged to its CI job when it was made (its binder's environment, else
//! its nearest ancestor's as they were then; see
//! [`crate::holders::charge`]). A server that cleared its variables and
//! hangs from init is then still its job's, which no scan can tell.
//!
//! The daemon only names ports and jobs: the holders are read now, judged
//! by the same [`Plan`](crate::reap::Plan) and stopped by the same
//! [`execute`](crate::reap::execute) as on the scan path.

use std::path::Path;

use crate::control::{self, ClaimView, Request};
use crate::holders::container::Via;
use crate::holders::job::Table;
use crate::holders::Holding;
use crate::vocab::{Job, Proto};

use super::members::Unattributed;

/// The daemon's claims, as its control socket answered.
#[derive(Clone, Debug)]
pub struct Ledger {
    /// The daemon's tier ("cgroup", "proc" when degraded, ...).
    pub tier: String,
    pub claims: Vec<ClaimView>,
    /// The daemon's config's `[job] ports`.
    pub job_ports: Vec<u16>,
}

/// What asking the daemon gave.
pub enum Asked {
    Ledger(Ledger),
    /// No daemon answers there.
    NoDaemon,
    /// A daemon answered with an error, or the answer was unreadable.
    Failed(String),
}

/// Asks the daemon at `path` for its claims.
pub fn ask(path: &Path) -> Asked {
    let request = Request::Ports {
        proto: None,
        listening: false,
    };
    match control::query(path, &request) {
        Ok(Some(r)) if r.ok => Asked::Ledger(Ledger {
            tier: r.tier,
            claims: r.claims,
            job_ports: r.job_ports,
        }),
        Ok(Some(r)) => Asked::Failed(r.error.unwrap_or_else(|| "refused".into())),
        Ok(None) => Asked::NoDaemon,
        Err(e) => Asked::Failed(format!("{e:#}")),
    }
}

/// Whether a claim is one the next server would meet: a listener, or a
/// bound UDP socket.
fn claims_port(c: &ClaimView) -> bool {
    c.proto == Proto::Udp || c.listening_at.is_some()
}

impl Ledger {
    /// The ports of `netns` whose claims the daemon charged to `job`.
    pub fn ports_of(&self, job: &Job, netns: u64) -> Vec<(u16, Proto)> {
        let mut v: Vec<(u16, Proto)> = self
            .claims
            .iter()
            .filter(|c| c.netns == netns && claims_port(c))
            .filter(|c| c.job.as_ref().is_some_and(|j| j.key() == job.key()))
            .map(|c| (c.port, c.proto))
            .collect();
        v.sort_unstable();
        v.dedup();
        v
    }

    /// Whether the daemon knows any claim on this port.
    pub fn claimed(&self, port: u16, proto: Proto, netns: u64) -> bool {
        self.claims
            .iter()
            .any(|c| c.port == port && c.proto == proto && c.netns == netns)
    }

    /// Whether a claim of the engine's proxy is in the ledger: a container
    /// may publish a port for a job (tied to it by when it started, which
    /// needs a walk of the process table).
    pub fn has_proxy(&self) -> bool {
        self.claims.iter().any(|c| c.comm == "docker-proxy")
    }

    /// The charge of the claim behind a holding: the same socket (its
    /// cookie), else the same port and address held by the claim's pid.
    fn charge_of(&self, h: &Holding) -> Option<&ClaimView> {
        let s = &h.socket;
        self.claims.iter().filter(|c| c.job.is_some()).find(|c| {
            (s.cookie != 0 && c.cookie == s.cookie)
                || (c.netns == s.netns
                    && c.proto == s.proto
                    && c.port == s.port
                    && c.addr == s.addr.to_string()
                    && h.processes.iter().any(|p| p.pid == c.pid))
        })
    }

    /// Sets the job the daemon charged on the processes holding a charged
    /// socket, where their own environment names no job by its id (a
    /// process whose environment names one keeps it). `this` is the job
    /// the hook runs for (running); another job's state comes from
    /// `table` when read.
    pub fn apply(&self, holdings: &mut [Holding], this: &Job, table: Option<&Table>) {
        for h in holdings.iter_mut() {
            let Some(j) = self.charge_of(h).and_then(|c| c.job.clone()) else {
                continue;
            };
            let mut j = j;
            j.ended = if j.key() == this.key() {
                Some(false)
            } else {
                table.map(|t| !t.attached(j.key()))
            };
            for p in h.processes.iter_mut() {
                if p.job.as_ref().is_none_or(|own| own.by_run_and_name_only()) {
                    p.job = Some(j.clone());
                }
            }
            if let Some(c) = h.container.as_mut().filter(|c| c.via == Some(Via::Proxy)) {
                for l in c.listeners.iter_mut().filter(|l| l.job.is_none()) {
                    l.job = Some(j.clone());
                }
            }
        }
    }

    /// Claims the daemon could charge only to a run and job name that this
    /// job has too, when another job of that run and name ran then (a
    /// matrix): named, never signalled.
    pub fn ambiguous(&self, job: &Job, netns: u64) -> Vec<Unattributed> {
        let mut out: Vec<Unattributed> = self
            .claims
            .iter()
            .filter(|c| c.netns == netns && claims_port(c))
            .filter(|c| {
                c.job.as_ref().is_some_and(|j| {
                    j.by_run_and_name_only()
                        && j.provider == job.provider
                        && j.run == job.run
                        && j.name == job.name
                })
            })
            .map(|c| Unattributed {
                port: c.port,
                proto: c.proto,
                pid: Some(c.pid),
                comm: Some(c.comm.clone()),
                container: None,
                reason: format!(
                    "when it bound, its environment named run {} and job {} but not the job's tracking id, and more than one job of that run and name ran: the daemon could not tell which",
                    job.run.as_deref().unwrap_or_default(),
                    job.name.as_deref().unwrap_or_default()
                ),
            })
            .collect();
        out.sort_by_key(|u| (u.port, u.pid));
        out.dedup_by_key(|u| (u.port, u.pid));
        out
    }
}

//! job -> **members**: which holders of ports belong to which CI job.
//!
//! From one snapshot of the process table ([`Table`]):
//! - a process's job is the one its environment names, else its nearest
//!   live ancestor's (a step's child that cleared its variables is still
//!   the step's while the step lives);
//! - a container behind the engine's proxy is the job's when it started
//!   while this job ran and no other running job had started yet (the
//!   engine does not say which client started a container);
//! - what a scan cannot tie to a job is named, never signalled: a server
//!   that cleared its variables and hangs from init, started during the
//!   job. The daemon charges such claims at bind time instead.

use serde::Serialize;

use crate::holders::container::Via;
use crate::holders::job::{Job, Table};
use crate::holders::{Holding, Process};
use crate::vocab::Proto;

/// A holder of a port that a scan cannot tie to the job, and why.
#[derive(Clone, Debug, Serialize)]
pub struct Unattributed {
    pub port: u16,
    pub proto: Proto,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    pub reason: String,
}

/// The processes whose sockets a `job end` looks at first: the job's own
/// (by environment or ancestry), those a scan may not be able to charge
/// (named by run and job name only, or nameless, hanging from init and
/// started during the job), and the engine's proxies started during the
/// job (a container the job may have published). Walking only their fds
/// keeps a hook with nothing to do cheap on a busy host.
pub fn candidates(table: &Table, job: &Job) -> Vec<u32> {
    let started = table.started(job.key());
    let during = |e: &crate::holders::job::Entry| started.is_some_and(|s| e.start_ticks >= s);
    let mut pids: Vec<u32> = table
        .procs
        .iter()
        .filter(|(_, e)| e.state != 'Z')
        .filter(|(&pid, e)| {
            let own = table.job_of(pid).map(|(j, _)| j);
            own.is_some_and(|j| j.key() == job.key())
                || (e.ppid == 1
                    && during(e)
                    && own.is_none_or(|j| j.provider == job.provider && j.run == job.run))
                || (during(e) && e.comm == "docker-proxy")
        })
        .map(|(&pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

/// Sets every holding process's job: its own, else its nearest ancestor's,
/// with whether that job still runs.
pub fn charge(holdings: &mut [Holding], table: &Table) {
    for p in holdings.iter_mut().flat_map(|h| h.processes.iter_mut()) {
        p.job = job_of(table, p.pid).or(p.job.take());
    }
}

/// The job of one pid in the table, with `ended` set.
pub fn job_of(table: &Table, pid: u32) -> Option<Job> {
    let (j, _) = table.job_of(pid)?;
    let mut j = j.clone();
    j.ended = Some(!table.attached(j.key()));
    Some(j)
}

/// Whether a process is of this job (by [`charge`]).
pub fn is_member(p: &Process, job: &Job) -> bool {
    p.job.as_ref().is_some_and(|j| j.key() == job.key())
}

/// Whether a GitHub process names this job only by run and job name (its
/// tracking id cleared): a matrix sibling could name the same, so a scan
/// does not charge it.
fn same_run_and_name(p: &Process, job: &Job) -> bool {
    let Some(pj) = &p.job else { return false };
    pj.provider == job.provider
        && pj.id != job.id
        && job.run.is_some()
        && pj.run == job.run
        && pj.name == job.name
}

/// The holders on the host a scan cannot charge to `job` but that may be
/// its: a process named by run and job name only, or one with no job that
/// hangs from init and started after the job did.
pub fn unattributed(holdings: &[Holding], table: &Table, job: &Job) -> Vec<Unattributed> {
    let started = table.started(job.key());
    let mut out = Vec::new();
    for h in holdings {
        if !crate::bindmodel::facts::surely_blocks_next_server(&h.socket) {
            continue;
        }
        for p in &h.processes {
            let reason = if same_run_and_name(p, job) {
                format!(
                    "its environment names run {} and job {} but not the job's tracking id (cleared): a scan cannot tell it from another job of that run; the daemon charges claims when they are made",
                    p.job.as_ref().and_then(|j| j.run.clone()).unwrap_or_default(),
                    p.job.as_ref().and_then(|j| j.name.clone()).unwrap_or_default(),
                )
            } else if p.job.is_none()
                && p.ppid == 1
                && p.container.is_none()
                && started.is_some_and(|s| p.start_ticks >= s)
            {
                "it started during the job, names no job and hangs from init (its parent is gone): a scan cannot tell which job started it; the daemon charges claims when they are made".to_string()
            } else {
                continue;
            };
            out.push(Unattributed {
                port: h.socket.port,
                proto: h.socket.proto,
                pid: Some(p.pid),
                comm: Some(p.comm.clone()),
                container: None,
                reason,
            });
        }
    }
    out.sort_by_key(|u| (u.port, u.pid));
    out.dedup_by_key(|u| (u.port, u.pid));
    out
}

/// Ties containers behind the engine's proxy to `job` when they started
/// while it ran and before any other running job started: the processes
/// listening inside are then the job's (the policy's `job` conditions see
/// them so). Returns the containers that started during the job but
/// cannot be told apart from another job's.
pub fn charge_containers(holdings: &mut [Holding], table: &Table, job: &Job) -> Vec<Unattributed> {
    let Some(job_start) = table.started(job.key()) else {
        return Vec::new();
    };
    let others: Vec<((String, String), u64)> = table
        .jobs()
        .into_iter()
        .filter(|(k, running)| *running && (k.0.as_str(), k.1.as_str()) != job.key())
        .filter_map(|(k, _)| {
            let s = table.started((&k.0, &k.1))?;
            Some((k, s))
        })
        .collect();
    let mut out = Vec::new();
    for h in holdings.iter_mut() {
        let (port, proto) = (h.socket.port, h.socket.proto);
        let Some(c) = h.container.as_mut().filter(|c| c.via == Some(Via::Proxy)) else {
            continue;
        };
        let Some(c_start) = c.listeners.iter().map(|p| p.start_ticks).min() else {
            continue;
        };
        if c_start < job_start {
            continue;
        }
        let rivals: Vec<String> = others
            .iter()
            .filter(|(_, s)| *s <= c_start)
            .map(|(k, _)| format!("{} job {}", k.0, k.1))
            .collect();
        if !rivals.is_empty() {
            out.push(Unattributed {
                port,
                proto,
                pid: None,
                comm: None,
                container: Some(c.words()),
                reason: format!(
                    "it started during this job, but {} ran too: the engine does not say which job started it",
                    rivals.join(", ")
                ),
            });
            continue;
        }
        let mut mine = job.clone();
        mine.ended = Some(false);
        for l in c.listeners.iter_mut() {
            l.job = Some(mine.clone());
        }
    }
    out
}

/// Whether a holding is the job's: a process of it holds the socket, or a
/// container charged to it publishes the port.
pub fn holds_for(h: &Holding, job: &Job) -> bool {
    h.processes.iter().any(|p| is_member(p, job))
        || h.container
            .as_ref()
            .is_some_and(|c| c.listeners.iter().any(|p| is_member(p, job)))
}

/// The live processes of the job that hold no port of `holding_pids`.
pub fn idle(table: &Table, job: &Job, holding_pids: &[u32], skip: &[u32]) -> Vec<u32> {
    let mut pids: Vec<u32> = table
        .procs
        .iter()
        .filter(|(pid, e)| {
            e.state != 'Z'
                && !holding_pids.contains(pid)
                && !skip.contains(pid)
                && table
                    .job_of(**pid)
                    .is_some_and(|(j, _)| j.key() == job.key())
        })
        .map(|(&pid, _)| pid)
        .collect();
    pids.sort_unstable();
    pids
}

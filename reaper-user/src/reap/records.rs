//! reap -> **records**: a plan's reapings as the journal records them, the
//! intent before the first signal and the outcome after. [`reapings`] is the
//! one place a run of a plan becomes records: `free`, the daemon and its
//! clean stop call it, and `job` shares its signal records.

use crate::journal::{
    Body, ContainerRecord, ContainerStop, Endpoint, HolderVerdict, ProcessRef, SignalRecord,
    VerdictRecord,
};
use crate::vocab::{Decision, Outcome};

use super::{plan, Execution, Judged, JudgedContainer, Plan, Role, SignalSent};

/// One holder's verdict in a conflict record.
impl From<&Judged> for HolderVerdict {
    fn from(j: &Judged) -> HolderVerdict {
        HolderVerdict {
            pid: j.process.pid,
            comm: j.process.comm.clone(),
            verdict: VerdictRecord::from(&j.verdict),
            shares: match j.role {
                Role::Shares { of, .. } => Some(of),
                Role::Holder => None,
            },
        }
    }
}

/// A signal sent, as every record that lists signals writes it.
impl From<&SignalSent> for SignalRecord {
    fn from(s: &SignalSent) -> SignalRecord {
        SignalRecord {
            pid: s.pid,
            signal: s.signal.as_str().into(),
            ts: s.ts.clone(),
        }
    }
}

/// How far a run of a plan got, as its records say it.
#[derive(Clone, Debug)]
pub enum Ran<'a> {
    /// Before the first signal: every target `in_progress`.
    Starting,
    /// Executed: each target's outcome is what happened to it; a holder
    /// the plan does not act on is `refused`.
    Executed(&'a Execution),
    /// Cut short (the daemon stopping): every target `interrupted`, with
    /// the signals sent so far.
    Interrupted(&'a [SignalSent]),
    /// Not executed (refused, a dry run, nothing to signal): this outcome
    /// for the holders judged `reap`, `refused` for the others; in a dry
    /// run every holder is `dry_run`.
    Skipped(Outcome),
}

/// Which holders of a plan get a record.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Holders {
    /// Only what the plan acts on (the daemon: its conflict record already
    /// holds every verdict).
    Targets,
    /// Every holder judged, acted on or not (`free`: its records are the
    /// run's whole story, refusals and dry runs included).
    All,
}

/// The holder a record is about.
#[derive(Clone, Copy, Debug)]
pub enum Holder<'a> {
    Process(&'a Judged),
    Container(&'a JudgedContainer),
}

/// One `reaping` record, with what it is about.
#[derive(Clone, Debug)]
pub struct Reaping<'a> {
    pub holder: Holder<'a>,
    pub outcome: Outcome,
    /// The signals in the record (none for a container).
    pub signals: Vec<SignalSent>,
    pub body: Body,
}

/// The `reaping` records of a run of `plan`, containers first, then the
/// processes in the plan's order. `free_at` (RFC 3339) is when the port
/// bound again; `dry_run` is written into each record as given.
pub fn reapings<'p>(
    plan: &'p Plan,
    ran: Ran<'_>,
    holders: Holders,
    free_at: Option<String>,
    elapsed_ms: Option<u64>,
    dry_run: bool,
) -> Vec<Reaping<'p>> {
    let port_free = free_at.is_some();
    let (containers, processes): (Vec<&JudgedContainer>, Vec<&Judged>) = match holders {
        Holders::Targets => (plan.container_targets(), plan.targets()),
        Holders::All => (
            plan.containers.iter().collect(),
            plan.judged.iter().collect(),
        ),
    };
    let stops = plan.container_targets();
    let targets = plan.targets();
    let mut out = Vec::with_capacity(containers.len() + processes.len());
    for c in containers {
        let k = stops.iter().position(|t| std::ptr::eq(*t, c));
        let stop = match (&ran, k) {
            (Ran::Executed(ex), Some(k)) => ex.containers.get(k),
            _ => None,
        };
        let outcome = match (&ran, stop) {
            (Ran::Executed(_), Some(s)) => Outcome::from(plan::container_outcome(s, port_free)),
            (Ran::Executed(_), None) => Outcome::Refused,
            _ => outcome_of(&ran, c.verdict.decision),
        };
        let body = container_reaping(
            c,
            stop,
            outcome.clone(),
            free_at.clone(),
            elapsed_ms,
            dry_run,
        );
        out.push(Reaping {
            holder: Holder::Container(c),
            outcome,
            signals: Vec::new(),
            body,
        });
    }
    for j in processes {
        let k = targets.iter().position(|t| std::ptr::eq(*t, j));
        let report = match (&ran, k) {
            (Ran::Executed(ex), Some(k)) => ex.targets.get(k),
            _ => None,
        };
        let (outcome, signals) = match (&ran, report) {
            (Ran::Executed(_), Some(r)) => (r.outcome.outcome(port_free), r.signals.clone()),
            (Ran::Executed(_), None) => (Outcome::Refused, Vec::new()),
            (Ran::Interrupted(sent), _) => (
                Outcome::Interrupted,
                sent.iter()
                    .filter(|s| s.pid == j.process.pid)
                    .cloned()
                    .collect(),
            ),
            _ => (outcome_of(&ran, j.verdict.decision), Vec::new()),
        };
        let body = reaping(
            j,
            &signals,
            outcome.clone(),
            free_at.clone(),
            elapsed_ms,
            dry_run,
        );
        out.push(Reaping {
            holder: Holder::Process(j),
            outcome,
            signals,
            body,
        });
    }
    out
}

/// The outcome of a holder that was not executed on.
fn outcome_of(ran: &Ran, decision: Decision) -> Outcome {
    match ran {
        Ran::Starting => Outcome::InProgress,
        Ran::Interrupted(_) => Outcome::Interrupted,
        Ran::Skipped(Outcome::DryRun) => Outcome::DryRun,
        Ran::Skipped(_) if decision != Decision::Reap => Outcome::Refused,
        Ran::Skipped(o) => o.clone(),
        Ran::Executed(_) => Outcome::Refused,
    }
}

/// The `reaping` record of one process of a plan.
fn reaping(
    j: &Judged,
    signals: &[SignalSent],
    outcome: Outcome,
    port_free_at: Option<String>,
    elapsed_ms: Option<u64>,
    dry_run: bool,
) -> Body {
    Body::Reaping {
        at: Endpoint::from(&j.sockets[0]),
        target: ProcessRef::from(&j.process),
        verdict: VerdictRecord::from(&j.verdict),
        signals: signals.iter().map(SignalRecord::from).collect(),
        outcome,
        port_free_at,
        elapsed_ms,
        dry_run,
        stop_signal: j.signal.map(|s| s.as_str().to_string()),
        container: None,
    }
}

/// A reaping record for a container target: `target` is the first process
/// inside that listened on the published port.
fn container_reaping(
    c: &JudgedContainer,
    stop: Option<&ContainerStop>,
    outcome: Outcome,
    port_free_at: Option<String>,
    elapsed_ms: Option<u64>,
    dry_run: bool,
) -> Body {
    let ct = &c.container;
    Body::Reaping {
        at: Endpoint::from(&c.socket),
        target: ct
            .listeners
            .first()
            .map(ProcessRef::from)
            .unwrap_or_default(),
        verdict: VerdictRecord::from(&c.verdict),
        signals: Vec::new(),
        outcome,
        port_free_at,
        elapsed_ms,
        dry_run,
        // The stop says what the engine sent; before it, the rule's choice.
        stop_signal: stop
            .and_then(|s| s.signal.clone())
            .or_else(|| c.signal.map(|s| s.as_str().to_string())),
        container: Some(ContainerRecord {
            id: ct.id.clone(),
            short_id: ct.short_id.clone(),
            name: ct.name.clone(),
            image: ct.image.clone(),
            stop: stop.cloned().map(Box::new),
        }),
    }
}

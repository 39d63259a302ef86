//! reap -> **records**: a reaping as the journal records it, the intent
//! before the first signal and the outcome after (`free` and the daemon
//! write the same shape).

use crate::journal::{
    Body, ContainerRecord, ContainerStop, Endpoint, HolderVerdict, ProcessRef, SignalRecord,
    VerdictRecord,
};
use crate::vocab::Outcome;

use super::{Judged, JudgedContainer, Role, SignalSent};

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

/// The `reaping` record of one process of a plan (`free` and the daemon
/// write the same shape): its intent before the first signal
/// ([`Outcome::InProgress`]), its outcome after.
pub fn reaping(
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
        signals: signals
            .iter()
            .map(|s| SignalRecord {
                pid: s.pid,
                signal: s.signal.as_str().into(),
                ts: s.ts.clone(),
            })
            .collect(),
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
pub fn container_reaping(
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

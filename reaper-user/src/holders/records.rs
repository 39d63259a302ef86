//! holders -> **records**: a holder and its socket as the journal
//! remembers them (the journal's schema knows nothing of holders).

use super::{Process, Socket};
use crate::journal::{Endpoint, ProcessRef};

/// A holder as the journal remembers it: empty argv and start time are
/// left out rather than written empty.
impl From<&Process> for ProcessRef {
    fn from(p: &Process) -> ProcessRef {
        ProcessRef {
            pid: p.pid,
            comm: p.comm.clone(),
            exe: p.exe.clone(),
            cmdline: (!p.cmdline.is_empty()).then(|| p.cmdline.join(" ")),
            uid: Some(p.uid),
            user: p.user.clone(),
            started_at: (!p.started_at.is_empty()).then(|| p.started_at.clone()),
            ppid: Some(p.ppid),
            ancestors: p
                .ancestors
                .iter()
                .map(|(pid, comm)| format!("{pid}:{comm}"))
                .collect(),
            cgroup: p.cgroup.clone(),
            container: p.container.clone(),
            orphaned: Some(p.orphaned),
            outside_pidns: None,
        }
    }
}

/// Where a socket seen by a scan is bound.
impl From<&Socket> for Endpoint {
    fn from(s: &Socket) -> Endpoint {
        Endpoint {
            netns: Some(s.netns),
            proto: s.proto,
            family: Some(s.family),
            addr: Some(s.addr.to_string()),
            port: s.port,
        }
    }
}

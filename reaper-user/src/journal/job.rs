//! journal -> **job**: the record a `reaper job start` / `job end` run
//! leaves (`kind: "job"`), documented in docs/journal.md.

use serde::{Deserialize, Serialize};

use super::{Decision, Proto, SignalRecord};
use crate::vocab::Job;

/// One `reaper job` run: the job, the ports checked, the leftovers found
/// and what was done with each.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// `start` or `end`.
    pub phase: String,
    pub job: Job,
    /// `scan`, or `daemon` when the daemon's claims named the job's holders.
    pub via: String,
    /// Every port checked, with how it ended.
    #[serde(default)]
    pub ports: Vec<JobPort>,
    /// Every holder judged on those ports.
    #[serde(default)]
    pub leftovers: Vec<Leftover>,
    /// Holders a scan could not charge to the job (never signalled).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unattributed: Vec<String>,
    /// `ok`, `refused`, `still_held`, `dry_run`.
    pub outcome: String,
    pub exit: i32,
    pub message: String,
    #[serde(default)]
    pub dry_run: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub elapsed_ms: Option<u64>,
}

/// A port a job run checked.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct JobPort {
    pub port: u16,
    pub proto: Proto,
    /// `already_free`, `freed`, `still_held`, `refused`, `kept`, `dry_run`.
    pub outcome: String,
}

/// A holder found on a job's port (a process, or a container behind the
/// engine's proxy), its verdict, and what was done.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Leftover {
    pub port: u16,
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub comm: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    /// The job it belongs to, when it is in one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<Job>,
    pub decision: Decision,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
    /// Signals sent to it, in order (the engine's stop for a container).
    #[serde(default)]
    pub signals: Vec<SignalRecord>,
    /// What became of it: `exited`, `gone`, `still_running`, `stopped`, ...
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub done: Option<String>,
}

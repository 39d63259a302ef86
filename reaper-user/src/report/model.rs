//! aggregate -> **model** -> view -> markdown / html; json.
//!
//! What `reaper report` found, as data: the summary, a section per port
//! that saw a conflict or a reaping, an entry per conflict, the data's
//! quality, every fact with the file:line it came from. The aggregation
//! (`super::aggregate`) builds it; the views (`view`, `markdown`, `html`,
//! `json`) put it into words. Nothing here is English: a timeline entry is
//! a [`Happened`] with its facts.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::journal::reader::{BadLine, FileRead};
use crate::journal::{ContainerRecord, ProcessRef, SignalRecord, VerdictRecord};
use crate::vocab::{Action, Outcome};

/// The JSON schema name; bump the suffix on an incompatible change.
pub const SCHEMA: &str = "reaper.report/v1";

/// The whole report: what `--format json` prints (see docs/report.md).
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Report {
    pub schema: String,
    pub window: Window,
    pub filter: FilterOut,
    pub inputs: Vec<FileRead>,
    pub summary: Summary,
    pub data_quality: DataQuality,
    pub conflicts: Vec<ConflictReport>,
    /// Conflicts left out of `conflicts` (older than the last kept).
    pub conflicts_dropped: u64,
    pub ports: Vec<PortReport>,
    pub quiet_ports: QuietPorts,
    /// Ports CI jobs left held: found by a `job start`/`job end` hook, or
    /// claimed by a job (as the daemon charged it) and still held after
    /// that job's `job end` (see docs/report.md).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub leaks_by_job: Vec<JobLeak>,
}

/// A port a CI job left held.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct JobLeak {
    /// The job that left it (its processes' environment, or the daemon's
    /// charge of the claim).
    pub job: crate::vocab::Job,
    pub host: String,
    pub proto: String,
    pub port: u16,
    /// "pid 4242 platform-server", "container web".
    pub holder: String,
    /// When the claim was made, when the journal has it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub since: Option<String>,
    /// `freed`, `still_held`, `refused`, `dry_run`.
    pub status: String,
    /// The hook that freed it: "job end of github job X" (None: not freed).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub freed_by: Option<String>,
    pub evidence: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Window {
    pub since: Option<String>,
    pub until: Option<String>,
    pub first_record: Option<String>,
    pub last_record: Option<String>,
    /// Where open claims and unresolved conflicts end: `until` if given,
    /// else the last record's time (never "now", so a report is repeatable).
    pub end: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct FilterOut {
    pub port: Option<u16>,
    pub host: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct Summary {
    /// Records in the window (after the host and port filters).
    pub records: u64,
    /// Conflict records and the failed binds they count.
    pub conflicts: u64,
    pub failed_binds: u64,
    /// Ports (per host) with a conflict or a reaping.
    pub ports_involved: u64,
    pub reapings: u64,
    /// Reapings by outcome ("freed", "still_held", "refused", ...).
    pub reapings_by_outcome: BTreeMap<String, u64>,
    pub dry_runs: u64,
    /// Sum over ports of the time a conflict kept them blocked.
    pub blocked_ms: u64,
    pub longest_block: Option<Block>,
    /// Ports still blocked at the end of the window.
    pub still_blocked: u64,
    pub hosts: Vec<HostSummary>,
    /// Records by `source`: the hook tier a fact came from, or "proc".
    pub sources: BTreeMap<String, u64>,
    /// Reapings that never recorded an outcome (an `in_progress` intent
    /// with nothing after it) or that a daemon stop interrupted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unfinished: Vec<Unfinished>,
}

/// A reaping whose signals may have been sent with no outcome on the record.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Unfinished {
    /// When the intent (or the interruption) was written.
    pub ts: String,
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub target: ProcessRef,
    /// `in_progress` (reaper stopped before it recorded an outcome) or
    /// `interrupted` (a daemon stop cut it short).
    pub outcome: Outcome,
    pub signals: Vec<SignalRecord>,
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Block {
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub ms: u64,
    pub conflict: u64,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct HostSummary {
    pub name: String,
    pub records: u64,
    pub first: String,
    pub last: String,
    /// The daemon's starts on this host: which hook tier it ran with.
    pub starts: Vec<StartNote>,
    pub starts_dropped: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct StartNote {
    pub ts: String,
    pub tier: String,
    pub version: String,
    pub evidence: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct DataQuality {
    /// Events the kernel side could not hand over, summed over `loss` records.
    pub lost_events: u64,
    pub loss_records: u64,
    pub losses: Vec<LossNote>,
    pub torn_lines: u64,
    pub garbage_lines: u64,
    pub unknown_version: u64,
    pub unknown_kind: u64,
    pub out_of_order: u64,
    pub bad_lines: Vec<BadLine>,
    pub gaps: Vec<GapNote>,
    pub gaps_total: u64,
    pub degraded: Vec<DegradedPeriod>,
    pub degraded_total: u64,
    pub degraded_ms: u64,
    pub reconciles: u64,
    pub notes_dropped: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct LossNote {
    pub host: String,
    pub ts: String,
    pub lost: u64,
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct GapNote {
    pub host: String,
    /// The last record before the crash, and when the daemon noticed.
    pub after: String,
    pub noticed: String,
    pub ms: Option<u64>,
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct DegradedPeriod {
    pub host: String,
    pub mode: String,
    pub reason: String,
    pub from: String,
    /// None: still degraded at the end of the window.
    pub to: Option<String>,
    pub ms: u64,
    pub evidence: String,
}

/// A process and what the policy said of it.
#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Holder {
    pub process: ProcessRef,
    /// The netns of the socket it held, when known.
    pub netns: Option<u64>,
    pub verdict: Option<VerdictRecord>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ConflictReport {
    /// 1-based, in time order over the whole window.
    pub id: u64,
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub netns: Option<u64>,
    pub addr: Option<String>,
    pub first: String,
    pub last: String,
    pub count: u64,
    pub errno: String,
    pub errno_exact: bool,
    pub tried: ProcessRef,
    pub holders: Vec<ProcessRef>,
    pub held_since: Option<String>,
    pub verdict: Option<VerdictRecord>,
    /// What the matching rule asked for: "report" or "reap".
    pub action: Action,
    /// How the block ended.
    pub resolution: Resolution,
    pub blocked_ms: u64,
    pub blocked_until: Option<String>,
    /// Reapings of the holders during the block.
    pub done: Vec<ReapingNote>,
    /// Who bound the port next.
    pub rebound_by: Option<Rebind>,
    /// file:line of every record used, in time order.
    pub evidence: Vec<String>,
}

/// How a conflict's block ended.
#[derive(Clone, Copy, Debug, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Resolution {
    /// The holder let go.
    Released,
    /// The holder let go after a reaping.
    Reaped,
    /// Someone else bound the port: the release was not seen.
    Rebound,
    /// Still blocked at the end of the window.
    Open,
}

impl Resolution {
    pub fn as_str(self) -> &'static str {
        match self {
            Resolution::Released => "released",
            Resolution::Reaped => "reaped",
            Resolution::Rebound => "rebound",
            Resolution::Open => "open",
        }
    }
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct ReapingNote {
    pub ts: String,
    pub target: ProcessRef,
    pub verdict: VerdictRecord,
    pub signals: Vec<SignalRecord>,
    pub outcome: Outcome,
    pub port_free_at: Option<String>,
    pub elapsed_ms: Option<u64>,
    pub dry_run: bool,
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Rebind {
    pub pid: u32,
    pub comm: String,
    pub ts: String,
    pub evidence: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct PortCounts {
    pub claims: u64,
    pub listens: u64,
    pub releases: u64,
    /// Of `claims` (and `releases`): claims the daemon summarised as churn
    /// (released within its churn window, never listened, no conflict).
    #[serde(skip_serializing_if = "is_zero")]
    pub churn: u64,
    pub conflicts: u64,
    pub failed_binds: u64,
    pub reapings: u64,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct PortReport {
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub netns: Vec<u64>,
    pub counts: PortCounts,
    pub blocked_ms: u64,
    pub still_blocked: bool,
    pub first: String,
    pub last: String,
    pub timeline: Vec<TimelineEntry>,
    /// Entries older than the kept ones, left out (counts stay exact).
    pub timeline_dropped: u64,
    pub timeline_cap: usize,
    /// Processes of the kept entries, with full identity; entries point
    /// here by index.
    pub holders: Vec<Holder>,
    /// Claims as intervals, for the timeline picture.
    pub bars: Vec<Bar>,
    /// Claims open at the end of the window.
    pub held_at_end: Vec<HeldAtEnd>,
}

/// One thing that happened on a port, as the journal said it. The views
/// put it into words (`view::happened`); JSON writes those words as
/// `detail` (see `json`).
#[derive(Clone, Debug, PartialEq)]
pub struct TimelineEntry {
    pub ts: String,
    pub pid: u32,
    pub comm: String,
    /// Index into the port's `holders`, when the identity was kept.
    pub holder: Option<usize>,
    pub netns: Option<u64>,
    pub what: Happened,
    /// The conflict's id, for conflict entries and reapings during one.
    pub conflict: Option<u64>,
    pub evidence: String,
}

/// What a timeline entry records, with the facts its words need.
#[derive(Clone, Debug, PartialEq)]
pub enum Happened {
    /// A bind: `requested_port` 0 when the kernel chose the port.
    Claim {
        addr: Option<String>,
        port: u16,
        requested_port: Option<u16>,
        /// The CI job the daemon charged the claim to, in words.
        job: Option<String>,
    },
    Listen,
    /// `held_ms`: how long the socket was held, when known.
    Release {
        held_ms: Option<u64>,
    },
    /// Failed binds from `first_ms`; `last`: the last one's time when it
    /// differs from the first.
    Conflict {
        count: u64,
        errno: String,
        first_ms: i64,
        last: Option<String>,
        holders: Vec<ProcessRef>,
    },
    Reaping(Box<ReapingDone>),
    /// The kernel gave the port to a client's `connect()` to `peer`.
    LentToClient {
        peer: String,
    },
    /// Claims summarised as churn: `count` binds each released within the
    /// churn window, between `first` and `last` (RFC 3339).
    Churn {
        count: u64,
        first: String,
        last: String,
        held_ms_min: u64,
        held_ms_max: u64,
    },
}

/// For `skip_serializing_if`: a zero count is left out.
fn is_zero(n: &u64) -> bool {
    *n == 0
}

impl Happened {
    /// The entry's `event` in JSON and its CSS class in HTML.
    pub fn event(&self) -> &'static str {
        match self {
            Happened::Claim { .. } => "claim",
            Happened::Listen => "listen",
            Happened::Release { .. } => "release",
            Happened::Conflict { .. } => "conflict",
            Happened::Reaping(_) => "reaping",
            Happened::Churn { .. } => "churn",
            Happened::LentToClient { .. } => "client_port",
        }
    }
}

/// A reaping's entry: the verdict, what was sent, how it ended.
#[derive(Clone, Debug, PartialEq)]
pub struct ReapingDone {
    pub verdict: VerdictRecord,
    pub signals: Vec<SignalRecord>,
    pub dry_run: bool,
    pub outcome: Outcome,
    pub free_ms: Option<i64>,
    pub elapsed_ms: Option<u64>,
    /// The container stopped through the engine, for a container's reaping.
    pub container: Option<ContainerRecord>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct Bar {
    pub pid: u32,
    pub comm: String,
    pub from: String,
    pub to: String,
    /// The claim was made before the first kept entry.
    pub from_clipped: bool,
    /// Still held at the end of the window.
    pub open: bool,
    pub listening: bool,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct HeldAtEnd {
    pub pid: u32,
    pub comm: String,
    pub since: String,
    pub evidence: String,
}

#[derive(Clone, Debug, Default, Serialize, PartialEq)]
pub struct QuietPorts {
    /// Ports (per host) with claims but no conflict or reaping.
    pub total: u64,
    pub claims: u64,
    /// Of `claims`: those summarised as churn.
    #[serde(skip_serializing_if = "is_zero")]
    pub churn: u64,
    /// The busiest few.
    pub shown: Vec<QuietPort>,
}

#[derive(Clone, Debug, Serialize, PartialEq)]
pub struct QuietPort {
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub claims: u64,
    pub releases: u64,
    pub last: String,
    pub held_at_end: u64,
}

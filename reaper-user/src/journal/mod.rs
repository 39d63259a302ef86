//! reap -> **journal** -> report / metrics.
//!
//! The record of what happened: JSON lines, one record per claim, release,
//! conflict and reaping (plus the daemon's own start, stop, losses and mode
//! changes), each standing alone: who, what, when, from where. The schema is
//! versioned by the `v` field and documented in docs/journal.md.

use serde::{Deserialize, Serialize};

use crate::vocab::{Action, Decision, Family, Outcome, Proto, Source};

pub(crate) mod job;
pub mod reader;
pub mod writer;

pub use job::JobRecord;

crate::vocab::open_word! {
    /// How the daemon sees binds: a hook tier, or polling /proc.
    Mode {
        Cgroup = "cgroup",
        Syscalls = "syscalls",
        Fexit = "fexit",
        /// Polling /proc (no hooks).
        Proc = "proc",
        /// Fallen back to polling after the hooks failed.
        Degraded = "degraded",
    }
}

impl Mode {
    /// Whether the daemon was polling /proc instead of using kernel hooks
    /// (older writers also said "poll" or "polling").
    pub fn is_degraded(&self) -> bool {
        matches!(self, Mode::Proc | Mode::Degraded)
            || matches!(self, Mode::Other(s) if s == "poll" || s == "polling")
    }
}

/// Version of the record schema; bump on an incompatible change.
pub const SCHEMA_VERSION: u32 = 1;

/// A process as the journal remembers it.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProcessRef {
    pub pid: u32,
    pub comm: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub exe: Option<String>,
    /// The full command line, space-joined.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cmdline: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub uid: Option<u32>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// RFC 3339.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub started_at: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ppid: Option<u32>,
    /// Parent chain, nearest first, as "pid:comm".
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ancestors: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cgroup: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub container: Option<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub orphaned: Option<bool>,
    /// True when the process's pid namespace is not reaper's own (reaper
    /// runs in a container without the host's pids; the process is on the
    /// host, in a sibling container, or in a namespace nested in reaper's:
    /// the kernel maps a pid only into the task's own namespace): `pid` is 0.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub outside_pidns: Option<bool>,
}

/// Where: a port in a network namespace.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endpoint {
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub netns: Option<u64>,
    pub proto: Proto,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub family: Option<Family>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub addr: Option<String>,
    pub port: u16,
}

/// The policy's judgment of one holder, with its reasons in plain words.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerdictRecord {
    /// "reap" (stale, may be signalled), "keep" (no rule matched) or
    /// "protect" (a protection holds, whatever the rules say).
    pub decision: Decision,
    pub reasons: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rule: Option<String>,
}

/// One holder's verdict in a conflict record.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct HolderVerdict {
    pub pid: u32,
    pub comm: String,
    #[serde(flatten)]
    pub verdict: VerdictRecord,
    /// The tree root it shares the socket with, when it is not one itself.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub shares: Option<u32>,
}

/// A container reaped by stopping it through the engine.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerRecord {
    pub id: String,
    pub short_id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    /// The engine's stop (absent in the intent and in a dry run).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stop: Option<Box<ContainerStop>>,
}

/// A signal sent through a pidfd.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignalRecord {
    pub pid: u32,
    /// "SIGTERM", "SIGCONT" (right after SIGTERM, to a stopped target) or "SIGKILL".
    pub signal: String,
    pub ts: String,
}

/// What the record is about.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum Body {
    /// A process bound a port.
    Claim {
        #[serde(flatten)]
        at: Endpoint,
        process: ProcessRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cookie: Option<u64>,
        /// The port asked for when it differs (0: the kernel chose).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        requested_port: Option<u16>,
        /// The CI job the daemon charged the claim to when it was made.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job: Option<crate::vocab::Job>,
        /// How it knew: "environment", "ancestor PID (COMM)", or the run
        /// and job name (see docs/journal.md).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        job_via: Option<String>,
    },
    /// A bound TCP socket started listening.
    Listen {
        #[serde(flatten)]
        at: Endpoint,
        process: ProcessRef,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cookie: Option<u64>,
    },
    /// The kernel gave a watched port to a `connect()`: "port P was given
    /// to pid X (comm) connecting to Y at T". `ts` is when the handshake
    /// ended; the owner is the process holding that connection when the
    /// daemon looked (by its socket cookie), absent when it had closed.
    ClientPort {
        #[serde(flatten)]
        at: Endpoint,
        /// The peer, "addr:port" ("[addr]:port" for IPv6).
        peer: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<ProcessRef>,
        cookie: u64,
        /// When the handshake ended (RFC 3339).
        connected_at: String,
        /// In words, for a reader of the record.
        note: String,
    },
    /// A claim ended.
    Release {
        #[serde(flatten)]
        at: Endpoint,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        process: Option<ProcessRef>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held_ms: Option<u64>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        cookie: Option<u64>,
    },
    /// One or more failed binds of a held port (a burst counts once).
    Conflict {
        #[serde(flatten)]
        at: Endpoint,
        tried: ProcessRef,
        errno: String,
        errno_exact: bool,
        holders: Vec<ProcessRef>,
        /// When the current holder claimed the port, RFC 3339, if known.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        held_since: Option<String>,
        count: u64,
        first: String,
        last: String,
        /// The verdict that decided: the first holder's, or when a holder
        /// keeps the port from being reaped, the first such holder's.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        verdict: Option<VerdictRecord>,
        /// Every holder's verdict (the plan), tree roots first.
        #[serde(default, skip_serializing_if = "Vec::is_empty")]
        verdicts: Vec<HolderVerdict>,
        /// "reap" when the plan signals the holders, else "report".
        action: Action,
    },
    /// reaper judged a holder and (maybe) signalled it.
    Reaping {
        #[serde(flatten)]
        at: Endpoint,
        target: ProcessRef,
        verdict: VerdictRecord,
        #[serde(default)]
        signals: Vec<SignalRecord>,
        outcome: Outcome,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        port_free_at: Option<String>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        elapsed_ms: Option<u64>,
        #[serde(default)]
        dry_run: bool,
        /// The signal that stops the target (its rule's `signal`, `free
        /// --signal`, else SIGTERM; for a container, the one the engine was
        /// told to send or the image's STOPSIGNAL), in the intent and a dry
        /// run too; `signals` says what was really sent.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        stop_signal: Option<String>,
        /// When the holder was a container (behind the engine's proxy):
        /// which, and what stopping it through the engine did. `target` is
        /// then the process inside that listened.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        container: Option<ContainerRecord>,
    },
    /// The kernel side could not hand over `lost` events (ring buffer full).
    Loss { lost: u64 },
    /// The daemon started (`tier` is the hook tier or "proc").
    Start {
        version: String,
        tier: String,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        pid: Option<u32>,
        /// `net.ipv4.ip_local_reserved_ports` as the daemon left it, when
        /// its config's `reserve_ports` added to it (or the error).
        #[serde(default, skip_serializing_if = "Option::is_none")]
        reserved_ports: Option<String>,
    },
    /// The daemon stopped cleanly.
    Stop { reason: String },
    /// Degraded (/proc polling) mode began or ended.
    Mode { mode: Mode, reason: String },
    /// The previous run ended without a `stop` record (crash, kill -9):
    /// records between `after` and this record's time may be missing.
    Gap { after: String },
    /// The ledger was repaired after losses (from the kernel-side claims
    /// map, or a scan without BPF).
    Reconcile { added: u64, removed: u64 },
    /// The kernel-side claims map was full: `unstored` more claims (in all
    /// since the start) are known only from their events, not kept
    /// kernel-side; `capacity` is the map's size (`claims_max`).
    ClaimsFull { unstored: u64, capacity: u64 },
    /// Churn: `count` claims of one process on one port, each released
    /// within the daemon's `journal_churn_window` of its bind, never
    /// listened on and met by no failed bind, summarised instead of a
    /// `claim` and a `release` line each. `first`/`last`: the first and last
    /// of those binds (RFC 3339); `held_ms_min`/`held_ms_max`: the shortest
    /// and longest hold.
    Churn {
        #[serde(flatten)]
        at: Endpoint,
        process: ProcessRef,
        count: u64,
        first: String,
        last: String,
        held_ms_min: u64,
        held_ms_max: u64,
    },
    /// A `reaper job start` / `job end` run (see [`JobRecord`]).
    Job(Box<JobRecord>),
}

/// One journal line.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub v: u32,
    /// RFC 3339 with milliseconds, UTC.
    pub ts: String,
    pub host: String,
    /// The hook tier the fact came from ("cgroup", "syscalls", "fexit") or
    /// "proc" for a scan.
    pub source: Source,
    #[serde(flatten)]
    pub body: Body,
}

impl Record {
    pub fn new(source: impl Into<Source>, body: Body) -> Record {
        Record {
            v: SCHEMA_VERSION,
            ts: crate::util::rfc3339(chrono::Utc::now()),
            host: hostname(),
            source: source.into(),
            body,
        }
    }
}

/// What stopping a container holder through the engine did.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ContainerStop {
    /// Full id, name and image of the container stopped (for the journal).
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    /// The grace the engine was given before SIGKILL.
    pub grace_ms: u64,
    /// The stop signal the engine sent ("SIGQUIT"): the one reaper asked
    /// for (a rule's `signal`, `free --signal`), else the container's own
    /// (`Config.StopSignal`, the image's STOPSIGNAL), else SIGTERM.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal: Option<String>,
    /// Where that signal came from: `rule` (reaper asked for it),
    /// `container` (its own stop signal), `default` (the engine's SIGTERM).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub signal_from: Option<String>,
    /// When the engine said it stopped, from the start of the stop.
    pub stopped_at_ms: Option<u64>,
    /// The engine's state afterwards (`exited`: stopped, kept, not removed).
    pub state_after: Option<String>,
    /// When the port bound again, from the start of the stop.
    pub port_free_at_ms: Option<u64>,
    /// What went wrong, in words.
    pub error: Option<String>,
}

impl ContainerStop {
    /// The engine stopped it and it is not running any more.
    pub fn stopped(&self) -> bool {
        self.error.is_none()
            && self.stopped_at_ms.is_some()
            && self.state_after.as_deref() != Some("running")
    }
}

/// This machine's name, for records from several hosts that merge.
pub fn hostname() -> String {
    nix::unistd::gethostname()
        .ok()
        .and_then(|h| h.into_string().ok())
        .unwrap_or_else(|| "unknown".into())
}

/// Where the daemon writes its journal, and where `reaper report` reads
/// when no `--journal` is given.
pub const DEFAULT_JOURNAL: &str = "/var/lib/reaper/journal.jsonl";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn typed_words_write_the_json_they_read() {
        for line in [
            r#"{"v":1,"ts":"2024-05-14T10:04:07.000Z","host":"h","source":"cgroup","kind":"reaping","netns":1,"proto":"tcp","family":"ipv4","addr":"0.0.0.0","port":8080,"target":{"pid":7,"comm":"x"},"verdict":{"decision":"reap","reasons":["old"]},"signals":[],"outcome":"freed","dry_run":false}"#,
            r#"{"v":1,"ts":"2024-05-14T10:04:07.000Z","host":"h","source":"cgroup","kind":"conflict","proto":"udp","port":53,"tried":{"pid":8,"comm":"y"},"errno":"EADDRINUSE","errno_exact":true,"holders":[],"count":1,"first":"2024-05-14T10:04:07.000Z","last":"2024-05-14T10:04:07.000Z","action":"report"}"#,
            r#"{"v":1,"ts":"2024-05-14T10:04:07.000Z","host":"h","source":"proc","kind":"mode","mode":"degraded","reason":"hooks refused"}"#,
        ] {
            let r: Record = serde_json::from_str(line).unwrap();
            assert_eq!(serde_json::to_string(&r).unwrap(), line);
        }
    }

    #[test]
    fn an_outcome_or_mode_this_version_does_not_know_is_kept_as_written() {
        let o: Outcome = serde_json::from_str(r#""paused""#).unwrap();
        assert_eq!(o, Outcome::Other("paused".into()));
        assert_eq!(serde_json::to_string(&o).unwrap(), r#""paused""#);
        assert_eq!(Outcome::from("still_held"), Outcome::StillHeld);
        assert!(Mode::from("polling").is_degraded());
        assert!(Mode::Proc.is_degraded() && !Mode::Cgroup.is_degraded());
    }
}

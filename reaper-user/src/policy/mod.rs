//! conflict -> **policy** -> reap.
//!
//! Rules a user writes (TOML or flags) and the verdict they give on a holder,
//! with its reasons in plain words. Protections (pid 1, reaper itself, the
//! caller and its ancestors, kernel threads, other namespaces, `protect`
//! rules) hold whatever the rules say.
//!
//! The policy is a library type: `reaper free` builds one from flags and/or a
//! file, the daemon builds one from its config, and both ask
//! [`Policy::judge`] about a (process, socket) pair. Judging is pure: it reads
//! nothing from the system, everything it needs is in the [`Process`], the
//! [`Socket`] and the [`Context`] (so it is unit-tested without privileges).
//!
//! Inside: [`matcher`] (the conditions a rule tests and their words),
//! [`rules`] (a policy's rules and protections, and judging with them),
//! [`builtin`] (the protections no rule can lift) and [`file`] (the TOML
//! format). This file holds what they share: the verdict, the context, and
//! how a socket and a process are put into words.

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};

use crate::holders::container::Container;
use crate::holders::job::Job;
use crate::holders::{Holding, Process, Socket};
use crate::journal::VerdictRecord;
use crate::vocab::Decision;

mod builtin;
pub(crate) mod file;
mod matcher;
mod rules;
mod users;

pub use builtin::ENGINE_PROGRAMS;
pub use file::PolicyError;
pub use matcher::{
    ContainerMatch, ExePattern, Glob, JobState, Matcher, NetnsSpec, TextPattern, UserSpec,
};
pub use rules::{FlagRule, Policy, Protect, Rule, FLAG_RULE};

/// The kernel keeps at most this many bytes of a process name (TASK_COMM_LEN
/// minus the NUL): a comm this long may be the start of a longer name.
pub const COMM_MAX: usize = 15;

/// The judgment of one holder, with its reasons in plain words.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize)]
pub struct Verdict {
    pub decision: Decision,
    pub reasons: Vec<String>,
    /// The rule (or protect rule) that decided, when one did.
    pub rule: Option<String>,
}

impl Verdict {
    pub fn new(decision: Decision, rule: Option<String>, reasons: Vec<String>) -> Verdict {
        Verdict {
            decision,
            reasons,
            rule,
        }
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.decision.as_str())?;
        if let Some(rule) = &self.rule {
            write!(f, " (rule '{rule}')")?;
        }
        if !self.reasons.is_empty() {
            write!(f, ": {}", self.reasons.join("; "))?;
        }
        Ok(())
    }
}

impl From<&Verdict> for VerdictRecord {
    fn from(v: &Verdict) -> VerdictRecord {
        VerdictRecord {
            decision: v.decision,
            reasons: v.reasons.clone(),
            rule: v.rule.clone(),
        }
    }
}

impl From<Verdict> for VerdictRecord {
    fn from(v: Verdict) -> VerdictRecord {
        VerdictRecord::from(&v)
    }
}

/// Facts about the run that judging needs.
#[derive(Clone, Debug)]
pub struct Context {
    /// reaper's own pid.
    pub reaper_pid: u32,
    /// The caller (reaper's parent) and its ancestors up to init.
    pub caller_chain: Vec<u32>,
    /// The network namespace reaper runs in.
    pub caller_netns: u64,
    /// The network namespace the port was asked about (default: the caller's).
    pub netns: u64,
    pub now: DateTime<Utc>,
    /// Pids known to be kernel threads (PF_KTHREAD in /proc/PID/stat).
    pub kernel_threads: BTreeSet<u32>,
    /// The containers and the job around the holders.
    pub workload: Workload,
}

/// What judging knows about containers and CI jobs: the containers of the
/// scanned holders (named by the engine when it answered) and reaper's own job.
#[derive(Clone, Debug, Default)]
pub struct Workload {
    /// By full container id.
    pub containers: std::collections::BTreeMap<String, Container>,
    pub own_job: Option<Job>,
}

impl Workload {
    /// Learns the containers of these holdings.
    pub fn learn(&mut self, holdings: &[Holding]) {
        for c in holdings.iter().filter_map(|h| h.container.as_ref()) {
            if !c.id.is_empty() {
                self.containers
                    .entry(c.id.clone())
                    .or_insert_with(|| c.clone());
            }
        }
    }

    /// The container a process runs in, as well as it is known.
    pub fn container_of(&self, p: &Process) -> Option<Container> {
        let ident = crate::holders::container::from_cgroup(p.cgroup.as_deref()?)?;
        Some(
            self.containers
                .get(&ident.id)
                .cloned()
                .unwrap_or_else(|| Container::from_identity(&ident)),
        )
    }
}

impl Context {
    /// The context of this process: its pid, its parent chain, its netns.
    /// `netns`: the namespace the port is asked about (None: our own).
    pub fn current(netns: Option<u64>) -> std::io::Result<Context> {
        let me = std::process::id();
        let caller_netns = crate::proc::netns_of(me)?;
        let mut chain = Vec::new();
        let mut pid = crate::proc::Stat::read(me)?.ppid;
        // The chain ends at pid 0 (init's parent); the bound stops a loop on
        // a garbled /proc.
        while pid != 0 && chain.len() < 4096 {
            chain.push(pid);
            pid = match crate::proc::Stat::read(pid) {
                Ok(st) => st.ppid,
                Err(_) => break,
            };
        }
        Ok(Context {
            reaper_pid: me,
            caller_chain: chain,
            caller_netns,
            netns: netns.unwrap_or(caller_netns),
            now: Utc::now(),
            kernel_threads: BTreeSet::new(),
            workload: Workload {
                own_job: crate::holders::job::own(),
                ..Workload::default()
            },
        })
    }
}

/// "127.0.0.1:8080/tcp", "[::]:8080/tcp (dual-stack)", with the state
/// when it is not the usual one for the protocol.
pub fn socket_words(s: &Socket) -> String {
    let addr = match s.addr {
        std::net::IpAddr::V4(a) => format!("{a}:{}", s.port),
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", s.port),
    };
    let mut w = format!("{addr}/{}", s.proto);
    if s.dual_stack {
        w.push_str(" dual-stack");
    }
    let usual = s.state.is_listening();
    if !usual {
        w.push_str(&format!(" ({})", s.state));
    }
    w
}

fn strip_deleted(exe: &str) -> &str {
    exe.strip_suffix(" (deleted)").unwrap_or(exe)
}

fn deleted_note(p: &Process) -> &'static str {
    match &p.exe {
        Some(e) if e.ends_with(" (deleted)") => {
            " (the file was replaced or deleted since it started)"
        }
        _ => "",
    }
}

fn basename(path: &str) -> &str {
    path.rsplit('/').next().unwrap_or(path)
}

fn shorten(s: &str, max: usize) -> String {
    if s.chars().count() <= max {
        s.to_string()
    } else {
        let mut t: String = s.chars().take(max).collect();
        t.push('…');
        t
    }
}

fn job_words(j: &Job) -> String {
    format!("{} job {}", j.provider, shorten(&j.id, 40))
}

fn user_words(p: &Process) -> String {
    match &p.user {
        Some(u) => format!("{u} (uid {})", p.uid),
        None => format!("uid {}", p.uid),
    }
}

fn parent_words(p: &Process) -> String {
    match p.ancestors.first() {
        Some((pid, comm)) => format!("pid {pid} {comm}"),
        None => format!("pid {}", p.ppid),
    }
}

/// How long the process has run, from its RFC 3339 start time.
fn age(p: &Process, now: DateTime<Utc>) -> Option<Duration> {
    let started = DateTime::parse_from_rfc3339(&p.started_at).ok()?;
    (now - started.with_timezone(&Utc))
        .to_std()
        .ok()
        .or(Some(Duration::ZERO))
}

/// "12:01:03 UTC" from an RFC 3339 time (the date is in the journal).
fn clock_words(rfc3339: &str) -> String {
    DateTime::parse_from_rfc3339(rfc3339)
        .map(|t| t.with_timezone(&Utc).format("%H:%M:%S UTC").to_string())
        .unwrap_or_else(|_| rfc3339.to_string())
}

#[cfg(test)]
mod tests;

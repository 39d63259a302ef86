//! holders: process details -> **job** -> policy.
//!
//! Which CI job a holder belongs to, from the variables the runners put in
//! each job's environment (/proc/PID/environ, readable by root and the
//! owner): GitHub Actions `RUNNER_TRACKING_ID` (with `GITHUB_RUN_ID` and
//! `GITHUB_JOB`), GitLab `CI_JOB_ID`, Jenkins `BUILD_TAG` /
//! `JENKINS_NODE_COOKIE`, Buildkite `BUILDKITE_JOB_ID`.
//!
//! A job has *ended* when no process of it is still attached to a live
//! runner: going up from each process carrying its id, past the job's own
//! processes, one reaches init, not a runner (a double-forked or `setsid`
//! server hangs from init, and so do its children).
//! A server left behind by a cancelled job is then stale by a better
//! definition than "orphaned and old".

use std::collections::{BTreeMap, BTreeSet};

pub use crate::vocab::Job;

/// The variables [`parse_environ`] reads.
const WANTED: &[&str] = &[
    "RUNNER_TRACKING_ID",
    "GITHUB_RUN_ID",
    "GITHUB_JOB",
    "CI_JOB_ID",
    "CI_PIPELINE_ID",
    "CI_JOB_NAME",
    "BUILD_TAG",
    "JENKINS_NODE_COOKIE",
    "JENKINS_URL",
    "BUILD_NUMBER",
    "JOB_NAME",
    "BUILDKITE_JOB_ID",
    "BUILDKITE_BUILD_ID",
    "BUILDKITE_LABEL",
];

/// The wanted variables of an environ block (NUL-separated `KEY=value`):
/// one pass, no map of the whole environment (a hook reads every
/// process's environment on the host).
fn vars(environ: &[u8]) -> BTreeMap<&[u8], &[u8]> {
    let mut out = BTreeMap::new();
    let mut rest = environ;
    while !rest.is_empty() {
        let end = memchr::memchr(0, rest).unwrap_or(rest.len());
        let kv = &rest[..end];
        rest = rest.get(end + 1..).unwrap_or_default();
        // Every wanted name starts with one of these letters.
        if !matches!(kv.first(), Some(b'R' | b'G' | b'C' | b'B' | b'J')) {
            continue;
        }
        let Some(eq) = memchr::memchr(b'=', kv) else {
            continue;
        };
        let key = &kv[..eq];
        if WANTED.iter().any(|w| w.as_bytes() == key) {
            out.insert(key, &kv[eq + 1..]);
        }
    }
    out
}

/// The job named by an environ block; None outside CI jobs. Values are
/// process-controlled text: decoded lossily, shown escaped.
pub fn parse_environ(environ: &[u8]) -> Option<Job> {
    let v = vars(environ);
    let get = |k: &str| {
        v.get(k.as_bytes())
            .filter(|s| !s.is_empty())
            .map(|s| String::from_utf8_lossy(s).into_owned())
    };
    let job = |provider: &str, id: String, run: Option<String>, name: Option<String>| Job {
        provider: provider.into(),
        id,
        run,
        name,
        ended: None,
    };
    if let Some(id) = get("RUNNER_TRACKING_ID") {
        return Some(job("github", id, get("GITHUB_RUN_ID"), get("GITHUB_JOB")));
    }
    if let (Some(run), Some(name)) = (get("GITHUB_RUN_ID"), get("GITHUB_JOB")) {
        return Some(job(
            "github",
            format!("{run}/{name}"),
            Some(run),
            Some(name),
        ));
    }
    if let Some(id) = get("CI_JOB_ID") {
        return Some(job("gitlab", id, get("CI_PIPELINE_ID"), get("CI_JOB_NAME")));
    }
    if let Some(id) = get("BUILD_TAG").or_else(|| get("JENKINS_NODE_COOKIE")) {
        if v.contains_key(&b"JENKINS_URL"[..])
            || v.contains_key(&b"JENKINS_NODE_COOKIE"[..])
            || id.starts_with("jenkins-")
        {
            return Some(job("jenkins", id, get("BUILD_NUMBER"), get("JOB_NAME")));
        }
    }
    if let Some(id) = get("BUILDKITE_JOB_ID") {
        return Some(job(
            "buildkite",
            id,
            get("BUILDKITE_BUILD_ID"),
            get("BUILDKITE_LABEL"),
        ));
    }
    None
}

/// The job of a process (None: not in a job, gone, or unreadable).
pub fn of_pid(pid: u32) -> Option<Job> {
    parse_environ(&crate::proc::read(pid, "environ")?)
}

/// The job reaper itself runs in (for `job = "current"`).
pub fn own() -> Option<Job> {
    parse_environ(&crate::proc::read("self", "environ")?)
}

/// The variables reaper looks for, in the order it looks, for messages
/// that say why no job was found.
pub const VARIABLES: &[&str] = &[
    "RUNNER_TRACKING_ID (GitHub)",
    "GITHUB_RUN_ID + GITHUB_JOB (GitHub)",
    "CI_JOB_ID (GitLab)",
    "BUILD_TAG or JENKINS_NODE_COOKIE with JENKINS_URL (Jenkins)",
    "BUILDKITE_JOB_ID (Buildkite)",
];

/// One process as the job table sees it.
#[derive(Clone, Debug)]
pub struct Entry {
    pub comm: String,
    pub ppid: u32,
    pub start_ticks: u64,
    pub state: char,
    /// The job its own environment names.
    pub job: Option<Job>,
}

/// Every process on the host with its parent and its own job, from one
/// snapshot, so that "which processes belong to this job" and "is this job
/// still running" are answered together: one read of the kernel's task
/// iterator ([`super::taskenv`]) or, where it cannot run, one walk of
/// /proc (stat and environ). Both give the same table.
#[derive(Clone, Debug, Default)]
pub struct Table {
    pub procs: std::collections::HashMap<u32, Entry>,
    /// Which path read it: `bpf_iter` or `proc`.
    pub source: &'static str,
    /// Why the iterator was not used, when it was not.
    pub source_error: Option<String>,
}

/// The table from the task iterator; an environment too large for its
/// record (or unreadable by it) is read from /proc.
fn read_tasks() -> Result<Vec<(u32, Entry)>, String> {
    use super::taskenv::Environ;
    let mut reader: Option<crate::proc::Reader> = None;
    let mut out = Vec::with_capacity(1024);
    super::taskenv::each(|t| {
        let job = match t.environ {
            Environ::Bytes(b) => parse_environ(b),
            Environ::None => None,
            Environ::Unread => reader
                .get_or_insert_with(crate::proc::Reader::new)
                .read(t.pid, "environ")
                .and_then(parse_environ),
        };
        let entry = Entry {
            comm: String::from_utf8_lossy(t.comm).into_owned(),
            ppid: t.ppid,
            start_ticks: t.start_ticks,
            state: t.state,
            job,
        };
        out.push((t.pid, entry));
    })?;
    Ok(out)
}

/// How far a parent chain is followed (pid reuse could make a cycle).
const MAX_DEPTH: usize = 64;

/// The walk of the process table: stat and environ of each pid.
fn read_procs(pids: impl Iterator<Item = u32>) -> Vec<(u32, Entry)> {
    // One buffer for every file: a hook reads two files of every process
    // on the host, and a read_to_end per file (a size probe, a growing
    // buffer) tripled the syscalls.
    let mut reader = crate::proc::Reader::new();
    let mut out = Vec::new();
    for pid in pids {
        let Some(st) = reader.read(pid, "stat").and_then(crate::proc::parse_stat) else {
            continue;
        };
        // A kernel thread has no environment to read.
        let job = if st.flags & crate::proc::PF_KTHREAD != 0 {
            None
        } else {
            reader.read(pid, "environ").and_then(parse_environ)
        };
        out.push((
            pid,
            Entry {
                comm: st.comm,
                ppid: st.ppid,
                start_ticks: st.start_ticks,
                state: st.state,
                job,
            },
        ));
    }
    out
}

impl Table {
    /// Reads every process: from the kernel's task iterator when it runs
    /// here, else from /proc (those that vanish or cannot be read are left
    /// out).
    pub fn read() -> Table {
        match read_tasks() {
            Ok(procs) => Table {
                procs: procs.into_iter().collect(),
                source: "bpf_iter",
                source_error: None,
            },
            Err(why) => {
                let mut t = Table::read_proc();
                t.source_error = Some(why);
                t
            }
        }
    }

    /// Reads every process from /proc. One thread: two threads measured no
    /// faster on a loaded 2-core host (bench/job; the kernel's work per
    /// file, not the syscalls, is the cost).
    pub fn read_proc() -> Table {
        let procs = match crate::proc::pids() {
            Ok(pids) => read_procs(pids).into_iter().collect(),
            Err(_) => Default::default(),
        };
        Table {
            procs,
            source: "proc",
            source_error: None,
        }
    }

    /// The job a process runs in: the one its own environment names, else
    /// its nearest ancestor's (a process that cleared its variables is
    /// still its parent's, while the parent lives). The second value is
    /// the ancestor it was inherited from.
    pub fn job_of(&self, pid: u32) -> Option<(&Job, Option<u32>)> {
        let e = self.procs.get(&pid)?;
        if let Some(j) = &e.job {
            return Some((j, None));
        }
        let mut next = e.ppid;
        for _ in 0..MAX_DEPTH {
            if next <= 1 {
                return None;
            }
            let a = self.procs.get(&next)?;
            if let Some(j) = &a.job {
                return Some((j, Some(next)));
            }
            next = a.ppid;
        }
        None
    }

    /// Whether a process of this job (by its own environment) is still
    /// attached to a live runner: going up its parents past the job's own
    /// processes, the first process outside the job is not init. A server
    /// left behind (double-forked, `setsid`, or orphaned) hangs from init,
    /// and so do its children; the job's steps hang from the runner.
    pub fn attached(&self, key: (&str, &str)) -> bool {
        self.procs.iter().any(|(&pid, e)| {
            e.state != 'Z'
                && e.job.as_ref().is_some_and(|j| j.key() == key)
                && self.runner_above(pid, key)
        })
    }

    fn runner_above(&self, pid: u32, key: (&str, &str)) -> bool {
        let mut next = pid;
        for _ in 0..MAX_DEPTH {
            let Some(e) = self.procs.get(&next) else {
                return false;
            };
            if e.job.as_ref().is_none_or(|j| j.key() != key) {
                // The first process outside the job: a runner, unless init.
                return next > 1;
            }
            next = e.ppid;
            if next == 0 {
                return false;
            }
        }
        false
    }

    /// When the job's oldest live process started (clock ticks since boot).
    pub fn started(&self, key: (&str, &str)) -> Option<u64> {
        self.procs
            .values()
            .filter(|e| e.job.as_ref().is_some_and(|j| j.key() == key))
            .map(|e| e.start_ticks)
            .min()
    }

    /// Every job some process names, by key, with whether it still runs.
    pub fn jobs(&self) -> BTreeMap<(String, String), bool> {
        let keys: BTreeSet<(String, String)> = self
            .procs
            .values()
            .filter_map(|e| e.job.as_ref())
            .map(|j| (j.provider.clone(), j.id.clone()))
            .collect();
        keys.into_iter()
            .map(|k| {
                let live = self.attached((&k.0, &k.1));
                (k, live)
            })
            .collect()
    }
}

/// Which of these jobs still have a process attached to a live runner.
/// One walk of /proc for all of them.
/// `table`: the process table when the caller has read it, else it is read
/// here (only when there is a job to ask about).
pub fn attached(
    jobs: &BTreeSet<(String, String)>,
    table: Option<&Table>,
) -> BTreeSet<(String, String)> {
    if jobs.is_empty() {
        return BTreeSet::new();
    }
    let read;
    let t = match table {
        Some(t) => t,
        None => {
            read = Table::read();
            &read
        }
    };
    jobs.iter()
        .filter(|k| t.attached((&k.0, &k.1)))
        .cloned()
        .collect()
}

/// Sets `ended` on every job of these processes (`table` as in
/// [`attached`]).
pub fn mark_ended<'a>(
    processes: impl Iterator<Item = &'a mut super::Process>,
    table: Option<&Table>,
) {
    let mut procs: Vec<&mut super::Process> = processes.filter(|p| p.job.is_some()).collect();
    let keys: BTreeSet<(String, String)> = procs
        .iter()
        .filter_map(|p| p.job.as_ref())
        .map(|j| (j.provider.clone(), j.id.clone()))
        .collect();
    let live = attached(&keys, table);
    for p in procs.iter_mut() {
        if let Some(j) = p.job.as_mut() {
            j.ended = Some(!live.contains(&(j.provider.clone(), j.id.clone())));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[&str]) -> Vec<u8> {
        let mut b = Vec::new();
        for p in pairs {
            b.extend_from_slice(p.as_bytes());
            b.push(0);
        }
        b
    }

    #[test]
    fn github_actions() {
        let j = parse_environ(&env(&[
            "PATH=/usr/bin",
            "RUNNER_TRACKING_ID=github_9f2c7a1e-1111-2222-3333-444455556666",
            "GITHUB_RUN_ID=8123456789",
            "GITHUB_JOB=integration",
        ]))
        .unwrap();
        assert_eq!(
            j.key(),
            ("github", "github_9f2c7a1e-1111-2222-3333-444455556666")
        );
        assert_eq!(j.run.as_deref(), Some("8123456789"));
        assert_eq!(j.name.as_deref(), Some("integration"));
        // Without the tracking id, the run and job name identify the job.
        let j = parse_environ(&env(&["GITHUB_RUN_ID=81", "GITHUB_JOB=build"])).unwrap();
        assert_eq!(j.key(), ("github", "81/build"));
    }

    #[test]
    fn gitlab_jenkins_buildkite() {
        let j = parse_environ(&env(&[
            "CI_JOB_ID=4242",
            "CI_PIPELINE_ID=7",
            "CI_JOB_NAME=test",
        ]))
        .unwrap();
        assert_eq!(
            (j.key(), j.name.as_deref()),
            (("gitlab", "4242"), Some("test"))
        );
        let j = parse_environ(&env(&["BUILD_TAG=jenkins-shop-42", "BUILD_NUMBER=42"])).unwrap();
        assert_eq!(j.key(), ("jenkins", "jenkins-shop-42"));
        let j = parse_environ(&env(&["JENKINS_NODE_COOKIE=5e1f"])).unwrap();
        assert_eq!(j.key(), ("jenkins", "5e1f"));
        let j =
            parse_environ(&env(&["BUILDKITE_JOB_ID=0190-ab", "BUILDKITE_BUILD_ID=b1"])).unwrap();
        assert_eq!(j.key(), ("buildkite", "0190-ab"));
    }

    fn table(rows: &[(u32, u32, Option<&str>)]) -> Table {
        let mut t = Table::default();
        for &(pid, ppid, id) in rows {
            t.procs.insert(
                pid,
                Entry {
                    comm: "x".into(),
                    ppid,
                    start_ticks: pid as u64,
                    state: 'S',
                    job: id.map(|id| Job {
                        provider: "github".into(),
                        id: id.into(),
                        run: None,
                        name: None,
                        ended: None,
                    }),
                },
            );
        }
        t
    }

    #[test]
    fn a_job_runs_while_a_process_of_it_hangs_from_a_runner() {
        // runner 10 -> worker 20 (job a) -> step 30 (a) -> child 40 (cleared);
        // a server 50 of job b double-forked away (parent init) with a worker 60.
        let t = table(&[
            (1, 0, None),
            (10, 1, None),
            (20, 10, Some("a")),
            (30, 20, Some("a")),
            (40, 30, None),
            (50, 1, Some("b")),
            (60, 50, Some("b")),
        ]);
        assert!(t.attached(("github", "a")));
        assert!(!t.attached(("github", "b")), "b's processes hang from init");
        assert_eq!(
            t.job_of(40).map(|(j, from)| (j.id.as_str(), from)),
            Some(("a", Some(30)))
        );
        assert_eq!(t.job_of(10), None);
        assert_eq!(t.started(("github", "a")), Some(20));
        let jobs = t.jobs();
        assert!(jobs[&("github".to_string(), "a".to_string())]);
        assert!(!jobs[&("github".to_string(), "b".to_string())]);
    }

    #[test]
    fn not_a_job() {
        assert_eq!(parse_environ(&env(&["PATH=/bin", "HOME=/root"])), None);
        // A BUILD_TAG alone is not Jenkins (many tools set it).
        assert_eq!(parse_environ(&env(&["BUILD_TAG=v1.2"])), None);
        assert_eq!(parse_environ(&env(&["RUNNER_TRACKING_ID="])), None);
        assert_eq!(parse_environ(b""), None);
        assert_eq!(parse_environ(b"\0\0=\0garbage"), None);
    }
}

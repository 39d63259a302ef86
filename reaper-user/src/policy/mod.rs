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

use std::collections::BTreeSet;
use std::fmt;
use std::time::Duration;

use chrono::{DateTime, Utc};
use regex::Regex;

use crate::holders::container::Container;
use crate::holders::job::Job;
use crate::holders::{Holding, Process, Socket};
use crate::journal::VerdictRecord;
use crate::util::human_duration;
use crate::vocab::{Action, Decision};

pub(crate) mod file;

pub use file::PolicyError;

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

/// A command line pattern: a substring, or a regex written `/like this/`.
#[derive(Clone, Debug)]
pub enum TextPattern {
    Substring(String),
    Regex(Regex),
}

impl TextPattern {
    /// `/…/` is a regex; anything else a substring.
    pub fn parse(s: &str) -> Result<TextPattern, String> {
        if s.is_empty() {
            return Err(
                "an empty pattern matches every command line: give a substring or /a regex/".into(),
            );
        }
        if s.len() >= 2 && s.starts_with('/') && s.ends_with('/') {
            let body = &s[1..s.len() - 1];
            return Regex::new(body)
                .map(TextPattern::Regex)
                .map_err(|e| format!("'{s}' is not a valid regex ({e})"));
        }
        Ok(TextPattern::Substring(s.to_string()))
    }
    fn is_match(&self, text: &str) -> bool {
        match self {
            TextPattern::Substring(s) => text.contains(s.as_str()),
            TextPattern::Regex(r) => r.is_match(text),
        }
    }
}

impl fmt::Display for TextPattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            TextPattern::Substring(s) => write!(f, "'{s}'"),
            TextPattern::Regex(r) => write!(f, "/{}/", r.as_str()),
        }
    }
}

/// A pattern for paths and names: `*` and `?` wildcards when present,
/// otherwise `exact` decides between equality and substring.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Glob {
    pub pattern: String,
}

impl Glob {
    pub fn new(pattern: &str) -> Glob {
        Glob {
            pattern: pattern.to_string(),
        }
    }
    pub fn has_wildcards(&self) -> bool {
        self.pattern.contains(['*', '?'])
    }
    /// Whole-string wildcard match.
    pub fn matches(&self, text: &str) -> bool {
        glob_match(self.pattern.as_bytes(), text.as_bytes())
    }
}

/// Iterative wildcard matching (`*` any run, `?` one byte), linear in
/// practice: remembers the last `*` and retries from there.
fn glob_match(p: &[u8], t: &[u8]) -> bool {
    let (mut pi, mut ti) = (0, 0);
    let mut star: Option<(usize, usize)> = None;
    while ti < t.len() {
        if pi < p.len() && (p[pi] == b'?' || p[pi] == t[ti]) {
            pi += 1;
            ti += 1;
        } else if pi < p.len() && p[pi] == b'*' {
            star = Some((pi, ti));
            pi += 1;
        } else if let Some((sp, st)) = star {
            pi = sp + 1;
            ti = st + 1;
            star = Some((sp, st + 1));
        } else {
            return false;
        }
    }
    while pi < p.len() && p[pi] == b'*' {
        pi += 1;
    }
    pi == p.len()
}

/// Which executable: a full path (contains `/`), a basename, or a glob.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ExePattern {
    Path(String),
    Basename(String),
    Glob(Glob),
}

impl ExePattern {
    pub fn parse(s: &str) -> Result<ExePattern, String> {
        if s.is_empty() {
            return Err("an empty exe matches nothing: give a path like /usr/local/bin/platform-server or a basename".into());
        }
        let g = Glob::new(s);
        Ok(if g.has_wildcards() {
            ExePattern::Glob(g)
        } else if s.contains('/') {
            ExePattern::Path(s.to_string())
        } else {
            ExePattern::Basename(s.to_string())
        })
    }
    fn is_match(&self, exe: &str) -> bool {
        match self {
            ExePattern::Path(p) => exe == p,
            ExePattern::Basename(b) => basename(exe) == b,
            ExePattern::Glob(g) if g.pattern.contains('/') => g.matches(exe),
            ExePattern::Glob(g) => g.matches(basename(exe)),
        }
    }
}

impl fmt::Display for ExePattern {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ExePattern::Path(s) | ExePattern::Basename(s) => f.write_str(s),
            ExePattern::Glob(g) => f.write_str(&g.pattern),
        }
    }
}

/// A user: a numeric uid or a name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum UserSpec {
    Uid(u32),
    Name(String),
}

impl fmt::Display for UserSpec {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            UserSpec::Uid(u) => write!(f, "uid {u}"),
            UserSpec::Name(n) => f.write_str(n),
        }
    }
}

/// Which network namespace a rule applies to.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum NetnsSpec {
    /// The namespace reaper runs in (the default).
    #[default]
    Caller,
    /// Any namespace (the protection for "another namespace than the port
    /// asked about" still holds).
    Any,
    /// This namespace inode.
    Inode(u64),
}

/// The conditions of one rule; every condition given must hold.
#[derive(Clone, Debug, Default)]
pub struct Matcher {
    /// A process name as `--match` takes it: compared with the comm (a prefix
    /// when the comm is 15 bytes), the exe basename and argv[0]'s basename.
    pub name: Option<String>,
    /// The kernel's comm. A 15-byte comm may be a truncation, so it never
    /// suffices alone.
    pub comm: Option<String>,
    pub exe: Option<ExePattern>,
    pub cmdline: Option<TextPattern>,
    pub user: Option<UserSpec>,
    pub min_age: Option<Duration>,
    pub orphaned: Option<bool>,
    /// Substring of the cgroup path, or a glob when it has `*`/`?`.
    pub cgroup: Option<Glob>,
    /// The container the process runs in: id prefix, name, image, label.
    pub container: Option<ContainerMatch>,
    /// The CI job the process runs in: ended, or the caller's own.
    pub job: Option<JobState>,
    pub netns: NetnsSpec,
}

/// `container = "ID-PREFIX"` or `container = { id, name, image, label }`:
/// every part given must hold. Name and image are globs (`*`, `?`) or exact;
/// a label is `key` (present) or `key=value`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ContainerMatch {
    /// Prefix of the container id, or a glob when it has `*`/`?`.
    pub id: Option<Glob>,
    pub name: Option<Glob>,
    pub image: Option<Glob>,
    pub label: Option<(String, Option<String>)>,
}

impl ContainerMatch {
    /// Names the workload (name, image or label): as strong as naming a program.
    pub fn names_a_workload(&self) -> bool {
        self.name.is_some() || self.image.is_some() || self.label.is_some()
    }

    /// Checks a container; Ok carries what matched, Err what did not.
    pub fn check(&self, c: &Container) -> Result<Vec<String>, String> {
        let mut why = Vec::new();
        let exact_or_glob = |g: &Glob, text: &str| {
            if g.has_wildcards() {
                g.matches(text)
            } else {
                g.pattern == text
            }
        };
        if let Some(g) = &self.id {
            let ok = if g.has_wildcards() {
                g.matches(&c.id)
            } else {
                c.id.starts_with(g.pattern.as_str())
            };
            if !ok {
                return Err(format!("container is {}, not {}", c.short_id, g.pattern));
            }
            why.push(format!("in container {}", c.short_id));
        }
        if let Some(g) = &self.name {
            match &c.name {
                Some(n) if exact_or_glob(g, n) => why.push(format!("container name {n}")),
                Some(n) => return Err(format!("container name is {n}, not {}", g.pattern)),
                None => {
                    return Err(format!(
                        "container {} has no name known (the engine did not answer), so it cannot be checked against {}",
                        c.short_id, g.pattern
                    ))
                }
            }
        }
        if let Some(g) = &self.image {
            let image = c.image.as_deref().unwrap_or("");
            // `image = "nginx"` matches nginx:1.27 too.
            let base = image.split(':').next().unwrap_or(image);
            if !(exact_or_glob(g, image) || exact_or_glob(g, base)) {
                return Err(format!("container image is '{image}', not {}", g.pattern));
            }
            why.push(format!("container image {image}"));
        }
        if let Some((k, v)) = &self.label {
            match (c.labels.get(k), v) {
                (Some(have), Some(want)) if have == want => why.push(format!("label {k}={want}")),
                (Some(_), None) => why.push(format!("label {k}")),
                (Some(have), Some(want)) => {
                    return Err(format!("container label {k} is '{have}', not '{want}'"))
                }
                (None, _) => return Err(format!("container has no label {k}")),
            }
        }
        Ok(why)
    }
}

/// `job = "ended"` or `job = "current"`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum JobState {
    /// No process of the holder's job is attached to a live runner.
    Ended,
    /// The holder's job is the one reaper runs in (for `reaper job`: the
    /// job it acts for).
    Current,
    /// The holder's job still has a process attached to a live runner.
    Running,
    /// The holder is in a CI job, and not the current one.
    Other,
}

impl Matcher {
    /// Whether the rule names the program (exe, cmdline, name or comm): a
    /// reap rule must, so that "every orphan of uid 1000" is never a rule.
    pub fn names_a_program(&self) -> bool {
        self.name.is_some()
            || self.comm.is_some()
            || self.exe.is_some()
            || self.cmdline.is_some()
            || self
                .container
                .as_ref()
                .is_some_and(|c| c.names_a_workload())
    }

    /// Checks every condition. Ok carries what matched, Err the first
    /// condition that failed, both in plain words.
    fn check(&self, p: &Process, s: &Socket, ctx: &Context) -> Result<Vec<String>, String> {
        let mut why = Vec::new();
        // Identity that does not rest on the comm alone: exe, cmdline, or a
        // name that matched exe/argv[0].
        let mut strong_identity = false;

        if let Some(want) = &self.exe {
            why.push(check_exe(want, p)?);
            strong_identity = true;
        }
        if let Some(pat) = &self.cmdline {
            why.push(check_cmdline(pat, p)?);
            strong_identity = true;
        }
        if let Some(name) = &self.name {
            let how = match_name(name, p)?;
            strong_identity |= how.strong;
            why.push(how.reason);
        }
        if let Some(want) = &self.comm {
            why.push(check_comm(want, p, strong_identity)?);
        }
        if let Some(user) = &self.user {
            why.push(check_user(user, p)?);
        }
        if let Some(min) = self.min_age {
            why.push(check_min_age(min, p, ctx)?);
        }
        if let Some(want) = self.orphaned {
            why.push(check_orphaned(want, p)?);
        }
        if let Some(g) = &self.cgroup {
            why.push(check_cgroup(g, p)?);
        }
        if let Some(want) = &self.container {
            let Some(c) = ctx.workload.container_of(p) else {
                return Err("is not in a container (no container id in its cgroup)".into());
            };
            why.extend(want.check(&c)?);
        }
        if let Some(want) = self.job {
            why.push(check_job(want, p, ctx)?);
        }
        check_netns(&self.netns, s, ctx)?;
        Ok(why)
    }
}

/// `exe = ...`: the executable, " (deleted)" stripped.
fn check_exe(want: &ExePattern, p: &Process) -> Result<String, String> {
    match p.exe.as_deref().map(strip_deleted) {
        Some(e) if want.is_match(e) => Ok(format!("matches exe={e}{}", deleted_note(p))),
        Some(e) => Err(format!("exe is {e}, not {want}")),
        None => Err(format!(
            "exe is unreadable, so it cannot be checked against {want}"
        )),
    }
}

/// `cmdline = ...`: the argv joined by spaces.
fn check_cmdline(pat: &TextPattern, p: &Process) -> Result<String, String> {
    let line = p.cmdline.join(" ");
    if pat.is_match(&line) {
        Ok(format!("cmdline '{}' matches {pat}", shorten(&line, 120)))
    } else {
        Err(format!(
            "cmdline '{}' does not match {pat}",
            shorten(&line, 120)
        ))
    }
}

/// `comm = ...`: a 15-byte comm may be a truncation, so it holds only
/// with a strong identity beside it.
fn check_comm(want: &str, p: &Process, strong_identity: bool) -> Result<String, String> {
    let truncated = p.comm.len() >= COMM_MAX;
    let equal = p.comm == *want;
    let prefix = truncated && want.starts_with(p.comm.as_str());
    if !(equal || prefix) {
        return Err(format!("comm is '{}', not '{want}'", p.comm));
    }
    if truncated && !strong_identity {
        return Err(format!(
            "comm '{}' is {} bytes and may be truncated, so it is not enough alone: add exe= or cmdline= to the rule",
            p.comm,
            p.comm.len()
        ));
    }
    if truncated {
        Ok(format!(
            "comm '{}' is {} bytes and may be truncated (the exe/cmdline match above confirms it)",
            p.comm,
            p.comm.len()
        ))
    } else {
        Ok(format!("comm is '{want}'"))
    }
}

/// `user = ...`: a uid or a user name.
fn check_user(user: &UserSpec, p: &Process) -> Result<String, String> {
    let ok = match user {
        UserSpec::Uid(u) => p.uid == *u,
        UserSpec::Name(n) => p.user.as_deref() == Some(n.as_str()),
    };
    let who = user_words(p);
    if !ok {
        return Err(format!("runs as {who}, not {user}"));
    }
    Ok(format!("runs as {who}"))
}

/// `min_age = ...`: started at least that long ago.
fn check_min_age(min: Duration, p: &Process, ctx: &Context) -> Result<String, String> {
    match age(p, ctx.now) {
        Some(a) if a >= min => Ok(format!(
            "started {} ({} ago, at least {})",
            clock_words(&p.started_at),
            human_duration(a),
            human_duration(min)
        )),
        Some(a) => Err(format!(
            "started only {} ago, younger than min_age {}",
            human_duration(a),
            human_duration(min)
        )),
        None => Err(format!(
            "start time '{}' is unreadable, so min_age cannot be checked",
            p.started_at
        )),
    }
}

/// `orphaned = true|false`.
fn check_orphaned(want: bool, p: &Process) -> Result<String, String> {
    if p.orphaned != want {
        return Err(if p.orphaned {
            format!(
                "is orphaned (parent pid {}), the rule wants a process with its parent alive",
                p.ppid
            )
        } else {
            format!("is not orphaned (parent {} is alive)", parent_words(p))
        });
    }
    if want {
        Ok(format!("orphaned (reparented to {})", parent_words(p)))
    } else {
        Ok(format!("parent {} is alive", parent_words(p)))
    }
}

/// `cgroup = ...`: a substring of the cgroup path, or a glob.
fn check_cgroup(g: &Glob, p: &Process) -> Result<String, String> {
    let cg = p.cgroup.as_deref().unwrap_or("");
    let ok = if g.has_wildcards() {
        g.matches(cg)
    } else {
        cg.contains(g.pattern.as_str())
    };
    if !ok {
        return Err(format!(
            "cgroup is '{cg}', which does not match '{}'",
            g.pattern
        ));
    }
    Ok(format!("cgroup {cg}"))
}

/// `netns = ...`: the socket's network namespace (nothing said when it holds).
fn check_netns(netns: &NetnsSpec, s: &Socket, ctx: &Context) -> Result<(), String> {
    match *netns {
        NetnsSpec::Any => {}
        NetnsSpec::Caller => {
            if s.netns != ctx.caller_netns {
                return Err(format!(
                    "the socket is in network namespace {}, not reaper's own ({}); the rule needs netns = \"any\" or {}",
                    s.netns, ctx.caller_netns, s.netns
                ));
            }
        }
        NetnsSpec::Inode(n) => {
            if s.netns != n {
                return Err(format!(
                    "the socket is in network namespace {}, not {n}",
                    s.netns
                ));
            }
        }
    }
    Ok(())
}

/// How a `--match NAME` matched.
struct NameMatch {
    reason: String,
    /// Matched something other than the comm.
    strong: bool,
}

/// `--match NAME`: exe basename, argv[0] basename, or the comm. The comm
/// counts alone only when it is shorter than 15 bytes; at 15 bytes it may be
/// the truncation of another name, so exe or argv[0] must agree.
fn match_name(name: &str, p: &Process) -> Result<NameMatch, String> {
    let exe_base = p.exe.as_deref().map(|e| basename(strip_deleted(e)));
    let argv0_base = p.cmdline.first().map(|a| basename(a));
    let truncated = p.comm.len() >= COMM_MAX;
    let comm_fits = if truncated {
        name.starts_with(p.comm.as_str())
    } else {
        p.comm == name
    };
    let trunc_note = |what: &str| {
        format!(
            "comm '{}' is {} bytes and may be truncated; matched {what}",
            p.comm,
            p.comm.len()
        )
    };
    // The exe or argv[0] naming the program is a strong match on its own.
    for (base, label) in [(exe_base, "exe"), (argv0_base, "argv[0]")] {
        if base == Some(name) {
            let what = format!("{label} basename {name}");
            let reason = if truncated && comm_fits {
                trunc_note(&what)
            } else {
                format!("matches {what}")
            };
            return Ok(NameMatch {
                reason,
                strong: true,
            });
        }
    }
    let others = format!(
        "exe basename is {} and argv[0] basename is {}",
        exe_base.unwrap_or("unreadable"),
        argv0_base.unwrap_or("empty")
    );
    if comm_fits && truncated {
        return Err(format!(
            "comm '{}' is {} bytes and may be truncated, and {others}: no proof it is {name}",
            p.comm,
            p.comm.len()
        ));
    }
    if comm_fits {
        return Ok(NameMatch {
            reason: format!("matches comm {name}"),
            strong: false,
        });
    }
    Err(format!("comm is '{}' and {others}, none is {name}", p.comm))
}

/// A rule: conditions and what to do when they hold.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub action: Action,
    /// Tree semantics for what this rule reaps (see `reap::plan`): holders'
    /// children sharing the socket are stopped with them.
    pub tree: bool,
}

/// A protection: whatever it matches is never signalled.
#[derive(Clone, Debug)]
pub struct Protect {
    pub name: String,
    pub matcher: Matcher,
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

/// `job = "ended" | "current"` against a process.
fn check_job(want: JobState, p: &Process, ctx: &Context) -> Result<String, String> {
    let Some(job) = &p.job else {
        return Err("is not in a CI job (no job id in its environment)".into());
    };
    match want {
        JobState::Ended => match job.ended {
            Some(true) => Ok(format!(
                "{} has ended (no process of it is attached to a live runner)",
                job_words(job)
            )),
            Some(false) => Err(format!(
                "{} is still running (a process of it is attached to its runner)",
                job_words(job)
            )),
            None => Err(format!("{} was not checked for an end", job_words(job))),
        },
        JobState::Current => match &ctx.workload.own_job {
            Some(mine) if mine.key() == job.key() => {
                Ok(format!("{} is reaper's own job", job_words(job)))
            }
            Some(mine) => Err(format!(
                "{} is not reaper's own job ({})",
                job_words(job),
                job_words(mine)
            )),
            None => Err("reaper itself does not run in a CI job".into()),
        },
        JobState::Running => match job.ended {
            Some(false) => Ok(format!(
                "{} is still running (a process of it is attached to its runner)",
                job_words(job)
            )),
            Some(true) => Err(format!("{} has ended", job_words(job))),
            None => Err(format!("{} was not checked for an end", job_words(job))),
        },
        JobState::Other => match &ctx.workload.own_job {
            Some(mine) if mine.key() == job.key() => {
                Err(format!("{} is the current job", job_words(job)))
            }
            _ => Ok(format!(
                "{} is another job than the current one",
                job_words(job)
            )),
        },
    }
}

impl Context {
    /// The context of this process: its pid, its parent chain, its netns.
    /// `netns`: the namespace the port is asked about (None: our own).
    pub fn current(netns: Option<u64>) -> std::io::Result<Context> {
        let me = std::process::id();
        let caller_netns = crate::reap::netns_of(me)?;
        let mut chain = Vec::new();
        let mut pid = crate::reap::ProcStat::read(me)?.ppid;
        // The chain ends at pid 0 (init's parent); the bound stops a loop on
        // a garbled /proc.
        while pid != 0 && chain.len() < 4096 {
            chain.push(pid);
            pid = match crate::reap::ProcStat::read(pid) {
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

/// A set of rules and protections.
#[derive(Clone, Debug, Default)]
pub struct Policy {
    pub rules: Vec<Rule>,
    pub protects: Vec<Protect>,
}

/// The one-off rule `reaper free` builds from its flags.
#[derive(Clone, Debug, Default)]
pub struct FlagRule {
    /// `--match NAME`
    pub name: Option<String>,
    /// `--exe PATH`
    pub exe: Option<String>,
    /// `--cmdline PATTERN`
    pub cmdline: Option<String>,
}

/// The name the flag rule carries in verdicts and the journal.
pub const FLAG_RULE: &str = "command line";

impl Policy {
    /// Parses a policy file's text (see deploy/policy.toml). Errors name the
    /// line, the key and what is allowed.
    pub fn from_toml_str(text: &str) -> Result<Policy, PolicyError> {
        file::parse(text)
    }

    /// Reads and parses a policy file.
    pub fn from_file(path: &std::path::Path) -> Result<Policy, PolicyError> {
        let text = std::fs::read_to_string(path).map_err(|e| PolicyError {
            path: Some(path.to_path_buf()),
            line: None,
            message: format!("cannot read it ({e})"),
        })?;
        file::parse(&text).map_err(|e| e.with_path(path))
    }

    /// One reap rule from `--match`, `--exe`, `--cmdline` (all given must
    /// hold). An empty policy when no flag is given.
    pub fn from_flags(flags: &FlagRule) -> Result<Policy, PolicyError> {
        let bad = |flag: &str, msg: String| PolicyError {
            path: None,
            line: None,
            message: format!("{flag}: {msg}"),
        };
        let mut m = Matcher::default();
        if let Some(n) = &flags.name {
            if n.is_empty() || n.contains('/') {
                return Err(bad("--match", format!("'{n}' is not a process name: give a name like platform-server (use --exe for a path)")));
            }
            m.name = Some(n.clone());
        }
        if let Some(e) = &flags.exe {
            m.exe = Some(ExePattern::parse(e).map_err(|e| bad("--exe", e))?);
        }
        if let Some(c) = &flags.cmdline {
            m.cmdline = Some(TextPattern::parse(c).map_err(|e| bad("--cmdline", e))?);
        }
        let mut p = Policy::default();
        if m.names_a_program() {
            p.rules.push(Rule {
                name: FLAG_RULE.to_string(),
                matcher: m,
                action: Action::Reap,
                tree: false,
            });
        }
        Ok(p)
    }

    /// Combines two policies: `other`'s rules come after ours (the first
    /// matching rule decides), and every protection of both holds.
    pub fn combine(mut self, other: Policy) -> Policy {
        self.rules.extend(other.rules);
        self.protects.extend(other.protects);
        self
    }

    /// True when no rule could ever reap anything.
    pub fn has_reap_rules(&self) -> bool {
        self.rules.iter().any(|r| r.action == Action::Reap)
    }

    /// The protections alone (built-in, then `protect` rules): Some when one
    /// holds. Used for processes that are targets through another's verdict
    /// (`--tree`), which no rule may lift either.
    pub fn protection(&self, p: &Process, s: &Socket, ctx: &Context) -> Option<Verdict> {
        let holds = format!("holds {}", socket_words(s));
        if let Some(why) = builtin_protection(p, s, ctx) {
            return Some(Verdict::new(Decision::Protect, None, vec![why, holds]));
        }
        for prot in &self.protects {
            if let Ok(mut why) = prot.matcher.check(p, s, ctx) {
                why.insert(0, format!("protected by rule '{}'", prot.name));
                why.push(holds);
                return Some(Verdict::new(
                    Decision::Protect,
                    Some(prot.name.clone()),
                    why,
                ));
            }
        }
        None
    }

    /// Judges one holder of one socket. Protections first, then the rules in
    /// order; the first matching rule decides.
    pub fn judge(&self, p: &Process, s: &Socket, ctx: &Context) -> Verdict {
        if let Some(v) = self.protection(p, s, ctx) {
            return v;
        }
        let holds = format!("holds {}", socket_words(s));
        let mut misses = Vec::new();
        for rule in &self.rules {
            match rule.matcher.check(p, s, ctx) {
                Ok(mut why) => {
                    why.push(holds);
                    let decision = match rule.action {
                        Action::Reap => Decision::Reap,
                        Action::Report => {
                            why.insert(
                                0,
                                "the matching rule only reports (action = \"report\")".into(),
                            );
                            Decision::Keep
                        }
                    };
                    return Verdict::new(decision, Some(rule.name.clone()), why);
                }
                Err(miss) => misses.push(format!("rule '{}' does not match: {miss}", rule.name)),
            }
        }
        if misses.is_empty() {
            misses.push("no rule to match it against".into());
        }
        misses.push(holds);
        Verdict::new(Decision::Keep, None, misses)
    }
}

impl Policy {
    /// Judges a container that a proxy (docker-proxy) publishes the port
    /// for: reaping it means stopping the container through the engine, never
    /// signalling the proxy. A rule matches when it matches a process that
    /// listens inside on the published port (`--match NAME` names the server,
    /// not the proxy); the network namespace condition is the published
    /// socket's, on the host. `protect` rules hold for those processes too.
    pub fn judge_container(&self, c: &Container, s: &Socket, ctx: &Context) -> Verdict {
        let holds = format!("publishes {}", socket_words(s));
        if let Some(verdict) = container_unjudgeable(c, &holds) {
            return verdict;
        }
        // The listeners' container is this one, as the engine named it.
        let mut known = ctx.clone();
        known.workload.containers.insert(c.id.clone(), c.clone());
        let ctx = &known;
        if let Some(verdict) = self.protect_container(c, s, ctx, &holds) {
            return verdict;
        }
        self.rule_container(c, s, ctx, holds)
    }

    /// A `protect` rule that matches a process listening inside.
    fn protect_container(
        &self,
        c: &Container,
        s: &Socket,
        ctx: &Context,
        holds: &str,
    ) -> Option<Verdict> {
        for p in &c.listeners {
            for prot in &self.protects {
                if let Ok(mut why) = prot.matcher.check(p, s, ctx) {
                    why.insert(0, format!("protected by rule '{}'", prot.name));
                    why.push(format!("inside container {}", c.words()));
                    why.push(holds.to_string());
                    return Some(Verdict::new(
                        Decision::Protect,
                        Some(prot.name.clone()),
                        why,
                    ));
                }
            }
        }
        None
    }

    /// The first rule that matches a process listening inside, or Keep with
    /// every miss.
    fn rule_container(&self, c: &Container, s: &Socket, ctx: &Context, holds: String) -> Verdict {
        let mut misses = Vec::new();
        for rule in &self.rules {
            for p in &c.listeners {
                match rule.matcher.check(p, s, ctx) {
                    Ok(why) => return container_match(rule, p, c, why, holds),
                    Err(miss) => misses.push(format!(
                        "rule '{}' does not match pid {} inside container {}: {miss}",
                        rule.name, p.pid, c.short_id
                    )),
                }
            }
        }
        if misses.is_empty() {
            misses.push("no rule to match it against".into());
        }
        misses.push(holds);
        Verdict::new(Decision::Keep, None, misses)
    }
}

/// A container reaper cannot judge by its listeners: a stale proxy, an
/// engine that did not answer, nothing listening inside.
fn container_unjudgeable(c: &Container, holds: &str) -> Option<Verdict> {
    let holds = holds.to_string();
    if c.stale {
        return Some(Verdict::new(
            Decision::Protect,
            None,
            vec![
                crate::holders::container::STALE_PROXY_FIX.to_string(),
                holds,
            ],
        ));
    }
    if c.id.is_empty() {
        return Some(Verdict::new(
            Decision::Keep,
            None,
            vec![
                "the container behind the proxy is unknown (the engine did not answer)".into(),
                holds,
            ],
        ));
    }
    if c.listeners.is_empty() {
        return Some(Verdict::new(
            Decision::Keep,
            None,
            vec![
                format!(
                    "no process inside container {} listens on the published port",
                    c.words()
                ),
                holds,
            ],
        ));
    }
    None
}

/// The verdict of a rule that matched process `p` inside container `c`.
fn container_match(
    rule: &Rule,
    p: &Process,
    c: &Container,
    mut why: Vec<String>,
    holds: String,
) -> Verdict {
    why.insert(
        0,
        format!(
            "pid {} {} listens inside container {}",
            p.pid,
            p.comm,
            c.words()
        ),
    );
    let decision = match rule.action {
        Action::Reap => {
            why.push(
                "reaping it stops the container through the engine (the proxy is never signalled)"
                    .into(),
            );
            Decision::Reap
        }
        Action::Report => {
            why.insert(
                0,
                "the matching rule only reports (action = \"report\")".into(),
            );
            Decision::Keep
        }
    };
    why.push(holds);
    Verdict::new(decision, Some(rule.name.clone()), why)
}

/// The protections no rule can lift.
fn builtin_protection(p: &Process, s: &Socket, ctx: &Context) -> Option<String> {
    if p.pid == 1 {
        return Some("pid 1 (init) is never signalled".into());
    }
    if p.pid == ctx.reaper_pid {
        return Some("this is reaper itself".into());
    }
    if let Some(i) = ctx.caller_chain.iter().position(|&c| c == p.pid) {
        return Some(if i == 0 {
            format!("pid {} is the caller (reaper's parent)", p.pid)
        } else {
            format!(
                "pid {} is an ancestor of the caller (reaper runs under it)",
                p.pid
            )
        });
    }
    if let Some(engine) = engine_program(p) {
        return Some(format!(
            "pid {} is {engine}, part of the container engine: never signalled (stop the container through the engine instead)",
            p.pid
        ));
    }
    if ctx.kernel_threads.contains(&p.pid) || (p.exe.is_none() && p.cmdline.is_empty()) {
        return Some(format!("pid {} ({}) is a kernel thread", p.pid, p.comm));
    }
    match p.netns {
        None => {
            return Some(format!(
                "the network namespace of pid {} is unreadable, so it cannot be shown to be {}",
                p.pid, ctx.netns
            ))
        }
        Some(n) if n != ctx.netns => {
            return Some(format!(
                "pid {} is in network namespace {n}, not {} where the port was asked about",
                p.pid, ctx.netns
            ))
        }
        Some(_) => {}
    }
    if s.netns != ctx.netns {
        return Some(format!(
            "the socket is in network namespace {}, not {} where the port was asked about",
            s.netns, ctx.netns
        ));
    }
    None
}

/// The container engine's own programs, never signalled: killing them
/// breaks every container's ports (the proxy) or the containers themselves.
pub const ENGINE_PROGRAMS: &[&str] = &[
    "docker-proxy",
    "dockerd",
    "containerd",
    "containerd-shim*",
    "runc",
    "conmon",
    "podman",
    "kubelet",
    "rootlesskit",
    "slirp4netns",
    "pasta",
];

/// Which engine program a process is (by exe or argv[0] basename; the comm
/// may be a truncation and is not trusted alone).
fn engine_program(p: &Process) -> Option<&'static str> {
    let exe = p.exe.as_deref().map(|e| basename(strip_deleted(e)));
    let argv0 = p.cmdline.first().map(|a| basename(a));
    ENGINE_PROGRAMS.iter().copied().find(|prog| {
        let g = Glob::new(prog);
        [exe, argv0].into_iter().flatten().any(|b| g.matches(b))
    })
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

//! policy -> **matcher**: the conditions a rule tests (exe, cmdline, comm
//! or name, user, age, orphaned, cgroup, netns, container, job) and, for
//! each, the words that say why it held or why not.

use std::fmt;
use std::time::Duration;

use regex::Regex;

use super::{
    age, basename, clock_words, deleted_note, job_words, parent_words, shorten, strip_deleted,
    user_words, Context, COMM_MAX,
};
use crate::holders::container::Container;
use crate::holders::{Process, Socket};
use crate::util::human_duration;

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
pub(super) fn glob_match(p: &[u8], t: &[u8]) -> bool {
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
    pub(super) fn check(
        &self,
        p: &Process,
        s: &Socket,
        ctx: &Context,
    ) -> Result<Vec<String>, String> {
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
        UserSpec::Name(n) => {
            p.user.as_deref() == Some(n.as_str()) || crate::users::uid_of(n) == Some(p.uid)
        }
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

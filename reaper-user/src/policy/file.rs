//! The policy file: TOML, validated strictly. An unknown key or a bad value
//! is an error that names the line, the key and what is allowed, because a
//! typo in a kill policy must never silently widen or narrow it.
//!
//! ```toml
//! [[protect]]
//! name = "databases"
//! match = { user = "postgres" }
//!
//! [[rule]]
//! name = "stale platform-server"
//! match = { exe = "/usr/local/bin/platform-server", orphaned = true, min_age = "30s" }
//! action = "reap"          # or "report"
//! tree = false             # true: stop its children that share the socket too
//! signal = "SIGTERM"       # the stop signal: "SIGINT", "INT", 2, ... (SIGKILL after the grace)
//! clients = false          # true: may judge a client's connection on the port too
//! ```

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::vocab::{Action, Signal};

use super::{
    ContainerMatch, ExePattern, Glob, JobState, Matcher, NetnsSpec, Policy, Protect, Rule,
    TextPattern, UserSpec,
};

/// A policy that cannot be used, with where and why.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyError {
    pub path: Option<PathBuf>,
    /// 1-based line in the file, when known.
    pub line: Option<usize>,
    pub message: String,
}

impl PolicyError {
    pub(super) fn with_path(mut self, path: &Path) -> PolicyError {
        self.path = Some(path.to_path_buf());
        self
    }
}

impl fmt::Display for PolicyError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.path, self.line) {
            (Some(p), Some(l)) => write!(f, "policy file {}, line {l}: ", p.display())?,
            (Some(p), None) => write!(f, "policy file {}: ", p.display())?,
            (None, Some(l)) => write!(f, "policy, line {l}: ")?,
            (None, None) => {}
        }
        f.write_str(&self.message)
    }
}

impl std::error::Error for PolicyError {}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct FileToml {
    /// Reserved so the format can change without guessing; only 1 exists.
    #[serde(default)]
    version: Option<Spanned<u32>>,
    #[serde(default)]
    rule: Vec<Spanned<RuleToml>>,
    #[serde(default)]
    protect: Vec<Spanned<ProtectToml>>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RuleToml {
    name: String,
    #[serde(rename = "match")]
    matcher: MatchToml,
    #[serde(default = "default_action")]
    action: Action,
    /// Children (or process-group members) sharing the socket that do not
    /// match on their own are stopped with the holder (`free --tree`).
    #[serde(default)]
    tree: bool,
    /// The stop signal, as a name ("SIGINT", "INT", "int") or a number (2):
    /// checked in [`parse`], where the error can name the rule.
    #[serde(default)]
    signal: Option<Spanned<toml::Value>>,
    /// The rule may judge a client's connection on the port too (a port the
    /// kernel gave to a connect()); without it clients are never signalled.
    #[serde(default)]
    clients: bool,
}

fn default_action() -> Action {
    Action::Reap
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ProtectToml {
    name: String,
    #[serde(rename = "match")]
    matcher: MatchToml,
}

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct MatchToml {
    name: Option<String>,
    comm: Option<String>,
    #[serde(default, deserialize_with = "de_exe")]
    exe: Option<ExePattern>,
    #[serde(default, deserialize_with = "de_cmdline")]
    cmdline: Option<TextPattern>,
    #[serde(default, deserialize_with = "de_user")]
    user: Option<UserSpec>,
    #[serde(default, deserialize_with = "de_duration")]
    min_age: Option<Duration>,
    orphaned: Option<bool>,
    cgroup: Option<String>,
    #[serde(default, deserialize_with = "de_container")]
    container: Option<ContainerMatch>,
    #[serde(default, deserialize_with = "de_job")]
    job: Option<JobState>,
    #[serde(default, deserialize_with = "de_netns")]
    netns: Option<NetnsSpec>,
}

fn de_exe<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ExePattern>, D::Error> {
    let s = String::deserialize(d)?;
    ExePattern::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_cmdline<'de, D: Deserializer<'de>>(d: D) -> Result<Option<TextPattern>, D::Error> {
    let s = String::deserialize(d)?;
    TextPattern::parse(&s)
        .map(Some)
        .map_err(serde::de::Error::custom)
}

fn de_duration<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
    let s = String::deserialize(d)?;
    crate::util::parse_duration(&s).map(Some).map_err(|_| {
        serde::de::Error::custom(format!(
            "min_age '{s}' is not a duration: write it as a string like \"30s\", \"5m\", \"1h30m\""
        ))
    })
}

#[derive(Deserialize)]
#[serde(untagged)]
enum NumOrText {
    Num(i64),
    Text(String),
}

fn de_user<'de, D: Deserializer<'de>>(d: D) -> Result<Option<UserSpec>, D::Error> {
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) => u32::try_from(n)
            .map(|u| Some(UserSpec::Uid(u)))
            .map_err(|_| {
                serde::de::Error::custom(format!(
                    "user {n} is not a uid: give a uid from 0 to 4294967295 or a user name"
                ))
            }),
        NumOrText::Text(t) if t.is_empty() => Err(serde::de::Error::custom(
            "user is empty: give a user name or a uid",
        )),
        NumOrText::Text(t) => Ok(Some(match t.parse::<u32>() {
            Ok(u) => UserSpec::Uid(u),
            Err(_) => UserSpec::Name(t),
        })),
    }
}

#[derive(Deserialize)]
#[serde(untagged)]
enum ContainerToml {
    Id(String),
    Table(ContainerTable),
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ContainerTable {
    id: Option<String>,
    name: Option<String>,
    image: Option<String>,
    label: Option<String>,
}

/// `container = "3f2a9c"` (id prefix) or `container = { name = "web-*",
/// image = "nginx", label = "com.docker.compose.project=shop" }`.
fn de_container<'de, D: Deserializer<'de>>(d: D) -> Result<Option<ContainerMatch>, D::Error> {
    let bad = |m: &str| serde::de::Error::custom(m);
    let table = match ContainerToml::deserialize(d).map_err(|_| {
        bad("container is a container id prefix (\"3f2a9c\") or a table { id, name, image, label }")
    })? {
        ContainerToml::Id(id) => ContainerTable {
            id: Some(id),
            name: None,
            image: None,
            label: None,
        },
        ContainerToml::Table(t) => t,
    };
    let glob = |what: &str, v: Option<String>| match v {
        Some(s) if s.is_empty() => Err(bad(&format!(
            "container {what} is empty: give a value or leave the key out"
        ))),
        other => Ok(other.as_deref().map(Glob::new)),
    };
    let label = match table.label {
        Some(l) if l.is_empty() || l.starts_with('=') => {
            return Err(bad(
                "container label is empty: give \"key\" or \"key=value\"",
            ))
        }
        Some(l) => Some(match l.split_once('=') {
            Some((k, v)) => (k.to_string(), Some(v.to_string())),
            None => (l, None),
        }),
        None => None,
    };
    let m = ContainerMatch {
        id: glob("id", table.id)?,
        name: glob("name", table.name)?,
        image: glob("image", table.image)?,
        label,
    };
    if m == ContainerMatch::default() {
        return Err(bad(
            "container is an empty table: give at least one of id, name, image, label",
        ));
    }
    Ok(Some(m))
}

fn de_job<'de, D: Deserializer<'de>>(d: D) -> Result<Option<JobState>, D::Error> {
    match String::deserialize(d)?.as_str() {
        "ended" => Ok(Some(JobState::Ended)),
        "current" => Ok(Some(JobState::Current)),
        "running" => Ok(Some(JobState::Running)),
        "other" => Ok(Some(JobState::Other)),
        other => Err(serde::de::Error::custom(format!(
            "job '{other}' is not known: use \"ended\" (no process of the holder's CI job is attached to a live runner), \"running\" (it is), \"current\" (reaper's own job, or the job `reaper job` acts for) or \"other\" (any job but that one)"
        ))),
    }
}

fn de_netns<'de, D: Deserializer<'de>>(d: D) -> Result<Option<NetnsSpec>, D::Error> {
    let bad = |what: &str| {
        serde::de::Error::custom(format!(
            "netns {what} is not allowed: use \"caller\" (reaper's own, the default), \"any\", or a namespace inode number"
        ))
    };
    match NumOrText::deserialize(d)? {
        NumOrText::Num(n) if n > 0 => Ok(Some(NetnsSpec::Inode(n as u64))),
        NumOrText::Num(n) => Err(bad(&n.to_string())),
        NumOrText::Text(t) => match t.as_str() {
            "caller" => Ok(Some(NetnsSpec::Caller)),
            "any" => Ok(Some(NetnsSpec::Any)),
            other => other
                .parse::<u64>()
                .map(|n| Some(NetnsSpec::Inode(n)))
                .map_err(|_| bad(&format!("'{other}'"))),
        },
    }
}

impl MatchToml {
    fn into_matcher(self) -> Matcher {
        Matcher {
            name: self.name,
            comm: self.comm,
            exe: self.exe,
            cmdline: self.cmdline,
            user: self.user,
            min_age: self.min_age,
            orphaned: self.orphaned,
            cgroup: self.cgroup.as_deref().map(Glob::new),
            container: self.container,
            job: self.job,
            netns: self.netns.unwrap_or_default(),
        }
    }
}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

pub(super) fn parse(text: &str) -> Result<Policy, PolicyError> {
    let at = |line: Option<usize>, message: String| PolicyError {
        path: None,
        line,
        message,
    };
    let file: FileToml = toml::from_str(text).map_err(|e| {
        let line = e.span().map(|s| line_of(text, s.start));
        at(line, toml_message(text, &e))
    })?;
    if let Some(v) = &file.version {
        if *v.get_ref() != 1 {
            return Err(at(
                Some(line_of(text, v.span().start)),
                format!(
                    "version {} is not known: this reaper reads version = 1",
                    v.get_ref()
                ),
            ));
        }
    }
    let mut policy = Policy::default();
    let mut names = std::collections::BTreeSet::new();
    for r in file.rule {
        let line = Some(line_of(text, r.span().start));
        let r = r.into_inner();
        check_name(&r.name, &mut names).map_err(|m| at(line, m))?;
        let m = r.matcher.into_matcher();
        if !m.names_a_program() && r.action == Action::Reap {
            return Err(at(
                line,
                format!(
                    "rule '{}' reaps without naming a program: its match needs at least one of exe, cmdline, name, comm, or a container name, image or label",
                    r.name
                ),
            ));
        }
        let signal = match r.signal {
            Some(sig) => Some(
                rule_signal(&r.name, sig.get_ref())
                    .map_err(|m| at(Some(line_of(text, sig.span().start)), m))?,
            ),
            None => None,
        };
        policy.rules.push(Rule {
            name: r.name,
            matcher: m,
            action: r.action,
            tree: r.tree,
            signal,
            clients: r.clients,
        });
    }
    for p in file.protect {
        let line = Some(line_of(text, p.span().start));
        let p = p.into_inner();
        check_name(&p.name, &mut names).map_err(|m| at(line, m))?;
        let m = p.matcher.into_matcher();
        if is_empty(&m) {
            return Err(at(
                line,
                format!("protect '{}' has an empty match: name at least one of exe, cmdline, name, comm, user, cgroup, container", p.name),
            ));
        }
        policy.protects.push(Protect {
            name: p.name,
            matcher: m,
        });
    }
    Ok(policy)
}

/// A rule's `signal`: a stop signal by name or number.
fn rule_signal(rule: &str, v: &toml::Value) -> Result<Signal, String> {
    let text = match v {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::String(t) => t.clone(),
        other => other.to_string(),
    };
    Signal::parse_stop(&text).map_err(|_| {
        format!(
            "rule '{rule}': signal '{text}' is not a signal reaper stops a holder with: use one of {} (a name with or without SIG, or its number)",
            Signal::stop_choices()
        )
    })
}

/// The parser's message; toml leaves it empty for some characters it cannot
/// place (a lone carriage return), and an error must never be blank.
pub(crate) fn toml_message(text: &str, e: &toml::de::Error) -> String {
    let m = e.message().trim();
    if !m.is_empty() {
        return m.to_string();
    }
    match e.span().and_then(|s| text.get(s)) {
        Some(bad) if !bad.is_empty() => format!(
            "unexpected {bad:?}: not valid TOML here (a stray control character, such as a lone carriage return?)"
        ),
        _ => "not valid TOML here".to_string(),
    }
}

fn check_name(name: &str, seen: &mut std::collections::BTreeSet<String>) -> Result<(), String> {
    if name.trim().is_empty() {
        return Err(
            "a rule's name is empty: name it, the name goes into every verdict and journal record"
                .into(),
        );
    }
    if !seen.insert(name.to_string()) {
        return Err(format!(
            "the name '{name}' is used twice: names must be unique, they say which rule decided"
        ));
    }
    Ok(())
}

fn is_empty(m: &Matcher) -> bool {
    !m.names_a_program()
        && m.user.is_none()
        && m.min_age.is_none()
        && m.orphaned.is_none()
        && m.cgroup.is_none()
        && m.container.is_none()
        && m.job.is_none()
        && m.netns == NetnsSpec::Caller
}

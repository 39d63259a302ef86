//! policy -> **rules**: a policy is rules and protections, from a file or
//! from `reaper free`'s flags; judging a holder (or a container a proxy
//! publishes for) runs the protections, then the rules in order.

use super::builtin::builtin_protection;
use super::{file, socket_words, Context, ExePattern, Matcher, PolicyError, TextPattern, Verdict};
use crate::holders::container::Container;
use crate::holders::Process;
use crate::holders::Socket;
use crate::vocab::{Action, Decision, Signal};

/// A rule: conditions and what to do when they hold.
#[derive(Clone, Debug)]
pub struct Rule {
    pub name: String,
    pub matcher: Matcher,
    pub action: Action,
    /// Tree semantics for what this rule reaps (see `reap::plan`): holders'
    /// children sharing the socket are stopped with them.
    pub tree: bool,
    /// The signal that stops what this rule reaps (SIGKILL follows after
    /// the grace). None: SIGTERM for a process, the container's own stop
    /// signal (its image's STOPSIGNAL) for a container.
    pub signal: Option<Signal>,
    /// The rule may also judge a client's connection on the port (one
    /// `connect()` was given): only a rule that says so explicitly, since
    /// signalling a client is rarely the fix (reserving the port is).
    pub clients: bool,
}

/// A protection: whatever it matches is never signalled.
#[derive(Clone, Debug)]
pub struct Protect {
    pub name: String,
    pub matcher: Matcher,
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
        let policy = file::parse(&text).map_err(|e| e.with_path(path))?;
        policy.check_users().map_err(|message| PolicyError {
            path: Some(path.to_path_buf()),
            line: None,
            message,
        })?;
        Ok(policy)
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
                signal: None,
                clients: false,
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

    /// Every rule stops with `signal` (`reaper free --signal`): it replaces
    /// the rules' own choice for this run.
    pub fn with_signal(mut self, signal: Signal) -> Policy {
        for r in &mut self.rules {
            r.signal = Some(signal);
        }
        self
    }

    /// The signal a rule chose for what the verdict reaps (None: the
    /// default, SIGTERM, or a container's own stop signal).
    pub fn signal_of(&self, v: &Verdict) -> Option<Signal> {
        if v.decision != Decision::Reap {
            return None;
        }
        let rule = v.rule.as_deref()?;
        self.rules
            .iter()
            .find(|r| r.name == rule)
            .and_then(|r| r.signal)
    }

    /// The rules that name clients (`clients = true`) with every
    /// protection: the policy a client's connection is judged by. None when
    /// no rule names clients.
    pub fn for_clients(&self) -> Option<Policy> {
        let rules: Vec<Rule> = self.rules.iter().filter(|r| r.clients).cloned().collect();
        (!rules.is_empty()).then(|| Policy {
            rules,
            protects: self.protects.clone(),
        })
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

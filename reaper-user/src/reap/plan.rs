//! holders (sock_diag + /proc) -> conflict -> policy -> **plan** -> reap
//! (pidfd) -> journal.
//!
//! The one reaping decision of reaper: given the holders of one port and a
//! policy, what will be signalled, in what order, and why. `reaper free`
//! (real run and `--dry-run`) and the daemon both build a [`Plan`] and hand
//! it to [`execute`], so a preview can never disagree with the act and the
//! daemon can never signal what `free` would refuse.
//!
//! The rules the plan enforces:
//! - Nothing is signalled unless every process holding a blocking socket of
//!   the port is judged `reap` and every blocking socket has a process that
//!   could be judged ([`Plan::refusal`]): killing some holders while another
//!   keeps the port would do harm and free nothing.
//! - A process sharing the socket with an ancestor (or process-group leader)
//!   that holds it too is in that holder's tree. If it matches a rule on its
//!   own (an nginx worker), it is judged on its own. If not, it is stopped
//!   with its tree root only under tree semantics (`free --tree`, or a rule's
//!   `tree = true`), and never when a protection covers it.
//! - Execution signals the tree roots first and gives the rest the grace to
//!   exit with them (most masters stop their workers), then signals what
//!   remains, then SIGKILLs what outlives its grace.
//! - Each target is stopped with the signal its rule names (`signal =
//!   "SIGINT"`; `free --signal` for every rule of a run), else SIGTERM; a
//!   container with the rule's signal, else its own (the image's
//!   STOPSIGNAL) through the engine.

use std::collections::{BTreeMap, BTreeSet};
use std::os::fd::OwnedFd;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::bindmodel::{self, facts as bindfacts, Activity, Existing};
use crate::holders::container::{self, Container, Via};
use crate::holders::{Holding, Process, Socket};
use crate::journal::ContainerStop;
use crate::policy::{socket_words, Context, Policy, Verdict};
use crate::vocab::{Decision, Proto, Signal, SocketState};

use super::{BindProbe, Identity, ProcStat, SignalSent, StopOptions, TargetOutcome, TargetReport};

/// Why a process is in the plan.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Role {
    /// A tree root: judged on its own, signalled in the first wave.
    Holder,
    /// Shares a socket with `of`, an ancestor or its process-group leader
    /// holding the same socket; signalled after the roots had their grace.
    Shares { of: u32, how: String },
}

/// One process holding the port, with its verdict.
#[derive(Clone, Debug, Serialize)]
pub struct Judged {
    pub process: Process,
    /// The sockets on the port it holds.
    pub sockets: Vec<Socket>,
    pub role: Role,
    pub verdict: Verdict,
    /// The signal that stops it (SIGKILL follows after the grace), when it
    /// is reaped: its rule's `signal`, else SIGTERM.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
}

/// The stop signal of a process the verdict reaps (see [`Judged::signal`]).
pub fn stop_signal(policy: &Policy, verdict: &Verdict) -> Option<Signal> {
    (verdict.decision == Decision::Reap).then(|| policy.signal_of(verdict).unwrap_or(Signal::Term))
}

impl Judged {
    /// The wave it is signalled in: tree roots first.
    pub fn wave(&self) -> usize {
        match self.role {
            Role::Holder => 0,
            Role::Shares { .. } => 1,
        }
    }
}

/// A socket with no process: TIME_WAIT, or an owner that could not be read.
#[derive(Clone, Debug, Serialize)]
pub struct Unowned {
    pub socket: String,
    pub state: SocketState,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
    /// Why no process could be read ("unreadable", "EPERM"), for a socket
    /// that has no TIME_WAIT excuse.
    #[serde(skip)]
    pub cause: Option<String>,
}

/// Where tree semantics come from.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Tree {
    /// `reaper free`: `--tree` given (true) or not; a policy rule's
    /// `tree = true` counts too.
    Flag(bool),
    /// The daemon: each rule's `tree` key decides for the trees it reaps.
    Rules,
}

/// The holders of the port and what to do, in signalling order (tree roots
/// first).
#[derive(Clone, Debug, Default)]
pub struct Plan {
    pub judged: Vec<Judged>,
    pub unowned: Vec<Unowned>,
    /// Sockets whose holders are judged (LISTEN for TCP, every UDP socket).
    pub blocking: Vec<Socket>,
    /// Containers that publish the port through the engine's proxy, with
    /// their verdicts: reaping one stops the container through the engine.
    pub containers: Vec<JudgedContainer>,
}

/// A container behind a proxy-held port, and its verdict. When it is
/// reaped, its proxies are left out of `judged` (the engine stops them with
/// the container; they are never signalled).
#[derive(Clone, Debug, Serialize)]
pub struct JudgedContainer {
    pub container: Container,
    /// The published socket on the host (the first, when v4 and v6).
    pub socket: Socket,
    /// The engine's proxy processes that hold the port for it.
    pub proxies: Vec<u32>,
    pub verdict: Verdict,
    /// The signal the engine stops it with, when a rule (or `free
    /// --signal`) names one; None: the container's own stop signal (the
    /// image's STOPSIGNAL, else SIGTERM).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub signal: Option<Signal>,
}

impl Plan {
    /// Builds the plan from a scan: discovers kernel threads among the
    /// holders (into `ctx`) and reads process groups from /proc.
    pub fn build(holdings: &[Holding], policy: &Policy, ctx: &mut Context, tree: Tree) -> Plan {
        discover_kernel_threads(holdings, ctx);
        let pgrp = |pid: u32| ProcStat::read(pid).ok().map(|s| s.pgrp);
        // The sockets' options, read from their holders (pidfd_getfd).
        let facts: Vec<Existing> = holdings.iter().map(bindfacts::of_holding).collect();
        Plan::judge_facts(holdings, &facts, policy, ctx, tree, &pgrp)
    }

    /// Judges every holder of the port. Pure apart from `pgrp_of` (so the
    /// tree logic is unit-tested with made-up processes).
    pub fn judge(
        holdings: &[Holding],
        policy: &Policy,
        ctx: &Context,
        tree: Tree,
        pgrp_of: &dyn Fn(u32) -> Option<u32>,
    ) -> Plan {
        let facts: Vec<Existing> = holdings
            .iter()
            .map(|h| bindfacts::from_socket(&h.socket))
            .collect();
        Plan::judge_facts(holdings, &facts, policy, ctx, tree, pgrp_of)
    }

    /// [`Plan::judge`] with the facts the bind model reads of each holding
    /// (same order): which sockets block the next server's bind is the
    /// model's answer (`bindmodel::blocks_next_server`); a socket whose
    /// options are not known counts as blocking.
    pub fn judge_facts(
        holdings: &[Holding],
        facts: &[Existing],
        policy: &Policy,
        ctx: &Context,
        tree: Tree,
        pgrp_of: &dyn Fn(u32) -> Option<u32>,
    ) -> Plan {
        let mut out = Plan::default();
        // pid -> (process, sockets, role); the first socket decides the role.
        let mut by_pid: ByPid = BTreeMap::new();
        for (h, e) in holdings.iter().zip(facts) {
            if e.activity == Activity::TimeWait {
                out.unowned.push(time_wait(&h.socket));
                continue;
            }
            if bindmodel::client_connection(e, facts) {
                // A client's port: never signalled, unless a rule names
                // clients (`clients = true`) and judges every holder reap.
                out.blocking.push(h.socket.clone());
                if !out.judge_client(h, policy, ctx) {
                    out.unowned.push(client(h));
                }
                continue;
            }
            if bindmodel::blocks_next_server(e) == Some(false) {
                continue;
            }
            out.blocking.push(h.socket.clone());
            if h.processes.is_empty() {
                out.unowned.push(unreadable(h));
                continue;
            }
            // A port a proxy holds for a container: the container is judged;
            // when it is reaped, the proxies go with it, not in `judged`.
            let reaped_proxies = match h.container.as_ref().filter(|c| c.via == Some(Via::Proxy)) {
                Some(c) => out.judge_container(h, c, policy, ctx),
                None => None,
            };
            let pids: BTreeSet<u32> = h.processes.iter().map(|p| p.pid).collect();
            for p in &h.processes {
                if reaped_proxies
                    .as_ref()
                    .is_some_and(|px| px.contains(&p.pid))
                {
                    continue;
                }
                let role = role_of(p, &pids, pgrp_of);
                let entry = by_pid
                    .entry(p.pid)
                    .or_insert_with(|| (p.clone(), Vec::new(), role));
                entry.1.push(h.socket.clone());
            }
        }
        out.judge_processes(by_pid, policy, ctx, tree);
        out
    }

    /// A client's connection judged by the rules that name clients
    /// (`clients = true`) and the protections: its holders are judged only
    /// when every one of them is to be reaped; false (nothing judged) when
    /// no such rule matches them all, so the plan refuses in the client's
    /// words.
    fn judge_client(&mut self, h: &Holding, policy: &Policy, ctx: &Context) -> bool {
        let Some(clients) = policy.for_clients() else {
            return false;
        };
        if h.processes.is_empty() {
            return false;
        }
        let verdicts: Vec<Verdict> = h
            .processes
            .iter()
            .map(|p| {
                let mut v = clients.judge(p, &h.socket, ctx);
                v.reasons
                    .push("a client's connection, which the rule names (clients = true)".into());
                v
            })
            .collect();
        if verdicts.iter().any(|v| v.decision != Decision::Reap) {
            return false;
        }
        for (p, verdict) in h.processes.iter().zip(verdicts) {
            if let Some(j) = self.judged.iter_mut().find(|j| j.process.pid == p.pid) {
                j.sockets.push(h.socket.clone());
                continue;
            }
            self.judged.push(Judged {
                process: p.clone(),
                sockets: vec![h.socket.clone()],
                role: Role::Holder,
                signal: stop_signal(&clients, &verdict),
                verdict,
            });
        }
        true
    }

    /// Judges the container a proxy publishes the port for (once per
    /// container); its proxies when it is to be reaped.
    fn judge_container(
        &mut self,
        h: &Holding,
        c: &Container,
        policy: &Policy,
        ctx: &Context,
    ) -> Option<Vec<u32>> {
        let proxies: Vec<u32> = h
            .processes
            .iter()
            .filter(|p| container::is_proxy(p))
            .map(|p| p.pid)
            .collect();
        let known = self
            .containers
            .iter_mut()
            .find(|j| !c.id.is_empty() && j.container.id == c.id);
        let j = match known {
            Some(j) => {
                j.proxies.extend(proxies);
                j
            }
            None => {
                let verdict = policy.judge_container(c, &h.socket, ctx);
                self.containers.push(JudgedContainer {
                    container: c.clone(),
                    socket: h.socket.clone(),
                    proxies,
                    signal: policy.signal_of(&verdict),
                    verdict,
                });
                self.containers.last_mut().expect("just pushed")
            }
        };
        (j.verdict.decision == Decision::Reap).then(|| j.proxies.clone())
    }

    /// Verdicts for the processes, holders first, then the sharers.
    fn judge_processes(&mut self, by_pid: ByPid, policy: &Policy, ctx: &Context, tree: Tree) {
        // Roots first, so sharers can point at their root's verdict.
        let mut verdicts: BTreeMap<u32, Verdict> = BTreeMap::new();
        for (pid, (p, socks, role)) in &by_pid {
            if *role == Role::Holder {
                verdicts.insert(*pid, judge_all(policy, p, socks, ctx));
            }
        }
        let mut sharers = Vec::new();
        for (pid, (p, socks, role)) in by_pid {
            let verdict = match &role {
                Role::Holder => verdicts[&pid].clone(),
                Role::Shares { of, how } => {
                    sharer_verdict(policy, ctx, tree, &p, &socks, *of, how, verdicts.get(of))
                }
            };
            let j = Judged {
                process: p,
                sockets: socks,
                role,
                signal: stop_signal(policy, &verdict),
                verdict,
            };
            if j.role == Role::Holder {
                self.judged.push(j);
            } else {
                sharers.push(j);
            }
        }
        self.judged.extend(sharers);
    }

    /// The processes the policy does not let reaper signal.
    pub fn refused(&self) -> Vec<&Judged> {
        self.judged
            .iter()
            .filter(|j| j.verdict.decision != Decision::Reap)
            .collect()
    }

    /// Blocking sockets without a process reaper could judge.
    pub fn unjudgeable(&self) -> Vec<&Unowned> {
        self.unowned
            .iter()
            .filter(|u| u.state != SocketState::TimeWait)
            .collect()
    }

    /// Why nothing may be signalled, in words to follow "held by" ("pid 7
    /// (x) which the policy keeps: ...; and by 127.0.0.1:80/tcp, a socket
    /// whose process reaper cannot read (EPERM)"); None when every holder
    /// is judged `reap`.
    pub fn refusal(&self) -> Option<String> {
        let mut parts: Vec<String> = self
            .refused()
            .iter()
            .map(|j| {
                let what = match j.verdict.decision {
                    Decision::Protect => "protects",
                    _ => "keeps",
                };
                let behind = self
                    .containers
                    .iter()
                    .find(|c| c.proxies.contains(&j.process.pid))
                    .map(|c| {
                        format!(
                            " (it publishes the port for container {}, which the policy does not reap: {})",
                            c.container.words(),
                            c.verdict.reasons[0]
                        )
                    })
                    .unwrap_or_default();
                format!(
                    "pid {} ({}) which the policy {what}: {}{behind}",
                    j.process.pid, j.process.comm, j.verdict.reasons[0]
                )
            })
            .collect();
        parts.extend(self.unjudgeable().iter().map(|u| match u.cause.as_deref() {
            Some("client") => format!("{}, {}", u.socket, u.reason),
            cause => format!(
                "{}, a socket whose process reaper cannot read ({})",
                u.socket,
                cause.unwrap_or("unknown")
            ),
        }));
        (!parts.is_empty()).then(|| parts.join("; and by "))
    }

    /// The containers [`execute`] stops through the engine; empty when the
    /// plan refuses.
    pub fn container_targets(&self) -> Vec<&JudgedContainer> {
        if self.refusal().is_some() {
            return Vec::new();
        }
        self.containers
            .iter()
            .filter(|c| c.verdict.decision == Decision::Reap)
            .collect()
    }

    /// The processes [`execute`] signals, in order; empty when the plan
    /// refuses.
    pub fn targets(&self) -> Vec<&Judged> {
        if self.refusal().is_some() {
            return Vec::new();
        }
        self.judged.iter().collect()
    }

    /// What a run would do, in words: the dry run's message.
    pub fn steps_words(&self, grace: Duration) -> String {
        let grace = crate::util::human_duration(grace);
        let stops: Vec<String> = self
            .container_targets()
            .iter()
            .map(|c| {
                let how = match c.signal {
                    Some(sig) => format!("with {sig}"),
                    None => {
                        "with its own stop signal (its image's STOPSIGNAL, else SIGTERM)".into()
                    }
                };
                format!("container {} {how}", c.container.words())
            })
            .collect();
        let stop_words = format!(
            "would stop {} through the engine (SIGKILL after {grace}; kept as exited, not removed)",
            stops.join(", ")
        );
        let wave = |w: usize| -> Vec<&Judged> {
            self.targets()
                .into_iter()
                .filter(|j| j.wave() == w)
                .collect()
        };
        let (roots, rest) = (wave(0), wave(1));
        if roots.is_empty() && rest.is_empty() {
            return stop_words;
        }
        let mut s = if stops.is_empty() {
            String::new()
        } else {
            format!("{stop_words}, then ")
        };
        s.push_str(&format!("would send {}", sends_words(&roots)));
        if !rest.is_empty() {
            let pids: Vec<String> = rest.iter().map(|j| j.process.pid.to_string()).collect();
            let mut sigs: Vec<Signal> = rest.iter().filter_map(|j| j.signal).collect();
            sigs.dedup();
            let sig = match sigs.as_slice() {
                [one] => one.to_string(),
                _ => "its stop signal".to_string(),
            };
            s.push_str(&format!(
                ", give pid {} up to {grace} to exit with {}, then send {sig} to those still running",
                pids.join(", "),
                if roots.len() == 1 { "it" } else { "them" }
            ));
        }
        s.push_str(&format!(
            ", then SIGKILL after {grace} to any still running"
        ));
        s
    }

    /// What to bind to test the port: what the holders had (same family,
    /// address, dual-stack), else the wildcards. A probe for a socket in
    /// another namespace carries an fd on that namespace, opened now, while
    /// a holder lives.
    pub fn probes(&self, ctx: &Context, proto: Proto, port: u16) -> Vec<BindProbe> {
        let mut seen = BTreeSet::new();
        let mut probes = Vec::new();
        for s in &self.blocking {
            if !seen.insert((s.addr, s.dual_stack, s.netns)) {
                continue;
            }
            let mut p = BindProbe::new(proto, s.addr, port, s.dual_stack);
            if s.netns != ctx.caller_netns {
                p.netns = self
                    .judged
                    .iter()
                    .filter(|j| j.process.netns == Some(s.netns))
                    .find_map(|j| open_netns(j.process.pid));
            }
            probes.push(p);
        }
        if probes.is_empty() {
            probes = BindProbe::wildcards(proto, port);
        }
        probes
    }
}

/// "SIGINT to pid 10, 11 and SIGTERM to pid 12": who gets which stop
/// signal, in the plan's order.
fn sends_words(targets: &[&Judged]) -> String {
    let mut by: Vec<(Signal, Vec<String>)> = Vec::new();
    for j in targets {
        let sig = j.signal.unwrap_or(Signal::Term);
        let pid = j.process.pid.to_string();
        match by.iter_mut().find(|(s, _)| *s == sig) {
            Some((_, pids)) => pids.push(pid),
            None => by.push((sig, vec![pid])),
        }
    }
    by.iter()
        .map(|(sig, pids)| format!("{sig} to pid {}", pids.join(", ")))
        .collect::<Vec<_>>()
        .join(" and ")
}

/// pid -> (process, the sockets it holds, its role), while judging.
type ByPid = BTreeMap<u32, (Process, Vec<Socket>, Role)>;

/// A TIME_WAIT socket: no process, only the kernel's timer.
fn time_wait(socket: &Socket) -> Unowned {
    Unowned {
        socket: socket_words(socket),
        state: socket.state,
        reason: "TIME_WAIT: the kernel keeps a closed connection's port for up to 60 s; no process holds it".into(),
        expires_in_ms: socket.timer_ms,
        cause: None,
    }
}

/// A client's connection on the port: its words say what happened and the
/// fix, since signalling a client is never the answer.
fn client(h: &Holding) -> Unowned {
    let who = h
        .processes
        .first()
        .map(|p| format!("pid {} {}", p.pid, p.comm))
        .unwrap_or_else(|| "no readable process".into());
    let peer = h
        .socket
        .peer
        .map(|(a, p)| match a {
            std::net::IpAddr::V6(a) => format!(" to [{a}]:{p}"),
            std::net::IpAddr::V4(a) => format!(" to {a}:{p}"),
        })
        .unwrap_or_default();
    Unowned {
        socket: socket_words(&h.socket),
        state: h.socket.state,
        reason: format!(
            "a client's connection ({who}{peer}): the kernel picked this port for an outgoing connection because it lies in net.ipv4.ip_local_port_range (or the client bound it); reaper never signals a client. Fix: add the port to net.ipv4.ip_local_reserved_ports so connect() never picks it"
        ),
        expires_in_ms: None,
        cause: Some("client".into()),
    }
}

/// A blocking socket whose holder reaper could not read.
fn unreadable(h: &Holding) -> Unowned {
    let cause = h.unowned_reason.map_or("unknown", |r| r.as_str());
    Unowned {
        socket: socket_words(&h.socket),
        state: h.socket.state,
        reason: format!(
            "reaper cannot read the process that holds it ({cause}), and cannot judge what it cannot see"
        ),
        expires_in_ms: None,
        cause: Some(cause.to_string()),
    }
}

/// The nearest ancestor that holds the same socket makes a process a
/// sharer; failing that, a process-group leader that holds it.
fn role_of(p: &Process, pids: &BTreeSet<u32>, pgrp_of: &dyn Fn(u32) -> Option<u32>) -> Role {
    let parent = p
        .ancestors
        .iter()
        .map(|(a, _)| *a)
        .find(|a| pids.contains(a));
    match parent {
        Some(a) => Role::Shares {
            of: a,
            how: if a == p.ppid {
                "a child".into()
            } else {
                "a descendant".into()
            },
        },
        None => match pgrp_of(p.pid) {
            Some(g) if g != p.pid && pids.contains(&g) => Role::Shares {
                of: g,
                how: "in its process group".into(),
            },
            _ => Role::Holder,
        },
    }
}

/// A sharer that matches a rule on its own is judged on its own; otherwise
/// it follows its root only under tree semantics. Protections hold either way.
#[allow(clippy::too_many_arguments)]
fn sharer_verdict(
    policy: &Policy,
    ctx: &Context,
    tree: Tree,
    p: &Process,
    socks: &[Socket],
    of: u32,
    how: &str,
    root: Option<&Verdict>,
) -> Verdict {
    let pid = p.pid;
    let share = format!(
        "socket {} also held by pid {pid}, {how} of pid {of}",
        socket_words(&socks[0])
    );
    let mut own = judge_all(policy, p, socks, ctx);
    if own.decision == Decision::Reap {
        own.reasons
            .push(format!("{share}; it matches on its own and is judged so"));
        return own;
    }
    if own.decision == Decision::Protect || policy.protection(p, &socks[0], ctx).is_some() {
        return own;
    }
    let root_reaped = root.is_some_and(|v| v.decision == Decision::Reap);
    let rule = root.and_then(|v| v.rule.clone());
    let rule_tree = rule
        .as_deref()
        .is_some_and(|r| policy.rules.iter().any(|x| x.name == r && x.tree));
    let on = rule_tree || tree == Tree::Flag(true);
    if !on {
        let hint = match (tree, rule.as_deref()) {
            (Tree::Flag(_), _) => "use --tree to stop it too".to_string(),
            (Tree::Rules, Some(r)) => format!("set tree = true in rule '{r}' to stop it too"),
            (Tree::Rules, None) => "a rule with tree = true would stop it too".to_string(),
        };
        return Verdict::new(Decision::Keep, None, vec![format!("{share}; {hint}")]);
    }
    if root_reaped {
        let by = if rule_tree && tree != Tree::Flag(true) {
            format!("rule '{}' has tree = true", rule.as_deref().unwrap_or(""))
        } else {
            "--tree".to_string()
        };
        Verdict::new(
            Decision::Reap,
            rule,
            vec![format!("{share}, which is reaped; {by} stops it too")],
        )
    } else {
        Verdict::new(
            Decision::Keep,
            None,
            vec![format!("{share}, which is not reaped")],
        )
    }
}

/// A process holding several sockets on the port (v4 and v6) is reaped only
/// if every one of them says so; the first non-reap verdict is the answer.
fn judge_all(policy: &Policy, p: &Process, socks: &[Socket], ctx: &Context) -> Verdict {
    let mut first: Option<Verdict> = None;
    for s in socks {
        let v = policy.judge(p, s, ctx);
        if v.decision != Decision::Reap {
            return v;
        }
        match &mut first {
            None => first = Some(v),
            Some(f) => f.reasons.push(format!("holds {}", socket_words(s))),
        }
    }
    first.expect("a holder has at least one socket")
}

/// Kernel threads (PF_KTHREAD) among the holders go into `ctx`, where the
/// built-in protection finds them.
pub fn discover_kernel_threads(holdings: &[Holding], ctx: &mut Context) {
    for h in holdings {
        for p in &h.processes {
            if ProcStat::read(p.pid).is_ok_and(|s| s.is_kernel_thread()) {
                ctx.kernel_threads.insert(p.pid);
            }
        }
    }
}

fn open_netns(pid: u32) -> Option<OwnedFd> {
    crate::proc::open(pid, "ns/net").ok().map(OwnedFd::from)
}

/// The journal's outcome word for a container stop: `freed`, `still_held`
/// (stopped, the port still held), `identity_changed` (the engine's
/// container is not the one judged), `gone`, or `failed`.
pub fn container_outcome(stop: &ContainerStop, port_free: bool) -> &'static str {
    match (&stop.error, stop.stopped(), port_free) {
        (None, true, true) => "freed",
        (None, true, false) => "still_held",
        (Some(e), _, _) if e.contains("changed since it was judged") => "identity_changed",
        (Some(e), _, _) if e.contains("is gone since it was judged") => "gone",
        _ => "failed",
    }
}

/// What executing a plan did.
#[derive(Clone, Debug)]
pub struct Execution {
    /// One per target of the plan, in the plan's order.
    pub targets: Vec<TargetReport>,
    /// When a probe first bound the port again.
    pub free_at: Option<Instant>,
    /// The last probe's error when it never bound.
    pub last_error: Option<String>,
    /// One per container target, in the plan's order.
    pub containers: Vec<ContainerStop>,
}

impl Execution {
    /// Every target exited (or was gone before a signal), and every
    /// container target stopped.
    pub fn all_gone(&self) -> bool {
        self.targets.iter().all(|t| {
            matches!(
                t.outcome,
                TargetOutcome::Exited { .. } | TargetOutcome::Gone
            )
        }) && self.containers.iter().all(|c| c.stopped())
    }
}

/// Executes a plan: every target's pidfd opened and identity re-checked
/// before the first signal, its stop signal (SIGTERM unless its rule
/// names another) to the tree roots, their grace for the whole tree, the
/// stop signal to what remains, SIGKILL after the grace, then the
/// bind probe (until `opts.deadline` when every target is gone, one probe
/// otherwise). `on_signal` sees each signal as it is sent (the daemon
/// records them for a stop in the middle). Err (nothing signalled) when
/// the plan refuses.
pub fn execute(
    plan: &Plan,
    probes: &[BindProbe],
    opts: &StopOptions,
    on_signal: &mut dyn FnMut(&SignalSent),
) -> Result<Execution, String> {
    if let Some(why) = plan.refusal() {
        return Err(why);
    }
    // Containers first: the engine re-checks each (same id, image, still
    // running) and stops it with the grace; nothing of it is signalled here.
    let (containers, began): (Vec<ContainerStop>, Vec<Instant>) = plan
        .container_targets()
        .iter()
        .map(|c| {
            let began = Instant::now();
            (
                super::container::stop_judged(&c.container, opts.grace, c.signal),
                began,
            )
        })
        .unzip();
    let targets = plan.targets();
    let ids: Vec<(Identity, usize, Signal)> = targets
        .iter()
        .map(|j| {
            (
                Identity::of(&j.process),
                j.wave(),
                j.signal.unwrap_or(Signal::Term),
            )
        })
        .collect();
    let reports = super::stop_in_waves(&ids, opts, on_signal);
    let mut ex = Execution {
        targets: reports,
        free_at: None,
        last_error: None,
        containers,
    };
    // Wait for the port only when every target is gone; otherwise one probe
    // says whether it happens to be free anyway.
    let until = if ex.all_gone() {
        opts.deadline
    } else {
        Instant::now()
    };
    let w = super::wait_bindable(probes, until);
    ex.free_at = w.free_at;
    ex.last_error = w.last_error;
    // Each stopped container's record says when the port bound again,
    // from the start of its stop.
    for (stop, began) in ex.containers.iter_mut().zip(began) {
        if stop.stopped() {
            stop.port_free_at_ms = w
                .free_at
                .map(|t| t.saturating_duration_since(began).as_millis() as u64);
        }
    }
    Ok(ex)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::policy::FlagRule;
    use crate::vocab::Family;

    const NS: u64 = 4026531833;

    fn proc_(pid: u32, ppid: u32, ancestors: &[u32]) -> Process {
        Process {
            pid,
            ppid,
            comm: "platform-server".into(),
            exe: Some("/opt/platform-server".into()),
            cmdline: vec!["/opt/platform-server".into()],
            start_ticks: 1,
            started_at: "2026-11-28T12:00:00Z".into(),
            uid: 0,
            user: Some("root".into()),
            cgroup: None,
            container: None,
            netns: Some(NS),
            ancestors: ancestors.iter().map(|&a| (a, "x".into())).collect(),
            orphaned: false,
            job: None,
        }
    }

    fn other(pid: u32, ppid: u32, ancestors: &[u32]) -> Process {
        let mut p = proc_(pid, ppid, ancestors);
        p.comm = "helper".into();
        p.exe = Some("/usr/bin/helper".into());
        p.cmdline = vec!["helper".into()];
        p
    }

    fn holding(state: &str, procs: Vec<Process>) -> Holding {
        Holding {
            socket: Socket {
                netns: NS,
                proto: Proto::Tcp,
                family: Family::Ipv4,
                addr: "127.0.0.1".parse().unwrap(),
                port: 8080,
                peer: None,
                state: SocketState::from_word(state).unwrap(),
                inode: 7,
                cookie: 0,
                uid: 0,
                dual_stack: false,
                timer_ms: Some(59_000),
            },
            unowned_reason: procs
                .is_empty()
                .then_some(crate::vocab::UnownedReason::TimeWait),
            processes: procs,
            container: None,
        }
    }

    fn ctx() -> Context {
        Context {
            reaper_pid: 9999,
            caller_chain: vec![9998, 1],
            caller_netns: NS,
            netns: NS,
            now: chrono::Utc::now(),
            kernel_threads: BTreeSet::new(),
            workload: Default::default(),
        }
    }

    fn policy() -> Policy {
        Policy::from_flags(&FlagRule {
            name: Some("platform-server".into()),
            ..Default::default()
        })
        .unwrap()
    }

    const NO_PGRP: &dyn Fn(u32) -> Option<u32> = &|_| None;

    #[test]
    fn a_child_of_another_program_sharing_the_socket_needs_tree() {
        let h = vec![holding(
            "LISTEN",
            vec![proc_(100, 1, &[1]), other(101, 100, &[100, 1])],
        )];
        let p = Plan::judge(&h, &policy(), &ctx(), Tree::Flag(false), NO_PGRP);
        assert_eq!(p.judged.len(), 2);
        assert_eq!(p.judged[0].verdict.decision, Decision::Reap);
        assert_eq!(p.judged[1].verdict.decision, Decision::Keep);
        assert_eq!(
            p.judged[1].verdict.reasons[0],
            "socket 127.0.0.1:8080/tcp also held by pid 101, a child of pid 100; use --tree to stop it too"
        );
        assert_eq!(p.refused().len(), 1);
        assert!(p.targets().is_empty(), "a refusing plan has no targets");
        assert!(p
            .refusal()
            .unwrap()
            .starts_with("pid 101 (helper) which the policy keeps"));

        let p = Plan::judge(&h, &policy(), &ctx(), Tree::Flag(true), NO_PGRP);
        assert!(p.refusal().is_none());
        assert_eq!(
            p.judged[1].role,
            Role::Shares {
                of: 100,
                how: "a child".into()
            }
        );
        assert_eq!(
            p.judged[1].verdict.rule.as_deref(),
            Some(crate::policy::FLAG_RULE)
        );
        assert_eq!(
            p.targets().iter().map(|j| j.wave()).collect::<Vec<_>>(),
            [0, 1]
        );
    }

    #[test]
    fn the_daemon_takes_tree_from_the_rule() {
        let h = vec![holding(
            "LISTEN",
            vec![proc_(100, 1, &[1]), other(101, 100, &[100, 1])],
        )];
        let mut pol = policy();
        let p = Plan::judge(&h, &pol, &ctx(), Tree::Rules, NO_PGRP);
        assert!(p.judged[1].verdict.reasons[0]
            .ends_with("set tree = true in rule 'command line' to stop it too"));
        pol.rules[0].tree = true;
        let p = Plan::judge(&h, &pol, &ctx(), Tree::Rules, NO_PGRP);
        assert!(p.refusal().is_none());
        assert!(p.judged[1].verdict.reasons[0].contains("rule 'command line' has tree = true"));
    }

    #[test]
    fn a_worker_that_matches_on_its_own_needs_no_tree() {
        // A master and two workers of the same program, the workers listed
        // first: the plan still signals the master first.
        let h = vec![holding(
            "LISTEN",
            vec![
                proc_(102, 100, &[100, 1]),
                proc_(101, 100, &[100, 1]),
                proc_(100, 1, &[1]),
            ],
        )];
        let p = Plan::judge(&h, &policy(), &ctx(), Tree::Flag(false), NO_PGRP);
        assert!(p.refusal().is_none(), "{:?}", p.refused());
        let order: Vec<u32> = p.targets().iter().map(|j| j.process.pid).collect();
        assert_eq!(order, [100, 101, 102]);
        assert!(p.judged[1]
            .verdict
            .reasons
            .last()
            .unwrap()
            .ends_with("a child of pid 100; it matches on its own and is judged so"));
        let words = p.steps_words(Duration::from_secs(3));
        assert!(
            words.starts_with(
                "would send SIGTERM to pid 100, give pid 101, 102 up to 3.0 s to exit with it"
            ),
            "{words}"
        );
    }

    #[test]
    fn each_target_carries_its_rules_stop_signal_and_the_dry_run_says_it() {
        let pol = Policy::from_toml_str(
            "[[rule]]\nname = 'pg'\nmatch = { exe = '/opt/platform-server' }\nsignal = 'INT'\ntree = true\n[[rule]]\nname = 'helper'\nmatch = { exe = '/usr/bin/helper' }\n",
        )
        .unwrap();
        // 100 matches 'pg'; 101, its child, is judged on its own ('helper',
        // no signal: SIGTERM); 102 follows its root 100 under tree = true.
        let mut stray = other(102, 100, &[100, 1]);
        stray.exe = Some("/usr/bin/stray".into());
        stray.cmdline = vec!["stray".into()];
        let h = vec![holding(
            "LISTEN",
            vec![proc_(100, 1, &[1]), other(101, 100, &[100, 1]), stray],
        )];
        let p = Plan::judge(&h, &pol, &ctx(), Tree::Rules, NO_PGRP);
        assert!(p.refusal().is_none(), "{:?}", p.refused());
        let sigs: Vec<_> = p
            .targets()
            .iter()
            .map(|j| (j.process.pid, j.signal))
            .collect();
        assert_eq!(
            sigs,
            [
                (100, Some(Signal::Int)),
                (101, Some(Signal::Term)),
                (102, Some(Signal::Int))
            ]
        );
        let words = p.steps_words(Duration::from_secs(1));
        assert!(
            words.starts_with("would send SIGINT to pid 100, give pid 101, 102 up to 1.0 s to exit with it, then send its stop signal to those still running"),
            "{words}"
        );
        // free --signal: every rule's signal, for the run.
        let p = Plan::judge(
            &h,
            &pol.with_signal(Signal::Quit),
            &ctx(),
            Tree::Rules,
            NO_PGRP,
        );
        assert!(p.targets().iter().all(|j| j.signal == Some(Signal::Quit)));
        // A kept holder has none.
        let p = Plan::judge(&h, &Policy::default(), &ctx(), Tree::Rules, NO_PGRP);
        assert!(p.judged.iter().all(|j| j.signal.is_none()));
    }

    #[test]
    fn tree_members_keep_their_protections() {
        // The caller runs under the holder: the holder's child is reaper's parent.
        let h = vec![holding(
            "LISTEN",
            vec![proc_(100, 1, &[1]), proc_(9998, 100, &[100, 1])],
        )];
        let p = Plan::judge(&h, &policy(), &ctx(), Tree::Flag(true), NO_PGRP);
        assert_eq!(p.judged[1].verdict.decision, Decision::Protect);
        // And the holder itself is an ancestor of the caller in that case.
        let mut c = ctx();
        c.caller_chain = vec![9998, 100, 1];
        let p = Plan::judge(&h, &policy(), &c, Tree::Flag(true), NO_PGRP);
        assert_eq!(p.judged[0].verdict.decision, Decision::Protect);
        // A kernel thread sharing is protected too.
        let mut c = ctx();
        c.kernel_threads.insert(101);
        let h = vec![holding(
            "LISTEN",
            vec![proc_(100, 1, &[1]), other(101, 100, &[100, 1])],
        )];
        let p = Plan::judge(&h, &policy(), &c, Tree::Flag(true), NO_PGRP);
        assert_eq!(p.judged[1].verdict.decision, Decision::Protect);
        assert!(p.refusal().is_some());
    }

    #[test]
    fn a_process_group_member_is_a_sharer() {
        let h = vec![holding(
            "LISTEN",
            vec![proc_(100, 1, &[1]), other(105, 50, &[50, 1])],
        )];
        let pg = |pid: u32| Some(if pid == 105 { 100 } else { pid });
        let p = Plan::judge(&h, &policy(), &ctx(), Tree::Flag(true), &pg);
        assert_eq!(
            p.judged[1].role,
            Role::Shares {
                of: 100,
                how: "in its process group".into()
            }
        );
        assert_eq!(p.judged[1].verdict.decision, Decision::Reap);
    }

    #[test]
    fn time_wait_is_noted_not_judged_and_accepted_connections_go_with_their_listener() {
        let h = vec![
            holding("TIME-WAIT", vec![]),
            holding("LISTEN", vec![proc_(300, 1, &[1])]),
            holding("ESTAB", vec![proc_(300, 1, &[1])]),
        ];
        let p = Plan::judge(&h, &policy(), &ctx(), Tree::Flag(false), NO_PGRP);
        // One process, judged once, with its listener and its connection.
        assert_eq!(p.judged.len(), 1);
        assert_eq!(p.judged[0].sockets.len(), 2);
        assert_eq!(p.unowned.len(), 1);
        assert_eq!(p.unowned[0].expires_in_ms, Some(59_000));
        assert!(p.unjudgeable().is_empty());
    }

    #[test]
    fn a_client_connection_is_never_judged_and_refuses_the_plan() {
        let h = vec![holding("ESTAB", vec![proc_(300, 1, &[1])])];
        let p = Plan::judge(&h, &policy(), &ctx(), Tree::Flag(false), NO_PGRP);
        assert!(p.judged.is_empty());
        assert_eq!(p.unjudgeable().len(), 1);
        let why = p.refusal().expect("a client refuses the plan");
        assert!(why.contains("client's connection"), "{why}");
        assert!(why.contains("ip_local_reserved_ports"), "{why}");
        assert!(p.targets().is_empty());
    }

    #[test]
    fn only_a_rule_that_names_clients_judges_a_client_connection() {
        let h = vec![holding("ESTAB", vec![proc_(300, 1, &[1])])];
        let rules = |clients: &str| {
            Policy::from_toml_str(&format!(
                "[[rule]]\nname = \"stale clients\"\nmatch = {{ name = \"platform-server\" }}\n{clients}"
            ))
            .unwrap()
        };
        // The same rule without the opt-in: refused in the client's words.
        let p = Plan::judge(&h, &rules(""), &ctx(), Tree::Flag(false), NO_PGRP);
        assert!(p.judged.is_empty());
        assert!(p.refusal().unwrap().contains("client's connection"));
        let p = Plan::judge(
            &h,
            &rules("clients = false"),
            &ctx(),
            Tree::Flag(false),
            NO_PGRP,
        );
        assert!(p.judged.is_empty());
        // With it: judged by that rule, and nothing refuses.
        let p = Plan::judge(
            &h,
            &rules("clients = true"),
            &ctx(),
            Tree::Flag(false),
            NO_PGRP,
        );
        assert_eq!(p.judged.len(), 1, "{:?}", p.unowned);
        assert_eq!(p.judged[0].verdict.decision, Decision::Reap);
        assert_eq!(p.judged[0].verdict.rule.as_deref(), Some("stale clients"));
        assert!(p.judged[0]
            .verdict
            .reasons
            .iter()
            .any(|r| r.contains("clients = true")));
        assert!(p.refusal().is_none());
        // A clients rule that does not match the client leaves it refused.
        let other = Policy::from_toml_str(
            "[[rule]]\nname = \"curl\"\nmatch = { name = \"curl\" }\nclients = true\n",
        )
        .unwrap();
        let p = Plan::judge(&h, &other, &ctx(), Tree::Flag(false), NO_PGRP);
        assert!(p.judged.is_empty());
        assert!(p.refusal().unwrap().contains("client's connection"));
    }

    #[test]
    fn an_unreadable_listener_blocks_judgment() {
        let mut h = holding("LISTEN", vec![]);
        h.unowned_reason = Some(crate::vocab::UnownedReason::Unreadable);
        let p = Plan::judge(&[h], &policy(), &ctx(), Tree::Flag(false), NO_PGRP);
        assert_eq!(p.unjudgeable().len(), 1);
        assert!(p.unjudgeable()[0].reason.contains("unreadable"));
        assert_eq!(
            p.refusal().unwrap(),
            "127.0.0.1:8080/tcp, a socket whose process reaper cannot read (unreadable)"
        );
    }

    /// docker-proxy holds the port for a container whose server listens inside.
    fn proxied() -> Holding {
        let mut proxy = other(70, 60, &[60, 1]);
        proxy.comm = "docker-proxy".into();
        proxy.exe = Some("/usr/sbin/docker-proxy".into());
        proxy.cmdline = vec!["/usr/sbin/docker-proxy".into()];
        let mut inside = proc_(900, 880, &[880]);
        inside.cgroup = Some(format!("/docker/{}", "a".repeat(64)));
        inside.netns = Some(NS + 7);
        let mut h = holding("LISTEN", vec![proxy]);
        h.container = Some(Container {
            id: "a".repeat(64),
            short_id: "a".repeat(12),
            name: Some("web".into()),
            image: Some("shop/web:1".into()),
            state: Some("running".into()),
            via: Some(Via::Proxy),
            listeners: vec![inside],
            ..Container::default()
        });
        h
    }

    #[test]
    fn a_container_behind_a_proxy_is_the_target_and_the_proxy_never_is() {
        let p = Plan::judge(&[proxied()], &policy(), &ctx(), Tree::Flag(false), NO_PGRP);
        assert_eq!(p.refusal(), None);
        assert!(
            p.judged.is_empty(),
            "the proxy is in judged: {:?}",
            p.judged
        );
        assert!(p.targets().is_empty());
        let c = p.container_targets();
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].proxies, vec![70]);
        assert!(p.steps_words(Duration::from_secs(3)).starts_with(
            "would stop container web (aaaaaaaaaaaa, image shop/web:1) with its own stop signal (its image's STOPSIGNAL, else SIGTERM) through the engine"
        ));
        assert_eq!(c[0].signal, None);
        // A rule's signal is the engine's stop signal.
        let p = Plan::judge(
            &[proxied()],
            &policy().with_signal(Signal::Quit),
            &ctx(),
            Tree::Flag(false),
            NO_PGRP,
        );
        assert_eq!(p.container_targets()[0].signal, Some(Signal::Quit));
        assert!(p
            .steps_words(Duration::from_secs(3))
            .starts_with("would stop container web (aaaaaaaaaaaa, image shop/web:1) with SIGQUIT through the engine"));

        // --match docker-proxy: the container is kept, the proxy protected.
        let by_proxy = Policy::from_flags(&FlagRule {
            name: Some("docker-proxy".into()),
            ..Default::default()
        })
        .unwrap();
        let p = Plan::judge(&[proxied()], &by_proxy, &ctx(), Tree::Flag(false), NO_PGRP);
        let why = p.refusal().unwrap();
        assert!(
            why.contains("pid 70 (docker-proxy) which the policy protects"),
            "{why}"
        );
        assert!(
            why.contains("it publishes the port for container web"),
            "{why}"
        );
        assert!(p.container_targets().is_empty());
    }
}

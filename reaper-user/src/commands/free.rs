//! `reaper free PORT`: holders (scan) -> policy (verdicts) -> reap (pidfd
//! signals, bind probe) -> journal, and the story printed for a person or as
//! one JSON document.
//!
//! Decisions this command makes, so scripts can rely on them:
//! - Nothing is signalled unless every process holding the port is judged
//!   `reap`: killing some holders while another keeps the port would do harm
//!   and free nothing. Such runs end with status 4 at once.
//! - A process sharing the socket with an ancestor (or process-group leader)
//!   that holds it too is part of that holder's tree. Without `--tree` the
//!   run refuses early (status 4: "socket also held by pid X, a child; use
//!   --tree") instead of signalling the parent and then waiting out the
//!   deadline on a port the child keeps. With `--tree` it is stopped with its
//!   parent, unless a protection covers it.
//! - TIME_WAIT sockets have no process: nothing is killed for them. The bind
//!   probe decides: if a SO_REUSEADDR bind works, the port is free (status 0,
//!   and the output says the TIME_WAIT was there); if not, it waits for the
//!   kernel's timer until the deadline (status 3 when it outlasts it).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt::Write as _;
use std::os::fd::OwnedFd;
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::cli::{FreeArgs, Global};
use crate::error::{bad_input, Exit};
use crate::holders::{self, Holding, Process, Query, ScanGaps, Socket};
use crate::journal::writer::{JournalWriter, WriterOptions};
use crate::journal::{Body, Endpoint, Outcome, ProcessRef, Record, SignalRecord, VerdictRecord};
use crate::output::{self, Style};
use crate::policy::{socket_words, Context, Decision, FlagRule, Policy, Verdict};
use crate::reap::{self, BindProbe, Identity, ProcStat, StopOptions, TargetOutcome, TargetReport};
use crate::util::Proto;

/// Why a process is in the list.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Role {
    /// Judged on its own by the policy.
    Holder,
    /// Shares a socket with `of`, an ancestor or its process-group leader
    /// holding the same socket.
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
}

/// A socket with no process: TIME_WAIT, or an owner that could not be read.
#[derive(Clone, Debug, Serialize)]
pub struct Unowned {
    pub socket: String,
    pub state: String,
    pub reason: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub expires_in_ms: Option<u64>,
}

/// The holders of the port and what to do.
#[derive(Debug, Default)]
pub struct Plan {
    pub judged: Vec<Judged>,
    pub unowned: Vec<Unowned>,
    /// Sockets whose holders are judged (LISTEN for TCP, every UDP socket).
    pub blocking: Vec<Socket>,
}

impl Plan {
    /// The processes the policy does not let reaper signal.
    pub fn refused(&self) -> Vec<&Judged> {
        self.judged
            .iter()
            .filter(|j| j.verdict.decision != Decision::Reap)
            .collect()
    }
    /// Blocking sockets without a process reaper could judge.
    fn unjudgeable(&self) -> Vec<&Unowned> {
        self.unowned
            .iter()
            .filter(|u| u.state != "TIME-WAIT")
            .collect()
    }
}

/// Whether a socket keeps the next server from binding: a TCP listener, or
/// any UDP socket on the port. Connections that share the local port do not
/// block a SO_REUSEADDR bind and are not judged.
fn blocks(s: &Socket) -> bool {
    match s.proto {
        Proto::Tcp => s.state == "LISTEN",
        Proto::Udp => s.state != "TIME-WAIT",
    }
}

/// Judges every holder of the port. Pure apart from `pgrp_of` (so the tree
/// logic is unit-tested with made-up processes).
pub fn plan(
    holdings: &[Holding],
    policy: &Policy,
    ctx: &Context,
    tree: bool,
    pgrp_of: &dyn Fn(u32) -> Option<u32>,
) -> Plan {
    let mut out = Plan::default();
    // pid -> (process, sockets, role); the first socket decides the role.
    let mut by_pid: BTreeMap<u32, (Process, Vec<Socket>, Role)> = BTreeMap::new();
    for h in holdings {
        if h.socket.state == "TIME-WAIT" || (h.processes.is_empty() && !blocks(&h.socket)) {
            if h.socket.state == "TIME-WAIT" {
                out.unowned.push(Unowned {
                    socket: socket_words(&h.socket),
                    state: h.socket.state.clone(),
                    reason: "TIME_WAIT: the kernel keeps a closed connection's port for up to 60 s; no process holds it".into(),
                    expires_in_ms: h.socket.timer_ms,
                });
            }
            continue;
        }
        if !blocks(&h.socket) {
            continue;
        }
        out.blocking.push(h.socket.clone());
        if h.processes.is_empty() {
            out.unowned.push(Unowned {
                socket: socket_words(&h.socket),
                state: h.socket.state.clone(),
                reason: format!(
                    "no readable process holds it ({}): reaper cannot judge what it cannot see",
                    h.unowned_reason.as_deref().unwrap_or("unknown")
                ),
                expires_in_ms: None,
            });
            continue;
        }
        let pids: BTreeSet<u32> = h.processes.iter().map(|p| p.pid).collect();
        for p in &h.processes {
            // The nearest ancestor that holds the same socket makes this a
            // sharer; failing that, a process-group leader that holds it.
            let parent = p
                .ancestors
                .iter()
                .map(|(a, _)| *a)
                .find(|a| pids.contains(a));
            let role = match parent {
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
            };
            let entry = by_pid
                .entry(p.pid)
                .or_insert_with(|| (p.clone(), Vec::new(), role));
            entry.1.push(h.socket.clone());
        }
    }
    // Holders first, so sharers can point at their holder's verdict.
    let mut verdicts: BTreeMap<u32, Verdict> = BTreeMap::new();
    for (pid, (p, socks, role)) in &by_pid {
        if *role == Role::Holder {
            verdicts.insert(*pid, judge_all(policy, p, socks, ctx));
        }
    }
    for (pid, (p, socks, role)) in &by_pid {
        let verdict = match role {
            Role::Holder => verdicts[pid].clone(),
            Role::Shares { of, how } => {
                let s = &socks[0];
                if let Some(v) = policy.protection(p, s, ctx) {
                    v
                } else {
                    let root_reaped = verdicts
                        .get(of)
                        .is_some_and(|v| v.decision == Decision::Reap);
                    let rule = verdicts.get(of).and_then(|v| v.rule.clone());
                    let share = format!(
                        "socket {} also held by pid {pid}, {how} of pid {of}",
                        socket_words(s)
                    );
                    if !tree {
                        Verdict::new(
                            Decision::Keep,
                            None,
                            vec![format!("{share}; use --tree to stop it too")],
                        )
                    } else if root_reaped {
                        Verdict::new(
                            Decision::Reap,
                            rule,
                            vec![format!("{share}, which is reaped; --tree stops it too")],
                        )
                    } else {
                        Verdict::new(
                            Decision::Keep,
                            None,
                            vec![format!("{share}, which is not reaped")],
                        )
                    }
                }
            }
        };
        out.judged.push(Judged {
            process: p.clone(),
            sockets: socks.clone(),
            role: role.clone(),
            verdict,
        });
    }
    out
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

/// The JSON document `--json` prints.
#[derive(Serialize)]
struct Report<'a> {
    port: u16,
    proto: Proto,
    netns: u64,
    dry_run: bool,
    holders: &'a [Judged],
    #[serde(skip_serializing_if = "<[Unowned]>::is_empty")]
    unowned: &'a [Unowned],
    signals: Vec<&'a reap::SignalSent>,
    targets: &'a [TargetReport],
    /// already_free, freed, still_held, refused, dry_run.
    outcome: &'a str,
    message: &'a str,
    exit: i32,
    #[serde(skip_serializing_if = "Option::is_none")]
    port_free_at: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    journal: Option<JournalStatus>,
    elapsed_ms: f64,
    scan_ms: f64,
    gaps: &'a ScanGaps,
}

pub fn run(global: &Global, args: FreeArgs) -> Result<Exit> {
    let start = Instant::now();
    let deadline = start + args.deadline;
    let policy = build_policy(&args)?;
    // The journal is opened before anything is scanned or signalled: a run
    // asked to keep a record must not act when it cannot keep one.
    let journal = match &args.journal {
        Some(path) => Some(JournalWriter::open(path, WriterOptions::default()).with_context(
            || {
                format!(
                    "cannot write the journal (--journal / REAPER_JOURNAL = {}); nothing was signalled. Give a path in a directory root owns (e.g. /var/lib/reaper/journal.jsonl), or leave out --journal",
                    path.display()
                )
            },
        )?),
        None => None,
    };

    let mut ctx = Context::current(None)
        .context("cannot read reaper's own process and namespace from /proc")?;
    let query = Query {
        port: Some(args.port),
        proto: Some(args.proto),
        netns: Some(ctx.netns),
        listening_only: false,
    };
    let scan = holders::scan(&query).with_context(|| {
        format!(
            "cannot scan the holders of port {}/{}",
            args.port, args.proto
        )
    })?;
    for h in &scan.holdings {
        for p in &h.processes {
            if ProcStat::read(p.pid).is_ok_and(|s| s.is_kernel_thread()) {
                ctx.kernel_threads.insert(p.pid);
            }
        }
    }
    let pgrp = |pid: u32| ProcStat::read(pid).ok().map(|s| s.pgrp);
    let plan = plan(&scan.holdings, &policy, &ctx, args.tree, &pgrp);

    let mut run = Run {
        args: &args,
        style: Style {
            on: output::use_color(global.color),
        },
        start,
        ctx: &ctx,
        plan: &plan,
        scan_ms: scan.duration_ms,
        gaps: &scan.gaps,
        targets: Vec::new(),
        free_at: None,
        journal,
    };

    // Refuse before anything is signalled.
    let refused = plan.refused();
    let unjudgeable = plan.unjudgeable();
    if !refused.is_empty() || !unjudgeable.is_empty() {
        let mut msg = format!("port {}/{} is held by ", args.port, args.proto);
        let mut parts: Vec<String> = refused
            .iter()
            .map(|j| {
                let what = match j.verdict.decision {
                    Decision::Protect => "protects",
                    _ => "keeps",
                };
                format!(
                    "pid {} ({}) which the policy {what}: {}",
                    j.process.pid, j.process.comm, j.verdict.reasons[0]
                )
            })
            .collect();
        parts.extend(
            unjudgeable
                .iter()
                .map(|u| format!("{} with {}", u.socket, u.reason)),
        );
        msg.push_str(&parts.join("; and by "));
        msg.push_str("; nothing was signalled");
        return run.finish("refused", &msg, Exit::Refused);
    }

    let probes = probes_for(&plan, &ctx, args.proto, args.port);
    let targets: Vec<&Judged> = plan.judged.iter().collect();

    if targets.is_empty() {
        // Nothing holds it (maybe TIME_WAIT): the probe tells the truth.
        let tw = plan.unowned.iter().find(|u| u.state == "TIME-WAIT");
        let first = reap::wait_bindable(&probes, Instant::now());
        if first.free_at.is_some() {
            run.free_at = first.free_at;
            let msg = match tw {
                Some(u) => format!(
                    "port {}/{} is free: a TIME_WAIT socket ({}{}) is there but does not block a SO_REUSEADDR bind; nothing to kill",
                    args.port,
                    args.proto,
                    u.socket,
                    expiry_words(u.expires_in_ms)
                ),
                None => format!("port {}/{} is already free", args.port, args.proto),
            };
            return run.finish("already_free", &msg, Exit::Ok);
        }
        if args.dry_run {
            let msg = format!(
                "port {}/{} cannot be bound ({}) and no process holds it{}; nothing would be signalled",
                args.port,
                args.proto,
                first.last_error.unwrap_or_default(),
                tw.map(|u| format!(": only TIME_WAIT ({}{})", u.socket, expiry_words(u.expires_in_ms))).unwrap_or_default()
            );
            return run.finish("dry_run", &msg, Exit::StillHeld);
        }
        // Only the kernel's timer can free it: wait, up to the deadline.
        let w = reap::wait_bindable(&probes, deadline);
        run.free_at = w.free_at;
        return match (w.free_at, tw) {
            (Some(t), Some(u)) => {
                let msg = format!(
                    "port {}/{} free after {} ms: it was blocked only by TIME_WAIT ({}), which expired; nothing was killed",
                    args.port,
                    args.proto,
                    reap::ms_since(start, t).round(),
                    u.socket
                );
                run.finish("freed", &msg, Exit::Ok)
            }
            (Some(t), None) => {
                let msg = format!(
                    "port {}/{} free after {} ms; nothing was killed",
                    args.port,
                    args.proto,
                    reap::ms_since(start, t).round()
                );
                run.finish("freed", &msg, Exit::Ok)
            }
            (None, Some(u)) => {
                let msg = format!(
                    "port {}/{} still not bindable after {}: blocked only by TIME_WAIT ({}{}), which no signal can end; nothing was killed. Wait for it, or have the server set SO_REUSEADDR",
                    args.port,
                    args.proto,
                    humantime::format_duration(args.deadline),
                    u.socket,
                    expiry_words(u.expires_in_ms)
                );
                run.finish("still_held", &msg, Exit::StillHeld)
            }
            (None, None) => {
                let msg = format!(
                    "port {}/{} still not bindable after {} ({}) but no process visible here holds it ({} unreadable processes); nothing was killed. Try `reaper who {} --netns all`",
                    args.port,
                    args.proto,
                    humantime::format_duration(args.deadline),
                    w.last_error.unwrap_or_default(),
                    scan.gaps.unreadable_pids,
                    args.port
                );
                run.finish("still_held", &msg, Exit::StillHeld)
            }
        };
    }

    if args.dry_run {
        let pids: Vec<String> = targets.iter().map(|j| j.process.pid.to_string()).collect();
        let msg = format!(
            "dry run: would send SIGTERM to pid {}, then SIGKILL after {} to any still running; nothing was signalled",
            pids.join(", "),
            humantime::format_duration(args.grace)
        );
        return run.finish("dry_run", &msg, Exit::Ok);
    }

    let identities: Vec<Identity> = targets.iter().map(|j| Identity::of(&j.process)).collect();
    let opts = StopOptions {
        grace: args.grace,
        deadline,
        start,
        pause_fifo: std::env::var_os(reap::TEST_PAUSE_ENV).map(Into::into),
    };
    run.targets = reap::stop(&identities, &opts);

    let all_gone = run.targets.iter().all(|t| {
        matches!(
            t.outcome,
            TargetOutcome::Exited { .. } | TargetOutcome::Gone
        )
    });
    // Wait for the port only when every target is gone; otherwise one probe
    // says whether it happens to be free anyway.
    let until = if all_gone { deadline } else { Instant::now() };
    let w = reap::wait_bindable(&probes, until);
    run.free_at = w.free_at;
    let skipped: Vec<String> = run
        .targets
        .iter()
        .filter_map(|t| match &t.outcome {
            TargetOutcome::IdentityChanged { changes } => Some(format!(
                "pid {} was not signalled: its identity changed since it was judged ({})",
                t.pid,
                changes.join("; ")
            )),
            TargetOutcome::Failed { error } => Some(format!("pid {}: {error}", t.pid)),
            TargetOutcome::StillRunning => Some(format!(
                "pid {} is still running after {}",
                t.pid,
                signals_words(t)
            )),
            _ => None,
        })
        .collect();
    match w.free_at {
        Some(t) => {
            let mut msg = format!(
                "port {}/{} free after {} ms",
                args.port,
                args.proto,
                reap::ms_since(start, t).round()
            );
            let exits: Vec<String> = run
                .targets
                .iter()
                .filter_map(|t| match &t.outcome {
                    TargetOutcome::Exited { by, after_ms } => {
                        Some(format!("pid {} exited on {by} after {after_ms} ms", t.pid))
                    }
                    TargetOutcome::Gone => Some(format!("pid {} was already gone", t.pid)),
                    _ => None,
                })
                .collect();
            if targets.len() == 1 && exits.len() == 1 {
                msg.push_str(&format!(
                    " ({})",
                    exits[0].replacen(&format!("pid {} ", run.targets[0].pid), "holder ", 1)
                ));
            } else if !exits.is_empty() {
                msg.push_str(&format!(" ({})", exits.join(", ")));
            }
            if !skipped.is_empty() {
                msg.push_str(&format!("; {}", skipped.join("; ")));
            }
            run.finish("freed", &msg, Exit::Ok)
        }
        None => {
            let mut msg = format!(
                "port {}/{} still held after {} ms ({})",
                args.port,
                args.proto,
                reap::ms_since(start, Instant::now()).round(),
                w.last_error.unwrap_or_default()
            );
            if !skipped.is_empty() {
                msg.push_str(&format!(": {}", skipped.join("; ")));
            }
            if let Some(now) = holders_now(&query) {
                msg.push_str(&format!("; holders now: {now}"));
            }
            run.finish("still_held", &msg, Exit::StillHeld)
        }
    }
}

/// Flags and file, combined; refuses to run with no reap rule at all.
fn build_policy(args: &FreeArgs) -> Result<Policy> {
    let flags = Policy::from_flags(&FlagRule {
        name: args.match_name.clone(),
        exe: args.exe.clone(),
        cmdline: args.cmdline.clone(),
    })
    .map_err(|e| bad_input(e.to_string()))?;
    let policy = match &args.policy {
        Some(path) => flags.combine(Policy::from_file(path).map_err(|e| bad_input(e.to_string()))?),
        None => flags,
    };
    if !policy.has_reap_rules() {
        return Err(bad_input(match &args.policy {
            Some(p) => format!(
                "refusing to kill without a rule: policy file {} has no rule with action = \"reap\"; add one, or give --match/--exe/--cmdline",
                p.display()
            ),
            None => "refusing to kill without a rule: give --match/--exe/--cmdline or --policy".into(),
        }));
    }
    Ok(policy)
}

/// What to bind to test the port: what the holders had (same family,
/// address, dual-stack), else the wildcards. A probe for a socket in another
/// namespace carries an fd on that namespace, opened while a holder lives.
fn probes_for(plan: &Plan, ctx: &Context, proto: Proto, port: u16) -> Vec<BindProbe> {
    let mut seen = BTreeSet::new();
    let mut probes = Vec::new();
    for s in &plan.blocking {
        if !seen.insert((s.addr, s.dual_stack, s.netns)) {
            continue;
        }
        let mut p = BindProbe::new(proto, s.addr, port, s.dual_stack);
        if s.netns != ctx.caller_netns {
            p.netns = plan
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

fn open_netns(pid: u32) -> Option<OwnedFd> {
    std::fs::File::open(format!("/proc/{pid}/ns/net"))
        .ok()
        .map(OwnedFd::from)
}

/// "pid 12 platform-server, pid 13 x" from a fresh scan, for the exit-3 message.
fn holders_now(query: &Query) -> Option<String> {
    let scan = holders::scan(query).ok()?;
    let v: Vec<String> = scan
        .holdings
        .iter()
        .filter(|h| blocks(&h.socket))
        .flat_map(|h| {
            h.processes
                .iter()
                .map(|p| format!("pid {} {}", p.pid, p.comm))
        })
        .collect::<BTreeSet<_>>()
        .into_iter()
        .collect();
    (!v.is_empty()).then(|| v.join(", "))
}

fn expiry_words(ms: Option<u64>) -> String {
    match ms {
        Some(ms) => format!(", expires in {:.1} s", ms as f64 / 1000.0),
        None => String::new(),
    }
}

fn signals_words(t: &TargetReport) -> String {
    let s: Vec<&str> = t.signals.iter().map(|s| s.signal).collect();
    if s.is_empty() {
        "no signal".into()
    } else {
        s.join(" and ")
    }
}

/// Everything needed to print the result and write the journal.
struct Run<'a> {
    args: &'a FreeArgs,
    style: Style,
    start: Instant,
    ctx: &'a Context,
    plan: &'a Plan,
    scan_ms: f64,
    gaps: &'a ScanGaps,
    targets: Vec<TargetReport>,
    free_at: Option<Instant>,
    /// Opened before any work (see `run`).
    journal: Option<JournalWriter>,
}

/// Whether the record was written, for `--json`.
#[derive(Serialize)]
struct JournalStatus {
    path: String,
    written: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

impl Run<'_> {
    fn finish(&mut self, outcome: &str, message: &str, exit: Exit) -> Result<Exit> {
        let elapsed_ms = reap::ms_since(self.start, Instant::now());
        let free_at = self.free_at.map(|t| crate::util::rfc3339(reap::wall_of(t)));
        // The journal first: a record must not depend on stdout being open.
        let journal_err = match self.journal.take() {
            Some(mut w) => self
                .journal(&mut w, outcome, free_at.clone(), elapsed_ms)
                .err(),
            None => None,
        };
        // The port work is done and cannot be undone: say what it did, and
        // that its record is missing. Status 6 when the port was freed;
        // otherwise the port's own status, which is an alarm already.
        let (exit, message) = match &journal_err {
            Some(e) => (
                if exit == Exit::Ok {
                    Exit::Unrecorded
                } else {
                    exit
                },
                format!(
                    "{message}; but the journal record of this run was NOT written ({e:#}): free space there, or fix the path"
                ),
            ),
            None => (exit, message.to_string()),
        };
        let message = message.as_str();
        if self.args.json {
            let report = Report {
                port: self.args.port,
                proto: self.args.proto,
                netns: self.ctx.netns,
                dry_run: self.args.dry_run,
                holders: &self.plan.judged,
                unowned: &self.plan.unowned,
                signals: self.targets.iter().flat_map(|t| t.signals.iter()).collect(),
                targets: &self.targets,
                outcome,
                message,
                exit: exit.code(),
                port_free_at: free_at,
                journal: self.args.journal.as_ref().map(|p| JournalStatus {
                    path: p.display().to_string(),
                    written: journal_err.is_none(),
                    error: journal_err.as_ref().map(|e| format!("{e:#}")),
                }),
                elapsed_ms,
                scan_ms: self.scan_ms,
                gaps: self.gaps,
            };
            output::json_line(&report)?;
            if journal_err.is_some() {
                eprintln!("reaper: {message}");
            }
        } else {
            output::print(&self.human(message, exit))?;
            if exit != Exit::Ok {
                eprintln!("reaper: {message}");
            }
        }
        Ok(exit)
    }

    fn human(&self, message: &str, exit: Exit) -> String {
        let st = self.style;
        let mut out = String::new();
        let n = self.plan.judged.len();
        let _ = writeln!(
            out,
            "{} (netns {}): {n} holder{}",
            st.bold(&format!("port {}/{}", self.args.port, self.args.proto)),
            self.ctx.netns,
            if n == 1 { "" } else { "s" }
        );
        for j in &self.plan.judged {
            let p = &j.process;
            let decision = match j.verdict.decision {
                Decision::Reap => st.red("REAP"),
                Decision::Keep => st.yellow("KEEP"),
                Decision::Protect => st.green("PROTECT"),
            };
            let rule = j
                .verdict
                .rule
                .as_deref()
                .map(|r| format!(" (rule '{r}')"))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  pid {} {}  {}",
                p.pid,
                st.bold(&p.comm),
                st.dim(&p.cmdline.join(" "))
            );
            let _ = writeln!(out, "    {decision}{rule}");
            for r in &j.verdict.reasons {
                let _ = writeln!(out, "      - {r}");
            }
        }
        for u in &self.plan.unowned {
            let _ = writeln!(
                out,
                "  {} {}: {}{}",
                u.socket,
                u.state,
                u.reason,
                expiry_words(u.expires_in_ms)
            );
        }
        let mut events: Vec<(f64, String)> = Vec::new();
        for t in &self.targets {
            for s in &t.signals {
                events.push((s.at_ms, format!("{} -> pid {}", s.signal, s.pid)));
            }
            if let Some(at) = t.exited_at_ms {
                events.push((at, format!("pid {} exited", t.pid)));
            }
            match &t.outcome {
                TargetOutcome::IdentityChanged { changes } => events.push((
                    0.0,
                    format!(
                        "pid {}: identity changed, not signalled ({})",
                        t.pid,
                        changes.join("; ")
                    ),
                )),
                TargetOutcome::Gone => {
                    events.push((0.0, format!("pid {}: gone before any signal", t.pid)))
                }
                _ => {}
            }
        }
        events.sort_by(|a, b| a.0.total_cmp(&b.0));
        for (at, what) in events {
            let _ = writeln!(out, "  {}  {what}", st.dim(&format!("+{at:>8.1} ms")));
        }
        if exit == Exit::Ok {
            let _ = writeln!(out, "{}", st.green(message));
        }
        out
    }

    /// One Reaping record per judged process.
    fn journal(
        &self,
        w: &mut JournalWriter,
        outcome: &str,
        free_at: Option<String>,
        elapsed_ms: f64,
    ) -> Result<()> {
        for j in &self.plan.judged {
            let report = self.targets.iter().find(|t| t.pid == j.process.pid);
            let target_outcome = match (outcome, report) {
                ("dry_run", _) => Outcome::DryRun,
                (_, None) if j.verdict.decision != Decision::Reap => Outcome::Refused,
                (_, None) => Outcome::from(outcome),
                (_, Some(r)) => r.outcome.outcome(free_at.is_some()),
            };
            let s = &j.sockets[0];
            let body = Body::Reaping {
                at: Endpoint::from(s),
                target: ProcessRef::from(&j.process),
                verdict: VerdictRecord::from(&j.verdict),
                signals: report
                    .map(|r| {
                        r.signals
                            .iter()
                            .map(|s| SignalRecord {
                                pid: s.pid,
                                signal: s.signal.into(),
                                ts: s.ts.clone(),
                            })
                            .collect()
                    })
                    .unwrap_or_default(),
                outcome: target_outcome,
                port_free_at: free_at.clone(),
                elapsed_ms: Some(elapsed_ms.round() as u64),
                dry_run: self.args.dry_run,
            };
            // The error names the path and the cause (ENOSPC, EROFS).
            w.append(&Record::new("proc", body))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::util::Family;

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
        }
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
                state: state.into(),
                inode: 7,
                cookie: 0,
                uid: 0,
                dual_stack: false,
                timer_ms: Some(59_000),
            },
            unowned_reason: procs.is_empty().then(|| "time-wait".into()),
            processes: procs,
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
        }
    }

    fn policy() -> Policy {
        Policy::from_flags(&FlagRule {
            name: Some("platform-server".into()),
            ..Default::default()
        })
        .unwrap()
    }

    #[test]
    fn a_child_sharing_the_socket_needs_tree() {
        let h = vec![holding(
            "LISTEN",
            vec![proc_(100, 1, &[1]), proc_(101, 100, &[100, 1])],
        )];
        let no_pgrp = |_| None;
        let p = plan(&h, &policy(), &ctx(), false, &no_pgrp);
        assert_eq!(p.judged.len(), 2);
        assert_eq!(p.judged[0].verdict.decision, Decision::Reap);
        assert_eq!(p.judged[1].verdict.decision, Decision::Keep);
        assert_eq!(
            p.judged[1].verdict.reasons[0],
            "socket 127.0.0.1:8080/tcp also held by pid 101, a child of pid 100; use --tree to stop it too"
        );
        assert_eq!(p.refused().len(), 1);

        let p = plan(&h, &policy(), &ctx(), true, &no_pgrp);
        assert!(p.refused().is_empty());
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
    }

    #[test]
    fn tree_members_keep_their_protections() {
        // The caller runs under the holder: the holder's child is reaper's parent.
        let h = vec![holding(
            "LISTEN",
            vec![proc_(100, 1, &[1]), proc_(9998, 100, &[100, 1])],
        )];
        let p = plan(&h, &policy(), &ctx(), true, &|_| None);
        assert_eq!(p.judged[1].verdict.decision, Decision::Protect);
        // And the holder itself is an ancestor of the caller in that case.
        let mut c = ctx();
        c.caller_chain = vec![9998, 100, 1];
        let p = plan(&h, &policy(), &c, true, &|_| None);
        assert_eq!(p.judged[0].verdict.decision, Decision::Protect);
    }

    #[test]
    fn a_process_group_member_is_a_sharer() {
        let h = vec![holding(
            "LISTEN",
            vec![proc_(100, 1, &[1]), proc_(105, 50, &[50, 1])],
        )];
        let pg = |pid: u32| Some(if pid == 105 { 100 } else { pid });
        let p = plan(&h, &policy(), &ctx(), true, &pg);
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
    fn time_wait_is_noted_not_judged_and_connections_ignored() {
        let h = vec![
            holding("TIME-WAIT", vec![]),
            holding("ESTAB", vec![proc_(300, 1, &[1])]),
        ];
        let p = plan(&h, &policy(), &ctx(), false, &|_| None);
        assert!(p.judged.is_empty());
        assert!(p.blocking.is_empty());
        assert_eq!(p.unowned.len(), 1);
        assert_eq!(p.unowned[0].expires_in_ms, Some(59_000));
        assert!(p.unjudgeable().is_empty());
    }

    #[test]
    fn an_unreadable_listener_blocks_judgment() {
        let mut h = holding("LISTEN", vec![]);
        h.unowned_reason = Some("unreadable".into());
        let p = plan(&[h], &policy(), &ctx(), false, &|_| None);
        assert_eq!(p.unjudgeable().len(), 1);
        assert!(p.unjudgeable()[0].reason.contains("unreadable"));
    }
}

//! `reaper free PORT`: holders (scan) -> policy -> plan -> reap (pidfd
//! signals, bind probe) -> journal, and the story printed for a person or as
//! one JSON document.
//!
//! The decision is the library's [`crate::reap::plan`] (the daemon builds
//! and executes the same `Plan`); this command parses, prints and journals:
//! - A plan that refuses (a holder kept or protected, a child of another
//!   program sharing the socket without `--tree`, an unreadable holder)
//!   signals nothing and ends with status 4 at once. `--dry-run` prints the
//!   plan a real run would execute.
//! - TIME_WAIT sockets have no process: nothing is killed for them. The bind
//!   probe decides: if a SO_REUSEADDR bind works, the port is free (status 0,
//!   and the output says the TIME_WAIT was there); if not, it waits for the
//!   kernel's timer until the deadline (status 3 when it outlasts it).

use std::collections::BTreeSet;
use std::fmt::Write as _;
use std::time::Instant;

use anyhow::{Context as _, Result};
use serde::Serialize;

use crate::cli::{FreeArgs, Global};
use crate::error::{bad_input, Exit};
use crate::holders::container::engine::ContainerStop;
use crate::holders::{self, Query, ScanGaps};
use crate::journal::writer::{JournalWriter, WriterOptions};
use crate::journal::{self, Record};
use crate::output::{self, Style};
use crate::policy::{Context, Decision, FlagRule, Policy};
use crate::reap::plan::{self, Judged, JudgedContainer, Plan, Tree, Unowned};
use crate::reap::{self, StopOptions, TargetOutcome, TargetReport};
use crate::text::{shell_word, term};
use crate::util::Proto;

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
    /// Containers behind the engine's proxy, with their verdicts.
    #[serde(skip_serializing_if = "<[JudgedContainer]>::is_empty")]
    containers: &'a [JudgedContainer],
    /// What stopping them through the engine did.
    #[serde(skip_serializing_if = "<[ContainerStop]>::is_empty")]
    container_stops: &'a [ContainerStop],
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
    let plan = Plan::build(&scan.holdings, &policy, &mut ctx, Tree::Flag(args.tree));

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
        container_stops: Vec::new(),
        free_at: None,
        journal,
    };

    // Refuse before anything is signalled.
    if let Some(why) = plan.refusal() {
        let msg = format!(
            "port {}/{} is held by {why}; nothing was signalled",
            args.port, args.proto
        );
        return run.finish("refused", &msg, Exit::Refused);
    }

    let probes = plan.probes(&ctx, args.proto, args.port);
    let targets: Vec<&Judged> = plan.targets();

    if targets.is_empty() && plan.container_targets().is_empty() {
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
        let msg = format!(
            "dry run: {}; nothing was signalled",
            plan.steps_words(args.grace)
        );
        return run.finish("dry_run", &msg, Exit::Ok);
    }

    let opts = StopOptions {
        grace: args.grace,
        deadline,
        start,
        pause_fifo: std::env::var_os(reap::TEST_PAUSE_ENV).map(Into::into),
    };
    // The intent on the record before the first signal: a run killed in
    // the middle leaves "in_progress", not silence.
    run.intent()?;
    let done = match reap::execute(&plan, &probes, &opts, &mut |_| {}) {
        Ok(done) => done,
        Err(why) => unreachable!("the plan refused after its refusal was checked: {why}"),
    };
    run.targets = done.targets;
    run.container_stops = done.containers;
    run.free_at = done.free_at;
    let w_last_error = done.last_error;
    let stopped: Vec<String> = run
        .container_stops
        .iter()
        .filter(|c| c.stopped())
        .map(|c| {
            format!(
                "container {} ({}) stopped through the engine after {} ms, kept as {}",
                c.name.as_deref().unwrap_or("?"),
                crate::holders::container::short(&c.id),
                c.stopped_at_ms.unwrap_or_default(),
                c.state_after.as_deref().unwrap_or("?")
            )
        })
        .collect();
    let mut skipped: Vec<String> = run
        .container_stops
        .iter()
        .filter_map(|c| c.error.clone())
        .collect();
    skipped.extend(run.targets.iter().filter_map(|t| match &t.outcome {
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
    }));
    match run.free_at {
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
            if !stopped.is_empty() {
                msg.push_str(&format!(" ({})", stopped.join(", ")));
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
                w_last_error.unwrap_or_default()
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

/// "pid 12 platform-server, pid 13 x" from a fresh scan, for the exit-3 message.
fn holders_now(query: &Query) -> Option<String> {
    let scan = holders::scan(query).ok()?;
    let v: Vec<String> = scan
        .holdings
        .iter()
        .filter(|h| plan::blocks(&h.socket))
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
    container_stops: Vec<ContainerStop>,
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
                containers: &self.plan.containers,
                container_stops: &self.container_stops,
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
                eprintln!("reaper: {}", term(message));
            }
        } else {
            output::print(&self.human(message, exit))?;
            if exit != Exit::Ok {
                eprintln!("reaper: {}", term(message));
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
                st.bold(&term(&p.comm)),
                st.dim(&argv_words(&p.cmdline))
            );
            let _ = writeln!(out, "    {decision}{}", term(&rule));
            for r in &j.verdict.reasons {
                let _ = writeln!(out, "      - {}", term(r));
            }
        }
        for c in &self.plan.containers {
            let decision = match c.verdict.decision {
                Decision::Reap => st.red("STOP THROUGH THE ENGINE"),
                Decision::Keep => st.yellow("KEEP"),
                Decision::Protect => st.green("PROTECT"),
            };
            let rule = c
                .verdict
                .rule
                .as_deref()
                .map(|r| format!(" (rule '{}')", term(r)))
                .unwrap_or_default();
            let _ = writeln!(
                out,
                "  container {}  behind proxy pid {}",
                st.bold(&term(&c.container.words())),
                c.proxies
                    .iter()
                    .map(|p| p.to_string())
                    .collect::<Vec<_>>()
                    .join(", ")
            );
            let _ = writeln!(out, "    {decision}{rule}");
            for r in &c.verdict.reasons {
                let _ = writeln!(out, "      - {}", term(r));
            }
        }
        for u in &self.plan.unowned {
            let _ = writeln!(
                out,
                "  {} {}: {}{}",
                u.socket,
                u.state,
                term(&u.reason),
                expiry_words(u.expires_in_ms)
            );
        }
        let mut events: Vec<(f64, String)> = Vec::new();
        for c in &self.container_stops {
            let what = match (&c.error, c.stopped_at_ms) {
                (Some(e), _) => {
                    format!("container {}: {e}", crate::holders::container::short(&c.id))
                }
                (None, Some(_)) => format!(
                    "container {} stopped by the engine ({})",
                    crate::holders::container::short(&c.id),
                    c.state_after.as_deref().unwrap_or("?")
                ),
                (None, None) => continue,
            };
            // Escaped where the events are printed.
            events.push((c.stopped_at_ms.unwrap_or_default() as f64, what));
        }
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
            let _ = writeln!(
                out,
                "  {}  {}",
                st.dim(&format!("+{at:>8.1} ms")),
                term(&what)
            );
        }
        if exit == Exit::Ok {
            let _ = writeln!(out, "{}", st.green(&term(message)));
        }
        out
    }

    /// The intent, before the first signal: one `in_progress` reaping
    /// record per target. A run that cannot write it signals nothing.
    fn intent(&mut self) -> Result<()> {
        let Some(w) = self.journal.as_mut() else {
            return Ok(());
        };
        let containers =
            self.plan.container_targets().into_iter().map(|c| {
                journal::container_reaping(c, None, journal::IN_PROGRESS, None, None, false)
            });
        let processes = self
            .plan
            .targets()
            .into_iter()
            .map(|j| journal::reaping(j, &[], journal::IN_PROGRESS, None, None, false));
        for body in containers.chain(processes) {
            w.append(&Record::new("proc", body)).with_context(|| {
                "cannot write the reaping's intent to the journal; nothing was signalled. Free space there, or fix the path".to_string()
            })?;
        }
        Ok(())
    }

    /// One Reaping record per judged process: the outcome.
    fn journal(
        &self,
        w: &mut JournalWriter,
        outcome: &str,
        free_at: Option<String>,
        elapsed_ms: f64,
    ) -> Result<()> {
        for (i, c) in self.plan.containers.iter().enumerate() {
            let reaped = c.verdict.decision == Decision::Reap;
            let stop = reaped
                .then(|| {
                    let k = self.plan.containers[..i]
                        .iter()
                        .filter(|x| x.verdict.decision == Decision::Reap)
                        .count();
                    self.container_stops.get(k)
                })
                .flatten();
            let target_outcome = match (outcome, stop) {
                ("dry_run", _) => "dry_run",
                (_, Some(s)) => plan::container_outcome(s, free_at.is_some()),
                (_, None) if !reaped => "refused",
                (o, None) => o,
            };
            let body = journal::container_reaping(
                c,
                stop,
                target_outcome,
                free_at.clone(),
                Some(elapsed_ms.round() as u64),
                self.args.dry_run,
            );
            w.append(&Record::new("proc", body))?;
        }
        for j in &self.plan.judged {
            let report = self.targets.iter().find(|t| t.pid == j.process.pid);
            let target_outcome = match (outcome, report) {
                ("dry_run", _) => "dry_run".to_string(),
                (_, None) if j.verdict.decision != Decision::Reap => "refused".to_string(),
                (_, None) => outcome.to_string(),
                (_, Some(r)) => match (&r.outcome, free_at.is_some()) {
                    (TargetOutcome::Exited { .. }, true) => "freed".into(),
                    (TargetOutcome::Exited { .. }, false) => "still_held".into(),
                    (o, _) => o.word().into(),
                },
            };
            let signals = report.map(|r| r.signals.as_slice()).unwrap_or_default();
            let body = journal::reaping(
                j,
                signals,
                &target_outcome,
                free_at.clone(),
                Some(elapsed_ms.round() as u64),
                self.args.dry_run,
            );
            // The error names the path and the cause (ENOSPC, EROFS).
            w.append(&Record::new("proc", body))?;
        }
        Ok(())
    }
}

/// argv as a shell reads it back, every word safe on a terminal.
fn argv_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_word(a))
        .collect::<Vec<_>>()
        .join(" ")
}

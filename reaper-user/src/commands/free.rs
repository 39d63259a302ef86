//! `reaper free PORT`: holders (scan) -> policy -> plan -> reap (pidfd
//! signals, bind probe) -> journal, and the story printed for a person or as
//! one JSON document.
//!
//! The decision is the library's [`reaper::reap::plan`] (the daemon builds
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

use anyhow::Context as _;

use super::Result;
use serde::Serialize;

use crate::cli::{FreeArgs, Global};
use reaper::error::{bad_input, Exit};
use reaper::holders::{self, Query, ScanGaps};
use reaper::journal::writer::{JournalWriter, WriterOptions};
use reaper::journal::ContainerStop;
use reaper::journal::Record;
use reaper::output::{self, Style};
use reaper::policy::{Context, FlagRule, Policy, Verdict};
use reaper::reap::plan::{Judged, JudgedContainer, Plan, Tree, Unowned};
use reaper::reap::records::{self, Holders, Ran};
use reaper::reap::{self, BindProbe, Execution, StopOptions, TargetOutcome, TargetReport};
use reaper::text::{shell_word, term};
use reaper::vocab::{Decision, Outcome, Proto, SocketState};

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

pub fn run(global: &Global, mut args: FreeArgs) -> Result<Exit> {
    if args.udp {
        args.proto = reaper::vocab::Proto::Udp;
    }
    let start = Instant::now();
    let policy = build_policy(&args)?;
    let journal = open_journal(&args)?;
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
        done: None,
        free_at: None,
        journal,
    };
    let ended = run.act(&query)?;
    let (outcome, exit) = ended.status();
    let message = run.words(&ended);
    run.finish(outcome, &message, exit)
}

/// The journal is opened before anything is scanned or signalled: a run
/// asked to keep a record must not act when it cannot keep one.
fn open_journal(args: &FreeArgs) -> Result<Option<JournalWriter>> {
    let Some(path) = &args.run.journal else {
        return Ok(None);
    };
    let w = JournalWriter::open(path, WriterOptions::default()).with_context(|| {
        format!(
            "cannot write the journal (--journal / REAPER_JOURNAL = {}); nothing was signalled. Give a path in a directory root owns (e.g. /var/lib/reaper/journal.jsonl), or leave out --journal",
            path.display()
        )
    })?;
    Ok(Some(w))
}

/// How a run ended, before it is put into words ([`Run::words`]).
enum Ended<'a> {
    /// The plan refuses (the words say who holds it); nothing was signalled.
    Refused(String),
    /// Bindable at once; maybe a TIME_WAIT socket there that does not block.
    AlreadyFree { time_wait: Option<&'a Unowned> },
    /// A dry run, no process holds it, and it cannot be bound.
    Unbindable {
        error: String,
        time_wait: Option<&'a Unowned>,
    },
    /// No process held it; it became bindable at `free_at` (a timer expired).
    Expired {
        free_at: Instant,
        time_wait: Option<&'a Unowned>,
    },
    /// No process held it, and it outlasted the deadline.
    Outlasted {
        error: String,
        time_wait: Option<&'a Unowned>,
    },
    /// A dry run of a plan with targets.
    DryRun,
    /// The plan was executed and the port is free.
    Freed { free_at: Instant },
    /// The plan was executed and the port is still held.
    StillHeld {
        after_ms: f64,
        error: String,
        holders_now: Option<String>,
    },
}

impl Ended<'_> {
    /// The JSON `outcome` and the exit status.
    fn status(&self) -> (&'static str, Exit) {
        match self {
            Ended::Refused(_) => ("refused", Exit::Refused),
            Ended::AlreadyFree { .. } => ("already_free", Exit::Ok),
            Ended::Unbindable { .. } => ("dry_run", Exit::StillHeld),
            Ended::Expired { .. } | Ended::Freed { .. } => ("freed", Exit::Ok),
            Ended::Outlasted { .. } | Ended::StillHeld { .. } => ("still_held", Exit::StillHeld),
            Ended::DryRun => ("dry_run", Exit::Ok),
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
    let mut policy = match &args.policy {
        Some(path) => flags.combine(Policy::from_file(path).map_err(|e| bad_input(e.to_string()))?),
        None => flags,
    };
    if let Some(sig) = args.signal {
        policy = policy.with_signal(sig);
    }
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
        .filter(|h| reaper::bindmodel::facts::surely_blocks_next_server(&h.socket))
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
        Some(ms) => format!(", expires in {}", reaper::util::human_ms(ms)),
        None => String::new(),
    }
}

fn signals_words(t: &TargetReport) -> String {
    let s: Vec<&str> = t.signals.iter().map(|s| s.signal.as_str()).collect();
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
    /// What executing the plan did (None when it was not executed).
    done: Option<Execution>,
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

impl<'a> Run<'a> {
    /// Refuses, waits or executes the plan: everything but the words.
    fn act(&mut self, query: &Query) -> Result<Ended<'a>> {
        let plan = self.plan;
        // Refuse before anything is signalled.
        if let Some(why) = plan.refusal() {
            return Ok(Ended::Refused(why));
        }
        let probes = plan.probes(self.ctx, self.args.proto, self.args.port);
        if plan.targets().is_empty() && plan.container_targets().is_empty() {
            return Ok(self.wait_unowned(&probes));
        }
        if self.args.run.dry_run {
            return Ok(Ended::DryRun);
        }
        self.execute(&probes, query)
    }

    /// Nothing holds it (maybe TIME_WAIT): the probe tells the truth.
    fn wait_unowned(&mut self, probes: &[BindProbe]) -> Ended<'a> {
        let time_wait = self
            .plan
            .unowned
            .iter()
            .find(|u| u.state == SocketState::TimeWait);
        let first = reap::wait_bindable(probes, Instant::now());
        if first.free_at.is_some() {
            self.free_at = first.free_at;
            return Ended::AlreadyFree { time_wait };
        }
        if self.args.run.dry_run {
            return Ended::Unbindable {
                error: first.last_error.unwrap_or_default(),
                time_wait,
            };
        }
        // Only the kernel's timer can free it: wait, up to the deadline.
        let w = reap::wait_bindable(probes, self.start + self.args.deadline);
        self.free_at = w.free_at;
        match w.free_at {
            Some(free_at) => Ended::Expired { free_at, time_wait },
            None => Ended::Outlasted {
                error: w.last_error.unwrap_or_default(),
                time_wait,
            },
        }
    }

    /// Signals the plan's targets and waits for the port.
    fn execute(&mut self, probes: &[BindProbe], query: &Query) -> Result<Ended<'a>> {
        let opts = StopOptions {
            grace: self.args.grace,
            deadline: self.start + self.args.deadline,
            start: self.start,
            pause_fifo: std::env::var_os(reap::TEST_PAUSE_ENV).map(Into::into),
        };
        // The intent on the record before the first signal: a run killed in
        // the middle leaves "in_progress", not silence.
        self.intent()?;
        let done = match reap::execute(self.plan, probes, &opts, &mut |_| {}) {
            Ok(done) => done,
            Err(why) => unreachable!("the plan refused after its refusal was checked: {why}"),
        };
        self.free_at = done.free_at;
        let last_error = done.last_error.clone();
        self.done = Some(done);
        Ok(match self.free_at {
            Some(free_at) => Ended::Freed { free_at },
            None => Ended::StillHeld {
                after_ms: reap::ms_since(self.start, Instant::now()),
                error: last_error.unwrap_or_default(),
                holders_now: holders_now(query),
            },
        })
    }

    /// The run's message: the last line for a person, `message` in JSON.
    fn words(&self, ended: &Ended) -> String {
        let (port, proto) = (self.args.port, self.args.proto);
        match ended {
            Ended::Refused(why) => {
                format!("port {port}/{proto} is held by {why}; nothing was signalled")
            }
            Ended::AlreadyFree { time_wait: Some(u) } => format!(
                "port {port}/{proto} is free: a TIME_WAIT socket ({}{}) is there but does not block a SO_REUSEADDR bind; nothing to kill",
                u.socket,
                expiry_words(u.expires_in_ms)
            ),
            Ended::AlreadyFree { time_wait: None } => {
                format!("port {port}/{proto} is already free")
            }
            Ended::Unbindable { error, time_wait } => format!(
                "port {port}/{proto} cannot be bound ({error}) and no process holds it{}; nothing would be signalled",
                time_wait
                    .map(|u| format!(": only TIME_WAIT ({}{})", u.socket, expiry_words(u.expires_in_ms)))
                    .unwrap_or_default()
            ),
            Ended::Expired {
                free_at,
                time_wait: Some(u),
            } => format!(
                "port {port}/{proto} free after {} ms: it was blocked only by TIME_WAIT ({}), which expired; nothing was killed",
                reap::ms_since(self.start, *free_at).round(),
                u.socket
            ),
            Ended::Expired {
                free_at,
                time_wait: None,
            } => format!(
                "port {port}/{proto} free after {} ms; nothing was killed",
                reap::ms_since(self.start, *free_at).round()
            ),
            Ended::Outlasted {
                time_wait: Some(u),
                ..
            } => format!(
                "port {port}/{proto} still not bindable after {}: blocked only by TIME_WAIT ({}{}), which no signal can end; nothing was killed. Wait for it, or have the server set SO_REUSEADDR",
                reaper::util::human_duration(self.args.deadline),
                u.socket,
                expiry_words(u.expires_in_ms)
            ),
            Ended::Outlasted {
                error,
                time_wait: None,
            } => format!(
                "port {port}/{proto} still not bindable after {} ({error}) but no process visible here holds it ({} unreadable processes); nothing was killed. Try `reaper who {port} --netns all`",
                reaper::util::human_duration(self.args.deadline),
                self.gaps.unreadable_pids,
            ),
            Ended::DryRun => format!(
                "dry run: {}; nothing was signalled",
                self.plan.steps_words(self.args.grace)
            ),
            Ended::Freed { free_at } => self.freed_words(*free_at),
            Ended::StillHeld {
                after_ms,
                error,
                holders_now,
            } => {
                let mut msg = format!(
                    "port {port}/{proto} still held after {} ms ({error})",
                    after_ms.round()
                );
                let skipped = self.skipped_words();
                if !skipped.is_empty() {
                    msg.push_str(&format!(": {}", skipped.join("; ")));
                }
                if let Some(now) = holders_now {
                    msg.push_str(&format!("; holders now: {now}"));
                }
                msg
            }
        }
    }

    /// "port 80/tcp free after 12 ms (holder exited on SIGTERM after 3 ms)".
    fn freed_words(&self, free_at: Instant) -> String {
        let mut msg = format!(
            "port {}/{} free after {} ms",
            self.args.port,
            self.args.proto,
            reap::ms_since(self.start, free_at).round()
        );
        let exits = self.exit_words();
        if self.plan.targets().len() == 1 && exits.len() == 1 {
            msg.push_str(&format!(
                " ({})",
                exits[0].replacen(&format!("pid {} ", self.targets()[0].pid), "holder ", 1)
            ));
        } else if !exits.is_empty() {
            msg.push_str(&format!(" ({})", exits.join(", ")));
        }
        let stopped = self.stopped_words();
        if !stopped.is_empty() {
            msg.push_str(&format!(" ({})", stopped.join(", ")));
        }
        let skipped = self.skipped_words();
        if !skipped.is_empty() {
            msg.push_str(&format!("; {}", skipped.join("; ")));
        }
        msg
    }

    /// One phrase per target that exited or was gone.
    fn exit_words(&self) -> Vec<String> {
        self.targets()
            .iter()
            .filter_map(|t| match &t.outcome {
                TargetOutcome::Exited { by, after_ms } => {
                    Some(format!("pid {} exited on {by} after {after_ms} ms", t.pid))
                }
                TargetOutcome::Gone => Some(format!("pid {} was already gone", t.pid)),
                _ => None,
            })
            .collect()
    }

    /// One phrase per container the engine stopped.
    fn stopped_words(&self) -> Vec<String> {
        self.container_stops()
            .iter()
            .filter(|c| c.stopped())
            .map(|c| {
                format!(
                    "container {} ({}) stopped through the engine with {} after {} ms, kept as {}",
                    c.name.as_deref().unwrap_or("?"),
                    reaper::holders::container::short(&c.id),
                    c.signal.as_deref().unwrap_or("its stop signal"),
                    c.stopped_at_ms.unwrap_or_default(),
                    c.state_after.as_deref().unwrap_or("?")
                )
            })
            .collect()
    }

    /// One phrase per container or process that was not stopped, and why.
    fn skipped_words(&self) -> Vec<String> {
        let containers = self
            .container_stops()
            .iter()
            .filter_map(|c| c.error.clone());
        let processes = self.targets().iter().filter_map(|t| match &t.outcome {
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
        });
        containers.chain(processes).collect()
    }
}

impl Run<'_> {
    fn finish(&mut self, outcome: &str, message: &str, exit: Exit) -> Result<Exit> {
        let elapsed_ms = reap::ms_since(self.start, Instant::now());
        let free_at = self
            .free_at
            .map(|t| reaper::util::rfc3339(reap::wall_of(t)));
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
        if self.args.run.json {
            let report = Report {
                port: self.args.port,
                proto: self.args.proto,
                netns: self.ctx.netns,
                dry_run: self.args.run.dry_run,
                holders: &self.plan.judged,
                unowned: &self.plan.unowned,
                containers: &self.plan.containers,
                container_stops: self.container_stops(),
                signals: self
                    .targets()
                    .iter()
                    .flat_map(|t| t.signals.iter())
                    .collect(),
                targets: self.targets(),
                outcome,
                message,
                exit: exit.code(),
                port_free_at: free_at,
                journal: self.args.run.journal.as_ref().map(|p| JournalStatus {
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
        // A holder is whatever blocks the bind: processes judged, containers
        // behind a proxy, clients and sockets whose process is unreadable.
        let n = self.plan.judged.len() + self.plan.containers.len() + self.plan.unjudgeable().len();
        let _ = writeln!(
            out,
            "{} (netns {}): {n} holder{}",
            st.bold(&format!("port {}/{}", self.args.port, self.args.proto)),
            self.ctx.netns,
            if n == 1 { "" } else { "s" }
        );
        for j in &self.plan.judged {
            self.human_holder(&mut out, j);
        }
        for c in &self.plan.containers {
            self.human_container(&mut out, c);
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
        for (at, what) in self.events() {
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

    /// A judged process: who, the verdict, and its reasons.
    fn human_holder(&self, out: &mut String, j: &Judged) {
        let st = self.style;
        let p = &j.process;
        let _ = writeln!(
            out,
            "  pid {} {}  {}",
            p.pid,
            st.bold(&term(&p.comm)),
            st.dim(&argv_words(&p.cmdline))
        );
        let reap = match j.signal {
            Some(sig) => format!("REAP with {sig}"),
            None => "REAP".to_string(),
        };
        self.human_verdict(out, &j.verdict, &reap);
    }

    /// A container behind the engine's proxy: which, the verdict, its reasons.
    fn human_container(&self, out: &mut String, c: &JudgedContainer) {
        let st = self.style;
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
        let stop = match c.signal {
            Some(sig) => format!("STOP THROUGH THE ENGINE with {sig}"),
            None => "STOP THROUGH THE ENGINE with its own stop signal".to_string(),
        };
        self.human_verdict(out, &c.verdict, &stop);
    }

    /// The decision (`reap` in the words of what reaping does here), the
    /// rule that decided, and the reasons, each escaped.
    fn human_verdict(&self, out: &mut String, v: &Verdict, reap: &str) {
        let st = self.style;
        let decision = match v.decision {
            Decision::Reap => st.red(reap),
            Decision::Keep => st.yellow("KEEP"),
            Decision::Protect => st.green("PROTECT"),
        };
        let rule = v
            .rule
            .as_deref()
            .map(|r| format!(" (rule '{}')", term(r)))
            .unwrap_or_default();
        let _ = writeln!(out, "    {decision}{rule}");
        for r in &v.reasons {
            let _ = writeln!(out, "      - {}", term(r));
        }
    }

    /// What happened, in time order (ms since the start), not yet escaped.
    fn events(&self) -> Vec<(f64, String)> {
        let mut events: Vec<(f64, String)> = Vec::new();
        for c in self.container_stops() {
            let what = match (&c.error, c.stopped_at_ms) {
                (Some(e), _) => {
                    format!(
                        "container {}: {e}",
                        reaper::holders::container::short(&c.id)
                    )
                }
                (None, Some(_)) => format!(
                    "container {} stopped by the engine with {} ({})",
                    reaper::holders::container::short(&c.id),
                    c.signal.as_deref().unwrap_or("its stop signal"),
                    c.state_after.as_deref().unwrap_or("?")
                ),
                (None, None) => continue,
            };
            events.push((c.stopped_at_ms.unwrap_or_default() as f64, what));
        }
        for t in self.targets() {
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
        events
    }

    /// The intent, before the first signal: one `in_progress` reaping
    /// record per target. A run that cannot write it signals nothing.
    fn intent(&mut self) -> Result<()> {
        let Some(w) = self.journal.as_mut() else {
            return Ok(());
        };
        for r in records::reapings(
            self.plan,
            Ran::Starting,
            Holders::Targets,
            None,
            None,
            false,
        ) {
            w.append(&Record::new("proc", r.body)).with_context(|| {
                "cannot write the reaping's intent to the journal; nothing was signalled. Free space there, or fix the path".to_string()
            })?;
        }
        Ok(())
    }

    /// One Reaping record per holder judged: the outcome.
    fn journal(
        &self,
        w: &mut JournalWriter,
        outcome: &str,
        free_at: Option<String>,
        elapsed_ms: f64,
    ) -> Result<()> {
        let ran = match &self.done {
            Some(done) => Ran::Executed(done),
            None => Ran::Skipped(Outcome::from(outcome)),
        };
        let elapsed_ms = Some(elapsed_ms.round() as u64);
        for r in records::reapings(
            self.plan,
            ran,
            Holders::All,
            free_at,
            elapsed_ms,
            self.args.run.dry_run,
        ) {
            // The error names the path and the cause (ENOSPC, EROFS).
            w.append(&Record::new("proc", r.body))?;
        }
        Ok(())
    }

    /// Each target's story (none when the plan was not executed).
    fn targets(&self) -> &[TargetReport] {
        self.done
            .as_ref()
            .map(|d| d.targets.as_slice())
            .unwrap_or_default()
    }

    /// Each container target's stop (none when the plan was not executed).
    fn container_stops(&self) -> &[ContainerStop] {
        self.done
            .as_ref()
            .map(|d| d.containers.as_slice())
            .unwrap_or_default()
    }
}

/// argv as a shell reads it back, every word safe on a terminal.
fn argv_words(argv: &[String]) -> String {
    argv.iter()
        .map(|a| shell_word(a))
        .collect::<Vec<_>>()
        .join(" ")
}

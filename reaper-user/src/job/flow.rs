//! job -> **flow**: `job start` and `job end`, one [`Plan`] per port.
//!
//! Both flows judge with a policy made of the user's file (its protections
//! and rules first) and a built-in part:
//! - `job start`: holders of a job that is still running are protected
//!   (two jobs need one port: exit 4, the operator must know); a holder of
//!   a job that has ended is stale (rule "ended job"). A holder with no
//!   job is judged by the file's rules alone, as `free` judges it.
//! - `job end`: processes of any other job are protected; a process of
//!   this job (by its environment, its ancestry, or a container charged to
//!   it) is stopped (rule "this job", with its tree). A rule of the file
//!   that keeps something (action = "report") keeps it.
//!
//! The hook's own ancestors (the runner, its worker, the step's shell),
//! reaper itself, init and the engine's programs are the policy's built-in
//! protections and hold whatever the rules say.

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use serde::Serialize;

use crate::error::Exit;
use crate::holders::job::{Job, Table};
use crate::holders::{self, Holding, Process, Query, Socket};
use crate::journal::ContainerStop;
use crate::policy::{Context, JobState, Matcher, NetnsSpec, Policy, Protect, Rule};
use crate::reap::plan::{Judged, JudgedContainer, Plan, Role, Tree};
use crate::reap::{self, BindProbe, StopOptions, TargetOutcome, TargetReport};
use crate::vocab::{Action, Decision, Family, Proto};

use super::members::{self, Unattributed};

/// `start` or `end`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Phase {
    Start,
    End,
}

impl Phase {
    pub fn as_str(self) -> &'static str {
        match self {
            Phase::Start => "start",
            Phase::End => "end",
        }
    }
}

/// How a run is asked to act.
#[derive(Clone, Debug)]
pub struct Options {
    pub dry_run: bool,
    /// `job end --all`: stop the job's processes that hold no port too.
    pub all: bool,
    pub grace: Duration,
    pub deadline: Duration,
    /// The user's policy file, when given.
    pub policy: Option<Policy>,
    /// The daemon's claims, when one answered (see [`super::daemon`]).
    pub daemon: Option<super::daemon::Ledger>,
}

/// How one port ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortOutcome {
    /// It bound at once: nothing held it.
    AlreadyFree,
    /// Its holders were stopped and it binds again.
    Freed,
    /// Still held at the deadline.
    StillHeld,
    /// The plan refuses: nothing was signalled.
    Refused,
    /// `job end`: the policy keeps the job's own holders of it (a rule
    /// with `action = "report"`, or a protection): nothing was signalled,
    /// and that is no failure.
    Kept,
    /// `--dry-run`: what would be done.
    DryRun,
}

/// One port: its holders, their verdicts, what was done.
#[derive(Clone, Debug, Serialize)]
pub struct PortResult {
    pub port: u16,
    pub proto: Proto,
    pub holders: Vec<Judged>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub containers: Vec<JudgedContainer>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub container_stops: Vec<ContainerStop>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub targets: Vec<TargetReport>,
    pub outcome: PortOutcome,
    pub message: String,
}

/// A process of the job that holds no port.
#[derive(Clone, Debug, Serialize)]
pub struct Idle {
    pub pid: u32,
    pub comm: String,
    pub cmdline: Vec<String>,
    pub started_at: String,
    /// `--all`: what stopping it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub stopped: Option<TargetReport>,
    /// Why it was not stopped (`--all` refused by the policy).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub kept: Option<String>,
}

/// The whole run, as `--json` prints it and the journal keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct JobRun {
    pub phase: Phase,
    pub job: Job,
    /// Where the holders' jobs came from: `scan` (the daemon's claims: `daemon`).
    pub source: &'static str,
    /// What that source cannot see.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source_note: Option<String>,
    /// Which path read the process table (parents, start times, jobs):
    /// `bpf_iter` (the kernel's task iterator, one read) or `proc` (a walk
    /// of /proc); absent when no table was needed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_source: Option<&'static str>,
    /// Why the iterator was not used, when it was not.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub process_source_error: Option<String>,
    pub dry_run: bool,
    pub ports: Vec<PortResult>,
    /// Holders a scan cannot charge to this job (never signalled).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub unattributed: Vec<Unattributed>,
    /// `job end`: the job's processes that hold no port.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub idle: Vec<Idle>,
    pub outcome: &'static str,
    pub message: String,
    pub exit: i32,
    pub elapsed_ms: f64,
}

impl JobRun {
    /// Names the path that read the process table, when one was read.
    fn set_table(&mut self, table: Option<&Table>) {
        if let Some(t) = table {
            self.process_source = Some(t.source);
            self.process_source_error = t.source_error.clone();
        }
    }

    /// The exit status: 4 when a port was refused, 3 when one is still
    /// held, else 0.
    pub fn status(&self) -> Exit {
        if self.ports.iter().any(|p| p.outcome == PortOutcome::Refused) {
            Exit::Refused
        } else if self
            .ports
            .iter()
            .any(|p| p.outcome == PortOutcome::StillHeld)
        {
            Exit::StillHeld
        } else {
            Exit::Ok
        }
    }
}

/// The name of the built-in rules, in verdicts and the journal.
pub const RULE_ENDED: &str = "ended job";
pub const RULE_THIS_JOB: &str = "this job";
pub const PROTECT_RUNNING: &str = "running job";
pub const PROTECT_OTHER: &str = "another job";

fn job_matcher(state: JobState) -> Matcher {
    Matcher {
        job: Some(state),
        netns: NetnsSpec::Caller,
        ..Matcher::default()
    }
}

/// The policy of a phase: the user's protections and rules first, then the
/// built-in part (see the module's doc).
pub fn policy(phase: Phase, user: Option<Policy>) -> Policy {
    let (protect, rule) = match phase {
        Phase::Start => (
            (PROTECT_RUNNING, JobState::Running),
            (RULE_ENDED, JobState::Ended),
        ),
        Phase::End => (
            (PROTECT_OTHER, JobState::Other),
            (RULE_THIS_JOB, JobState::Current),
        ),
    };
    let builtin = Policy {
        rules: vec![Rule {
            name: rule.0.into(),
            matcher: job_matcher(rule.1),
            action: Action::Reap,
            tree: true,
            signal: None,
            clients: false,
        }],
        protects: vec![Protect {
            name: protect.0.into(),
            matcher: job_matcher(protect.1),
        }],
    };
    match user {
        Some(u) => {
            // The built-in protection first: no rule may signal a running
            // job's process (start) or another job's (end).
            let mut p = Policy {
                rules: Vec::new(),
                protects: builtin.protects.clone(),
            };
            p = p.combine(u);
            p.rules.extend(builtin.rules);
            p
        }
        None => builtin,
    }
}

/// `reaper job start`: every port in `ports` must bind.
pub fn start(job: Job, ports: &[u16], opts: &Options) -> anyhow::Result<JobRun> {
    let t0 = Instant::now();
    let mut ctx = context(&job)?;
    let policy = policy(Phase::Start, opts.policy.clone());
    // Read only when a port has holders: a hook with nothing to do is cheap.
    let mut table: Option<Table> = None;
    let mut results = Vec::new();
    for &port in ports {
        if let Some(d) = &opts.daemon {
            // No claim in the daemon's ledger and the port binds: nothing
            // holds it, and nothing was scanned.
            if !d.claimed(port, Proto::Tcp, ctx.netns) {
                if let Some(r) = bound_at_once(&ctx, port) {
                    results.push(r);
                    continue;
                }
            }
        }
        let query = Query {
            port: Some(port),
            proto: Some(Proto::Tcp),
            netns: Some(ctx.netns),
            listening_only: false,
        };
        let mut scan = holders::scan(&query)?;
        if scan.holdings.iter().any(|h| !h.processes.is_empty()) {
            let t = table.get_or_insert_with(Table::read);
            members::charge(&mut scan.holdings, t);
            if let Some(d) = &opts.daemon {
                d.apply(&mut scan.holdings, &job, Some(t));
            }
        }
        results.push(settle(
            &scan.holdings,
            Proto::Tcp,
            port,
            &policy,
            &mut ctx,
            opts,
            t0,
            None,
        ));
    }
    let mut run = finish(Phase::Start, job, results, Vec::new(), Vec::new(), opts, t0);
    run.set_table(table.as_ref());
    Ok(run)
}

/// A port that binds now, without a scan; None when it does not.
fn bound_at_once(ctx: &Context, port: u16) -> Option<PortResult> {
    let probes = Plan::default().probes(ctx, Proto::Tcp, port);
    reap::wait_bindable(&probes, Instant::now()).free_at?;
    Some(PortResult {
        port,
        proto: Proto::Tcp,
        holders: Vec::new(),
        containers: Vec::new(),
        container_stops: Vec::new(),
        targets: Vec::new(),
        outcome: PortOutcome::AlreadyFree,
        message: format!("port {port}/tcp is free"),
    })
}

/// `reaper job end`: what the job left holding a port is stopped.
pub fn end(job: Job, opts: &Options) -> anyhow::Result<JobRun> {
    let t0 = Instant::now();
    let mut ctx = context(&job)?;
    let policy = policy(Phase::End, opts.policy.clone());
    let daemon = opts.daemon.as_ref();
    // The process table: always on the scan path; with the daemon, only
    // when a container may be the job's (its start time ties it) or the
    // job's processes that hold no port are to be stopped.
    let table = match daemon {
        None => Some(Table::read()),
        Some(d) => (d.has_proxy() || opts.all).then(Table::read),
    };
    let found = jobs_ports(&job, &ctx, table.as_ref(), daemon)?;

    // Then each of those ports whole: every holder is judged (a port one of
    // the job's processes shares with another program is not the job's
    // alone).
    let mut results = Vec::new();
    for &(port, proto) in &found.ports {
        let q = Query {
            port: Some(port),
            proto: Some(proto),
            netns: Some(ctx.netns),
            listening_only: true,
        };
        let mut scan = holders::scan_knowing(&q, table.as_ref())?;
        if let Some(table) = &table {
            members::charge(&mut scan.holdings, table);
        }
        if let Some(d) = daemon {
            d.apply(&mut scan.holdings, &job, table.as_ref());
        }
        if let Some(table) = &table {
            members::charge_containers(&mut scan.holdings, table, &job);
        }
        results.push(settle(
            &scan.holdings,
            proto,
            port,
            &policy,
            &mut ctx,
            opts,
            t0,
            Some(&job),
        ));
    }

    let mut skip = ctx.caller_chain.clone();
    skip.push(ctx.reaper_pid);
    let idle = match &table {
        Some(table) => idle(
            table,
            &job,
            &found.holding,
            &skip,
            &policy,
            &mut ctx,
            opts,
            t0,
        ),
        None => Vec::new(),
    };
    let mut run = finish(Phase::End, job, results, found.unattributed, idle, opts, t0);
    run.set_table(table.as_ref());
    Ok(run)
}

/// What `job end` found of the job before judging: its ports, the holders
/// it cannot charge, and every pid holding one of the candidates' sockets.
struct Found {
    ports: BTreeSet<(u16, Proto)>,
    unattributed: Vec<Unattributed>,
    holding: Vec<u32>,
}

/// The job's ports: those whose holders the table charges to it (the
/// sockets of its processes and of those that may be its, walked first),
/// and those whose claims the daemon charged to it when they were made.
fn jobs_ports(
    job: &Job,
    ctx: &Context,
    table: Option<&Table>,
    daemon: Option<&super::daemon::Ledger>,
) -> anyhow::Result<Found> {
    let query = Query {
        port: None,
        proto: None,
        netns: Some(ctx.netns),
        listening_only: true,
    };
    let mut found = Found {
        ports: BTreeSet::new(),
        unattributed: Vec::new(),
        holding: Vec::new(),
    };
    if let Some(table) = table {
        let mut first = holders::scan_of(&query, &members::candidates(table, job), Some(table))?;
        first.holdings.retain(|h| !h.processes.is_empty());
        members::charge(&mut first.holdings, table);
        if let Some(d) = daemon {
            d.apply(&mut first.holdings, job, Some(table));
        }
        found.unattributed = members::charge_containers(&mut first.holdings, table, job);
        found
            .unattributed
            .extend(members::unattributed(&first.holdings, table, job));
        found.ports.extend(
            first
                .holdings
                .iter()
                .filter(|h| members::holds_for(h, job))
                .map(|h| (h.socket.port, h.socket.proto)),
        );
        found.holding = first
            .holdings
            .iter()
            .flat_map(|h| h.processes.iter().map(|p| p.pid))
            .collect();
    }
    if let Some(d) = daemon {
        found.ports.extend(d.ports_of(job, ctx.netns));
        found.unattributed.extend(d.ambiguous(job, ctx.netns));
        found.unattributed.sort_by_key(|u| (u.port, u.pid));
        found.unattributed.dedup_by_key(|u| (u.port, u.pid));
    }
    Ok(found)
}

/// reaper's context, acting for `job` (the `current` job of the policy).
fn context(job: &Job) -> anyhow::Result<Context> {
    let mut ctx = Context::current(None)
        .map_err(|e| anyhow::anyhow!("cannot read reaper's own process from /proc: {e}"))?;
    let mut mine = job.clone();
    mine.ended = Some(false);
    ctx.workload.own_job = Some(mine);
    Ok(ctx)
}

/// `job end`: whether a refusing plan only keeps the job's own processes
/// (and containers) by the policy, as a rule that keeps a job's deliberate
/// daemon does: the port is then `kept`, not refused. A holder of another
/// job, or of no job, that the policy protects is a refusal.
fn kept_by_policy(plan: &Plan, keeper: Option<&Job>) -> bool {
    let Some(job) = keeper else {
        return false;
    };
    plan.unjudgeable().is_empty()
        && plan.refused().iter().all(|j| {
            members::is_member(&j.process, job) && j.verdict.rule.as_deref() != Some(PROTECT_OTHER)
        })
}

/// One port: plan, refuse or act, wait until it binds. `keeper`: the job
/// whose own holders a policy may keep (`job end`).
#[allow(clippy::too_many_arguments)]
fn settle(
    holdings: &[Holding],
    proto: Proto,
    port: u16,
    policy: &Policy,
    ctx: &mut Context,
    opts: &Options,
    t0: Instant,
    keeper: Option<&Job>,
) -> PortResult {
    let plan = Plan::build(holdings, policy, ctx, Tree::Rules);
    let mut r = PortResult {
        port,
        proto,
        holders: plan.judged.clone(),
        containers: plan.containers.clone(),
        container_stops: Vec::new(),
        targets: Vec::new(),
        outcome: PortOutcome::AlreadyFree,
        message: String::new(),
    };
    if let Some(why) = plan.refusal() {
        if kept_by_policy(&plan, keeper) {
            r.outcome = PortOutcome::Kept;
            r.message = format!("port {port}/{proto} kept: held by {why}; nothing was signalled");
        } else {
            r.outcome = PortOutcome::Refused;
            r.message = format!(
                "port {port}/{proto} is held by {}; nothing was signalled",
                refusal_words(&plan).unwrap_or(why)
            );
        }
        return r;
    }
    let probes = plan.probes(ctx, proto, port);
    if plan.targets().is_empty() && plan.container_targets().is_empty() {
        return wait_unowned(r, &probes, opts, t0);
    }
    if opts.dry_run {
        r.outcome = PortOutcome::DryRun;
        r.message = format!(
            "port {port}/{proto}: dry run: {}",
            plan.steps_words(opts.grace)
        );
        return r;
    }
    let stop = StopOptions {
        grace: opts.grace,
        deadline: Instant::now() + opts.deadline,
        start: t0,
        pause_fifo: None,
    };
    let done = match reap::execute(&plan, &probes, &stop, &mut |_| {}) {
        Ok(done) => done,
        Err(why) => unreachable!("the plan refused after its refusal was checked: {why}"),
    };
    r.targets = done.targets;
    r.container_stops = done.containers;
    acted(r, done.free_at, done.last_error, t0)
}

/// A port after its plan was carried out: freed (when it bound) or still
/// held, in words.
fn acted(
    mut r: PortResult,
    free_at: Option<Instant>,
    last_error: Option<String>,
    t0: Instant,
) -> PortResult {
    let (port, proto) = (r.port, r.proto);
    match free_at {
        Some(at) => {
            r.outcome = PortOutcome::Freed;
            r.message = format!(
                "port {port}/{proto} free after {} ms ({})",
                reap::ms_since(t0, at).round(),
                what_was_done(&r)
            );
        }
        None => {
            r.outcome = PortOutcome::StillHeld;
            r.message = format!(
                "port {port}/{proto} still held ({}){}",
                last_error.unwrap_or_default(),
                match what_was_done(&r) {
                    w if w.is_empty() => String::new(),
                    w => format!(" after {w}"),
                }
            );
        }
    }
    r
}

/// A refusal in the words an operator of a runner needs: which job holds
/// the port, its pid; else None (the plan's own words serve).
fn refusal_words(plan: &Plan) -> Option<String> {
    let running: Vec<String> = plan
        .refused()
        .iter()
        .filter(|j| j.verdict.rule.as_deref() == Some(PROTECT_RUNNING))
        .map(|j| {
            let job = j.process.job.as_ref().expect("protected as a job's");
            format!(
                "pid {} ({}) of {}, which is still running",
                j.process.pid,
                j.process.comm,
                super::job_words(job)
            )
        })
        .collect();
    (!running.is_empty()).then(|| running.join(", and by "))
}

/// Nothing to signal: the port binds now, or (not a dry run) waits for a
/// timer until the deadline.
fn wait_unowned(
    mut r: PortResult,
    probes: &[BindProbe],
    opts: &Options,
    t0: Instant,
) -> PortResult {
    let (port, proto) = (r.port, r.proto);
    if reap::wait_bindable(probes, Instant::now())
        .free_at
        .is_some()
    {
        r.outcome = PortOutcome::AlreadyFree;
        r.message = format!("port {port}/{proto} is free");
        return r;
    }
    let until = if opts.dry_run {
        Instant::now()
    } else {
        Instant::now() + opts.deadline
    };
    let w = reap::wait_bindable(probes, until);
    match w.free_at {
        Some(at) => {
            r.outcome = PortOutcome::Freed;
            r.message = format!(
                "port {port}/{proto} free after {} ms; nothing was signalled",
                reap::ms_since(t0, at).round()
            );
        }
        None => {
            r.outcome = PortOutcome::StillHeld;
            r.message = format!(
                "port {port}/{proto} cannot be bound ({}) and no process reaper can see holds it; nothing was signalled",
                w.last_error.unwrap_or_default()
            );
        }
    }
    r
}

/// "pid 12 exited on SIGTERM after 3 ms, container web stopped through the engine".
fn what_was_done(r: &PortResult) -> String {
    let mut parts: Vec<String> = r
        .container_stops
        .iter()
        .map(|c| match &c.error {
            None => format!(
                "container {} stopped through the engine",
                c.name.as_deref().unwrap_or(&c.id)
            ),
            Some(e) => format!("container {}: {e}", c.name.as_deref().unwrap_or(&c.id)),
        })
        .collect();
    parts.extend(r.targets.iter().map(target_words));
    parts.join(", ")
}

/// One target's fate in words.
pub fn target_words(t: &TargetReport) -> String {
    match &t.outcome {
        TargetOutcome::Exited { by, after_ms } => {
            format!("pid {} exited on {by} after {after_ms} ms", t.pid)
        }
        TargetOutcome::Gone => format!("pid {} was already gone", t.pid),
        TargetOutcome::IdentityChanged { changes } => format!(
            "pid {} not signalled: its identity changed ({})",
            t.pid,
            changes.join("; ")
        ),
        TargetOutcome::StillRunning => format!("pid {} is still running", t.pid),
        TargetOutcome::Failed { error } => format!("pid {}: {error}", t.pid),
    }
}

/// The job's processes that hold no port: listed; with `--all`, each
/// judged and stopped through a plan of its own.
#[allow(clippy::too_many_arguments)]
fn idle(
    table: &Table,
    job: &Job,
    holding: &[u32],
    skip: &[u32],
    policy: &Policy,
    ctx: &mut Context,
    opts: &Options,
    t0: Instant,
) -> Vec<Idle> {
    let mut out = Vec::new();
    let mut reader = holders::process::Reader::new();
    for pid in members::idle(table, job, holding, skip) {
        let Some(mut p) = reader.process(pid) else {
            continue;
        };
        p.job = members::job_of(table, pid);
        let mut idle = Idle {
            pid,
            comm: p.comm.clone(),
            cmdline: p.cmdline.clone(),
            started_at: p.started_at.clone(),
            stopped: None,
            kept: None,
        };
        if opts.all {
            let plan = portless_plan(p, policy, ctx);
            if let Some(why) = plan.refusal() {
                idle.kept = Some(why);
            } else if !opts.dry_run {
                let stop = StopOptions {
                    grace: opts.grace,
                    deadline: Instant::now() + opts.deadline,
                    start: t0,
                    pause_fifo: None,
                };
                if let Ok(done) = reap::execute(&plan, &[], &stop, &mut |_| {}) {
                    idle.stopped = done.targets.into_iter().next();
                }
            }
        }
        out.push(idle);
    }
    out
}

/// The plan for a process that holds no port: judged by the same policy
/// (no socket to name: the socket words are dropped from its reasons).
fn portless_plan(p: Process, policy: &Policy, ctx: &mut Context) -> Plan {
    if reap::ProcStat::read(p.pid).is_ok_and(|s| s.is_kernel_thread()) {
        ctx.kernel_threads.insert(p.pid);
    }
    let none = Socket {
        netns: ctx.netns,
        proto: Proto::Tcp,
        family: Family::Ipv4,
        addr: std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED),
        port: 0,
        peer: None,
        state: crate::vocab::SocketState::Unknown,
        inode: 0,
        cookie: 0,
        uid: p.uid,
        dual_stack: false,
        timer_ms: None,
    };
    let mut verdict = policy.judge(&p, &none, ctx);
    verdict.reasons.retain(|r| !r.starts_with("holds "));
    verdict.reasons.push("holds no port".into());
    Plan {
        judged: vec![Judged {
            process: p,
            sockets: Vec::new(),
            role: Role::Holder,
            signal: reap::plan::stop_signal(policy, &verdict),
            verdict,
        }],
        ..Plan::default()
    }
}

fn finish(
    phase: Phase,
    job: Job,
    ports: Vec<PortResult>,
    unattributed: Vec<Unattributed>,
    idle: Vec<Idle>,
    opts: &Options,
    t0: Instant,
) -> JobRun {
    let (source, source_note) = match &opts.daemon {
        Some(d) => (
            "daemon",
            Some(format!(
                "asked the daemon (tier {}): it charged each claim to its job when the claim was made, so a server that cleared its variables or left its parent is still its job's{}",
                d.tier,
                if phase == Phase::End && !opts.all && !d.has_proxy() {
                    "; the job's processes that hold no port are listed with --all (a walk of every process)"
                } else {
                    ""
                }
            )),
        ),
        None => (
            "scan",
            (phase == Phase::End).then(|| {
                "no daemon: the holders' jobs come from their environment and ancestry now; a server that cleared its variables after its parent died cannot be charged to its job".to_string()
            }),
        ),
    };
    let mut run = JobRun {
        phase,
        job,
        source,
        source_note,
        process_source: None,
        process_source_error: None,
        dry_run: opts.dry_run,
        ports,
        unattributed,
        idle,
        outcome: "",
        message: String::new(),
        exit: 0,
        elapsed_ms: 0.0,
    };
    let exit = run.status();
    run.exit = exit.code();
    run.outcome = match exit {
        Exit::Refused => "refused",
        Exit::StillHeld => "still_held",
        _ if opts.dry_run => "dry_run",
        _ => "ok",
    };
    run.message = summary(&run);
    run.elapsed_ms = reap::ms_since(t0, Instant::now());
    run
}

/// The one-line summary.
fn summary(run: &JobRun) -> String {
    let who = super::job_words(&run.job);
    let n = |o: PortOutcome| run.ports.iter().filter(|p| p.outcome == o).count();
    let ports = run.ports.len();
    let mut s = match run.phase {
        Phase::Start if ports == 0 => format!("job start for {who}: no ports to check (give --port, or `[job] ports` in the daemon's config)"),
        Phase::Start => format!(
            "job start for {who}: {} of {ports} port{} bind",
            n(PortOutcome::AlreadyFree) + n(PortOutcome::Freed),
            if ports == 1 { "" } else { "s" }
        ),
        Phase::End if ports == 0 => format!("job end for {who}: the job left no port held"),
        Phase::End => format!(
            "job end for {who}: {ports} port{} held by the job, {} freed",
            if ports == 1 { "" } else { "s" },
            n(PortOutcome::Freed) + n(PortOutcome::AlreadyFree)
        ),
    };
    let extra: Vec<String> = [
        (n(PortOutcome::Refused) > 0).then(|| format!("{} refused", n(PortOutcome::Refused))),
        (n(PortOutcome::Kept) > 0).then(|| format!("{} kept by the policy", n(PortOutcome::Kept))),
        (n(PortOutcome::StillHeld) > 0)
            .then(|| format!("{} still held", n(PortOutcome::StillHeld))),
        (n(PortOutcome::DryRun) > 0)
            .then(|| format!("{} would be freed (dry run)", n(PortOutcome::DryRun))),
        (!run.unattributed.is_empty())
            .then(|| format!("{} holder(s) not attributable", run.unattributed.len())),
        (!run.idle.is_empty()).then(|| {
            let stopped = run.idle.iter().filter(|i| i.stopped.is_some()).count();
            format!(
                "{} process(es) of the job hold no port ({stopped} stopped)",
                run.idle.len()
            )
        }),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !extra.is_empty() {
        s.push_str(&format!("; {}", extra.join(", ")));
    }
    s
}

/// Whether a verdict was the built-in rule's or a protection's.
pub fn decided_by_builtin(v: &crate::policy::Verdict) -> bool {
    matches!(
        v.rule.as_deref(),
        Some(RULE_ENDED | RULE_THIS_JOB | PROTECT_RUNNING | PROTECT_OTHER)
    ) && v.decision != Decision::Keep
}

impl JobRun {
    /// The journal's `job` record of this run.
    pub fn record(&self) -> crate::journal::JobRecord {
        use crate::journal::job::{JobPort, Leftover};
        use crate::journal::SignalRecord;
        let mut leftovers = Vec::new();
        for p in &self.ports {
            for c in &p.containers {
                let stop = p.container_stops.iter().find(|s| s.id == c.container.id);
                leftovers.push(Leftover {
                    port: p.port,
                    proto: p.proto,
                    pid: None,
                    comm: None,
                    container: Some(c.container.words()),
                    job: c.container.listeners.iter().find_map(|l| l.job.clone()),
                    decision: c.verdict.decision,
                    rule: c.verdict.rule.clone(),
                    signals: Vec::new(),
                    done: stop.map(|s| match &s.error {
                        None => "stopped through the engine".to_string(),
                        Some(e) => e.clone(),
                    }),
                });
            }
            for j in &p.holders {
                let t = p.targets.iter().find(|t| t.pid == j.process.pid);
                leftovers.push(Leftover {
                    port: p.port,
                    proto: p.proto,
                    pid: Some(j.process.pid),
                    comm: Some(j.process.comm.clone()),
                    container: None,
                    job: j.process.job.clone(),
                    decision: j.verdict.decision,
                    rule: j.verdict.rule.clone(),
                    signals: t
                        .map(|t| t.signals.iter().map(SignalRecord::from).collect())
                        .unwrap_or_default(),
                    done: t.map(target_words),
                });
            }
        }
        crate::journal::JobRecord {
            phase: self.phase.as_str().into(),
            job: self.job.clone(),
            via: self.source.into(),
            ports: self
                .ports
                .iter()
                .map(|p| JobPort {
                    port: p.port,
                    proto: p.proto,
                    outcome: serde_json::to_value(p.outcome)
                        .ok()
                        .and_then(|v| v.as_str().map(String::from))
                        .unwrap_or_default(),
                })
                .collect(),
            leftovers,
            unattributed: self
                .unattributed
                .iter()
                .map(|u| {
                    let who = match (&u.pid, &u.comm, &u.container) {
                        (Some(pid), Some(comm), _) => format!("pid {pid} {comm}"),
                        (_, _, Some(c)) => format!("container {c}"),
                        _ => "a holder".into(),
                    };
                    format!("{who} holds {}/{}: {}", u.port, u.proto, u.reason)
                })
                .collect(),
            outcome: self.outcome.into(),
            exit: self.exit,
            message: self.message.clone(),
            dry_run: self.dry_run,
            elapsed_ms: Some(self.elapsed_ms.round() as u64),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_users_rules_come_before_the_builtin_rule_and_after_its_protection() {
        let user = Policy::from_toml_str(
            "[[rule]]\nname = \"keep db\"\naction = \"report\"\nmatch = { exe = \"postgres\" }\n",
        )
        .unwrap();
        let p = policy(Phase::End, Some(user));
        let rules: Vec<&str> = p.rules.iter().map(|r| r.name.as_str()).collect();
        assert_eq!(rules, ["keep db", RULE_THIS_JOB]);
        assert_eq!(p.protects[0].name, PROTECT_OTHER);
        let p = policy(Phase::Start, None);
        assert_eq!(p.rules[0].name, RULE_ENDED);
        assert_eq!(p.protects[0].name, PROTECT_RUNNING);
    }
}

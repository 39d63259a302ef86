//! `reaper job start` / `reaper job end`: parse, call the library's flow
//! ([`crate::job::flow`]), journal, print (human, `--json`, and the
//! runner's Markdown job summary when it offers one).

use std::io::Write as _;

use anyhow::Context as _;

use super::Result;

use crate::cli::{Global, JobCommand, JobCommon};
use reaper::error::{bad_input, Exit};
use reaper::job::{self, flow, render};
use reaper::journal::writer::{JournalWriter, WriterOptions};
use reaper::journal::{Body, Record};
use reaper::output;
use reaper::policy::Policy;
use reaper::text::term;

pub fn run(global: &Global, cmd: JobCommand) -> Result<Exit> {
    match cmd {
        JobCommand::Start(a) => {
            let mut ports = Vec::new();
            for p in &a.port {
                ports.extend(job::ports::parse_list(p).map_err(bad_input)?);
            }
            ports.sort_unstable();
            ports.dedup();
            let (job, opts, journal) = prepare(global, &a.common, false)?;
            if a.port.is_empty() {
                ports = config_ports(a.config.as_deref(), opts.daemon.as_ref())?;
            }
            let run = flow::start(job, &ports, &opts)?;
            emit(&run, &a.common, journal, opts.daemon.is_some())
        }
        JobCommand::End(a) => {
            let (job, opts, journal) = prepare(global, &a.common, a.all)?;
            let run = flow::end(job, &opts)?;
            emit(&run, &a.common, journal, opts.daemon.is_some())
        }
    }
}

/// The job, the options and the journal, all checked before anything is
/// scanned or signalled.
fn prepare(
    global: &Global,
    c: &JobCommon,
    all: bool,
) -> Result<(
    reaper::holders::job::Job,
    flow::Options,
    Option<JournalWriter>,
)> {
    let job = job::find(c.job.as_deref(), c.provider.as_deref()).map_err(bad_input)?;
    let policy = match &c.policy {
        Some(path) => Some(Policy::from_file(path).map_err(|e| bad_input(e.to_string()))?),
        None => None,
    };
    let journal = match &c.run.journal {
        Some(path) => Some(
            JournalWriter::open(path, WriterOptions::default()).with_context(|| {
                format!(
                    "cannot write the journal (--journal / REAPER_JOURNAL = {}); nothing was signalled. Give a path in a directory root owns, or leave out --journal",
                    path.display()
                )
            })?,
        ),
        None => None,
    };
    let opts = flow::Options {
        dry_run: c.run.dry_run,
        all,
        grace: c.grace,
        deadline: c.deadline,
        policy,
        daemon: ask_daemon(global),
    };
    Ok((job, opts, journal))
}

/// `job start` without `--port`: the config's `[job] ports` (the file
/// given, else the default one when it exists, else the running daemon's).
/// A config that does not load is bad input: the hook must not pass
/// silently.
fn config_ports(
    given: Option<&std::path::Path>,
    daemon: Option<&reaper::job::daemon::Ledger>,
) -> Result<Vec<u16>> {
    use reaper::daemon::config::{Config, DEFAULT_CONFIG};
    let default = std::path::Path::new(DEFAULT_CONFIG);
    let path = match given {
        Some(p) => Some(p),
        None => default.exists().then_some(default),
    };
    match path {
        Some(p) => Ok(Config::load(p)
            .map_err(|e| bad_input(format!("{e} (job start reads its [job] ports)")))?
            .job
            .ports),
        None => Ok(daemon.map(|d| d.job_ports.clone()).unwrap_or_default()),
    }
}

/// The daemon's claims when one answers on its control socket (not with
/// `--no-bpf`); a daemon that fails to answer is said, and the run scans.
fn ask_daemon(global: &Global) -> Option<reaper::job::daemon::Ledger> {
    use reaper::job::daemon::{ask, Asked};
    if global.no_bpf {
        return None;
    }
    let path = reaper::control::default_path();
    match ask(&path) {
        Asked::Ledger(l) => Some(l),
        Asked::NoDaemon => None,
        Asked::Failed(why) => {
            eprintln!(
                "reaper: asking the daemon at {} failed: {}; scanning instead",
                path.display(),
                term(&why)
            );
            None
        }
    }
}

/// Journal (and the daemon's, when it answered), job summary, then stdout.
fn emit(
    run: &flow::JobRun,
    c: &JobCommon,
    journal: Option<JournalWriter>,
    daemon: bool,
) -> Result<Exit> {
    let mut exit = run.status();
    let told = daemon.then(|| tell_daemon(run));
    if let Some(mut w) = journal {
        let rec = Record::new("proc", Body::Job(Box::new(run.record())));
        if let Err(e) = w.append(&rec) {
            eprintln!(
                "reaper: the journal record of this run was NOT written ({e}): free space there, or fix the path"
            );
            if exit == Exit::Ok {
                exit = Exit::Unrecorded;
            }
        }
    }
    step_summary(run);
    if c.run.json {
        output::json_line(run)?;
    } else {
        let mut text = render::human(run);
        if let Some(Some(journal)) = &told {
            text.push_str(&format!(
                "the daemon journals this run in {}\n",
                term(journal)
            ));
        }
        output::print(&text)?;
    }
    if exit != Exit::Ok {
        eprintln!("reaper: {}", term(&run.message));
        for p in run.ports.iter().filter(|p| {
            matches!(
                p.outcome,
                flow::PortOutcome::Refused | flow::PortOutcome::StillHeld
            )
        }) {
            eprintln!("reaper: {}", term(&p.message));
        }
    }
    Ok(exit)
}

/// Hands the run's record to the daemon, which journals and counts it;
/// the daemon's journal path when it took it (a failure is said on
/// stderr: the run itself stands).
fn tell_daemon(run: &flow::JobRun) -> Option<String> {
    let request = reaper::control::Request::Job {
        record: Box::new(run.record()),
    };
    match reaper::control::query(&reaper::control::default_path(), &request) {
        Ok(Some(r)) if r.ok => Some(r.journal.unwrap_or_else(|| "its journal".into())),
        Ok(Some(r)) => {
            eprintln!(
                "reaper: the daemon did not record this run: {}",
                term(r.error.as_deref().unwrap_or("refused"))
            );
            None
        }
        Ok(None) => {
            eprintln!("reaper: the daemon stopped answering: this run is not in its journal");
            None
        }
        Err(e) => {
            eprintln!(
                "reaper: the daemon did not record this run: {}",
                term(&format!("{e:#}"))
            );
            None
        }
    }
}

/// GitHub's job summary: appended to $GITHUB_STEP_SUMMARY when it is set.
fn step_summary(run: &flow::JobRun) {
    let Some(path) = std::env::var_os("GITHUB_STEP_SUMMARY").filter(|p| !p.is_empty()) else {
        return;
    };
    let md = render::markdown(run);
    let res = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&path)
        .and_then(|mut f| f.write_all(md.as_bytes()));
    if let Err(e) = res {
        eprintln!(
            "reaper: cannot append the job summary to GITHUB_STEP_SUMMARY ({}): {e}",
            term(&path.to_string_lossy())
        );
    }
}

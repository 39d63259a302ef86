//! journal -> **report**: `reaper report`.
//!
//! Parses the window and filters, reads the journals (the daemon's by
//! default, or the built-in demo) and writes the report where asked.
//! The work is in `reaper::report`.

use std::io::Write;
use std::path::PathBuf;

use anyhow::Context;

use super::Result;

use crate::cli::{Global, ReportArgs};
use reaper::error::{bad_input, Exit};
use reaper::journal::reader::JournalReader;
use reaper::journal::DEFAULT_JOURNAL;
use reaper::report::{self, Filter, Limits};

pub fn run(global: &Global, args: ReportArgs) -> Result<Exit> {
    let _ = global;
    let filter = filter(&args)?;
    let report = if args.demo {
        if !args.journal.is_empty() {
            return Err(bad_input(
                "--demo reads the built-in example journal: leave out --journal",
            ));
        }
        report::build_from(
            vec![(
                report::DEMO_NAME.to_string(),
                report::DEMO_JOURNAL.as_bytes(),
            )],
            filter,
            Limits::default(),
        )?
    } else {
        let mut reader = JournalReader::open(&journal_paths(&args)?)?;
        let _progress = reaper::progress::Progress::start(
            "reading journal",
            "records",
            &reaper::progress::RECORDS_READ,
        );
        report::build(&mut reader, filter, Limits::default())?
    };
    write(&report, &args)?;
    Ok(Exit::Ok)
}

/// The window and the filters, checked.
fn filter(args: &ReportArgs) -> Result<Filter> {
    let now = chrono::Utc::now();
    let since_ms = args
        .since
        .as_deref()
        .map(|s| report::parse_time("--since", s, now))
        .transpose()?;
    let until_ms = args
        .until
        .as_deref()
        .map(|s| report::parse_time("--until", s, now))
        .transpose()?;
    if let (Some(s), Some(u)) = (since_ms, until_ms) {
        if s >= u {
            return Err(bad_input(format!(
                "--since {} is not before --until {}: the window would be empty",
                args.since.as_deref().unwrap_or_default(),
                args.until.as_deref().unwrap_or_default()
            )));
        }
    }
    Ok(Filter {
        since_ms,
        until_ms,
        port: args.port,
        host: args.host.clone(),
    })
}

/// `--journal` as given, else the running daemon's journal, else the
/// default path (which must exist).
fn journal_paths(args: &ReportArgs) -> Result<Vec<PathBuf>> {
    if !args.journal.is_empty() {
        return Ok(args.journal.clone());
    }
    // A running daemon knows where its journal is; else the default.
    let default = daemon_journal().unwrap_or_else(|| PathBuf::from(DEFAULT_JOURNAL));
    if reaper::journal::reader::rotated_chain(&default).is_err() {
        return Err(bad_input(format!(
            "no journal at {} (is the daemon running here?): pass --journal PATH, or try --demo",
            default.display()
        )));
    }
    Ok(vec![default])
}

/// To `--output`, or to stdout (where a closed pipe is not an error).
fn write(report: &report::Report, args: &ReportArgs) -> Result<()> {
    match &args.output {
        Some(path) => {
            let write = || -> std::io::Result<()> {
                let mut f = std::io::BufWriter::new(std::fs::File::create(path)?);
                report::write(report, args.format, &mut f)?;
                f.flush()
            };
            write().with_context(|| format!("writing the report to {}", path.display()))?;
        }
        None => {
            let stdout = std::io::stdout();
            let mut out = std::io::BufWriter::new(stdout.lock());
            let done = report::write(report, args.format, &mut out).and_then(|_| out.flush());
            match done {
                // A closed pipe (`| head`) is not an error.
                Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
                other => other.context("writing the report to stdout")?,
            }
        }
    }
    Ok(())
}

/// The journal path of the daemon answering on the control socket, if any.
fn daemon_journal() -> Option<PathBuf> {
    let req = reaper::control::Request::Conflicts { limit: 0 };
    match reaper::control::query(&reaper::control::default_path(), &req) {
        Ok(Some(r)) if r.ok => r.journal.map(PathBuf::from),
        _ => None,
    }
}

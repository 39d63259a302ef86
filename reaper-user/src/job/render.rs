//! job -> flow -> **render**: a `reaper job` run for a person (a terminal)
//! and for the runner's job summary (Markdown). What processes chose
//! (comm, argv, container names, job names from their environment) is
//! escaped for each.

use std::fmt::Write as _;

use crate::text::term;
use crate::vocab::Decision;

use super::flow::{target_words, JobRun, PortOutcome, PortResult};

/// The human summary: the job, then per port the holders, their verdicts
/// and what was done, then what could not be charged, then the idle.
pub fn human(run: &JobRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "job {} for {} (from a {})",
        run.phase.as_str(),
        term(&super::job_words(&run.job)),
        run.source
    );
    if let Some(note) = &run.source_note {
        let _ = writeln!(out, "  note: {}", term(note));
    }
    match (run.process_source, &run.process_source_error) {
        (Some("bpf_iter"), _) => {
            let _ = writeln!(out, "  processes: read by the kernel's task iterator");
        }
        (Some(_), Some(why)) => {
            let _ = writeln!(out, "  processes: read from /proc ({})", term(why));
        }
        (Some(_), None) => {
            let _ = writeln!(out, "  processes: read from /proc");
        }
        (None, _) => {}
    }
    for p in &run.ports {
        port_words(&mut out, run, p);
    }
    leftover_words(&mut out, run);
    let _ = writeln!(out, "{}", term(&run.message));
    out
}

/// One port: its outcome, each holder and container with its verdict, and
/// what was done.
fn port_words(out: &mut String, run: &JobRun, p: &PortResult) {
    let _ = writeln!(
        out,
        "port {}/{}: {}",
        p.port,
        p.proto,
        outcome_word(p.outcome)
    );
    for j in &p.holders {
        let job = j
            .process
            .job
            .as_ref()
            .map(|j| format!(" [{}]", super::job_words(j)))
            .unwrap_or_else(|| " [no job]".into());
        let _ = writeln!(
            out,
            "  pid {} {}{}: {}{}",
            j.process.pid,
            term(&j.process.comm),
            term(&job),
            j.verdict.decision.as_str().to_uppercase(),
            j.verdict
                .rule
                .as_deref()
                .map(|r| format!(" (rule '{}')", term(r)))
                .unwrap_or_default()
        );
        for r in &j.verdict.reasons {
            let _ = writeln!(out, "      - {}", term(r));
        }
        if run.phase == super::flow::Phase::Start && j.verdict.decision == Decision::Reap {
            if let Some(job) = &j.process.job {
                let _ = writeln!(
                    out,
                    "      leaked by {}, running since {}",
                    term(&super::job_words(job)),
                    j.process.started_at
                );
            }
        }
    }
    for c in &p.containers {
        let _ = writeln!(
            out,
            "  container {}: {}",
            term(&c.container.words()),
            c.verdict.decision.as_str().to_uppercase()
        );
        for r in &c.verdict.reasons {
            let _ = writeln!(out, "      - {}", term(r));
        }
    }
    let _ = writeln!(out, "  {}", term(&p.message));
}

/// What could not be charged to the job, and the job's processes that hold
/// no port.
fn leftover_words(out: &mut String, run: &JobRun) {
    for u in &run.unattributed {
        let who = match (&u.pid, &u.comm, &u.container) {
            (Some(pid), Some(comm), _) => format!("pid {pid} {comm}"),
            (_, _, Some(c)) => format!("container {c}"),
            _ => "a holder".into(),
        };
        let _ = writeln!(
            out,
            "not attributable: {} holds {}/{}, not signalled: {}",
            term(&who),
            u.port,
            u.proto,
            term(&u.reason)
        );
    }
    for i in &run.idle {
        let done = match (&i.stopped, &i.kept) {
            (Some(t), _) => target_words(t),
            (None, Some(k)) => format!("kept: {k}"),
            (None, None) => "holds no port; `--all` stops it".into(),
        };
        let _ = writeln!(
            out,
            "idle: pid {} {} (since {}): {}",
            i.pid,
            term(&i.comm),
            i.started_at,
            term(&done)
        );
    }
}

fn outcome_word(o: PortOutcome) -> &'static str {
    match o {
        PortOutcome::AlreadyFree => "free",
        PortOutcome::Freed => "freed",
        PortOutcome::StillHeld => "STILL HELD",
        PortOutcome::Refused => "REFUSED",
        PortOutcome::Kept => "kept (by the policy)",
        PortOutcome::DryRun => "dry run",
    }
}

/// A Markdown cell: process text cannot break the table or inject markup.
fn cell(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in term(s).chars() {
        match c {
            '|' | '\\' | '`' | '*' | '_' | '[' | ']' | '<' | '>' | '#' | '!' => {
                out.push('\\');
                out.push(c);
            }
            '\n' | '\r' => out.push(' '),
            c => out.push(c),
        }
    }
    out
}

/// The runner's job summary ($GITHUB_STEP_SUMMARY): one table per run.
pub fn markdown(run: &JobRun) -> String {
    let mut out = String::new();
    let _ = writeln!(
        out,
        "### reaper job {}: {}\n",
        run.phase.as_str(),
        cell(&super::job_words(&run.job))
    );
    if run.ports.is_empty() && run.unattributed.is_empty() {
        let _ = writeln!(out, "{}\n", cell(&run.message));
        return out;
    }
    let _ = writeln!(out, "| Port | Holder | Job | Verdict | Result |");
    let _ = writeln!(out, "|---|---|---|---|---|");
    for p in &run.ports {
        let port = format!("{}/{}", p.port, p.proto);
        let result = cell(&p.message);
        for j in &p.holders {
            let job = j
                .process
                .job
                .as_ref()
                .map(super::job_words)
                .unwrap_or_else(|| "none".into());
            let _ = writeln!(
                out,
                "| {port} | pid {} {} | {} | {} | {result} |",
                j.process.pid,
                cell(&j.process.comm),
                cell(&job),
                j.verdict.decision.as_str()
            );
        }
        for c in &p.containers {
            let _ = writeln!(
                out,
                "| {port} | container {} | | {} | {result} |",
                cell(&c.container.words()),
                c.verdict.decision.as_str()
            );
        }
        if p.holders.is_empty() && p.containers.is_empty() {
            let _ = writeln!(out, "| {port} | | | | {result} |");
        }
    }
    for u in &run.unattributed {
        let who = match (&u.pid, &u.comm, &u.container) {
            (Some(pid), Some(comm), _) => format!("pid {pid} {comm}"),
            (_, _, Some(c)) => format!("container {c}"),
            _ => String::new(),
        };
        let _ = writeln!(
            out,
            "| {}/{} | {} | not attributable | kept | {} |",
            u.port,
            u.proto,
            cell(&who),
            cell(&u.reason)
        );
    }
    let _ = writeln!(out, "\n{}\n", cell(&run.message));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_cell_cannot_break_the_table() {
        assert_eq!(cell("a|b"), "a\\|b");
        assert_eq!(cell("<img src=x>"), "\\<img src=x\\>");
        assert!(!cell("x\ny").contains('\n'));
    }
}

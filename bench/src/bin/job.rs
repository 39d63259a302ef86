//! Benchmark: a runner hook with nothing to do, on a busy host.
//!
//! `reaper job start` and `reaper job end` run before and after every CI
//! job, so their cost when there is nothing to free is paid by every job.
//! Starts N idle processes (default 2,000) with F open files each (default
//! 50), a job (a process carrying RUNNER_TRACKING_ID that holds no port),
//! and one listener of this process (not the job's); then times,
//! interleaved in each round (the order rotates):
//!
//!   reaper --version                                   the spawn floor
//!   reaper job start --port P --job ID --provider github   P is free
//!   reaper job end --job ID --provider github          the job holds nothing
//!
//! The targets (issue 18): <= 20 ms each on the scan path (no daemon).
//! The daemon path (`job end` asking the daemon) is not measured here: it
//! is not built yet.
//!
//! Usage: job [--quick] [--procs N] [--fds F] [--rounds R]   (needs root;
//! runs target/debug/reaper, or $REAPER_BIN).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use reaper_bench::emit;
use reaper_bench::idlers::HostOpts;

/// Runs reaper; returns (wall ms, exit status) and checks it answered 0.
fn timed(reaper: &PathBuf, args: &[String]) -> Result<f64> {
    let t = Instant::now();
    let status = Command::new(reaper)
        .args(args)
        .env_remove("RUNNER_TRACKING_ID")
        .env_remove("GITHUB_STEP_SUMMARY")
        .env_remove("REAPER_JOURNAL")
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running reaper")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("`reaper {}` exited with {status}", args.join(" "));
    }
    Ok(ms)
}

fn main() -> Result<()> {
    let o = HostOpts::parse(9, &[])?;
    let reaper = reaper_tests::reaper_bin();
    let idlers = o.busy_host("reaper reads other processes' environments")?;
    let job = format!("github_bench_{}", std::process::id());
    let mut worker = Command::new("sleep")
        .arg("3600")
        .env("RUNNER_TRACKING_ID", &job)
        .env("GITHUB_RUN_ID", "1")
        .env("GITHUB_JOB", "bench")
        .spawn()
        .context("starting the job's process")?;
    let _listener = TcpListener::bind("127.0.0.1:0").context("binding the listener")?;
    let free = TcpListener::bind("127.0.0.1:0")?.local_addr()?.port();

    let ids = [
        "--job".to_string(),
        job.clone(),
        "--provider".into(),
        "github".into(),
    ];
    let mut start: Vec<String> = vec![
        "job".into(),
        "start".into(),
        "--port".into(),
        free.to_string(),
    ];
    start.extend(ids.iter().cloned());
    let mut end: Vec<String> = vec!["job".into(), "end".into()];
    end.extend(ids.iter().cloned());
    let subjects: Vec<(&str, Vec<String>)> = vec![
        ("reaper --version (spawn floor)", vec!["--version".into()]),
        ("reaper job start, port free (scan)", start),
        ("reaper job end, nothing held (scan)", end),
    ];
    let mut samples = vec![Vec::new(); subjects.len()];
    for round in 0..=o.rounds {
        for k in 0..subjects.len() {
            let i = (k + round) % subjects.len();
            let ms = timed(&reaper, &subjects[i].1)?;
            if round > 0 {
                samples[i].push(ms);
            }
        }
    }
    let note = Some(format!(
        "{} idle processes x {} fds, one job process, one listener not the job's; target <= 20 ms",
        o.procs, o.fds
    ));
    for (i, (name, _)) in subjects.iter().enumerate() {
        emit("job", name, "ms", &samples[i], note.clone());
    }
    let _ = worker.kill();
    let _ = worker.wait();
    drop(idlers);
    Ok(())
}

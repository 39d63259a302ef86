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
use reaper_bench::idlers::start_idlers;

struct Opts {
    procs: usize,
    fds: usize,
    rounds: usize,
}

fn opts() -> Result<Opts> {
    let mut o = Opts {
        procs: 2000,
        fds: 50,
        rounds: 9,
    };
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        let mut num = |name: &str| -> Result<usize> {
            args.next()
                .and_then(|v| v.parse().ok())
                .with_context(|| format!("{name} needs a number"))
        };
        match a.as_str() {
            "--quick" => {
                o.procs = 200;
                o.rounds = 3;
            }
            "--procs" => o.procs = num("--procs")?,
            "--fds" => o.fds = num("--fds")?,
            "--rounds" => o.rounds = num("--rounds")?.max(1),
            "--bench" => {}
            other => {
                bail!("unknown argument '{other}': use --quick, --procs N, --fds F, --rounds R")
            }
        }
    }
    Ok(o)
}

fn reaper_bin() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("REAPER_BIN") {
        return Ok(PathBuf::from(p));
    }
    let p = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../target/debug/reaper");
    if !p.exists() {
        bail!(
            "{} is missing: run `cargo build` first (or set REAPER_BIN)",
            p.display()
        );
    }
    Ok(p)
}

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
    let o = opts()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this benchmark needs root (reaper reads other processes' environments): run it with sudo");
    }
    let reaper = reaper_bin()?;
    let idlers = start_idlers(o.procs, o.fds)?;
    eprintln!(
        "started {} idle processes with {} files each",
        idlers.pids.len(),
        o.fds
    );
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

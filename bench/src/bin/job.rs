//! Benchmark: a runner hook with nothing to do, on a busy host.
//!
//! `reaper job start` and `reaper job end` run before and after every CI
//! job, so their cost when there is nothing to free is paid by every job.
//! Starts N idle processes (default 2,000) with F open files each (default
//! 50), a job (a process carrying RUNNER_TRACKING_ID that holds no port),
//! one listener of this process (not the job's) and a `reaper daemon`;
//! then times, interleaved in each round (the order rotates):
//!
//!   reaper --version                                   the spawn floor
//!   reaper job start --port P --job ID --provider github   P is free
//!   reaper job end --job ID --provider github          the job holds nothing
//!
//! `job end` on the scan path twice: reading the process table with the
//! kernel's task iterator, and walking /proc (REAPER_FD_SOURCE=proc);
//! with REAPER_BASELINE_BIN=PATH, a third time by that binary.
//!
//! the two `job` commands twice: with REAPER_CONTROL_SOCKET naming no
//! socket (the scan path: they read the process table) and naming the
//! daemon's (the daemon path: they ask it, and hand it the run to
//! journal). Before timing, each is run once and its output checked for
//! the path it took ("from a scan" / "from a daemon").
//!
//! The targets (issue 18): <= 20 ms each on the scan path, <= 5 ms with
//! the daemon (whole process, spawn included).
//!
//! Usage: job [--quick] [--procs N] [--fds F] [--rounds R]   (needs root;
//! runs target/debug/reaper, or $REAPER_BIN).

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use reaper_bench::emit;
use reaper_bench::idlers::HostOpts;
use reaper_tests::daemon::Daemon;

/// One command timed: its arguments and the control socket it is told.
struct Subject {
    name: &'static str,
    args: Vec<String>,
    socket: PathBuf,
    /// What its output must say (the path it took); None: not checked.
    says: Option<&'static str>,
    /// And what else (which path read the process table).
    says_too: Option<&'static str>,
    /// Extra environment (REAPER_FD_SOURCE=proc: the /proc walk).
    env: Vec<(&'static str, &'static str)>,
    /// Another reaper binary (REAPER_BASELINE_BIN) instead of the one timed.
    bin: Option<PathBuf>,
}

fn command(reaper: &Path, s: &Subject) -> Command {
    let mut cmd = Command::new(s.bin.as_deref().unwrap_or(reaper));
    cmd.args(&s.args)
        .env("REAPER_CONTROL_SOCKET", &s.socket)
        .env("NO_COLOR", "1")
        .env_remove("RUNNER_TRACKING_ID")
        .env_remove("GITHUB_STEP_SUMMARY")
        .env_remove("REAPER_JOURNAL")
        .env_remove("REAPER_CONFIG")
        .env_remove("REAPER_FD_SOURCE")
        .stdin(Stdio::null());
    cmd.envs(s.env.iter().copied());
    cmd
}

/// Runs a subject once, untimed: it must answer 0 and say what it should.
fn check(reaper: &Path, s: &Subject) -> Result<()> {
    let out = command(reaper, s).output().context("running reaper")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let missing = [s.says, s.says_too]
        .into_iter()
        .flatten()
        .find(|w| !text.contains(w));
    if !out.status.success() || missing.is_some() {
        bail!(
            "`reaper {}` ({}): exit {}, expected {:?} in:\n{text}{}",
            s.args.join(" "),
            s.name,
            out.status,
            missing,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// CPU time (user + system) of this process's reaped children, in ms.
fn children_cpu_ms() -> f64 {
    // SAFETY: getrusage fills the struct it is given.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: a valid pointer to a rusage.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) };
    let ms = |t: libc::timeval| t.tv_sec as f64 * 1e3 + t.tv_usec as f64 / 1e3;
    ms(u.ru_utime) + ms(u.ru_stime)
}

/// Runs a subject; its wall time and its CPU time in ms (it must answer
/// 0). The CPU time is the run's own, whatever else loads the machine.
fn timed(reaper: &Path, s: &Subject) -> Result<(f64, f64)> {
    let cpu = children_cpu_ms();
    let t = Instant::now();
    let status = command(reaper, s)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .context("running reaper")?;
    let ms = t.elapsed().as_secs_f64() * 1e3;
    if !status.success() {
        bail!("`reaper {}` exited with {status}", s.args.join(" "));
    }
    Ok((ms, children_cpu_ms() - cpu))
}

fn main() -> Result<()> {
    let o = HostOpts::parse(9, &[])?;
    let reaper = reaper_tests::reaper_bin();
    // The daemon first: it is up before the idle processes are forked
    // (start_idlers forks from this process while it has one thread).
    let daemon = Daemon::start("");
    let no_daemon = daemon.dir.path().join("no-daemon.sock");
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

    let subjects = subjects(&job, free, &no_daemon, &daemon.socket);
    for s in &subjects {
        check(&reaper, s)?;
    }
    time_and_report(&o, &reaper, &subjects)?;
    let _ = worker.kill();
    let _ = worker.wait();
    drop(idlers);
    drop(daemon);
    Ok(())
}

/// The commands timed: the spawn floor, then `job start` and `job end` on
/// each path.
fn subjects(job: &str, free: u16, no_daemon: &Path, daemon: &Path) -> Vec<Subject> {
    let ids = [
        "--job".to_string(),
        job.to_string(),
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
    // The scan path reads the process table with the kernel's task
    // iterator where it runs, else by walking /proc: both are timed, the
    // walk forced by REAPER_FD_SOURCE=proc.
    let iter_says = "processes: read by the kernel's task iterator";
    let walk = |mut s: Subject| {
        s.says_too = Some("processes: read from /proc (REAPER_FD_SOURCE=proc)");
        s.env.push(("REAPER_FD_SOURCE", "proc"));
        s
    };
    let iter = |mut s: Subject| {
        s.says_too = Some(iter_says);
        s
    };
    let mut subjects = vec![
        subject(
            "reaper --version (spawn floor)",
            &["--version".into()],
            no_daemon,
            None,
        ),
        subject(
            "reaper job start, port free (scan)",
            &start,
            no_daemon,
            Some("(from a scan)"),
        ),
        iter(subject(
            "reaper job end, nothing held (scan, task iterator)",
            &end,
            no_daemon,
            Some("(from a scan)"),
        )),
        walk(subject(
            "reaper job end, nothing held (scan, /proc walk)",
            &end,
            no_daemon,
            Some("(from a scan)"),
        )),
        subject(
            "reaper job start, port free (daemon)",
            &start,
            daemon,
            Some("(from a daemon)"),
        ),
        subject(
            "reaper job end, nothing held (daemon)",
            &end,
            daemon,
            Some("(from a daemon)"),
        ),
    ];
    subjects.extend(baseline(&end, no_daemon));
    subjects
}

/// Times every subject interleaved (the order rotates each round; round 0
/// warms up) and prints each one's wall and CPU medians.
fn time_and_report(o: &HostOpts, reaper: &Path, subjects: &[Subject]) -> Result<()> {
    let mut samples = vec![Vec::new(); subjects.len()];
    let mut cpu = vec![Vec::new(); subjects.len()];
    for round in 0..=o.rounds {
        for k in 0..subjects.len() {
            let i = (k + round) % subjects.len();
            let (ms, cpu_ms) = timed(reaper, &subjects[i])?;
            if round > 0 {
                samples[i].push(ms);
                cpu[i].push(cpu_ms);
            }
        }
    }
    let build = if reaper.to_string_lossy().contains("/release/") {
        "release"
    } else {
        "debug"
    };
    for (i, s) in subjects.iter().enumerate() {
        let target = match s.says {
            Some("(from a daemon)") => "; target <= 5 ms",
            Some(_) => "; target <= 20 ms",
            None => "",
        };
        let note = Some(format!(
            "{build} build, whole process; {} idle processes x {} fds, one job process, one listener not the job's, a daemon running{target}",
            o.procs, o.fds
        ));
        emit("job", s.name, "ms", &samples[i], note);
    }
    // The same runs' CPU time (user + system): what a hook costs the host,
    // which the machine's other load does not inflate as it does the wall
    // time.
    for (i, s) in subjects.iter().enumerate() {
        let note = Some(format!("{build} build, user + system CPU of the same runs"));
        emit("job", &format!("{} CPU", s.name), "ms", &cpu[i], note);
    }
    Ok(())
}

/// One subject: a command, the control socket it is told, what its output
/// must say.
fn subject(
    name: &'static str,
    args: &[String],
    socket: &Path,
    says: Option<&'static str>,
) -> Subject {
    Subject {
        name,
        args: args.to_vec(),
        socket: socket.to_path_buf(),
        says,
        says_too: None,
        env: Vec::new(),
        bin: None,
    }
}

/// REAPER_BASELINE_BIN: the same `job end` by another build, interleaved
/// (a change's before and after in one run).
fn baseline(end: &[String], no_daemon: &Path) -> Option<Subject> {
    let base = std::env::var_os("REAPER_BASELINE_BIN")?;
    let mut s = subject(
        "reaper job end, nothing held (scan, baseline binary)",
        end,
        no_daemon,
        Some("(from a scan)"),
    );
    s.bin = Some(PathBuf::from(base));
    Some(s)
}

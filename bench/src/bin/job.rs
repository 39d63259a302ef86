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

use std::io::{BufRead, BufReader, Write};
use std::net::TcpListener;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

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
    // cargo xtask bench sets REAPER_BIN to the release build.
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

/// One command timed: its arguments and the control socket it is told.
struct Subject {
    name: &'static str,
    args: Vec<String>,
    socket: PathBuf,
    /// What its output must say (the path it took); None: not checked.
    says: Option<&'static str>,
}

fn command(reaper: &Path, s: &Subject) -> Command {
    let mut cmd = Command::new(reaper);
    cmd.args(&s.args)
        .env("REAPER_CONTROL_SOCKET", &s.socket)
        .env("NO_COLOR", "1")
        .env_remove("RUNNER_TRACKING_ID")
        .env_remove("GITHUB_STEP_SUMMARY")
        .env_remove("REAPER_JOURNAL")
        .env_remove("REAPER_CONFIG")
        .stdin(Stdio::null());
    cmd
}

/// Runs a subject once, untimed: it must answer 0 and say what it should.
fn check(reaper: &Path, s: &Subject) -> Result<()> {
    let out = command(reaper, s).output().context("running reaper")?;
    let text = String::from_utf8_lossy(&out.stdout);
    if !out.status.success() || s.says.is_some_and(|w| !text.contains(w)) {
        bail!(
            "`reaper {}` ({}): exit {}, expected {:?} in:\n{text}{}",
            s.args.join(" "),
            s.name,
            out.status,
            s.says,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

/// Runs a subject; its wall time in ms (it must answer 0).
fn timed(reaper: &Path, s: &Subject) -> Result<f64> {
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
    Ok(ms)
}

/// A `reaper daemon` with its journal, metrics and control socket in a
/// directory of its own; stopped (SIGTERM) and removed on drop.
struct Daemon {
    child: Child,
    dir: PathBuf,
    socket: PathBuf,
}

impl Daemon {
    fn start(reaper: &Path) -> Result<Daemon> {
        let dir = std::env::temp_dir().join(format!("reaper-bench-job-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir)?;
        let metrics = TcpListener::bind("127.0.0.1:0")?.local_addr()?;
        let socket = dir.join("run/reaper.sock");
        let config = dir.join("reaper.toml");
        std::fs::write(
            &config,
            format!(
                "journal = \"{}\"\nmetrics_listen = \"{metrics}\"\ncontrol_socket = \"{}\"\n",
                dir.join("journal.jsonl").display(),
                socket.display()
            ),
        )?;
        let child = Command::new(reaper)
            .args(["daemon", "--config"])
            .arg(&config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(dir.join("log"))?)
            .spawn()
            .context("starting reaper daemon")?;
        let d = Daemon { child, dir, socket };
        let end = Instant::now() + Duration::from_secs(60);
        while !d.answers() {
            if Instant::now() > end {
                bail!(
                    "the daemon did not answer within 60 s; its log: {}",
                    d.dir.join("log").display()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(d)
    }

    fn answers(&self) -> bool {
        let Ok(s) = UnixStream::connect(&self.socket) else {
            return false;
        };
        let mut line = String::new();
        (&s).write_all(b"{\"cmd\":\"ports\"}\n").is_ok()
            && BufReader::new(&s).read_line(&mut line).is_ok()
            && line.contains("\"ok\":true")
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        // SAFETY: kill(2) on our own child, not yet waited for.
        unsafe { libc::kill(self.child.id() as i32, libc::SIGTERM) };
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn main() -> Result<()> {
    let o = opts()?;
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        bail!("this benchmark needs root (reaper reads other processes' environments): run it with sudo");
    }
    let reaper = reaper_bin()?;
    let daemon = Daemon::start(&reaper)?;
    let no_daemon = daemon.dir.join("no-daemon.sock");
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
    let subject = |name, args: &Vec<String>, socket: &Path, says| Subject {
        name,
        args: args.clone(),
        socket: socket.to_path_buf(),
        says,
    };
    let subjects = vec![
        subject(
            "reaper --version (spawn floor)",
            &vec!["--version".into()],
            &no_daemon,
            None,
        ),
        subject(
            "reaper job start, port free (scan)",
            &start,
            &no_daemon,
            Some("(from a scan)"),
        ),
        subject(
            "reaper job end, nothing held (scan)",
            &end,
            &no_daemon,
            Some("(from a scan)"),
        ),
        subject(
            "reaper job start, port free (daemon)",
            &start,
            &daemon.socket,
            Some("(from a daemon)"),
        ),
        subject(
            "reaper job end, nothing held (daemon)",
            &end,
            &daemon.socket,
            Some("(from a daemon)"),
        ),
    ];
    for s in &subjects {
        check(&reaper, s)?;
    }
    let mut samples = vec![Vec::new(); subjects.len()];
    for round in 0..=o.rounds {
        for k in 0..subjects.len() {
            let i = (k + round) % subjects.len();
            let ms = timed(&reaper, &subjects[i])?;
            if round > 0 {
                samples[i].push(ms);
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
    let _ = worker.kill();
    let _ = worker.wait();
    drop(idlers);
    drop(daemon);
    Ok(())
}

//! Benchmark: "who holds this port" on a busy host, reaper's scan against
//! `ss`, `lsof` and `fuser`.
//!
//! Starts N idle processes (default 2,000) each holding F open files
//! (default 50: /dev/null) plus one TCP listener held by this process, then
//! times, interleaved in each round (the order rotates between rounds):
//!
//!   reaper who PORT --no-bpf
//!   ss -ltnpH 'sport = :PORT'
//!   lsof -nP -iTCP:PORT -sTCP:LISTEN
//!   fuser -n tcp PORT
//!
//! and prints the medians as JSON lines (see bench/src/lib.rs). The idle
//! processes die with this one: they block on a pipe whose only write end is
//! ours (EOF when we exit, however we exit), have PR_SET_PDEATHSIG, and are
//! killed and reaped on drop.
//!
//! `--hold` sets the scene, prints the port and waits for EOF on stdin
//! instead of timing: for profiling one tool by hand.
//!
//! Usage: who [--quick] [--procs N] [--fds F] [--rounds R] [--hold]   (needs root, and
//! `cargo build` first: it runs target/debug/reaper, or $REAPER_BIN).

use std::net::TcpListener;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use reaper_bench::emit;
use reaper_bench::idlers::HostOpts;

/// CPU seconds (user + system) of all waited-for children so far.
fn children_cpu() -> f64 {
    // SAFETY: rusage is plain integers, valid all zero.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we pass, which outlives the call.
    unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut ru) };
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

/// Runs a command with its output discarded; returns (wall, cpu) seconds.
/// CPU time is the steadier figure on a shared machine: wall time there
/// includes waiting for a core, and a multi-threaded tool waits less.
fn timed(cmd: &[String]) -> Result<(f64, f64)> {
    let cpu0 = children_cpu();
    let t = Instant::now();
    let status = Command::new(&cmd[0])
        .args(&cmd[1..])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", cmd[0]))?;
    let s = t.elapsed().as_secs_f64();
    let cpu = children_cpu() - cpu0;
    // reaper who: 0 held; ss/lsof/fuser: 0 found. Anything else means the
    // tool did not answer the question and its time is meaningless.
    if !status.success() {
        bail!("`{}` exited with {status}", cmd.join(" "));
    }
    Ok((s, cpu))
}

fn main() -> Result<()> {
    let o = HostOpts::parse(7, &["--hold"])?;
    let reaper = reaper_tests::reaper_bin();
    let idlers = o.busy_host("ss -p, lsof and fuser only see other users' processes as root")?;
    let listener = TcpListener::bind("0.0.0.0:0").context("binding the listener")?;
    let port = listener.local_addr()?.port();
    let me = std::process::id();
    if o.has("--hold") {
        println!("{port}");
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        return Ok(());
    }

    // Check once that every tool finds our listener, so that we time answers.
    let out = Command::new(&reaper)
        .args(["who", &port.to_string(), "--no-bpf", "--json"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
        format!(
            "reaper who --json said: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })?;
    let pids: Vec<u64> = v["holdings"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["processes"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["pid"].as_u64())
        .collect();
    if pids != [me as u64] {
        bail!("reaper who {port} found holders {pids:?}, expected [{me}]");
    }
    let ss = Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()?;
    if !String::from_utf8_lossy(&ss.stdout).contains(&format!("pid={me},")) {
        bail!("ss did not find pid {me} on port {port}");
    }

    let p = port.to_string();
    let subjects: Vec<(&str, Vec<String>)> = vec![
        (
            "reaper who --no-bpf",
            vec![
                reaper.display().to_string(),
                "who".into(),
                p.clone(),
                "--no-bpf".into(),
            ],
        ),
        (
            "ss -ltnpH sport",
            vec!["ss".into(), "-ltnpH".into(), format!("sport = :{port}")],
        ),
        (
            "lsof -iTCP -sTCP:LISTEN",
            vec![
                "lsof".into(),
                "-nP".into(),
                format!("-iTCP:{port}"),
                "-sTCP:LISTEN".into(),
            ],
        ),
        (
            "fuser -n tcp",
            vec!["fuser".into(), "-n".into(), "tcp".into(), p.clone()],
        ),
    ];
    let mut samples = vec![Vec::new(); subjects.len()];
    let mut cpu = vec![Vec::new(); subjects.len()];
    let mut scan_ms = Vec::new();
    // One warm-up round (page cache, dentries), not counted.
    for round in 0..=o.rounds {
        for k in 0..subjects.len() {
            let i = (k + round) % subjects.len();
            let (s, c) = timed(&subjects[i].1)?;
            if round > 0 {
                samples[i].push(s);
                cpu[i].push(c);
            }
        }
        if round > 0 {
            let out = Command::new(&reaper)
                .args(["who", &p, "--no-bpf", "--json"])
                .output()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            if let Some(ms) = v["duration_ms"].as_f64() {
                scan_ms.push(ms / 1000.0);
            }
        }
    }
    let note = Some(format!(
        "{} idle processes x {} fds + 1 listener",
        o.procs, o.fds
    ));
    for (i, (name, _)) in subjects.iter().enumerate() {
        emit("who", name, "s", &samples[i], note.clone());
    }
    for (i, (name, _)) in subjects.iter().enumerate() {
        emit("who", &format!("{name} (cpu)"), "s", &cpu[i], note.clone());
    }
    emit(
        "who",
        "reaper scan (duration_ms, in-process)",
        "s",
        &scan_ms,
        note.clone(),
    );
    let ratio: Vec<f64> = samples[0]
        .iter()
        .zip(&samples[1])
        .map(|(r, s)| r / s)
        .collect();
    emit(
        "who",
        "reaper / ss (per round)",
        "ratio",
        &ratio,
        Some("target: <= 0.333".into()),
    );
    let cpu_ratio: Vec<f64> = cpu[0].iter().zip(&cpu[1]).map(|(r, s)| r / s).collect();
    emit(
        "who",
        "reaper / ss cpu (per round)",
        "ratio",
        &cpu_ratio,
        None,
    );
    drop(listener);
    drop(idlers);
    Ok(())
}

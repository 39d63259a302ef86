//! Benchmark: "who holds this port" on a busy host, reaper's scan against
//! `ss`, `lsof` and `fuser`.
//!
//! Two hosts, one after the other, each timed interleaved in rounds (the
//! order rotates between rounds):
//!
//! 1. N idle processes (default 2,000) each holding F open files (default
//!    50: /dev/null) plus one TCP listener held by this process;
//! 2. this process holding C TCP connections (default 9,000: both ends, so
//!    18,000 sockets, on another port) plus the listener.
//!
//! Subjects:
//!
//!   reaper who PORT            (no daemon answers: the kernel's task_file
//!                               iterator finds the holders)
//!   reaper who PORT --no-bpf   (the /proc/PID/fd walk)
//!   ss -ltnpH 'sport = :PORT'
//!   fuser -n tcp PORT
//!   lsof -nP -iTCP:PORT -sTCP:LISTEN   (host 1 only: ~1 s a run)
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

/// The connections host 2 holds (both ends: twice as many sockets).
const CONNS: usize = 9000;

/// A control socket path where no daemon listens.
const NO_DAEMON: &str = "/nonexistent/reaper-bench.sock";

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
        // No daemon answers `reaper who`: it scans.
        .env("REAPER_CONTROL_SOCKET", NO_DAEMON)
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
    if o.has("--hold") {
        println!("{port}");
        let _ = std::io::Read::read_to_end(&mut std::io::stdin(), &mut Vec::new());
        return Ok(());
    }
    let host1 = format!("{} idle processes x {} fds + 1 listener", o.procs, o.fds);
    scene(&reaper, port, o.rounds, &host1, "", "0.10", true)?;
    drop(idlers);

    // Host 2: one process (this one) holding many connections.
    let t = Instant::now();
    let conns = Connections::open(CONNS)?;
    eprintln!(
        "opened {} connections ({} sockets) in {:.1}s",
        CONNS,
        2 * CONNS,
        t.elapsed().as_secs_f64()
    );
    let host2 = format!(
        "one process holding {} TCP connections ({} sockets, another port) + 1 listener",
        CONNS,
        2 * CONNS
    );
    let tag = format!(", {}k sockets", 2 * CONNS / 1000);
    scene(&reaper, port, o.rounds, &host2, &tag, "0.25", false)?;
    drop(conns);
    drop(listener);
    Ok(())
}

/// Both ends of `n` loopback TCP connections, held by this process.
struct Connections {
    _listener: TcpListener,
    _pairs: Vec<(std::net::TcpStream, std::net::TcpStream)>,
}

impl Connections {
    fn open(n: usize) -> Result<Connections> {
        let listener = TcpListener::bind("127.0.0.1:0")?;
        let addr = listener.local_addr()?;
        let mut pairs = Vec::with_capacity(n);
        for i in 0..n {
            let c = std::net::TcpStream::connect(addr)
                .with_context(|| format!("connection {i} of {n} (RLIMIT_NOFILE, ports?)"))?;
            let (s, _) = listener.accept()?;
            pairs.push((c, s));
        }
        Ok(Connections {
            _listener: listener,
            _pairs: pairs,
        })
    }
}

/// Times every subject on this host, interleaved, and prints the figures;
/// `tag` tells this host's figures from the other's.
fn scene(
    reaper: &std::path::Path,
    port: u16,
    rounds: usize,
    host: &str,
    tag: &str,
    target: &str,
    with_lsof: bool,
) -> Result<()> {
    let me = std::process::id();
    let p = port.to_string();
    // Check once that every tool finds our listener, so that we time answers.
    for (args, source) in [
        (vec!["who", p.as_str(), "--json"], "bpf_iter"),
        (vec!["who", p.as_str(), "--no-bpf", "--json"], "proc"),
    ] {
        let out = Command::new(reaper)
            .args(&args)
            .env("REAPER_CONTROL_SOCKET", NO_DAEMON)
            .output()?;
        let v: serde_json::Value = serde_json::from_slice(&out.stdout).with_context(|| {
            format!(
                "reaper {} said: {}",
                args.join(" "),
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
            bail!(
                "reaper {} found holders {pids:?}, expected [{me}]",
                args.join(" ")
            );
        }
        if v["gaps"]["holder_source"] != source {
            eprintln!(
                "WARNING: reaper {} found the holders from {} (expected {source}): see `reaper doctor`",
                args.join(" "),
                v["gaps"]["holder_source"]
            );
        }
    }
    let ss = Command::new("ss")
        .args(["-ltnpH", &format!("sport = :{port}")])
        .output()?;
    if !String::from_utf8_lossy(&ss.stdout).contains(&format!("pid={me},")) {
        bail!("ss did not find pid {me} on port {port}");
    }

    let r = reaper.display().to_string();
    let mut subjects: Vec<(&str, Vec<String>)> = vec![
        ("reaper who", vec![r.clone(), "who".into(), p.clone()]),
        (
            "reaper who --no-bpf",
            vec![r.clone(), "who".into(), p.clone(), "--no-bpf".into()],
        ),
        (
            "ss -ltnpH sport",
            vec!["ss".into(), "-ltnpH".into(), format!("sport = :{port}")],
        ),
        (
            "fuser -n tcp",
            vec!["fuser".into(), "-n".into(), "tcp".into(), p.clone()],
        ),
    ];
    if with_lsof {
        subjects.push((
            "lsof -iTCP -sTCP:LISTEN",
            vec![
                "lsof".into(),
                "-nP".into(),
                format!("-iTCP:{port}"),
                "-sTCP:LISTEN".into(),
            ],
        ));
    }
    let mut samples = vec![Vec::new(); subjects.len()];
    let mut cpu = vec![Vec::new(); subjects.len()];
    let mut scan_ms = Vec::new();
    // One warm-up round (page cache, dentries), not counted.
    for round in 0..=rounds {
        for k in 0..subjects.len() {
            let i = (k + round) % subjects.len();
            let (s, c) = timed(&subjects[i].1)?;
            if round > 0 {
                samples[i].push(s);
                cpu[i].push(c);
            }
        }
        if round > 0 {
            let out = Command::new(reaper)
                .args(["who", &p, "--json"])
                .env("REAPER_CONTROL_SOCKET", NO_DAEMON)
                .output()?;
            let v: serde_json::Value = serde_json::from_slice(&out.stdout)?;
            if let Some(ms) = v["duration_ms"].as_f64() {
                scan_ms.push(ms / 1000.0);
            }
        }
    }
    let note = Some(host.to_string());
    for (i, (name, _)) in subjects.iter().enumerate() {
        emit(
            "who",
            &format!("{name}{tag}"),
            "s",
            &samples[i],
            note.clone(),
        );
    }
    for (i, (name, _)) in subjects.iter().enumerate() {
        emit(
            "who",
            &format!("{name} (cpu){tag}"),
            "s",
            &cpu[i],
            note.clone(),
        );
    }
    emit(
        "who",
        &format!("reaper scan (duration_ms, in-process){tag}"),
        "s",
        &scan_ms,
        note.clone(),
    );
    let per_round = |a: usize, b: usize| -> Vec<f64> {
        samples[a]
            .iter()
            .zip(&samples[b])
            .map(|(x, y)| x / y)
            .collect()
    };
    emit(
        "who",
        &format!("reaper who / ss (per round){tag}"),
        "ratio",
        &per_round(0, 2),
        Some(format!("{host}; no daemon; target: <= {target}")),
    );
    emit(
        "who",
        &format!("reaper who --no-bpf / ss (per round){tag}"),
        "ratio",
        &per_round(1, 2),
        Some(format!("{host}; the /proc walk")),
    );
    emit(
        "who",
        &format!("reaper who / fuser (per round){tag}"),
        "ratio",
        &per_round(0, 3),
        Some(host.to_string()),
    );
    let cpu_ratio: Vec<f64> = cpu[0].iter().zip(&cpu[2]).map(|(r, s)| r / s).collect();
    emit(
        "who",
        &format!("reaper who / ss cpu (per round){tag}"),
        "ratio",
        &cpu_ratio,
        None,
    );
    Ok(())
}

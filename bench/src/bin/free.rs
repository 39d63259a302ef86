//! How fast a held port becomes bindable again, three ways, interleaved:
//!
//! - `reaper free PORT --match platform-server` (pidfd SIGTERM, exit seen as
//!   an event, bind probe with a short backoff);
//! - the peers, each followed by polling a bind with the same backoff:
//!   `killport PORT` (crates.io), `fuser -k -n tcp PORT` (psmisc) and
//!   `kill-port PORT` (npm), each SIGKILLing the holder; a peer that is not
//!   installed is said to be absent (`cargo xtask bench` installs killport
//!   and kill-port when it can);
//! - the usual CI shell step: scan /proc/*/comm and cmdline, kill, sleep 2.
//!
//! Plus reaper's own overhead: its total time minus the holder's exit
//! latency (SIGTERM, whose CLOCK_MONOTONIC time reaper prints, to the exit,
//! seen here on the holder's own pidfd).
//!
//! The holder is the tests crate's platform-server, a child of this program.
//! Needs root only as far as the CI step's `kill` needs it (same user here).
//!
//!   cargo build && cargo build -p reaper-tests --bins
//!   cargo run -p reaper-bench --bin free [-- --quick] [--reaper PATH]

use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use reaper_bench::emit;
use reaper_tests::fixture::Holder;

fn main() -> Result<()> {
    let mut quick = false;
    let mut reaper: Option<PathBuf> = None;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--quick" => quick = true,
            "--reaper" => reaper = Some(args.next().context("--reaper needs a path")?.into()),
            other => bail!("unknown option {other}: use --quick, --reaper PATH"),
        }
    }
    // $REAPER_BIN (`cargo xtask bench`: the release build), else target/debug/reaper.
    let reaper = reaper.unwrap_or_else(reaper_tests::reaper_bin);
    let server = reaper_tests::fixture_bin("platform-server");
    eprintln!("reaper: {}", reaper.display());
    let (rounds, shell_rounds) = if quick { (5, 2) } else { (21, 5) };

    let mut reaper_total = Vec::new();
    let mut reaper_own = Vec::new();
    let mut reaper_internal = Vec::new();
    let mut reaper_scan = Vec::new();
    let mut reaper_own_no_scan = Vec::new();
    let mut holder_exit = Vec::new();
    let peers: Vec<Peer> = PEERS
        .iter()
        .filter(|p| {
            let here = on_path(p.argv[0]);
            if !here {
                eprintln!("peer absent: {} (not on PATH)", p.argv[0]);
            }
            here
        })
        .copied()
        .collect();
    let mut peer_total = vec![Vec::new(); peers.len()];
    let mut ratio = Vec::new();
    let mut shell_total = Vec::new();
    for round in 0..rounds {
        // Interleaved: each round runs every method once, so drift on this
        // shared machine hits them alike.
        let r = round_reaper(&reaper, &server)?;
        reaper_total.push(r.total_ms);
        reaper_own.push(r.total_ms - r.holder_exit_ms);
        reaper_internal.push(r.internal_ms);
        reaper_scan.push(r.scan_ms);
        reaper_own_no_scan.push(r.total_ms - r.holder_exit_ms - r.scan_ms);
        holder_exit.push(r.holder_exit_ms);
        let mut fastest = f64::INFINITY;
        for (k, peer) in peers.iter().enumerate() {
            let ms = round_peer(peer, &server)?;
            fastest = fastest.min(ms);
            peer_total[k].push(ms);
        }
        if fastest.is_finite() {
            ratio.push(r.total_ms / fastest);
        }
        if round < shell_rounds {
            shell_total.push(round_shell(&server)?);
        }
    }
    emit(
        "free",
        "reaper free: start to port bindable",
        "ms",
        &reaper_total,
        Some("wall time of the whole `reaper free` process, spawn to exit 0".into()),
    );
    emit(
        "free",
        "reaper free: own overhead",
        "ms",
        &reaper_own,
        Some("total minus the holder's SIGTERM-to-exit latency (pidfd)".into()),
    );
    emit(
        "free",
        "reaper free: elapsed inside reaper",
        "ms",
        &reaper_internal,
        Some("reaper's own elapsed_ms (excludes exec and loading)".into()),
    );
    emit(
        "free",
        "reaper free: holder scan (holders::scan)",
        "ms",
        &reaper_scan,
        Some(format!(
            "sock_diag + every /proc/PID/fd; {} processes on the host now",
            count_pids()
        )),
    );
    emit(
        "free",
        "reaper free: own overhead minus the scan",
        "ms",
        &reaper_own_no_scan,
        Some("exec, policy, pidfd, signal, bind probe, output".into()),
    );
    emit(
        "free",
        "holder SIGTERM-to-exit latency",
        "ms",
        &holder_exit,
        None,
    );
    for (peer, samples) in peers.iter().zip(&peer_total) {
        emit(
            "free",
            peer.name,
            "ms",
            samples,
            Some(format!(
                "`{} PORT` (SIGKILL), then bind polling (backoff 1..50 ms)",
                peer.argv.join(" ")
            )),
        );
    }
    for absent in PEERS
        .iter()
        .filter(|p| !peers.iter().any(|q| q.name == p.name))
    {
        eprintln!("{:>12}  {:<40} absent", "free", absent.name);
    }
    emit(
        "free",
        "reaper free / fastest peer (per round)",
        "ratio",
        &ratio,
        Some(format!(
            "reaper's start-to-bindable over the fastest of {} in the same round; target: <= 0.5",
            peers
                .iter()
                .map(|p| p.argv[0])
                .collect::<Vec<_>>()
                .join(", ")
        )),
    );
    emit(
        "free",
        "CI shell step (/proc grep, kill, sleep 2)",
        "ms",
        &shell_total,
        Some(
            "cmdline pattern narrowed to this run's port so no other platform-server is hit".into(),
        ),
    );
    Ok(())
}

fn count_pids() -> usize {
    reaper::proc::pids().map(Iterator::count).unwrap_or(0)
}

/// The tests' platform-server on a free port, once it listens (a child of
/// this program: killed and reaped when dropped).
fn start_holder(server: &Path) -> Result<Holder> {
    let port = reaper_tests::free_port();
    let mut h = Holder::start(server, &["--port", &port.to_string()]);
    h.port = port;
    Ok(h)
}

fn mono_ns() -> u64 {
    reaper::sys::clock_ns(libc::CLOCK_MONOTONIC)
}

/// Blocks until the holder exits; returns CLOCK_MONOTONIC at that moment.
fn wait_exit_mono(fd: i32) -> u64 {
    let mut p = libc::pollfd {
        fd,
        events: libc::POLLIN,
        revents: 0,
    };
    // SAFETY: one valid pollfd.
    while unsafe { libc::poll(&mut p, 1, -1) } <= 0 {}
    mono_ns()
}

fn bindable(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// Polls a bind with 1, 2, 4 ... 50 ms backoff (what a careful script does).
fn poll_bindable(port: u16, limit: Duration) -> Result<()> {
    let end = Instant::now() + limit;
    let mut backoff = Duration::from_millis(1);
    while !bindable(port) {
        if Instant::now() > end {
            bail!("port {port} still held after {limit:?}");
        }
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(Duration::from_millis(50));
    }
    Ok(())
}

struct ReaperRound {
    total_ms: f64,
    holder_exit_ms: f64,
    internal_ms: f64,
    scan_ms: f64,
}

fn round_reaper(reaper: &Path, server: &Path) -> Result<ReaperRound> {
    let h = start_holder(server)?;
    let pidfd = reaper::sys::pidfd_open(h.pid()).context("pidfd_open of the holder")?;
    let raw = pidfd.as_raw_fd();
    let watcher = std::thread::spawn(move || wait_exit_mono(raw));
    let t0 = Instant::now();
    let out = Command::new(reaper)
        .args(["free", &h.port.to_string(), "--match", "platform-server"])
        .args(["--grace", "2s", "--deadline", "10s", "--json"])
        .env_remove("REAPER_JOURNAL")
        .output()?;
    let total = t0.elapsed();
    if out.status.code() != Some(0) {
        bail!(
            "reaper free exited {:?}: {}{}",
            out.status.code(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    if !bindable(h.port) {
        bail!("reaper said port {} is free but it does not bind", h.port);
    }
    let exit_mono = watcher.join().unwrap();
    let doc: serde_json::Value = serde_json::from_slice(&out.stdout)?;
    let term_mono = doc["signals"][0]["mono_ns"]
        .as_u64()
        .context("no SIGTERM in reaper's output")?;
    drop(h);
    Ok(ReaperRound {
        total_ms: total.as_secs_f64() * 1000.0,
        holder_exit_ms: exit_mono.saturating_sub(term_mono) as f64 / 1e6,
        internal_ms: doc["elapsed_ms"].as_f64().unwrap_or(f64::NAN),
        scan_ms: doc["scan_ms"].as_f64().unwrap_or(f64::NAN),
    })
}

/// Another tool that frees a port: its command before the port.
#[derive(Clone, Copy)]
struct Peer {
    name: &'static str,
    argv: &'static [&'static str],
}

const PEERS: &[Peer] = &[
    Peer {
        name: "killport + bind polling",
        argv: &["killport"],
    },
    Peer {
        name: "fuser -k -n tcp + bind polling",
        argv: &["fuser", "-k", "-n", "tcp"],
    },
    Peer {
        name: "kill-port (npm) + bind polling",
        argv: &["kill-port"],
    },
];

fn on_path(bin: &str) -> bool {
    std::env::var_os("PATH")
        .map(|p| std::env::split_paths(&p).any(|d| d.join(bin).is_file()))
        .unwrap_or(false)
}

fn round_peer(peer: &Peer, server: &Path) -> Result<f64> {
    let h = start_holder(server)?;
    let t0 = Instant::now();
    let st = Command::new(peer.argv[0])
        .args(&peer.argv[1..])
        .arg(h.port.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {}", peer.argv[0]))?;
    if !st.success() {
        bail!("{} {} failed: {st}", peer.argv.join(" "), h.port);
    }
    poll_bindable(h.port, Duration::from_secs(10))?;
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    drop(h);
    Ok(ms)
}

fn round_shell(server: &Path) -> Result<f64> {
    let h = start_holder(server)?;
    // The CI step as written, except the cmdline pattern names this port:
    // the plain one would kill every platform-server on a shared machine.
    let step = format!(
        "for p in /proc/[0-9]*; do grep -q platform-serve $p/comm 2>/dev/null && \
         tr '\\0' ' ' < $p/cmdline 2>/dev/null | grep -q 'platform-server --port {} ' && kill ${{p#/proc/}}; done; sleep 2",
        h.port
    );
    let t0 = Instant::now();
    let st = Command::new("sh").args(["-c", &step]).status()?;
    if !st.success() {
        bail!("the shell step failed: {st}");
    }
    // The step's contract is "after the sleep it is free"; check, don't poll.
    if !bindable(h.port) {
        bail!("port {} still held after the CI shell step", h.port);
    }
    let ms = t0.elapsed().as_secs_f64() * 1000.0;
    drop(h);
    Ok(ms)
}

//! Bind storm: 8 worker processes bind and release (UDP 127.0.0.1:0:
//! socket, bind, close) as fast as they can while reaper watches, and the same
//! without reaper, interleaved round by round (absolute rates drift on a
//! shared machine). Per condition it measures the storm's own rate
//! (binds/s, the tax reaper puts on it), reaper's resident memory sampled
//! every 20 ms, how many of the workers' binds reaper reported, and how many
//! events it said it lost.
//!
//! Conditions: `none`; `watch` (`reaper watch --json --all`, every line
//! read: the port-0 binds are summarised kernel-side without `--all`);
//! `daemon` (`reaper daemon` with a throwaway config and journal). At the end
//! of each storm every worker keeps [`HOLD`] more port-0 sockets open; under
//! the daemon, each is asked of it (`who`, control socket): every claim
//! alive must be known with its pid, without a /proc scan.
//!
//! ```text
//! storm [--secs N] [--rounds R] [--workers W] [--with watch,daemon] [--summary FILE] [--quick]
//! ```
//! N (default 5, or REAPER_STORM_SECS) is the storm time under each reaper
//! condition, split over R rounds (default 3); the same time runs without.
//! `--summary FILE` writes every round's raw numbers as JSON (what
//! tests/tests/storm.rs checks). `storm --worker SECS` is one worker.

use std::collections::HashMap;
use std::io::{BufRead, BufReader, Read, Write};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use reaper_bench::emit;
use serde::Serialize;

/// Sockets each worker keeps bound at the end of its storm.
const HOLD: usize = 16;

/// One worker: bind and release until the time is up; then binds [`HOLD`]
/// sockets and prints "COUNT PORT,PORT,..."; holds them until stdin closes.
fn worker(secs: f64) {
    let until = Instant::now() + Duration::from_secs_f64(secs);
    let mut n = 0u64;
    // SAFETY: plain socket calls over a zeroed sockaddr_in of the right size.
    unsafe {
        let mut sa: libc::sockaddr_in = std::mem::zeroed();
        sa.sin_family = libc::AF_INET as u16;
        sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
        while Instant::now() < until {
            for _ in 0..64 {
                let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
                if fd < 0 {
                    continue;
                }
                if libc::bind(fd, (&sa as *const libc::sockaddr_in).cast(), 16) == 0 {
                    n += 1;
                }
                libc::close(fd);
            }
        }
    }
    let held: Vec<std::net::UdpSocket> = (0..HOLD)
        .filter_map(|_| std::net::UdpSocket::bind("127.0.0.1:0").ok())
        .collect();
    let ports: Vec<String> = held
        .iter()
        .filter_map(|s| s.local_addr().ok())
        .map(|a| a.port().to_string())
        .collect();
    println!("{n} {}", ports.join(","));
    let mut sink = String::new();
    let _ = std::io::stdin().read_to_string(&mut sink);
}

/// What one storm under one condition did.
#[derive(Serialize, Debug, Default, Clone)]
struct Round {
    condition: String,
    round: usize,
    secs: f64,
    worker_pids: Vec<u32>,
    /// Successful binds the workers counted.
    worker_binds: u64,
    binds_per_s: f64,
    /// `watch`: successful `bind` lines for the workers' pids.
    seen_binds: u64,
    /// `watch`: sum of `lost` over `loss` lines; `daemon`: the lost-events
    /// counter on /metrics at the end.
    lost: u64,
    loss_lines: u64,
    /// `daemon`: sum of `lost` over the journal's loss records.
    journaled_lost: u64,
    rss_first_kib: u64,
    rss_max_kib: u64,
    rss_samples: u64,
    /// Exit status of reaper after SIGINT/SIGTERM (0 when it stopped cleanly).
    reaper_exit: Option<i32>,
    /// `daemon`: sockets the workers held at the end, and how many of them
    /// the daemon answered `who` for with the right pid (within 5 s).
    held_claims: u64,
    known_claims: u64,
    /// `daemon`: ms until the daemon knew every held claim.
    known_after_ms: u64,
    /// `daemon`: /proc scans run to reconcile the ledger (want 0).
    reconcile_scans: u64,
}

fn rss_kib(pid: u32) -> Option<u64> {
    let s = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    s.lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

/// Samples a process's RSS every 20 ms until stopped.
struct Sampler {
    stop: Arc<AtomicBool>,
    t: Option<std::thread::JoinHandle<(u64, u64, u64)>>,
}

impl Sampler {
    fn start(pid: u32) -> Sampler {
        let stop = Arc::new(AtomicBool::new(false));
        let s2 = stop.clone();
        let t = std::thread::spawn(move || {
            let (mut first, mut max, mut n) = (0, 0, 0);
            while !s2.load(Ordering::Relaxed) {
                if let Some(r) = rss_kib(pid) {
                    if n == 0 {
                        first = r;
                    }
                    max = max.max(r);
                    n += 1;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            (first, max, n)
        });
        Sampler { stop, t: Some(t) }
    }
    fn finish(mut self) -> (u64, u64, u64) {
        self.stop.store(true, Ordering::Relaxed);
        self.t.take().unwrap().join().unwrap()
    }
}

/// A storm that ran: the workers (holding their last sockets), their
/// binds, and the ports they hold.
struct Storm {
    children: Vec<Child>,
    pids: Vec<u32>,
    binds: u64,
    /// (pid, port) of every socket held.
    held: Vec<(u32, u16)>,
}

impl Storm {
    /// Lets the workers close their sockets and exit.
    fn end(self) {
        for mut c in self.children {
            drop(c.stdin.take());
            let _ = c.wait();
        }
    }
}

/// Runs the workers for `secs`; they hold their last sockets until
/// [`Storm::end`].
fn storm_held(workers: usize, secs: f64) -> Storm {
    let me = std::env::current_exe().expect("own path");
    let mut children: Vec<Child> = (0..workers)
        .map(|_| {
            Command::new(&me)
                .args(["--worker", &secs.to_string()])
                .stdin(Stdio::piped())
                .stdout(Stdio::piped())
                .spawn()
                .expect("starting a worker")
        })
        .collect();
    let pids: Vec<u32> = children.iter().map(|c| c.id()).collect();
    let (mut binds, mut held) = (0, Vec::new());
    for c in children.iter_mut() {
        let mut line = String::new();
        BufReader::new(c.stdout.take().unwrap())
            .read_line(&mut line)
            .expect("a worker's line");
        let (n, ports) = line.trim().split_once(' ').unwrap_or((line.trim(), ""));
        binds += n.parse::<u64>().expect("a worker's count");
        held.extend(
            ports
                .split(',')
                .filter_map(|p| p.parse::<u16>().ok())
                .map(|p| (c.id(), p)),
        );
    }
    Storm {
        children,
        pids,
        binds,
        held,
    }
}

/// Runs the workers for `secs`; returns their pids and total binds.
fn storm(workers: usize, secs: f64) -> (Vec<u32>, u64) {
    let s = storm_held(workers, secs);
    let out = (s.pids.clone(), s.binds);
    s.end();
    out
}

/// Asks the daemon's control socket who holds `port`/udp: the pids.
fn who_pids(sock: &std::path::Path, port: u16) -> Vec<u64> {
    let Ok(mut s) = std::os::unix::net::UnixStream::connect(sock) else {
        return Vec::new();
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(5)));
    if s.write_all(format!("{{\"cmd\":\"who\",\"port\":{port},\"proto\":\"udp\"}}\n").as_bytes())
        .is_err()
    {
        return Vec::new();
    }
    let mut line = String::new();
    let _ = BufReader::new(s).read_line(&mut line);
    serde_json::from_str::<serde_json::Value>(&line)
        .ok()
        .and_then(|v| {
            v["claims"]
                .as_array()
                .map(|a| a.iter().filter_map(|c| c["pid"].as_u64()).collect())
        })
        .unwrap_or_default()
}

fn interrupt(c: &mut Child, sig: i32) -> Option<i32> {
    // SAFETY: signalling our own child, not reaped yet.
    unsafe { libc::kill(c.id() as i32, sig) };
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Ok(Some(st)) = c.try_wait() {
            return st.code();
        }
        if Instant::now() > deadline {
            let _ = c.kill();
            let _ = c.wait();
            return None;
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

fn with_watch(workers: usize, secs: f64, round: usize) -> Round {
    let mut child = reaper_tests::reaper()
        .args(["watch", "--json", "--all"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting reaper watch");
    // Wait for "attached" on stderr, then keep draining stderr.
    let mut err = BufReader::new(child.stderr.take().unwrap());
    let mut line = String::new();
    loop {
        line.clear();
        if err.read_line(&mut line).unwrap_or(0) == 0 {
            panic!("reaper watch exited before attaching");
        }
        if line.contains("attached") {
            break;
        }
        eprintln!("{}", line.trim_end());
    }
    std::thread::spawn(move || {
        let mut sink = String::new();
        let _ = err.read_to_string(&mut sink);
    });
    let counts: Arc<Mutex<HashMap<u32, u64>>> = Arc::default();
    let lost = Arc::new(AtomicU64::new(0));
    let loss_lines = Arc::new(AtomicU64::new(0));
    let out = child.stdout.take().unwrap();
    let reader = {
        let (counts, lost, loss_lines) = (counts.clone(), lost.clone(), loss_lines.clone());
        std::thread::spawn(move || {
            for l in BufReader::new(out).lines().map_while(Result::ok) {
                let Ok(v) = serde_json::from_str::<serde_json::Value>(&l) else {
                    continue;
                };
                match v["kind"].as_str() {
                    Some("bind") if v["ok"] == true => {
                        if let Some(pid) = v["pid"].as_u64() {
                            *counts.lock().unwrap().entry(pid as u32).or_default() += 1;
                        }
                    }
                    Some("loss") => {
                        lost.fetch_add(v["lost"].as_u64().unwrap_or(0), Ordering::Relaxed);
                        loss_lines.fetch_add(1, Ordering::Relaxed);
                    }
                    _ => {}
                }
            }
        })
    };
    let sampler = Sampler::start(child.id());
    let (pids, binds) = storm(workers, secs);
    let exit = interrupt(&mut child, libc::SIGINT);
    let (first, max, n) = sampler.finish();
    reader.join().unwrap();
    let c = counts.lock().unwrap();
    Round {
        condition: "watch".into(),
        round,
        secs,
        seen_binds: pids.iter().map(|p| c.get(p).copied().unwrap_or(0)).sum(),
        worker_pids: pids,
        worker_binds: binds,
        binds_per_s: binds as f64 / secs,
        lost: lost.load(Ordering::Relaxed),
        loss_lines: loss_lines.load(Ordering::Relaxed),
        rss_first_kib: first,
        rss_max_kib: max,
        rss_samples: n,
        reaper_exit: exit,
        ..Round::default()
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn scrape(addr: &str) -> Option<String> {
    let mut s = std::net::TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .ok()?;
    let mut t = String::new();
    s.read_to_string(&mut t).ok()?;
    Some(t)
}

fn metric(text: &str, name: &str) -> Option<u64> {
    text.lines()
        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
        .map(|v| v as u64)
}

fn with_daemon(workers: usize, secs: f64, round: usize) -> Round {
    let dir: PathBuf =
        std::env::temp_dir().join(format!("reaper-storm-{}-{round}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    let journal = dir.join("journal.jsonl");
    let metrics = format!("127.0.0.1:{}", free_port());
    let config = dir.join("reaper.toml");
    std::fs::write(
        &config,
        format!(
            "journal = \"{}\"\nmetrics_listen = \"{metrics}\"\ncontrol_socket = \"{}\"\n",
            journal.display(),
            dir.join("reaper.sock").display()
        ),
    )
    .unwrap();
    let mut child = reaper_tests::reaper()
        .args(["daemon", "--config"])
        .arg(&config)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("starting reaper daemon");
    let deadline = Instant::now() + Duration::from_secs(30);
    while scrape(&metrics).is_none() {
        assert!(
            Instant::now() < deadline,
            "the daemon never served /metrics"
        );
        assert!(child.try_wait().unwrap().is_none(), "the daemon exited");
        std::thread::sleep(Duration::from_millis(20));
    }
    let sampler = Sampler::start(child.id());
    let st = storm_held(workers, secs);
    // Every claim alive now must be known to the daemon with its pid.
    let sock = dir.join("reaper.sock");
    let asked = Instant::now();
    let mut unknown: Vec<(u32, u16)> = st.held.clone();
    while !unknown.is_empty() && asked.elapsed() < Duration::from_secs(5) {
        unknown.retain(|(pid, port)| !who_pids(&sock, *port).contains(&(*pid as u64)));
        if !unknown.is_empty() {
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    let known_after_ms = asked.elapsed().as_millis() as u64;
    let held_claims = st.held.len() as u64;
    let known_claims = held_claims - unknown.len() as u64;
    let (pids, binds) = (st.pids.clone(), st.binds);
    st.end();
    // The daemon journals a loss on the loop turn after it counts it: read
    // the counter and the journal until they agree (or 10 s pass, and the
    // disagreement is what the summary shows).
    let journal_losses = || {
        let (mut sum, mut lines) = (0, 0);
        if let Ok(text) = std::fs::read_to_string(&journal) {
            for l in text.lines() {
                if let Ok(v) = serde_json::from_str::<serde_json::Value>(l) {
                    if v["kind"] == "loss" {
                        sum += v["lost"].as_u64().unwrap_or(0);
                        lines += 1;
                    }
                }
            }
        }
        (sum, lines)
    };
    let settle = Instant::now() + Duration::from_secs(10);
    let (lost, journaled, loss_lines) = loop {
        let lost = scrape(&metrics)
            .and_then(|t| metric(&t, "reaper_ringbuf_lost_events_total"))
            .unwrap_or(0);
        let (journaled, lines) = journal_losses();
        if journaled == lost || Instant::now() > settle {
            break (lost, journaled, lines);
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let reconcile_scans = scrape(&metrics)
        .and_then(|t| metric(&t, "reaper_scan_duration_seconds_count{kind=\"reconcile\"}"))
        .unwrap_or(0);
    let exit = interrupt(&mut child, libc::SIGTERM);
    let (first, max, n) = sampler.finish();
    let _ = std::fs::remove_dir_all(&dir);
    Round {
        condition: "daemon".into(),
        round,
        secs,
        worker_pids: pids,
        worker_binds: binds,
        binds_per_s: binds as f64 / secs,
        lost,
        loss_lines,
        journaled_lost: journaled,
        held_claims,
        known_claims,
        known_after_ms,
        reconcile_scans,
        rss_first_kib: first,
        rss_max_kib: max,
        rss_samples: n,
        reaper_exit: exit,
        ..Round::default()
    }
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--worker") {
        worker(args[1].parse().expect("--worker SECS"));
        return;
    }
    let val = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    let quick = args.iter().any(|a| a == "--quick");
    let secs: f64 = val("--secs")
        .or_else(|| std::env::var("REAPER_STORM_SECS").ok())
        .map(|s| s.parse().expect("--secs: seconds"))
        .unwrap_or(if quick { 3.0 } else { 5.0 });
    let rounds: usize = val("--rounds").map_or(3, |s| s.parse().expect("--rounds"));
    let workers: usize = val("--workers").map_or(8, |s| s.parse().expect("--workers"));
    let with = val("--with").unwrap_or_else(|| "watch,daemon".into());
    let conditions: Vec<&str> = with.split(',').filter(|s| !s.is_empty()).collect();
    let slice = secs / rounds as f64;
    eprintln!(
        "storm: {workers} workers, {secs} s under each of {conditions:?} and as long without, in {rounds} interleaved rounds"
    );
    let mut all: Vec<Round> = Vec::new();
    for round in 0..rounds {
        let (pids, binds) = storm(workers, slice);
        all.push(Round {
            condition: "none".into(),
            round,
            secs: slice,
            worker_pids: pids,
            worker_binds: binds,
            binds_per_s: binds as f64 / slice,
            ..Round::default()
        });
        for c in &conditions {
            all.push(match *c {
                "watch" => with_watch(workers, slice, round),
                "daemon" => with_daemon(workers, slice, round),
                other => panic!("unknown condition {other}: watch or daemon"),
            });
        }
    }
    let pick = |c: &str, f: &dyn Fn(&Round) -> f64| -> Vec<f64> {
        all.iter().filter(|r| r.condition == c).map(f).collect()
    };
    emit(
        "storm",
        "binds/s, no reaper",
        "binds/s",
        &pick("none", &|r| r.binds_per_s),
        None,
    );
    for c in &conditions {
        let rounds: Vec<&Round> = all.iter().filter(|r| r.condition == *c).collect();
        let seen: u64 = rounds.iter().map(|r| r.seen_binds).sum();
        let made: u64 = rounds.iter().map(|r| r.worker_binds).sum();
        let note = (*c == "watch").then(|| format!("{seen} of {made} binds reported"));
        emit(
            "storm",
            &format!("binds/s, reaper {c}"),
            "binds/s",
            &pick(c, &|r| r.binds_per_s),
            note,
        );
        emit(
            "storm",
            &format!("reaper {c} peak RSS"),
            "MiB",
            &pick(c, &|r| r.rss_max_kib as f64 / 1024.0),
            None,
        );
        emit(
            "storm",
            &format!("reaper {c} events lost"),
            "events",
            &pick(c, &|r| r.lost as f64),
            None,
        );
        if *c == "daemon" {
            let held: u64 = rounds.iter().map(|r| r.held_claims).sum();
            let known: u64 = rounds.iter().map(|r| r.known_claims).sum();
            let scans: u64 = rounds.iter().map(|r| r.reconcile_scans).sum();
            emit(
                "storm",
                "daemon: claims alive at the end not known with their pid",
                "claims",
                &pick(c, &|r| (r.held_claims - r.known_claims) as f64),
                Some(format!(
                    "{known} of {held} held were known within 5 s; {scans} reconcile scans"
                )),
            );
            emit(
                "storm",
                "daemon: time until every held claim was known",
                "ms",
                &pick(c, &|r| r.known_after_ms as f64),
                None,
            );
        }
    }
    if let Some(path) = val("--summary") {
        std::fs::write(&path, serde_json::to_string_pretty(&all).unwrap())
            .expect("writing --summary");
    }
}

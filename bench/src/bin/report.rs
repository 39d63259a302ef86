//! Benchmark of journal -> report: `reaper report` over a week of a busy
//! runner fleet.
//!
//! Generates a 1,000,000-record journal (`--quick`: 100,000) into a temp
//! dir: three hosts interleaved by time, 200 service ports claimed and
//! released all week, many ephemeral ports (the kernel's choice, the
//! pattern that makes the most distinct ports), a conflict with a reaping
//! every few hundred cycles, some losses, degraded periods and restarts.
//! Then runs `target/release/reaper report --journal F --format json
//! --output /dev/null` (debug if release is missing, said in the note) and
//! prints wall time and peak RSS (wait4's ru_maxrss) as JSON lines.
//!
//! Targets: under 5 s and under 200 MiB for 1,000,000 records. Printed, not
//! asserted (shared machines drift).
//!
//! `cargo run --release -p reaper-bench --bin report [-- --quick] [--samples N] [--keep]`

use std::fs::File;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use anyhow::{bail, Context, Result};

const HOSTS: &[&str] = &["runner-1", "runner-2", "runner-3"];
const WEEK_MS: i64 = 7 * 86_400_000;
const START_MS: i64 = 1_715_644_800_000; // 2024-05-14T00:00:00Z

/// A small deterministic generator (xorshift): the same journal every run.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

fn ts(ms: i64) -> String {
    // RFC 3339 with milliseconds, UTC, without a date library.
    let secs = ms.div_euclid(1000);
    let milli = ms.rem_euclid(1000);
    let days = secs.div_euclid(86_400);
    let rem = secs.rem_euclid(86_400);
    let (y, m, d) = civil_from_days(days);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{milli:03}Z",
        rem / 3600,
        (rem % 3600) / 60,
        rem % 60
    )
}

/// Days since 1970-01-01 to (year, month, day), proleptic Gregorian.
fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    let y = yoe + era * 400 + if m <= 2 { 1 } else { 0 };
    (y, m, d)
}

struct Gen<W: Write> {
    out: W,
    rng: Rng,
    written: u64,
    next_pid: u32,
    next_cookie: u64,
}

impl<W: Write> Gen<W> {
    fn process(&mut self, pid: u32, comm: &str, port: u16, started: i64, orphaned: bool) -> String {
        let job = 1000 + (pid % 5000);
        let (ppid, ancestors) = if orphaned {
            (1, r#"["1:systemd"]"#.to_string())
        } else {
            (
                pid - 3,
                format!(
                    r#"["{}:bash","{job}:Runner.Worker","812:Runner.Listener","1:systemd"]"#,
                    pid - 3
                ),
            )
        };
        format!(
            r#"{{"pid":{pid},"comm":"{comm}","exe":"/usr/local/bin/{comm}","cmdline":"/usr/local/bin/{comm} --port {port} --config /home/runner/work/app/app/ci/{comm}.toml","uid":1001,"user":"runner","started_at":"{}","ppid":{ppid},"ancestors":{ancestors},"cgroup":"/system.slice/actions.runner.acme.{job}.service","orphaned":{orphaned}}}"#,
            ts(started)
        )
    }

    fn line(&mut self, ms: i64, host: &str, source: &str, body: &str) -> Result<()> {
        writeln!(
            self.out,
            r#"{{"v":1,"ts":"{}","host":"{host}","source":"{source}",{body}}}"#,
            ts(ms)
        )?;
        self.written += 1;
        Ok(())
    }

    /// One host's activity at `ms`: mostly claim/listen/release cycles; now
    /// and then a conflict, a reaping, a loss, a degraded period.
    fn step(&mut self, ms: i64, host: &str) -> Result<()> {
        let roll = self.rng.below(1000);
        let pid = self.next_pid;
        self.next_pid += 7;
        let cookie = self.next_cookie;
        self.next_cookie += 1;
        let ep = |port: u16, addr: &str| {
            format!(
                r#""netns":4026531840,"proto":"tcp","family":"ipv4","addr":"{addr}","port":{port}"#
            )
        };
        match roll {
            // A conflict: an orphan holds a service port, the next job's
            // server fails, the daemon reaps, the new server binds.
            0..=2 => {
                let port = 8000 + self.rng.below(200) as u16;
                let old = self.process(pid, "platform-server", port, ms - 600_000, true);
                let new = self.process(pid + 1, "platform-server", port, ms - 2_000, false);
                let e = ep(port, "0.0.0.0");
                // (The orphan's claim is written just before, to keep the file
                // sorted: steps are ~1.4 s apart at 1,000,000 records.)
                self.line(
                    ms - 500,
                    host,
                    "cgroup",
                    &format!(r#""kind":"claim",{e},"process":{old},"cookie":{cookie}"#),
                )?;
                let verdict = r#"{"decision":"reap","reasons":["orphaned: parent is pid 1","exe matches rule orphaned-platform-server"],"rule":"orphaned-platform-server"}"#;
                self.line(ms, host, "cgroup", &format!(
                    r#""kind":"conflict",{e},"tried":{new},"errno":"EADDRINUSE","errno_exact":true,"holders":[{old}],"count":3,"first":"{}","last":"{}","verdict":{verdict},"action":"reap""#,
                    ts(ms - 400),
                    ts(ms - 100)
                ))?;
                self.line(
                    ms + 300,
                    host,
                    "cgroup",
                    &format!(
                        r#""kind":"release",{e},"process":{old},"held_ms":800,"cookie":{cookie}"#
                    ),
                )?;
                self.line(ms + 310, host, "cgroup", &format!(
                    r#""kind":"reaping",{e},"target":{old},"verdict":{verdict},"signals":[{{"pid":{pid},"signal":"SIGTERM","ts":"{}"}}],"outcome":"freed","port_free_at":"{}","elapsed_ms":295"#,
                    ts(ms + 5),
                    ts(ms + 300)
                ))?;
                self.line(
                    ms + 800,
                    host,
                    "cgroup",
                    &format!(
                        r#""kind":"claim",{e},"process":{new},"cookie":{}"#,
                        cookie + 1_000_000_000
                    ),
                )?;
            }
            3 => {
                let lost = 1 + self.rng.below(50);
                self.line(
                    ms,
                    host,
                    "cgroup",
                    &format!(r#""kind":"loss","lost":{lost}"#),
                )?;
            }
            4 => {
                self.line(
                    ms,
                    host,
                    "proc",
                    r#""kind":"mode","mode":"proc","reason":"BPF refused: polling /proc""#,
                )?;
                self.line(
                    ms + 1_200,
                    host,
                    "cgroup",
                    r#""kind":"mode","mode":"cgroup","reason":"hooks attached again""#,
                )?;
            }
            5 => {
                self.line(
                    ms,
                    host,
                    "cgroup",
                    &format!(r#""kind":"gap","after":"{}""#, ts(ms - 30_000)),
                )?;
                self.line(
                    ms + 1,
                    host,
                    "cgroup",
                    r#""kind":"start","version":"0.1.0","tier":"cgroup","pid":611"#,
                )?;
            }
            // Ephemeral ports: test suites binding port 0.
            6..=400 => {
                let port = 32_768 + self.rng.below(28_232) as u16;
                let p = self.process(pid, "python3", port, ms - 5_000, false);
                let e = ep(port, "127.0.0.1");
                self.line(
                    ms,
                    host,
                    "cgroup",
                    &format!(
                        r#""kind":"claim",{e},"process":{p},"cookie":{cookie},"requested_port":0"#
                    ),
                )?;
                self.line(
                    ms + 40,
                    host,
                    "cgroup",
                    &format!(
                        r#""kind":"release",{e},"process":{p},"held_ms":40,"cookie":{cookie}"#
                    ),
                )?;
            }
            // Service ports: claim, listen, release.
            _ => {
                let port = 8000 + self.rng.below(200) as u16;
                let p = self.process(pid, "platform-server", port, ms - 1_000, false);
                let e = ep(port, "0.0.0.0");
                self.line(
                    ms,
                    host,
                    "cgroup",
                    &format!(r#""kind":"claim",{e},"process":{p},"cookie":{cookie}"#),
                )?;
                self.line(
                    ms + 2,
                    host,
                    "cgroup",
                    &format!(r#""kind":"listen",{e},"process":{p},"cookie":{cookie}"#),
                )?;
                self.line(
                    ms + 900,
                    host,
                    "cgroup",
                    &format!(
                        r#""kind":"release",{e},"process":{p},"held_ms":898,"cookie":{cookie}"#
                    ),
                )?;
            }
        }
        Ok(())
    }
}

/// Writes about `records` records, sorted by time within each host and
/// nearly sorted across them (hosts take turns, as a merged journal would
/// look after `cat`-ing shipped lines in arrival order).
fn generate(path: &Path, records: u64) -> Result<u64> {
    let f = File::create(path).with_context(|| format!("creating {}", path.display()))?;
    let mut g = Gen {
        out: BufWriter::with_capacity(1 << 20, f),
        rng: Rng(0x9E37_79B9_7F4A_7C15),
        written: 0,
        next_pid: 10_000,
        next_cookie: 1,
    };
    for (i, host) in HOSTS.iter().enumerate() {
        g.line(
            START_MS + i as i64,
            host,
            "cgroup",
            r#""kind":"start","version":"0.1.0","tier":"cgroup","pid":611"#,
        )?;
    }
    // About 2.4 records per step on average: space the steps over a week.
    let steps = records * 10 / 24;
    let dt = (WEEK_MS / steps.max(1) as i64).max(1);
    let mut ms = START_MS + 1_000;
    while g.written < records {
        let host = HOSTS[g.rng.below(HOSTS.len() as u64) as usize];
        g.step(ms, host)?;
        ms += dt;
    }
    g.out.flush()?;
    Ok(g.written)
}

struct Run {
    wall_s: f64,
    /// User + system CPU: what the report cost, whatever else the shared
    /// machine was doing.
    cpu_s: f64,
    max_rss_mib: f64,
}

/// Runs the report, timing it and reading its peak RSS from wait4.
fn run_report(bin: &Path, journal: &Path) -> Result<Run> {
    let t = Instant::now();
    let child = Command::new(bin)
        .args(["report", "--journal"])
        .arg(journal)
        .args(["--format", "json", "--output", "/dev/null"])
        .spawn()
        .with_context(|| format!("running {}", bin.display()))?;
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: an all-zero rusage is valid; wait4 fills it for our child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointers; `pid` is our own child, not yet reaped.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    let wall_s = t.elapsed().as_secs_f64();
    if r != pid {
        bail!(
            "wait4 on reaper report: {}",
            std::io::Error::last_os_error()
        );
    }
    if !libc::WIFEXITED(status) || libc::WEXITSTATUS(status) != 0 {
        bail!("reaper report failed (wait status {status})");
    }
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    Ok(Run {
        wall_s,
        cpu_s: secs(usage.ru_utime) + secs(usage.ru_stime),
        // ru_maxrss is in KiB on Linux.
        max_rss_mib: usage.ru_maxrss as f64 / 1024.0,
    })
}

fn main() -> Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let quick = args.iter().any(|a| a == "--quick");
    let keep = args.iter().any(|a| a == "--keep");
    let samples: usize = args
        .iter()
        .position(|a| a == "--samples")
        .and_then(|i| args.get(i + 1))
        .map(|s| s.parse())
        .transpose()
        .context("--samples takes a number")?
        .unwrap_or(3);
    let records: u64 = if quick { 100_000 } else { 1_000_000 };

    let root = Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let target = std::env::var_os("CARGO_TARGET_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target"));
    let (bin, profile) = match (target.join("release/reaper"), target.join("debug/reaper")) {
        (r, _) if r.exists() => (r, "release"),
        (_, d) if d.exists() => (
            d,
            "debug (release missing: cargo build --release -p reaper-user)",
        ),
        _ => bail!(
            "no reaper binary in {}: cargo build --release -p reaper-user",
            target.display()
        ),
    };

    let dir = std::env::temp_dir().join(format!("reaper-bench-report-{}", std::process::id()));
    std::fs::create_dir_all(&dir).with_context(|| format!("creating {}", dir.display()))?;
    let journal = dir.join("journal.jsonl");
    let (gen_time, written) = reaper_bench::time(|| generate(&journal, records));
    let written = written?;
    let size_mib = std::fs::metadata(&journal)?.len() as f64 / (1 << 20) as f64;
    eprintln!(
        "generated {written} records ({size_mib:.0} MiB) in {:.1} s at {}",
        gen_time.as_secs_f64(),
        journal.display()
    );

    let mut wall = Vec::new();
    let mut rss = Vec::new();
    let mut cpu = Vec::new();
    for _ in 0..samples {
        let r = run_report(&bin, &journal)?;
        wall.push(r.wall_s);
        cpu.push(r.cpu_s);
        rss.push(r.max_rss_mib);
    }
    let note = Some(format!(
        "{written} records, {size_mib:.0} MiB, 3 hosts, one file; binary: {profile}; targets: < 5 s, < 200 MiB"
    ));
    let subject = format!("report --format json, {written} records");
    reaper_bench::emit(
        "report",
        &format!("{subject}: wall"),
        "s",
        &wall,
        note.clone(),
    );
    reaper_bench::emit(
        "report",
        &format!("{subject}: CPU (user+sys)"),
        "s",
        &cpu,
        note.clone(),
    );
    reaper_bench::emit("report", &format!("{subject}: peak RSS"), "MiB", &rss, note);

    if keep {
        eprintln!("kept {}", journal.display());
    } else {
        std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    }
    Ok(())
}

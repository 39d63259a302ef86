//! `cargo xtask bench`: runs every benchmark binary of `reaper-bench`
//! (bench/src/bin/*.rs), collects the JSON figure lines each prints, and
//! writes bench/results.json (for tools) and bench/results.md (for people),
//! with the machine they ran on.

use std::path::Path;
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};
use serde_json::{json, Value};

use crate::{check, have, say};

pub fn run(root: &Path, quick: bool, only: Option<&str>) -> Result<()> {
    say("building reaper and the benchmarks (release)");
    check(
        Command::new("cargo")
            .args([
                "build",
                "--release",
                "-p",
                "reaper-user",
                "-p",
                "reaper-bench",
            ])
            .current_dir(root),
    )?;
    // The fixtures (platform-server, binder) some benchmarks start.
    check(
        Command::new("cargo")
            .args(["build", "-p", "reaper-tests", "--bins"])
            .current_dir(root),
    )?;
    let mut names: Vec<String> = std::fs::read_dir(root.join("bench/src/bin"))
        .context("listing bench/src/bin")?
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let n = e.file_name().to_string_lossy().into_owned();
            n.strip_suffix(".rs").map(str::to_string)
        })
        .filter(|n| only.is_none_or(|o| n.contains(o)))
        .collect();
    names.sort();
    if names.is_empty() {
        bail!("no benchmark matches");
    }
    if names.iter().any(|n| n == "free") {
        install_peers();
    }
    if names.iter().any(|n| n == "ship") {
        // The ship benchmark measures what `cargo xtask dist` makes.
        crate::dist::dist()?;
    }
    // The daemon benchmark judges `who` on the binary people install: the
    // static one, built from this tree now (a target/dist/ could be stale).
    let static_dir = if names.iter().any(|n| n == "daemon") {
        Some(crate::dist::static_for_bench()?)
    } else {
        None
    };
    let mut figures: Vec<Value> = Vec::new();
    let mut failed = Vec::new();
    for name in &names {
        say(&format!(
            "bench {name}{}",
            if quick { " --quick" } else { "" }
        ));
        let bin = root.join("target/release").join(name);
        let mut cmd = Command::new(&bin);
        if quick {
            cmd.arg("--quick");
        }
        if let (true, Some(dir)) = (name == "daemon", &static_dir) {
            cmd.env("REAPER_DIST", dir);
        }
        cmd.env("REAPER_BIN", root.join("target/release/reaper"))
            .current_dir(root)
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit());
        let out = cmd
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                figures.push(v);
            }
        }
        if !out.status.success() {
            failed.push(name.clone());
        }
    }
    let machine = machine();
    let doc = json!({ "machine": machine, "quick": quick, "figures": figures });
    std::fs::write(
        root.join("bench/results.json"),
        serde_json::to_string_pretty(&doc)? + "\n",
    )?;
    std::fs::write(
        root.join("bench/results.md"),
        markdown(&machine, quick, &figures),
    )?;
    // Each target next to its figure, where the run is watched.
    eprint!("{}", targets(&figures));
    say("wrote bench/results.md and bench/results.json");
    if !failed.is_empty() {
        bail!("benchmarks failed: {}", failed.join(", "));
    }
    Ok(())
}

/// The targets the benchmarks are held to (the daemon under bind storms, the runner hooks): (bench, subject, the highest median that meets it, what it means).
const TARGETS: &[(&str, &str, f64, &str)] = &[
    (
        "connect",
        "connect loop: watching connects / not",
        1.02,
        "connect() loop: watching the ports connect() is given costs <= x1.02 (reaper attached with vs without its connect branch; the filter rejects unwatched ports first)",
    ),
    (
        "daemon",
        "daemon CPU per bind (port 0)",
        1.0,
        "daemon CPU <= 1.0 us per bind, one thread binding flat out",
    ),
    (
        "daemon",
        "claims the kernel-side map had no room for (port 0)",
        0.0,
        "0 lost claims",
    ),
    (
        "daemon",
        "events lost in the bind storm (fixed port)",
        0.0,
        "0 lost events for non-ephemeral binds at that rate",
    ),
    (
        "daemon",
        "binder tax (port 0): attached - detached, per round",
        0.3,
        "port-0 storm: binder tax <= +0.3 us per bind vs detached",
    ),
    (
        "daemon",
        "binder tax (fixed port): attached - detached, per round",
        0.5,
        "fixed-port storm (64 ports): binder tax <= +0.5 us per bind vs detached",
    ),
    (
        "daemon",
        "daemon CPU per bind (fixed port)",
        1.0,
        "fixed-port storm: daemon CPU <= 1.0 us per bind",
    ),
    (
        "daemon",
        "claims the kernel-side map had no room for (fixed port)",
        0.0,
        "fixed-port storm: 0 lost claims",
    ),
    (
        "daemon",
        "journal growth per bind (fixed port)",
        5.0,
        "fixed-port storm: journal <= 5 bytes per bind",
    ),
    (
        "storm",
        "daemon: claims alive at the end not known with their pid",
        0.0,
        "8 workers: every claim alive at the end known to the daemon with its pid",
    ),
    (
        "storm",
        "reaper daemon peak RSS",
        20.0,
        "8 workers: daemon RSS under 20 MiB",
    ),
    (
        "daemon",
        "`reaper who PORT` answered by the daemon (static dist binary)",
        2.0,
        "`reaper who PORT` via the daemon, whole process, <= 2 ms (the static binary `cargo xtask dist` ships)",
    ),
    (
        "daemon",
        "`reaper who PORT` via the daemon minus /bin/true (per round)",
        0.5,
        "`reaper who PORT` via the daemon: within 0.5 ms of spawning /bin/true (the static binary `cargo xtask dist` ships)",
    ),
    (
        "who",
        "reaper who / ss (per round)",
        0.10,
        "`reaper who PORT` without a daemon, 2,000 processes x 50 fds: <= 0.10x ss",
    ),
    (
        "who",
        "reaper who / ss (per round), 18k sockets",
        0.25,
        "`reaper who PORT` without a daemon, one process holding 18,000 sockets: <= 0.25x ss",
    ),
    (
        "free",
        "reaper free / fastest peer (per round)",
        0.5,
        "`reaper free` of an orphan's port: <= 0.5x the fastest peer",
    ),
    (
        "job",
        "reaper job start, port free (scan)",
        20.0,
        "runner hook `reaper job start`, nothing to do, 2,000 processes, no daemon (scan): <= 20 ms",
    ),
    (
        "job",
        "reaper job end, nothing held (scan, task iterator)",
        20.0,
        "runner hook `reaper job end`, nothing to do, 2,000 processes, no daemon (scan): <= 20 ms",
    ),
    (
        "job",
        "reaper job start, port free (daemon)",
        5.0,
        "runner hook `reaper job start`, nothing to do, asking the daemon: <= 5 ms",
    ),
    (
        "job",
        "reaper job end, nothing held (daemon)",
        5.0,
        "runner hook `reaper job end`, nothing to do, asking the daemon: <= 5 ms",
    ),
];

/// The figures shown beside a target (what it is measured against, in the
/// same run): (bench, target subject, the peers' subjects).
const PEERS: &[(&str, &str, &[&str])] = &[
    (
        "daemon",
        "binder tax (port 0): attached - detached, per round",
        &[
            "binder tax floor (port 0): empty programs - detached, per round",
            "binder tax floor, one claim kept (port 0): minimal programs - detached, per round",
            "binder tax above the one-claim floor (port 0): attached - one claim kept, per round",
        ],
    ),
    (
        "daemon",
        "binder tax (fixed port): attached - detached, per round",
        &[
            "binder tax floor (fixed port): empty programs - detached, per round",
            "binder tax floor, one claim kept (fixed port): minimal programs - detached, per round",
            "binder tax above the one-claim floor (fixed port): attached - one claim kept, per round",
        ],
    ),
    (
        "job",
        "reaper job end, nothing held (scan, task iterator)",
        &[
            "reaper job end, nothing held (scan, /proc walk)",
            "reaper job end, nothing held (scan, baseline binary)",
        ],
    ),
    (
        "daemon",
        "`reaper who PORT` via the daemon minus /bin/true (per round)",
        &[
            "`reaper who PORT` answered by the daemon (static dist binary)",
            "spawn floor: /bin/true",
            "`reaper who PORT` answered by the daemon (glibc release binary)",
        ],
    ),
    (
        "who",
        "reaper who / ss (per round)",
        &[
            "reaper who",
            "ss -ltnpH sport",
            "fuser -n tcp",
            "lsof -iTCP -sTCP:LISTEN",
            "reaper who --no-bpf",
        ],
    ),
    (
        "who",
        "reaper who / ss (per round), 18k sockets",
        &[
            "reaper who, 18k sockets",
            "ss -ltnpH sport, 18k sockets",
            "fuser -n tcp, 18k sockets",
            "reaper who --no-bpf, 18k sockets",
        ],
    ),
    (
        "free",
        "reaper free / fastest peer (per round)",
        &[
            "reaper free: start to port bindable",
            "killport + bind polling",
            "fuser -k -n tcp + bind polling",
            "kill-port (npm) + bind polling",
        ],
    ),
];

/// The other tools the free benchmark compares with: killport (crates.io)
/// and kill-port (npm). Installed when missing, and said so; a failed
/// install leaves the peer absent (the benchmark says so too).
fn install_peers() {
    if !have("killport") {
        say("installing killport (cargo install killport --locked), a peer of `reaper free`");
        if let Err(e) = check(Command::new("cargo").args(["install", "killport", "--locked"])) {
            say(&format!(
                "killport not installed ({e:#}): the free benchmark will say it is absent"
            ));
        }
    }
    if !have("kill-port") {
        if have("npm") {
            say("installing kill-port (npm install -g kill-port), a peer of `reaper free`");
            if let Err(e) = check(Command::new("npm").args(["install", "-g", "kill-port"])) {
                say(&format!(
                    "kill-port not installed ({e:#}): the free benchmark will say it is absent"
                ));
            }
        } else {
            say("kill-port is not installed and there is no npm: the free benchmark will say it is absent");
        }
    }
}

/// The targets as a table: each with its median, whether it is met, and
/// the figures it is measured against in the same run.
fn targets(figures: &[Value]) -> String {
    let mut s = String::from(
        "## Targets\n\n| target | median | met | beside it (medians, same run) |\n|---|---:|---|---|\n",
    );
    let median_of = |bench: &str, subject: &str| -> Option<String> {
        let f = figures
            .iter()
            .find(|f| f["bench"] == bench && f["subject"] == subject)?;
        Some(format!(
            "{} {}",
            fmt_num(f["median"].as_f64()?),
            f["unit"].as_str()?
        ))
    };
    for (bench, subject, limit, what) in TARGETS {
        let f = figures
            .iter()
            .find(|f| f["bench"] == *bench && f["subject"] == *subject);
        let (median, met) = match f.and_then(|f| Some((f["median"].as_f64()?, f["unit"].as_str()?)))
        {
            Some((m, unit)) => (
                format!("{} {unit}", fmt_num(m)),
                if m <= *limit { "yes" } else { "**no**" },
            ),
            None => ("not measured".to_string(), "?"),
        };
        let beside: Vec<String> = PEERS
            .iter()
            .filter(|(b, t, _)| b == bench && t == subject)
            .flat_map(|(_, _, peers)| peers.iter())
            .map(|p| {
                format!(
                    "{p}: {}",
                    median_of(bench, p).unwrap_or_else(|| "absent".into())
                )
            })
            .collect();
        s.push_str(&format!(
            "| {what} | {median} | {met} | {} |\n",
            beside.join("; ")
        ));
    }
    s.push('\n');
    s
}

fn machine() -> Value {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find_map(|l| {
            l.strip_prefix("model name")
                .map(|v| v.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let mem_kib: u64 = read("/proc/meminfo")
        .lines()
        .find_map(|l| l.strip_prefix("MemTotal:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
        .unwrap_or(0);
    let date = Command::new("date")
        .arg("-u")
        .arg("+%Y-%m-%dT%H:%M:%SZ")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default();
    // The load average when the run ended: figures from a loaded machine
    // are noisier (other builds share the cores).
    let load = read("/proc/loadavg")
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    json!({
        "load": load,
        "kernel": read("/proc/sys/kernel/osrelease").trim(),
        "cpu": cpu,
        "cpus": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "mem_gib": (mem_kib as f64 / 1048576.0 * 10.0).round() / 10.0,
        "date": date,
    })
}

fn markdown(machine: &Value, quick: bool, figures: &[Value]) -> String {
    let mut s = String::new();
    s.push_str("# reaper benchmark results\n\n");
    s.push_str(&format!(
        "Machine: {} CPUs ({}), {} GiB, Linux {}; run {} (load average {} at the end){}.\n\n",
        machine["cpus"],
        machine["cpu"].as_str().unwrap_or(""),
        machine["mem_gib"],
        machine["kernel"].as_str().unwrap_or(""),
        machine["date"].as_str().unwrap_or(""),
        machine["load"].as_str().unwrap_or("?"),
        if quick { " with --quick" } else { "" }
    ));
    s.push_str("Comparisons were interleaved in the same run; absolute numbers drift on shared machines, ratios less so. Reproduce with `cargo xtask bench`.\n\n");
    s.push_str(&targets(figures));
    s.push_str("## Figures\n\n");
    s.push_str("| benchmark | subject | median | min | max | n | note |\n|---|---|---:|---:|---:|---:|---|\n");
    for f in figures {
        let num = |k: &str| f[k].as_f64().map(fmt_num).unwrap_or_default();
        s.push_str(&format!(
            "| {} | {} | {} {} | {} | {} | {} | {} |\n",
            f["bench"].as_str().unwrap_or(""),
            f["subject"].as_str().unwrap_or(""),
            num("median"),
            f["unit"].as_str().unwrap_or(""),
            num("min"),
            num("max"),
            f["samples"],
            f["note"].as_str().unwrap_or("")
        ));
    }
    s
}

fn fmt_num(v: f64) -> String {
    if v.abs() >= 100.0 {
        format!("{v:.0}")
    } else if v.abs() >= 1.0 {
        format!("{v:.2}")
    } else {
        format!("{v:.4}")
    }
}

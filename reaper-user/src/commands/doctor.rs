//! `reaper doctor`: what this machine allows, and what reaper would do here.

use super::Result;
use serde::Serialize;

use crate::cli::{DoctorArgs, Global};
use reaper::error::Exit;
use reaper::hooks::{self, Probe, Tier};
use reaper::output::{json_line, print, use_color, Style, Table};

#[derive(Serialize)]
struct Report {
    kernel: String,
    btf: bool,
    /// The file the scan's iterators keep their answers from the kernel's
    /// BTF in, when it holds this kernel's (null: parsed each time).
    btf_cache: Option<String>,
    lockdown: Option<String>,
    lsms: Option<String>,
    euid: u32,
    /// Effective capabilities that matter to reaper, by name.
    capabilities: Vec<Cap>,
    cgroup2: Option<String>,
    /// The pid namespace reaper's /proc numbers processes in, and what the
    /// kernel side does about it (or why it cannot be known).
    pidns: String,
    unprivileged_bpf_disabled: Option<String>,
    probes: Vec<Probe>,
    /// Why the probes could not run, when they could not.
    probe_error: Option<String>,
    /// The tier `--hooks auto` would attach here, or "proc" for the scan.
    tier: String,
    /// Whether that tier gives exact errnos.
    errno_exact: bool,
    fallback: String,
    /// What the BPF tiers send and what they only count (null for "proc").
    summary: Option<String>,
    /// Where a scan (`who`, `free` without a daemon) finds the processes
    /// holding a socket: "bpf_iter" when the task_file iterator loaded and
    /// ran here (it found reaper's own socket), else "proc" (/proc/PID/fd).
    holder_source: String,
    /// Why not the iterator, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    holder_source_error: Option<String>,
    /// Where the runner hooks (`job start`, `job end` without a daemon)
    /// read each process's parent, start time and job: "bpf_iter" when
    /// the sleepable task iterator loaded and ran here, else "proc"
    /// (/proc/PID/stat and environ).
    process_source: String,
    /// Why not the iterator, when not.
    #[serde(skip_serializing_if = "Option::is_none")]
    process_source_error: Option<String>,
    /// The ports the kernel lends to clients, and those it keeps back.
    ports: Ports,
}

/// net.ipv4 sysctls of this namespace that decide which ports connect()
/// may take, and the config's ports checked against them.
#[derive(Serialize)]
struct Ports {
    /// `net.ipv4.ip_local_port_range`.
    ephemeral: Option<(u16, u16)>,
    /// `net.ipv4.ip_local_reserved_ports`, as the kernel writes it.
    reserved: String,
    /// With --config: each configured port range and whether it is safe.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    config: Vec<PortCheck>,
}

#[derive(Serialize)]
struct PortCheck {
    ports: String,
    /// Some port of it lies in the ephemeral range.
    in_ephemeral: bool,
    /// Every port of it is in ip_local_reserved_ports.
    reserved: bool,
    /// A warning in words, when connect() may take one of them.
    #[serde(skip_serializing_if = "Option::is_none")]
    warning: Option<String>,
}

fn ports(config: Option<&std::path::Path>) -> Result<Ports> {
    let sys = reaper::bindmodel::setting::read(None, None)?;
    let reserved = reaper::proc::sysctl("net/ipv4/ip_local_reserved_ports").unwrap_or_default();
    let mut checks = Vec::new();
    if let Some(path) = config {
        let c = reaper::daemon::config::Config::load(path)
            .map_err(|e| reaper::error::bad_input(e.to_string()))?;
        let job = job_ranges(&c.job.ports);
        let reserved_by_config =
            |lo: u16, hi: u16| c.reserve_ports.iter().any(|&(a, b)| a <= lo && hi <= b);
        for (lo, hi, of_job) in c
            .reserve_ports
            .iter()
            .map(|&(lo, hi)| (lo, hi, false))
            .chain(job.into_iter().map(|(lo, hi)| (lo, hi, true)))
        {
            let in_ephemeral = sys.ephemeral.is_some_and(|(a, b)| lo <= b && hi >= a);
            let all_reserved = (lo..=hi).all(|p| sys.is_reserved(p));
            let words = if lo == hi {
                lo.to_string()
            } else {
                format!("{lo}-{hi}")
            };
            let fix = if !of_job || reserved_by_config(lo, hi) {
                "the daemon adds it at start; or: sysctl -w net.ipv4.ip_local_reserved_ports=..."
            } else {
                "add it to reserve_ports, or: sysctl -w net.ipv4.ip_local_reserved_ports=..."
            };
            checks.push(PortCheck {
                warning: (in_ephemeral && !all_reserved).then(|| format!(
                    "{}{words} lies in net.ipv4.ip_local_port_range and is not in net.ipv4.ip_local_reserved_ports: a client's connect() may take it ({fix})",
                    if of_job { "[job] port " } else { "" }
                )),
                ports: if of_job { format!("job {words}") } else { words },
                in_ephemeral,
                reserved: all_reserved,
            });
        }
    }
    Ok(Ports {
        ephemeral: sys.ephemeral,
        reserved,
        config: checks,
    })
}

/// Sorted distinct ports as (low, high) runs.
fn job_ranges(ports: &[u16]) -> Vec<(u16, u16)> {
    let mut out: Vec<(u16, u16)> = Vec::new();
    for &p in ports {
        match out.last_mut() {
            Some((_, hi)) if hi.checked_add(1) == Some(p) => *hi = p,
            _ => out.push((p, p)),
        }
    }
    out
}

#[derive(Serialize)]
struct Cap {
    name: &'static str,
    present: bool,
    why: &'static str,
}

const CAPS: &[(u32, &str, &str)] = &[
    (39, "CAP_BPF", "load the bind hooks"),
    (38, "CAP_PERFMON", "tracing programs (listens, fexit)"),
    (
        21,
        "CAP_SYS_ADMIN",
        "attach to the cgroup root; enter other network namespaces",
    ),
    (12, "CAP_NET_ADMIN", "sock_diag in every network namespace"),
    (5, "CAP_KILL", "signal stale holders of other users"),
    (19, "CAP_SYS_PTRACE", "read other users' /proc/PID/fd"),
];

pub fn run(global: &Global, args: DoctorArgs) -> Result<Exit> {
    let mut report = gather();
    report.ports = ports(args.config.as_deref())?;
    if args.json {
        json_line(&report)?;
    } else {
        print(&human(
            &report,
            Style {
                on: use_color(global.color),
            },
        ))?;
    }
    Ok(Exit::Ok)
}

fn read_trim(path: &str) -> Option<String> {
    std::fs::read_to_string(path)
        .ok()
        .map(|s| s.trim().to_string())
}

fn gather() -> Report {
    let uts = nix::sys::utsname::uname().ok();
    let kernel = uts
        .map(|u| {
            format!(
                "{} {}",
                u.sysname().to_string_lossy(),
                u.release().to_string_lossy()
            )
        })
        .unwrap_or_else(|| "unknown".into());
    let cap_eff = reaper::caps::effective_of("self").unwrap_or(0);
    let capabilities = CAPS
        .iter()
        .map(|(bit, name, why)| Cap {
            name,
            present: cap_eff & (1u64 << bit) != 0,
            why,
        })
        .collect();
    let (probes, probe_error) = if reaper::util::is_root() {
        match hooks::probe_all() {
            Ok(p) => (p, None),
            Err(e) => (vec![], Some(format!("{e:#}"))),
        }
    } else {
        (
            vec![],
            Some(
                "not root: the probes need CAP_BPF and CAP_PERFMON (run `sudo reaper doctor`)"
                    .into(),
            ),
        )
    };
    let cgroup_ok = !probes.is_empty()
        && probes
            .iter()
            .filter(|p| p.hook.starts_with("cgroup/"))
            .all(|p| p.attaches);
    let tier = if cgroup_ok {
        Tier::Cgroup.as_str().to_string()
    } else {
        "proc".to_string()
    };
    let iter = reaper::holders::fditer::probe();
    let tasks = reaper::holders::taskenv::each(|_| {});
    Report {
        holder_source: if iter.is_ok() { "bpf_iter" } else { "proc" }.into(),
        holder_source_error: iter.err(),
        process_source: if tasks.is_ok() { "bpf_iter" } else { "proc" }.into(),
        process_source_error: tasks.err(),
        kernel,
        btf: std::path::Path::new("/sys/kernel/btf/vmlinux").exists(),
        // After the probes: they write it when they can.
        btf_cache: reaper::holders::fditer::btf_cache().map(|p| p.display().to_string()),
        lockdown: read_trim("/sys/kernel/security/lockdown"),
        lsms: read_trim("/sys/kernel/security/lsm"),
        euid: nix::unistd::geteuid().as_raw(),
        capabilities,
        cgroup2: hooks::cgroup2_root().ok().map(|p| p.display().to_string()),
        pidns: pidns_words(),
        unprivileged_bpf_disabled: reaper::proc::sysctl("kernel/unprivileged_bpf_disabled").ok(),
        probes,
        probe_error,
        errno_exact: false,
        summary: (tier != "proc").then(|| reaper::hooks::SUMMARY.to_string()),
        tier,
        ports: Ports {
            ephemeral: None,
            reserved: String::new(),
            config: Vec::new(),
        },
        fallback: "sock_diag netlink (or /proc/net) + /proc/PID/fd scan: who holds a port now, without bind history or failed attempts".into(),
    }
}

fn human(r: &Report, style: Style) -> String {
    let mut s = machine_words(r, style);
    s.push('\n');
    s.push_str(&hooks_words(r, style));
    s.push('\n');
    s.push_str(&tier_words(r, style));
    s.push_str(&ports_words(r, style));
    s
}

/// Whose pids reaper sees, in words.
fn pidns_words() -> String {
    match hooks::pidns::of_proc() {
        Ok(ns) if ns.is_initial() => format!("{} (the host's)", ns.name()),
        Ok(ns) => format!(
            "{} (not the host's): the kernel side reports pids in it (bpf_get_ns_current_pid_tgid); a process outside it is marked outside_pidns with pid 0, and a conflict in a network namespace no process of it is in is recorded without holders and says so (hostPID: true / --pid=host sees everything)",
            ns.name()
        ),
        Err(e) => format!("unknown ({e:#}): the daemon refuses to attach; run it in the host's pid namespace (hostPID: true / --pid=host)"),
    }
}

/// The kernel, its BTF, lockdown, LSMs, cgroup v2 and reaper's capabilities.
fn machine_words(r: &Report, style: Style) -> String {
    let mut s = String::new();
    s.push_str(&format!("kernel      {}\n", r.kernel));
    s.push_str(&format!(
        "btf         {}\n",
        match (r.btf, &r.btf_cache) {
            (true, Some(c)) => format!(
                "yes (/sys/kernel/btf/vmlinux); the scan's answers from it are kept in {c}"
            ),
            (true, None) => "yes (/sys/kernel/btf/vmlinux)".into(),
            (false, _) => "no".into(),
        }
    ));
    if let Some(l) = &r.lockdown {
        s.push_str(&format!("lockdown    {l}\n"));
    }
    if let Some(l) = &r.lsms {
        s.push_str(&format!("lsms        {l}\n"));
    }
    s.push_str(&format!(
        "cgroup2     {}\n",
        r.cgroup2
            .as_deref()
            .unwrap_or("not mounted (the cgroup tier needs it)")
    ));
    s.push_str(&format!("pidns       {}\n", r.pidns));
    s.push_str(&format!("euid        {}\n", r.euid));
    for c in &r.capabilities {
        let mark = if c.present {
            style.green("yes")
        } else {
            style.red("no ")
        };
        s.push_str(&format!("  {:<15} {mark}  {}\n", c.name, c.why));
    }
    s
}

/// Each hook probed: does it load, does it attach, what refused it.
fn hooks_words(r: &Report, style: Style) -> String {
    let mut s = String::new();
    if r.probes.is_empty() {
        s.push_str(&format!(
            "hooks       not probed: {}\n",
            r.probe_error.as_deref().unwrap_or("unknown")
        ));
    } else {
        let mut t = Table::new(&[
            "HOOK",
            "PROGRAM TYPE",
            "LOADS",
            "ATTACHES",
            "REFUSED WITH",
            "USED BY",
        ]);
        for p in &r.probes {
            t.row(vec![
                p.hook.clone(),
                p.program_type.clone(),
                yn(p.loads, style),
                yn(p.attaches, style),
                p.errno
                    .clone()
                    .or_else(|| p.error.clone())
                    .unwrap_or_default(),
                if p.used_by.is_empty() {
                    "(probe only)".into()
                } else {
                    p.used_by.join(",")
                },
            ]);
        }
        s.push_str(&t.render(style));
    }
    s
}

/// The tier reaper would use, what it summarises, and its fallback.
fn tier_words(r: &Report, style: Style) -> String {
    let mut s = String::new();
    let tier_line = match r.tier.as_str() {
        "proc" => style.yellow("proc (no BPF tier is usable here: reaper will scan)"),
        t => style.green(&format!(
            "{t} (errno inferred; --hooks syscalls gives exact errnos but taxes every syscall)"
        )),
    };
    s.push_str(&format!("tier        {tier_line}\n"));
    if let Some(summary) = &r.summary {
        s.push_str(&format!("summarised  {summary}\n"));
    }
    s.push_str(&format!("fallback    {}\n", r.fallback));
    let holders = match &r.holder_source_error {
        None => style.green(
            "bpf_iter (the kernel's task_file iterator finds a socket's processes in one pass)",
        ),
        Some(why) => style.yellow(&format!(
            "proc (/proc/PID/fd, one readlink per open file; task_file iterator: {why})"
        )),
    };
    s.push_str(&format!("holders     {holders}\n"));
    let processes = match &r.process_source_error {
        None => style.green(
            "bpf_iter (the job hooks read every process's parent and environment in one pass of a task iterator)",
        ),
        Some(why) => style.yellow(&format!(
            "proc (/proc/PID/stat and environ of every process; task iterator: {why})"
        )),
    };
    s.push_str(&format!("processes   {processes}\n"));
    s
}

/// The ephemeral range the kernel lends to clients, the reserved ports,
/// and what the config's `reserve_ports` says about them.
fn ports_words(r: &Report, style: Style) -> String {
    let mut s = String::new();
    let range = r
        .ports
        .ephemeral
        .map(|(a, b)| format!("{a}-{b}"))
        .unwrap_or_else(|| "unknown".into());
    let reserved = if r.ports.reserved.is_empty() {
        "none".to_string()
    } else {
        r.ports.reserved.clone()
    };
    s.push_str(&format!(
        "ephemeral   {range} (connect() lends these ports to clients); reserved: {reserved}\n"
    ));
    for c in &r.ports.config {
        match &c.warning {
            Some(w) => s.push_str(&format!("  {}\n", style.yellow(&format!("warning: {w}")))),
            None => s.push_str(&format!(
                "  reserve_ports {}: {}\n",
                c.ports,
                if c.reserved {
                    "reserved"
                } else {
                    "outside the ephemeral range"
                }
            )),
        }
    }
    s
}

fn yn(b: bool, style: Style) -> String {
    if b {
        style.green("yes")
    } else {
        style.red("no")
    }
}

//! A holders scan as `reaper who` and `reaper ports` show it: the `--netns`
//! scope both take, a socket's endpoint and namespace, a holding with its
//! container and processes (every value a process chose escaped), the
//! holders in one table cell, and what the scan could not see.

use std::collections::HashSet;
use std::time::Duration;

use super::Result;

use reaper::error::bad_input;
use reaper::holders::container::{self, Container, Via};
use reaper::holders::{Holding, Process, Scan, ScanGaps, Socket};
use reaper::output::Style;
use reaper::text::term;
use reaper::vocab::{SocketState, UnownedReason};

/// `--netns`: `all` or a namespace inode.
pub(super) fn parse_netns(s: &str) -> Result<Option<u64>> {
    let t = s.trim();
    if t.eq_ignore_ascii_case("all") {
        return Ok(None);
    }
    // Also accept what `readlink /proc/PID/ns/net` prints.
    let digits = reaper::holders::netns::parse_ns_link(t)
        .map(|n| n.to_string())
        .unwrap_or_else(|| t.to_string());
    match digits.parse::<u64>() {
        Ok(n) if n > 0 => Ok(Some(n)),
        _ => Err(bad_input(format!(
            "--netns '{s}' is not a network namespace: give `all` or an inode number as in `readlink /proc/PID/ns/net` (e.g. 4026531840), or list them with `lsns -t net`"
        ))),
    }
}

/// A namespace asked for by number that the scan did not find is bad input.
pub(super) fn check_netns_found(netns: Option<u64>, scan: &Scan) -> Result<()> {
    if let Some(n) = netns {
        if !scan.netns_seen.contains(&n) && scan.gaps.unreadable_netns == 0 {
            return Err(bad_input(format!(
                "--netns {n}: no network namespace with that inode on this host (list them with `lsns -t net`)"
            )));
        }
    }
    Ok(())
}

/// `addr:port`, with brackets for IPv6.
pub(super) fn endpoint(addr: std::net::IpAddr, port: u16) -> String {
    match addr {
        std::net::IpAddr::V6(a) => format!("[{a}]:{port}"),
        std::net::IpAddr::V4(a) => format!("{a}:{port}"),
    }
}

/// How a namespace is shown: its inode, and its `ip netns` name or "this
/// one" for reaper's own.
pub(super) fn netns_label(netns: u64, scan: &Scan) -> String {
    match (scan.netns_names.get(&netns), scan.own_netns == Some(netns)) {
        (Some(name), _) => format!("{netns} ({})", term(name)),
        (None, true) => format!("{netns} (this one)"),
        (None, false) => netns.to_string(),
    }
}

/// Seconds-rounded: "41m 03s".
fn age(d: Duration) -> String {
    reaper::util::human_duration(Duration::from_secs(d.as_secs()))
}

fn process_age(p: &Process) -> Option<Duration> {
    let started = chrono::DateTime::parse_from_rfc3339(&p.started_at).ok()?;
    (chrono::Utc::now() - started.with_timezone(&chrono::Utc))
        .to_std()
        .ok()
}

fn state_styled(s: &Socket, style: Style) -> String {
    match s.state {
        SocketState::Listen | SocketState::Unconn => style.green(s.state.as_str()),
        SocketState::TimeWait => style.yellow(s.state.as_str()),
        _ => s.state.to_string(),
    }
}

pub(super) fn render_holding(
    out: &mut String,
    h: &Holding,
    scan: &Scan,
    from_ledger: bool,
    shown: &mut HashSet<u32>,
    style: Style,
) {
    let s = &h.socket;
    let peer = s
        .peer
        .map(|(a, p)| format!(" -> {}", endpoint(a, p)))
        .unwrap_or_default();
    out.push_str(&format!(
        "{} {}{}  {}  netns {}\n",
        style.bold(s.proto.as_str()),
        style.bold(&endpoint(s.addr, s.port)),
        peer,
        state_styled(s, style),
        netns_label(s.netns, scan)
    ));
    if s.dual_stack {
        out.push_str(&format!(
            "  dual-stack: IPV6_V6ONLY is off, so this socket also blocks IPv4 binds of port {}{}\n",
            s.port,
            if scan.gaps.socket_source.contains("procfs") {
                " (assumed from net.ipv6.bindv6only: /proc/net does not say)"
            } else {
                ""
            }
        ));
    }
    if s.state == SocketState::BoundInactive {
        out.push_str(
            "  bound but neither listening nor connected: it holds the port all the same\n",
        );
    }
    if let Some(c) = &h.container {
        render_container(out, c, style);
    }
    if h.processes.is_empty() {
        let timer = s.timer_ms.map(|ms| age(Duration::from_millis(ms + 999)));
        let why = match (h.unowned_reason, &timer) {
            (Some(UnownedReason::TimeWait), Some(t)) => format!("blocked by TIME_WAIT, expires in {t} (the port is not free until then, unless the new socket sets SO_REUSEADDR)"),
            (Some(UnownedReason::TimeWait), None) => "blocked by TIME_WAIT".to_string(),
            (Some(UnownedReason::Orphaned), t) => format!(
                "orphaned: no process has it open; the kernel is finishing the close{}",
                t.as_ref().map(|t| format!(", timer {t}")).unwrap_or_default()
            ),
            (Some(UnownedReason::Unreadable), _) => {
                "no readable process holds it: the holder is probably one of the unreadable processes counted below".to_string()
            }
            _ => "no process holds it: the kernel does, a file in flight over a unix socket, or it closed during the scan".to_string(),
        };
        out.push_str(&format!(
            "  {}\n",
            style.yellow(&format!("no process: {why}"))
        ));
        return;
    }
    for p in &h.processes {
        if !shown.insert(p.pid) {
            out.push_str(&format!(
                "  pid {}  {}  (details above)\n",
                style.bold(&p.pid.to_string()),
                term(&p.comm)
            ));
            continue;
        }
        render_process(out, p, from_ledger, style);
    }
}

/// The container a holding belongs to, how it was tied, what listens inside.
pub(super) fn render_container(out: &mut String, c: &Container, style: Style) {
    let how = match c.via {
        Some(Via::Proxy) => "published through the engine's proxy",
        Some(Via::Dnat) => "published by DNAT (no proxy)",
        _ => "the holder runs inside it",
    };
    if c.stale {
        render_stale_proxy(out, c, style);
        return;
    }
    if c.id.is_empty() {
        out.push_str(&format!(
            "  container unknown: {how}, and the engine did not answer
"
        ));
        return;
    }
    out.push_str(&format!(
        "  container {}: {how}
",
        style.bold(&term(&c.words()))
    ));
    render_container_rows(out, c);
}

/// A proxy left behind by a container that is gone, and the fix.
fn render_stale_proxy(out: &mut String, c: &Container, style: Style) {
    let target = c
        .ports
        .first()
        .map(|p| {
            let ip = c
                .addresses
                .first()
                .map(|a| a.to_string())
                .unwrap_or_default();
            format!(" (it forwards to {ip}:{})", p.container_port)
        })
        .unwrap_or_default();
    out.push_str(&format!(
        "  {}
",
        style.yellow(&format!(
            "stale proxy: no running container publishes this port any more{target}"
        ))
    ));
    out.push_str(&format!(
        "  fix: {}
",
        container::STALE_PROXY_FIX
    ));
}

/// The container's state, compose project, pod and listeners, one row each.
fn render_container_rows(out: &mut String, c: &Container) {
    let row = |out: &mut String, key: &str, value: &str| {
        out.push_str(&format!(
            "    {key:<10}{value}
"
        ));
    };
    if let Some(st) = &c.state {
        row(out, "state", &term(st));
    }
    if let (Some(p), s) = (&c.compose_project, &c.compose_service) {
        row(
            out,
            "compose",
            &term(&format!(
                "project {p}, service {}",
                s.as_deref().unwrap_or("?")
            )),
        );
    }
    if c.pod_uid.is_some() || c.pod_name.is_some() {
        row(
            out,
            "pod",
            &term(&format!(
                "{}/{} (uid {})",
                c.pod_namespace.as_deref().unwrap_or("?"),
                c.pod_name.as_deref().unwrap_or("?"),
                c.pod_uid.as_deref().unwrap_or("?")
            )),
        );
    }
    for p in &c.listeners {
        row(
            out,
            "inside",
            &format!(
                "pid {} {} ({})",
                p.pid,
                term(&p.comm),
                p.cmdline
                    .iter()
                    .map(|a| reaper::text::shell_word(a))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        );
    }
}

/// `from_ledger`: the daemon's history below says when the port was bound,
/// so the process's age is not offered as a stand-in.
fn render_process(out: &mut String, p: &Process, from_ledger: bool, style: Style) {
    let row = |out: &mut String, key: &str, value: &str| {
        out.push_str(&format!("    {key:<10}{value}\n"));
    };
    out.push_str(&format!(
        "  pid {}  {}\n",
        style.bold(&p.pid.to_string()),
        style.bold(&term(&p.comm))
    ));
    row(
        out,
        "exe",
        &p.exe.as_deref().map_or("? (unreadable)".into(), term),
    );
    let cmdline = if p.cmdline.is_empty() {
        "? (empty: a kernel thread, or a zombie)".to_string()
    } else {
        p.cmdline
            .iter()
            .map(|a| reaper::text::shell_word(a))
            .collect::<Vec<_>>()
            .join(" ")
    };
    row(out, "cmdline", &cmdline);
    let user = match &p.user {
        Some(u) => format!("{} ({})", term(u), p.uid),
        None if p.uid == u32::MAX => "?".to_string(),
        None => p.uid.to_string(),
    };
    row(out, "user", &user);
    let age_now = process_age(p);
    row(
        out,
        "started",
        &match age_now {
            Some(a) => format!("{}, {} ago", p.started_at, age(a)),
            None => p.started_at.clone(),
        },
    );
    let chain = p
        .ancestors
        .iter()
        .map(|(pid, comm)| format!("{pid} {}", term(comm)))
        .collect::<Vec<_>>()
        .join(" <- ");
    row(out, "parents", if chain.is_empty() { "-" } else { &chain });
    if let Some(cg) = &p.cgroup {
        row(out, "cgroup", &term(cg));
    }
    if let Some(id) = &p.container {
        let id = term(id);
        row(out, "container", &id.chars().take(12).collect::<String>());
    }
    if let Some(ns) = p.netns {
        row(out, "netns", &ns.to_string());
    }
    if let Some(j) = &p.job {
        row(out, "job", &term(&j.words()));
    }
    if p.orphaned {
        row(
            out,
            "orphaned",
            &style.yellow(
                "yes: reparented to init and not a session leader (whatever started it has exited)",
            ),
        );
    }
    if let (Some(a), false) = (age_now, from_ledger) {
        row(
            out,
            "holding",
            &format!(
                "for ~{} (the process's age: a scan cannot see when it bound)",
                age(a)
            ),
        );
    }
}

/// "3 processes unreadable (EPERM), 1 vanished during the scan"; None when
/// the scan saw everything.
pub(super) fn gaps_line(g: &ScanGaps) -> Option<String> {
    let mut parts = Vec::new();
    if g.unreadable_pids > 0 {
        let why = g
            .unreadable_by_errno
            .keys()
            .cloned()
            .collect::<Vec<_>>()
            .join(", ");
        parts.push(format!(
            "{} process{} unreadable{}",
            g.unreadable_pids,
            if g.unreadable_pids == 1 { "" } else { "es" },
            if why.is_empty() {
                String::new()
            } else {
                format!(" ({why})")
            }
        ));
    }
    if g.vanished_pids > 0 {
        parts.push(format!("{} vanished during the scan", g.vanished_pids));
    }
    if g.unreadable_netns > 0 {
        parts.push(format!(
            "{} network namespace{} not entered",
            g.unreadable_netns,
            if g.unreadable_netns == 1 { "" } else { "s" }
        ));
    }
    (!parts.is_empty()).then(|| parts.join(", "))
}

/// The holders of a socket in one table cell: pids and comms, the
/// container, the job.
pub(super) fn holders_cell(h: &Holding) -> String {
    if h.processes.is_empty() {
        return format!("- ({})", h.unowned_reason.map_or("none", |r| r.as_str()));
    }
    let mut cell = h
        .processes
        .iter()
        .map(|p| format!("{} {}", p.pid, reaper::text::term(&p.comm)))
        .collect::<Vec<_>>()
        .join(", ");
    if let Some(c) = &h.container {
        cell.push_str(&match (c.stale, &c.name) {
            (true, _) => " [stale proxy: its container is gone]".to_string(),
            (false, Some(n)) => format!(" [container {} {}]", reaper::text::term(n), c.short_id),
            (false, None) if !c.id.is_empty() => format!(" [container {}]", c.short_id),
            (false, None) => " [container ?]".to_string(),
        });
    }
    if let Some(j) = h.processes.iter().find_map(|p| p.job.as_ref()) {
        // The job's id is process-controlled text (its environment).
        cell.push_str(&format!(
            " [{} job {}{}]",
            j.provider,
            reaper::text::term(&j.id),
            if j.ended == Some(true) { ", ended" } else { "" }
        ));
    }
    cell
}

#[cfg(test)]
mod tests {
    use super::*;
    use reaper::error::Exit;

    #[test]
    fn netns_argument() {
        assert_eq!(parse_netns("all").unwrap(), None);
        assert_eq!(parse_netns("ALL").unwrap(), None);
        assert_eq!(parse_netns("4026531840").unwrap(), Some(4026531840));
        assert_eq!(parse_netns("net:[4026531840]").unwrap(), Some(4026531840));
        for bad in ["", "host", "-1", "0", "1e9", "4026531840x"] {
            let e = parse_netns(bad).unwrap_err();
            assert_eq!(e.exit(), Exit::BadInput, "{bad}");
            assert!(e.to_string().contains("lsns"), "{e}");
        }
    }
}

//! `reaper why PORT`: would this exact bind succeed, and if not, which
//! sockets block it, by which of the kernel's rules, and what would make it
//! succeed. The answer is the model's (`bindmodel`), from a scan of the
//! namespace's sockets and their holders' socket options; nothing is bound.
//!
//! Exit: 0 the bind would succeed, 1 it would fail (EADDRINUSE or EACCES),
//! 2 bad input, 3 the kernel does not show a fact that decides it,
//! 5 could not scan.

use std::net::IpAddr;

use anyhow::Context;

use super::Result;
use serde::Serialize;

use super::holdings::{endpoint, holders_cell, netns_label};
use crate::cli::{Global, WhyArgs};
use reaper::bindmodel::predict::{predict, Outcome, Prediction, Setting, Verdict};
use reaper::bindmodel::{facts, setting, Request};
use reaper::error::{bad_input, Exit};
use reaper::holders::{self, Holding, Query, Scan};
use reaper::output::{print, use_color, Style};
use reaper::text::term;
use reaper::vocab::Proto;

/// `reaper why --json`. Field names are an interface.
#[derive(Serialize)]
struct Answer<'a> {
    port: u16,
    proto: Proto,
    netns: u64,
    request: &'a Request,
    /// "ok", "EADDRINUSE", "EACCES" or "unknown".
    outcome: Outcome,
    errno: Option<i32>,
    /// Sockets that block the bind for sure.
    conflicts: usize,
    sockets: Vec<SocketAnswer<'a>>,
    fixes: &'a [String],
    setting: &'a Setting,
}

#[derive(Serialize)]
struct SocketAnswer<'a> {
    #[serde(flatten)]
    holding: &'a Holding,
    /// true, false, or null when an unknown fact decides.
    blocks: Option<bool>,
    #[serde(flatten)]
    verdict: &'a Verdict,
}

pub fn run(global: &Global, args: WhyArgs) -> Result<Exit> {
    let addr = parse_addr(&args)?;
    let proto = if args.udp { Proto::Udp } else { Proto::Tcp };
    let own = holders::netns::own_inode();
    let netns = match &args.netns {
        Some(s) => super::holdings::parse_netns(s)?.ok_or_else(|| {
            bad_input("--netns all: a bind happens in one namespace; give its inode (`readlink /proc/PID/ns/net`)")
        })?,
        None => own.context("reading this process's network namespace")?,
    };
    let uid = args.uid.unwrap_or_else(|| nix::unistd::geteuid().as_raw());
    let req = Request {
        netns,
        proto,
        addr,
        port: args.port,
        reuseaddr: args.reuseaddr,
        reuseport: args.reuseport,
        v6only: args.v6only,
        uid,
    };
    let scan = holders::scan(&Query {
        port: Some(args.port),
        proto: Some(proto),
        netns: Some(netns),
        listening_only: false,
    })
    .with_context(|| format!("scanning the sockets on port {}", args.port))?;
    super::holdings::check_netns_found(Some(netns), &scan)?;
    let sysctls = read_sysctls(netns)?;
    let setting = Setting {
        unprivileged_port_start: sysctls.unprivileged_port_start,
        cap_net_bind_service: can_bind_service(args.uid),
        ephemeral: sysctls.ephemeral,
        reserved: sysctls.is_reserved(args.port),
    };
    let existing: Vec<_> = scan.holdings.iter().map(facts::of_holding).collect();
    let p = predict(&req, &existing, &setting);
    if args.json {
        print_json(&req, &p, &scan)?;
    } else {
        let style = Style {
            on: use_color(global.color),
        };
        print(&human(&req, &p, &scan, style))?;
    }
    Ok(match p.outcome {
        Outcome::Ok => Exit::Ok,
        Outcome::AddrInUse | Outcome::Access => Exit::NotHeld,
        Outcome::Unknown => Exit::StillHeld,
    })
}

fn parse_addr(args: &WhyArgs) -> Result<IpAddr> {
    let addr: IpAddr = args
        .addr
        .trim()
        .trim_matches(['[', ']'])
        .parse()
        .map_err(|_| {
            bad_input(format!(
                "--addr '{}' is not an IP address: give one like 0.0.0.0, 127.0.0.1, :: or ::1",
                args.addr
            ))
        })?;
    if args.v6only {
        match addr {
            IpAddr::V4(_) => {
                return Err(bad_input(format!(
                    "--v6only applies to IPv6 sockets, and --addr {addr} is IPv4: give an IPv6 address (--addr ::) or drop --v6only"
                )))
            }
            IpAddr::V6(a) if a.to_ipv4_mapped().is_some() => {
                return Err(bad_input(format!(
                    "--v6only with the v4-mapped --addr {addr}: an IPv6-only socket cannot bind an IPv4 address (the kernel says EINVAL); drop one of them"
                )))
            }
            _ => {}
        }
    }
    Ok(addr)
}

/// CAP_NET_BIND_SERVICE: ours when no --uid is given; for another uid,
/// root has it and anyone else is assumed not to (file capabilities and
/// ambient sets can grant it: reaper cannot see them from a uid).
fn can_bind_service(uid: Option<u32>) -> bool {
    match uid {
        Some(u) => u == 0,
        None => reaper::caps::effective_of("self")
            .is_some_and(|m| m & (1 << reaper::caps::CAP_NET_BIND_SERVICE) != 0),
    }
}

fn read_sysctls(netns: u64) -> Result<setting::Sysctls> {
    Ok(setting::read_netns(netns)
        .with_context(|| format!("reading net.ipv4 sysctls in netns {netns}"))?)
}

fn print_json(req: &Request, p: &Prediction, scan: &Scan) -> Result<()> {
    let sockets = p
        .sockets
        .iter()
        .map(|v| SocketAnswer {
            holding: holding_of(scan, v),
            blocks: v.blocks(),
            verdict: v,
        })
        .collect();
    let answer = Answer {
        port: req.port,
        proto: req.proto,
        netns: req.netns,
        request: req,
        outcome: p.outcome,
        errno: p.errno,
        conflicts: p.conflicts,
        sockets,
        fixes: &p.fixes,
        setting: &p.setting,
    };
    print(&(serde_json::to_string_pretty(&answer)? + "\n"))?;
    Ok(())
}

/// The holding a verdict was made from (same order as the scan).
fn holding_of<'a>(scan: &'a Scan, v: &Verdict) -> &'a Holding {
    scan.holdings
        .iter()
        .find(|h| {
            h.socket.addr == v.existing.addr
                && h.socket.port == v.existing.port
                && h.socket.netns == v.existing.netns
                && h.socket.proto == v.existing.proto
                && reaper::bindmodel::facts::activity(&h.socket) == v.existing.activity
        })
        .expect("every verdict comes from a scanned holding")
}

fn flags_words(req: &Request) -> String {
    let mut f = Vec::new();
    if req.reuseaddr {
        f.push("SO_REUSEADDR");
    }
    if req.reuseport {
        f.push("SO_REUSEPORT");
    }
    if req.v6only {
        f.push("IPV6_V6ONLY");
    }
    if f.is_empty() {
        "no options".into()
    } else {
        f.join(", ")
    }
}

fn human(req: &Request, p: &Prediction, scan: &Scan, style: Style) -> String {
    let mut out = format!(
        "bind {} {} ({}) as uid {} in netns {}: ",
        req.proto,
        endpoint(req.addr, req.port),
        flags_words(req),
        req.uid,
        netns_label(req.netns, scan)
    );
    out.push_str(&match p.outcome {
        Outcome::Ok => style.green("would succeed"),
        Outcome::AddrInUse => style.red("EADDRINUSE"),
        Outcome::Access => style.red("EACCES"),
        Outcome::Unknown => style.yellow("cannot tell"),
    });
    out.push('\n');
    if p.outcome == Outcome::Access {
        out.push_str(&format!(
            "  port {} is below net.ipv4.ip_unprivileged_port_start ({}) and uid {} lacks CAP_NET_BIND_SERVICE\n",
            req.port, p.setting.unprivileged_port_start, req.uid
        ));
    }
    for v in &p.sockets {
        out.push_str(&socket_line(v, holding_of(scan, v), style));
    }
    if p.sockets.is_empty() {
        out.push_str("  no socket on this port in this namespace\n");
    }
    if !p.fixes.is_empty() {
        out.push_str("To make it succeed, any of:\n");
        for f in &p.fixes {
            out.push_str(&format!("  - {f}\n"));
        }
    }
    out
}

fn socket_line(v: &Verdict, h: &Holding, style: Style) -> String {
    let s = &h.socket;
    let word = match v.blocks() {
        Some(true) => style.red("blocks "),
        Some(false) => style.green("ok     "),
        None => style.yellow("depends"),
    };
    let peer = s
        .peer
        .map(|(a, p)| format!(" -> {}", endpoint(a, p)))
        .unwrap_or_default();
    let why = match &v.answer.known {
        Some(j) => j.why.clone(),
        None => depends_words(v),
    };
    let lent = if v.lent_to_client {
        " (a port the kernel lent to a client's connect())"
    } else {
        ""
    };
    format!(
        "  {word} {} {}{peer} {} held by {}: {}{lent}\n",
        s.proto,
        endpoint(s.addr, s.port),
        s.state,
        holders_cell(h),
        term(&why)
    )
}

/// "blocks unless it had SO_REUSEADDR" from the cases.
fn depends_words(v: &Verdict) -> String {
    let blocking: Vec<String> = v
        .answer
        .cases
        .iter()
        .filter(|c| c.blocks)
        .map(|c| {
            let mut f = Vec::new();
            for (name, val) in [
                ("SO_REUSEADDR", c.reuseaddr),
                ("SO_REUSEPORT", c.reuseport),
                ("IPV6_V6ONLY", c.v6only),
            ] {
                if let Some(b) = val {
                    f.push(format!("{}{name}", if b { "" } else { "no " }));
                }
            }
            f.join(" and ")
        })
        .collect();
    format!(
        "its {} cannot be read (no process holds it); it blocks if it had: {}",
        v.answer.unknown.join(", "),
        blocking.join("; or ")
    )
}

//! `reaper ports`: every bound port with its holders, from a holders scan.
//!
//! By default every socket that has a local port and a holder or a reason to
//! exist: listeners, bound UDP, connections (an accepted or outgoing
//! connection also holds its local port), bound-but-idle TCP sockets; but not
//! TIME-WAIT, which would drown the table on a busy host (`reaper who PORT`
//! shows them for one port). `--listening`: listening TCP and bound UDP only.

use anyhow::Context;

use super::Result;

use super::holdings::{
    check_netns_found, endpoint, gaps_line, holders_cell, netns_label, parse_netns,
};
use crate::cli::{Global, PortsArgs};
use reaper::error::Exit;
use reaper::holders::{self, Query, Scan};
use reaper::output::{print, use_color, Style, Table};
use reaper::vocab::SocketState;

pub fn run(global: &Global, args: PortsArgs) -> Result<Exit> {
    let netns = parse_netns(&args.netns)?;
    let query = Query {
        port: None,
        proto: args.proto,
        netns,
        listening_only: args.listening,
    };
    // The daemon's ledger answers when one runs (bound sockets only: no
    // connections); otherwise, or with --no-bpf, a scan.
    let daemon = if global.no_bpf {
        None
    } else {
        let request = reaper::control::Request::Ports {
            proto: args.proto,
            listening: args.listening,
        };
        match reaper::control::query(&reaper::control::default_path(), &request) {
            Ok(Some(r)) if r.ok => Some(r),
            _ => None,
        }
    };
    let mut scan = match &daemon {
        Some(resp) => {
            let mut scan = reaper::control::scan_of(resp);
            if let Some(n) = netns {
                scan.holdings.retain(|h| h.socket.netns == n);
            }
            holders::enrich(&mut scan.holdings);
            scan
        }
        None => {
            let _progress = reaper::progress::Progress::start(
                "scanning processes",
                "walked",
                &reaper::progress::PIDS_WALKED,
            );
            holders::scan(&query).context("scanning sockets and their holders")?
        }
    };
    if daemon.is_none() {
        check_netns_found(netns, &scan)?;
    }
    scan.holdings
        .retain(|h| h.socket.state != SocketState::TimeWait);
    if args.json {
        let mut text = serde_json::to_string_pretty(&scan.holdings)?;
        text.push('\n');
        print(&text)?;
        if let Some(gaps) = gaps_line(&scan.gaps) {
            eprintln!("reaper: {gaps}");
        }
    } else {
        let style = Style {
            on: use_color(global.color),
        };
        print(&render(&scan, style))?;
    }
    Ok(Exit::Ok)
}

/// The table, then the gaps and where the answer came from.
pub fn render(scan: &Scan, style: Style) -> String {
    let mut t = Table::new(&["PROTO", "LOCAL", "PEER", "STATE", "NETNS", "HOLDERS"]);
    for h in &scan.holdings {
        let s = &h.socket;
        let local = if s.dual_stack {
            format!("{} (+v4)", endpoint(s.addr, s.port))
        } else {
            endpoint(s.addr, s.port)
        };
        t.row(vec![
            s.proto.to_string(),
            local,
            s.peer
                .map(|(a, p)| endpoint(a, p))
                .unwrap_or_else(|| "*".into()),
            s.state.to_string(),
            netns_label(s.netns, scan),
            holders_cell(h),
        ]);
    }
    let mut out = if t.is_empty() {
        "no bound ports\n".to_string()
    } else {
        t.render(style)
    };
    if scan.holdings.iter().any(|h| h.socket.dual_stack) {
        out.push_str(&style.dim("(+v4): an IPv6 wildcard without IPV6_V6ONLY, which also blocks IPv4 binds of the port\n"));
    }
    if let Some(gaps) = gaps_line(&scan.gaps) {
        out.push_str(&style.yellow(&gaps));
        out.push('\n');
    }
    if let Some(tier) = scan.gaps.socket_source.strip_prefix("daemon:") {
        out.push_str(&style.dim(&format!(
            "{} in {}, answered by the daemon's ledger (tier {tier}); connections are not in it (`--no-bpf` scans)\n",
            plural(scan.holdings.len(), "claim"),
            plural(scan.netns_seen.len(), "network namespace")
        )));
        return out;
    }
    out.push_str(&style.dim(&format!(
        "{} in {}, from a scan ({}) in {:.0} ms; TIME-WAIT not shown (see `reaper who PORT`)\n",
        plural(scan.holdings.len(), "socket"),
        plural(scan.netns_seen.len(), "network namespace"),
        scan.gaps.socket_source,
        scan.duration_ms
    )));
    out
}

/// "1 socket", "2 sockets".
fn plural(n: usize, what: &str) -> String {
    if n == 1 {
        format!("1 {what}")
    } else {
        format!("{n} {what}s")
    }
}

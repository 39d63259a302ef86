//! `reaper who PORT`: every socket on PORT in every network namespace, and
//! every process holding each, from a holders scan (or, later, from the
//! daemon's ledger when one runs). Exit 0 when held — TIME_WAIT included,
//! since the port is not free then — 1 when not held, 2 on bad input.

use std::collections::HashSet;

use anyhow::Context;

use super::Result;
use serde::Serialize;

use super::holdings::{
    check_netns_found, gaps_line, parse_netns, render_container, render_holding,
};
use crate::cli::{Global, WhoArgs};
use reaper::error::Exit;
use reaper::holders::container::{self, Container};
use reaper::holders::{self, Holding, Query, Scan, ScanGaps};
use reaper::output::{print, use_color, Style};
use reaper::text::term;
use reaper::vocab::Proto;

/// The one JSON document `reaper who --json` prints. Field names are an
/// interface: scripts read them.
#[derive(Serialize)]
struct Answer<'a> {
    port: u16,
    /// null when both protocols were asked for.
    proto: Option<Proto>,
    held: bool,
    /// "proc" for a scan, "daemon" when the daemon answered.
    source: &'a str,
    holdings: &'a [Holding],
    /// When the daemon answered: its claims with their bind history (who
    /// bound, when, the binder's parent, recent failed attempts).
    #[serde(skip_serializing_if = "Option::is_none")]
    ledger: Option<&'a [reaper::control::ClaimView]>,
    gaps: &'a ScanGaps,
    netns_seen: &'a [u64],
    duration_ms: f64,
    /// The container the engine publishes the port for by DNAT, when no
    /// socket holds it on the host (userland-proxy off).
    #[serde(skip_serializing_if = "Option::is_none")]
    published_by: Option<&'a Container>,
}

pub fn run(global: &Global, mut args: WhoArgs) -> Result<Exit> {
    if args.udp {
        args.proto = Some(Proto::Udp);
    }
    let netns = parse_netns(&args.netns)?;
    let query = Query {
        port: Some(args.port),
        proto: args.proto,
        netns,
        listening_only: false,
    };
    let daemon = answer_from_daemon(global, &query);
    let (scan, source) = match &daemon {
        Some(resp) => {
            let mut scan = reaper::control::scan_of(resp);
            holders::enrich(&mut scan.holdings);
            (scan, "daemon")
        }
        None => {
            let _progress = reaper::progress::Progress::start(
                "scanning processes",
                "walked",
                &reaper::progress::PIDS_WALKED,
            );
            (
                holders::scan(&query)
                    .with_context(|| format!("scanning the holders of port {}", args.port))?,
                "proc",
            )
        }
    };
    check_netns_found(netns, &scan)?;
    let held = !scan.holdings.is_empty();
    // No socket: the engine may still publish it by DNAT (no proxy).
    let published_by = if held {
        None
    } else {
        let view = container::EngineView::query();
        [Proto::Tcp, Proto::Udp]
            .into_iter()
            .filter(|p| args.proto.is_none_or(|want| want == *p))
            .find_map(|p| container::dnat_publisher(&view, p, args.port))
    };
    if args.json {
        let answer = Answer {
            port: args.port,
            proto: args.proto,
            held,
            source,
            holdings: &scan.holdings,
            gaps: &scan.gaps,
            netns_seen: &scan.netns_seen,
            duration_ms: scan.duration_ms,
            ledger: daemon.as_ref().map(|r| r.claims.as_slice()),
            published_by: published_by.as_ref(),
        };
        let mut text = serde_json::to_string_pretty(&answer)?;
        text.push('\n');
        print(&text)?;
    } else {
        let style = Style {
            on: use_color(global.color),
        };
        print(&render(args.port, args.proto, &scan, source, style))?;
        if let Some(c) = &published_by {
            print(&dnat_lines(args.port, c, style))?;
        }
        if let Some(resp) = &daemon {
            print(&reaper::control::history_lines(resp))?;
        }
    }
    Ok(if held { Exit::Ok } else { Exit::NotHeld })
}

/// Asks the daemon's ledger first when a daemon answers on its control
/// socket (REAPER_CONTROL_SOCKET or /run/reaper/reaper.sock): bind times and
/// the binder, at no scan cost. None (so: scan) with `--no-bpf`, when no
/// daemon answers, when it refuses, or when its ledger has no claim on the
/// port: the ledger tracks bound sockets, not connections or TIME-WAIT, which
/// also keep a port from binding, so "not held" is left to a scan.
pub fn answer_from_daemon(global: &Global, query: &Query) -> Option<reaper::control::Response> {
    if global.no_bpf {
        return None;
    }
    let request = reaper::control::Request::Who {
        port: query.port?,
        proto: query.proto,
        netns: query.netns,
    };
    let path = reaper::control::default_path();
    match reaper::control::query(&path, &request) {
        Ok(Some(r)) if r.ok && !r.claims.is_empty() => Some(r),
        Ok(Some(r)) if !r.ok => {
            tracing::warn!(
                "the daemon at {} refused: {}; scanning instead",
                term(&path.display().to_string()),
                term(&r.error.unwrap_or_default())
            );
            None
        }
        Ok(_) => None,
        Err(e) => {
            tracing::warn!(
                "asking the daemon failed: {}; scanning instead",
                term(&format!("{e:#}"))
            );
            None
        }
    }
}

/// The human answer.
pub fn render(port: u16, proto: Option<Proto>, scan: &Scan, source: &str, style: Style) -> String {
    let mut out = String::new();
    let what = match proto {
        Some(p) => format!("{p} port {port}"),
        None => format!("port {port}"),
    };
    let n_ns = scan.netns_seen.len();
    let ns_words = if n_ns == 1 { "namespace" } else { "namespaces" };
    if scan.holdings.is_empty() {
        out.push_str(&format!(
            "{} {}: no socket on it in {n_ns} network {ns_words}\n",
            what,
            style.green("is not held")
        ));
    } else {
        let n = scan.holdings.len();
        out.push_str(&format!(
            "{} {} ({n} socket{}, {n_ns} network {ns_words} looked at)\n",
            what,
            style.bold("is held"),
            if n == 1 { "" } else { "s" }
        ));
    }
    let mut shown: HashSet<u32> = HashSet::new();
    // The bind model's facts: sock_diag's, and the options read from a holder.
    let facts: Vec<_> = scan
        .holdings
        .iter()
        .map(reaper::bindmodel::facts::of_holding)
        .collect();
    for (h, e) in scan.holdings.iter().zip(&facts) {
        out.push('\n');
        render_holding(&mut out, h, scan, source == "daemon", &mut shown, style);
        out.push_str(&format!(
            "  bind: {}\n",
            reaper::bindmodel::words::bind_line(e, &facts)
        ));
    }
    out.push('\n');
    if let Some(gaps) = gaps_line(&scan.gaps) {
        out.push_str(&style.yellow(&gaps));
        out.push('\n');
    }
    for e in &scan.gaps.netns_errors {
        out.push_str(&style.yellow(&format!("  {}", term(e))));
        out.push('\n');
    }
    let from = match source {
        "daemon" => format!(
            "answered by the daemon's ledger (tier {})",
            scan.gaps
                .socket_source
                .strip_prefix("daemon:")
                .unwrap_or("unknown")
        ),
        _ => format!(
            "answered from a scan ({}) in {:.0} ms; run `reaper daemon` for bind history",
            match scan.gaps.socket_source.as_str() {
                "netlink" => "sock_diag + /proc",
                "" => "/proc",
                _ => "sock_diag and /proc/net + /proc",
            },
            scan.duration_ms
        ),
    };
    out.push_str(&style.dim(&from));
    out.push('\n');
    out
}

/// A port no socket holds that the engine publishes by DNAT.
fn dnat_lines(port: u16, c: &Container, style: Style) -> String {
    let mut out = format!(
        "
port {port} is published by the container engine without a proxy (DNAT): no socket holds it on the host, connections go to container {}
",
        style.bold(&term(&c.words()))
    );
    let mut rest = String::new();
    render_container(&mut rest, c, style);
    out.push_str(&rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use reaper::holders::container::Via;
    use reaper::holders::{Process, Socket};
    use reaper::vocab::Family;
    use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

    fn sock(state: &str, addr: IpAddr, inode: u64) -> Socket {
        Socket {
            netns: 4026531840,
            proto: Proto::Tcp,
            family: if addr.is_ipv4() {
                Family::Ipv4
            } else {
                Family::Ipv6
            },
            addr,
            port: 8080,
            peer: None,
            state: reaper::vocab::SocketState::from_word(state).unwrap(),
            inode,
            cookie: 1,
            uid: 0,
            dual_stack: addr.is_ipv6(),
            timer_ms: (state == "TIME-WAIT").then_some(41_200),
        }
    }

    fn proc_(pid: u32) -> Process {
        Process {
            pid,
            ppid: 1,
            comm: "a) b (c".into(),
            exe: Some("/usr/bin/srv (deleted)".into()),
            cmdline: vec!["srv".into(), "--name".into(), "it's here".into(), "".into()],
            start_ticks: 1,
            started_at: "2020-01-01T00:00:00.000Z".into(),
            uid: 1000,
            user: Some("ci".into()),
            cgroup: Some("/system.slice/docker-0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef.scope".into()),
            container: Some("0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef".into()),
            netns: Some(4026531840),
            ancestors: vec![(1, "init".into())],
            orphaned: true,
            job: None,
        }
    }

    #[test]
    fn renders_holders_dual_stack_time_wait_and_gaps() {
        let scan = Scan {
            holdings: vec![
                Holding {
                    socket: sock("LISTEN", IpAddr::V6(Ipv6Addr::UNSPECIFIED), 5),
                    processes: vec![proc_(10), proc_(11)],
                    unowned_reason: None,
                    container: None,
                },
                Holding {
                    socket: sock("ESTAB", IpAddr::V4(Ipv4Addr::LOCALHOST), 6),
                    processes: vec![proc_(10)],
                    unowned_reason: None,
                    container: None,
                },
                Holding {
                    socket: sock("TIME-WAIT", IpAddr::V4(Ipv4Addr::LOCALHOST), 0),
                    processes: vec![],
                    unowned_reason: Some(reaper::vocab::UnownedReason::TimeWait),
                    container: None,
                },
            ],
            gaps: ScanGaps {
                unreadable_pids: 3,
                vanished_pids: 1,
                socket_source: "netlink".into(),
                unreadable_by_errno: [("EPERM".to_string(), 3)].into(),
                ..ScanGaps::default()
            },
            netns_seen: vec![4026531840],
            duration_ms: 12.0,
            netns_names: Default::default(),
            own_netns: Some(4026531840),
        };
        let text = render(8080, None, &scan, "proc", Style { on: false });
        for want in [
            "port 8080 is held (3 sockets, 1 network namespace looked at)",
            "tcp [::]:8080  LISTEN  netns 4026531840 (this one)",
            "also blocks IPv4 binds of port 8080",
            "pid 10  a) b (c",
            "cmdline   srv --name 'it'\\''s here' ''",
            "user      ci (1000)",
            "parents   1 init",
            "container 0123456789ab",
            "orphaned  yes",
            "holding   for ~",
            "pid 10  a) b (c  (details above)",
            "blocked by TIME_WAIT, expires in 42.0 s",
            "3 processes unreadable (EPERM), 1 vanished during the scan",
            "answered from a scan (sock_diag + /proc) in 12 ms; run `reaper daemon` for bind history",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
        assert!(!text.contains('\x1b'));
    }

    #[test]
    fn what_a_process_chose_is_shown_escaped() {
        let mut p = proc_(10);
        p.comm = "x\x1b[2J\u{9b}".into();
        p.exe = Some("/tmp/\u{202e}gnp.exe".into());
        p.cmdline = vec!["\x1b]52;c;Zm9v\x07".into(), "a\nb".into()];
        p.cgroup = Some("/evil\x07".into());
        p.ancestors = vec![(1, "in\x1bit".into())];
        let scan = Scan {
            holdings: vec![Holding {
                socket: sock("LISTEN", IpAddr::V4(Ipv4Addr::LOCALHOST), 5),
                processes: vec![p.clone(), p],
                unowned_reason: None,
                // Whoever starts a container names it and its labels.
                container: Some(Container {
                    id: "0123456789abcdef".into(),
                    short_id: "0123456789ab".into(),
                    name: Some("web\x1b]0;pwned\x07".into()),
                    image: Some("img\u{202e}".into()),
                    state: Some("running".into()),
                    compose_project: Some("p\x1b[2J".into()),
                    via: Some(Via::Proxy),
                    ..Container::default()
                }),
            }],
            netns_seen: vec![4026531840],
            netns_names: [(4026531840, "n\x1bs".to_string())].into(),
            ..Scan::default()
        };
        let text = render(8080, None, &scan, "proc", Style { on: false });
        assert!(
            !text
                .chars()
                .any(|c| c != '\n' && reaper::text::is_unsafe(c)),
            "{text:?}"
        );
        for want in [
            "pid 10  x\\x1b[2J\\u{9b}\n",
            "exe       /tmp/\\u{202e}gnp.exe",
            "cmdline   $'\\x1b]52;c;Zm9v\\x07' $'a\\nb'",
            "cgroup    /evil\\x07",
            "parents   1 in\\x1bit",
            "netns 4026531840 (n\\x1bs)",
            "pid 10  x\\x1b[2J\\u{9b}  (details above)",
            "container web\\x1b]0;pwned\\x07 (0123456789ab, image img\\u{202e})",
            "compose   project p\\x1b[2J, service ?",
        ] {
            assert!(text.contains(want), "missing {want:?} in:\n{text}");
        }
    }

    #[test]
    fn renders_free() {
        let scan = Scan {
            netns_seen: vec![1, 2],
            gaps: ScanGaps {
                socket_source: "netlink".into(),
                ..ScanGaps::default()
            },
            ..Scan::default()
        };
        let text = render(9, Some(Proto::Udp), &scan, "proc", Style { on: false });
        assert!(
            text.starts_with("udp port 9 is not held: no socket on it in 2 network namespaces\n"),
            "{text}"
        );
        assert_eq!(gaps_line(&scan.gaps), None);
    }
}

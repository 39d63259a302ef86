//! daemon: **client ports**: the kernel gave a port the daemon watches to a
//! `connect()`; the daemon finds who holds that connection (by its socket
//! cookie: the handshake ends in whatever task the network stack runs in,
//! so the kernel side sends no identity) and journals "port P was given to
//! pid X (comm) connecting to Y at T".
//!
//! Watched (the kernel side's `WATCHED` map; every other connection costs
//! it one lookup): the config's `reserve_ports` (a network namespace the
//! host's reservation does not cover still lends them) and every port a
//! conflict was seen on.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use reaper_common::Event;

use crate::holders::{self, Query};
use crate::journal::{Body, Endpoint, ProcessRef};
use crate::util::{rfc3339, BootClock};
use crate::vocab::{Family, Proto};

use super::{Daemon, Work};

/// What the lookup found for one lent port.
pub(super) struct Lent {
    ev: Event,
    netns: Option<u64>,
    process: Option<ProcessRef>,
}

/// The most ports of the config's `reserve_ports` that are watched (the
/// rest of the map is for conflicts).
const RESERVED_WATCHED_MAX: usize = 2048;

/// "addr:port", "[addr]:port" for IPv6.
fn peer(ev: &Event) -> String {
    let port = ev.ret as u16;
    if ev.family == reaper_common::AF_INET6 {
        format!("[{}]:{port}", Ipv6Addr::from(ev.addr))
    } else {
        let a = ev.addr;
        format!(
            "{}:{port}",
            IpAddr::V4(Ipv4Addr::new(a[0], a[1], a[2], a[3]))
        )
    }
}

impl Daemon {
    /// Watches the config's `reserve_ports` (at start).
    pub(super) fn watch_reserved_ports(&mut self) {
        let ports: Vec<u16> = self
            .config
            .reserve_ports
            .iter()
            .flat_map(|&(lo, hi)| lo..=hi)
            .take(RESERVED_WATCHED_MAX)
            .collect();
        for port in ports {
            self.watch_client_port(port);
        }
    }

    /// Watches a port for `connect()`s the kernel gives it.
    pub(super) fn watch_client_port(&mut self, port: u16) {
        if let Some(a) = self.attached.as_mut() {
            if !a.watch_port(port) {
                tracing::debug!("port {port} not watched for connects: the map is full");
            }
        }
    }

    /// A watched port lent to a `connect()`: find its owner off the loop.
    pub(super) fn client_port(&mut self, ev: Event) {
        let tx = self.tx.clone();
        tokio::task::spawn_blocking(move || {
            let q = Query {
                port: Some(ev.port),
                proto: Some(Proto::Tcp),
                netns: None,
                listening_only: false,
            };
            let found = holders::scan(&q).ok().and_then(|scan| {
                scan.holdings
                    .iter()
                    .find(|h| h.socket.cookie == ev.cookie)
                    .map(|h| (h.socket.netns, h.processes.first().map(ProcessRef::from)))
            });
            let (netns, process) = match found {
                Some((netns, p)) => (Some(netns), p),
                None => (None, None),
            };
            let _ = tx.send(Work::ClientPort(Box::new(Lent { ev, netns, process })));
        });
    }

    /// Journals a lent port, in words.
    pub(super) fn client_port_found(&mut self, l: Lent) {
        let peer = peer(&l.ev);
        let at = rfc3339(BootClock::now().to_wall(l.ev.ts_ns));
        let who = match &l.process {
            Some(p) => format!("pid {} ({})", p.pid, crate::text::term(&p.comm)),
            None => "a client whose connection had closed when reaper looked".into(),
        };
        let note = format!(
            "port {} was given to {who} connecting to {peer} at {at}: the kernel picked it for an outgoing connection because it lies in net.ipv4.ip_local_port_range; add it to net.ipv4.ip_local_reserved_ports so connect() never picks it",
            l.ev.port
        );
        tracing::info!("{note}");
        self.journal(Body::ClientPort {
            at: Endpoint {
                netns: l.netns,
                proto: Proto::Tcp,
                family: Family::from_af(l.ev.family),
                addr: None,
                port: l.ev.port,
            },
            peer,
            process: l.process,
            cookie: l.ev.cookie,
            connected_at: at,
            note,
        });
    }
}

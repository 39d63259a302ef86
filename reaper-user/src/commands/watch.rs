//! `reaper watch`: the live stream of binds, listens, releases and failures.
//!
//! hooks -> events (Matcher) -> ledger -> one line per fact. Without BPF it
//! says so and polls the sockets instead (source "proc").

use std::collections::{BTreeMap, HashMap};
use std::time::{Duration, Instant};

use anyhow::Context;

use super::Result;
use serde::Serialize;

use crate::cli::{Global, WatchArgs};
use reaper::error::Exit;
use reaper::events::{EventStream, Matcher};
use reaper::holders::{self, Holding, Query};
use reaper::hooks;
use reaper::ledger::{Fact, Ledger};
use reaper::output::{json_line, print, use_color, Style};
use reaper::util::{clock_ns, rfc3339};
use reaper::vocab::Proto;

/// A line saying events were lost: never hidden.
#[derive(Serialize)]
struct LossLine<'a> {
    ts: String,
    kind: &'static str,
    lost: u64,
    lost_total: u64,
    source: &'a str,
}

pub fn run(global: &Global, args: WatchArgs) -> Result<Exit> {
    hooks::check_ringbuf_size(args.ringbuf_size)?;
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("starting the tokio runtime")?;
    let style = Style {
        on: use_color(global.color),
    };
    if global.no_bpf {
        eprintln!("reaper: --no-bpf: cannot stream binds without BPF; polling the sockets every {:?} instead (only changes between polls are seen)", args.poll_interval);
        return rt.block_on(poll_view(args, style));
    }
    if !reaper::util::is_root() {
        eprintln!("reaper: watching binds needs root (CAP_BPF, CAP_PERFMON); run `sudo reaper watch`. Polling the sockets every {:?} instead (only changes between polls are seen)", args.poll_interval);
        return rt.block_on(poll_view(args, style));
    }
    let opts = hooks::Options {
        all: args.all,
        // The summary printed at the end (summarise_end).
        ephemeral_by_pid: !args.all,
        ..hooks::Options::new(args.ringbuf_size)
    };
    let attached = match hooks::attach_with(global.hooks, &opts) {
        Ok(a) => a,
        Err(e) => {
            eprintln!("reaper: cannot stream binds: {e:#}");
            eprintln!("reaper: polling the sockets every {:?} instead (only changes between polls are seen)", args.poll_interval);
            return rt.block_on(poll_view(args, style));
        }
    };
    rt.block_on(stream(attached, args, style))
}

async fn stream(mut attached: hooks::Attached, args: WatchArgs, style: Style) -> Result<Exit> {
    let tier = attached.tier;
    let source = tier.as_str();
    let events = attached
        .events
        .take()
        .context("the ring buffer was taken already")?;
    let mut stream = EventStream::new(events)?;
    let mut matcher = Matcher::new(tier.exact_errno());
    let mut ledger = Ledger::new(source);
    let mut scans = ScanCache::default();
    let deadline = args.duration.map(|d| Instant::now() + d);
    announce(&attached, deadline.is_some());
    let mut raw = Vec::new();
    let mut obs = Vec::new();
    let mut lost_seen = 0u64;
    let mut bad_records = 0u64;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let wait = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break;
                }
                (d - now).min(Duration::from_millis(20))
            }
            None => Duration::from_millis(20),
        };
        tokio::select! {
            r = stream.next_batch(&mut raw, wait) => { bad_records += r?; }
            _ = &mut ctrl_c => break,
        }
        for ev in raw.drain(..) {
            matcher.feed(ev, &mut obs);
        }
        matcher.settle(clock_ns(libc::CLOCK_BOOTTIME), &mut obs);
        emit(&mut ledger, &mut scans, &mut obs, args.json, style)?;
        if let Some(logger) = attached.logger.as_mut() {
            logger.flush();
        }
        let lost = attached.lost_total();
        if lost > lost_seen {
            report_loss(lost - lost_seen, lost, source, args.json, style)?;
            lost_seen = lost;
        }
    }
    // Drain what is left, then resolve what is still pending.
    stream.drain_now(&mut raw);
    for ev in raw.drain(..) {
        matcher.feed(ev, &mut obs);
    }
    matcher.flush(&mut obs);
    emit(&mut ledger, &mut scans, &mut obs, args.json, style)?;
    let lost = attached.lost_total();
    if lost > lost_seen {
        report_loss(lost - lost_seen, lost, source, args.json, style)?;
    }
    summarise_end(&attached, bad_records, lost);
    Ok(Exit::Ok)
}

/// What the watch attached to, on stderr.
fn announce(attached: &hooks::Attached, bounded: bool) {
    let tier = attached.tier;
    let source = tier.as_str();
    eprintln!(
        "reaper: attached (tier {source}; errno {}; listens {}; cgroup {}); watching binds{}",
        if tier.exact_errno() {
            "exact"
        } else {
            "inferred"
        },
        if attached.listens { "seen" } else { "not seen" },
        attached.cgroup.display(),
        if bounded { "" } else { ", Ctrl-C to stop" }
    );
}

/// The counts a watch ends with, on stderr: ephemeral binds not shown,
/// undecodable records, lost events.
fn summarise_end(attached: &hooks::Attached, bad_records: u64, lost: u64) {
    if !attached.all {
        let summarised = attached.ephemeral_by_pid();
        let n: u64 = summarised.iter().map(|(_, n)| n).sum();
        if n > 0 {
            let procs = summarised.len();
            eprintln!(
                "reaper: {n} ephemeral (port 0) bind{} by {procs} process{} counted, not shown (--all shows each)",
                if n == 1 { "" } else { "s" },
                if procs == 1 { "" } else { "es" },
            );
        }
    }
    if bad_records > 0 {
        eprintln!("reaper: {bad_records} ring buffer records were too short to decode (the eBPF object and reaper disagree: rebuild with `cargo xtask build`)");
    }
    if lost > 0 {
        eprintln!("reaper: {lost} events were lost in all because the ring buffer was full (try a larger --ringbuf-size)");
    }
}

fn report_loss(n: u64, total: u64, source: &str, json: bool, style: Style) -> Result<()> {
    if json {
        json_line(&LossLine {
            ts: rfc3339(chrono::Utc::now()),
            kind: "loss",
            lost: n,
            lost_total: total,
            source,
        })?;
    } else {
        print(&format!(
            "{}  {}\n",
            chrono::Local::now().format("%H:%M:%S%.3f"),
            style.red(&format!(
                "LOST {n} events (ring buffer full; {total} in all)"
            ))
        ))?;
    }
    Ok(())
}

/// Prints the facts of one batch with a single write, so a storm costs one
/// syscall per batch rather than one per line.
fn emit(
    ledger: &mut Ledger,
    scans: &mut ScanCache,
    obs: &mut Vec<reaper::events::Observation>,
    json: bool,
    style: Style,
) -> Result<()> {
    if obs.is_empty() {
        return Ok(());
    }
    let mut text = String::new();
    for o in obs.drain(..) {
        let Some(mut fact) = ledger.apply(&o) else {
            continue;
        };
        if !fact.ok && fact.holder_pid.is_none() {
            scans.confirm(&mut fact);
        }
        if fact.container.is_none() {
            fact.container = scans.containers.of(fact.pid, fact.cgroup_id);
        }
        if json {
            text.push_str(&serde_json::to_string(&fact)?);
            text.push('\n');
        } else {
            let line = human(&fact, style);
            match &fact.container {
                Some(c) => {
                    text.push_str(line.trim_end_matches('\n'));
                    text.push_str(&format!("  container {}\n", reaper::text::term(&c.words())));
                }
                None => text.push_str(&line),
            }
        }
    }
    print(&text)?;
    Ok(())
}

/// Who held a port, by live scan, remembered for a second: a burst of
/// failed binds on one port costs one scan, not one each (a scan walks every
/// process and would stall the event loop into losses).
#[derive(Default)]
struct ScanCache {
    /// (netns, proto, port) -> when scanned, and the holders' (pid, comm);
    /// None when the scan failed, pid 0 for a socket no readable process holds.
    seen: HashMap<PortKey, (Instant, Option<Holders>)>,
    /// The containers of the processes in the stream.
    containers: ContainerCache,
}

type PortKey = (Option<u64>, Proto, u16);
type Holders = Vec<(u32, String)>;

const SCAN_CACHE_TTL: Duration = Duration::from_secs(1);

impl ScanCache {
    /// A failure the ledger cannot explain (the holder predates reaper): ask
    /// the live system who holds the port.
    fn confirm(&mut self, fact: &mut Fact) {
        let (Some(port), Some(proto)) = (fact.port, fact.proto) else {
            return;
        };
        if port == 0 {
            return;
        }
        let key = (fact.netns, proto, port);
        let fresh = self
            .seen
            .get(&key)
            .is_some_and(|(at, _)| at.elapsed() < SCAN_CACHE_TTL);
        if !fresh {
            let q = Query {
                port: Some(port),
                proto: Some(proto),
                netns: fact.netns,
                listening_only: false,
            };
            // None: the scan failed; Some(empty): nobody holds it.
            let holders = holders::scan(&q).ok().map(|scan| {
                scan.holdings
                    .iter()
                    .flat_map(|h| match h.processes.is_empty() {
                        // A held socket with no readable process still holds.
                        true => vec![(0, String::new())],
                        false => h
                            .processes
                            .iter()
                            .map(|p| (p.pid, p.comm.clone()))
                            .collect(),
                    })
                    .collect::<Vec<_>>()
            });
            self.seen.retain(|_, (at, _)| at.elapsed() < SCAN_CACHE_TTL);
            self.seen.insert(key, (Instant::now(), holders));
        }
        let Some((_, Some(holders))) = self.seen.get(&key) else {
            return;
        };
        if let Some((pid, comm)) = holders
            .iter()
            .find(|(pid, _)| *pid != 0 && *pid != fact.pid)
        {
            fact.holder_pid = Some(*pid);
            fact.holder_comm = Some(comm.clone());
        }
        if fact.errno.is_none() && holders.iter().any(|(pid, _)| *pid != fact.pid) {
            fact.errno = Some("EADDRINUSE".into());
        }
    }
}

/// One human line per fact.
/// Which container a process in the stream runs in, remembered by cgroup
/// id (the BPF event carries it), so a storm reads /proc/PID/cgroup once per
/// cgroup and asks the engine once per new container.
#[derive(Default)]
struct ContainerCache {
    by_cgroup: HashMap<u64, Option<holders::container::Container>>,
    engine: Option<(Instant, holders::container::EngineView)>,
}

impl ContainerCache {
    fn of(&mut self, pid: u32, cgroup_id: u64) -> Option<holders::container::Container> {
        if cgroup_id != 0 {
            if let Some(c) = self.by_cgroup.get(&cgroup_id) {
                return c.clone();
            }
        }
        let path =
            reaper::proc::read(pid, "cgroup").and_then(|b| holders::process::parse_cgroup(&b));
        let found = path
            .as_deref()
            .and_then(holders::container::from_cgroup)
            .map(|ident| {
                let stale = self.engine.as_ref().is_none_or(|(at, view)| {
                    !view.containers.contains_key(&ident.id)
                        && at.elapsed() > Duration::from_secs(1)
                });
                if stale {
                    self.engine = Some((Instant::now(), holders::container::EngineView::query()));
                }
                let view = self.engine.as_ref().map(|(_, v)| v);
                let mut c = view
                    .and_then(|v| v.containers.get(&ident.id).cloned())
                    .unwrap_or_else(|| holders::container::Container::from_identity(&ident));
                // A line per event: name, id and image, not the whole port map.
                c.labels.clear();
                c.ports.clear();
                c.addresses.clear();
                // Its state when first seen would be stale on later lines.
                c.state = None;
                c
            });
        if cgroup_id != 0 {
            self.by_cgroup.insert(cgroup_id, found.clone());
        }
        found
    }
}

pub fn human(f: &Fact, style: Style) -> String {
    let time = chrono::DateTime::parse_from_rfc3339(&f.ts)
        .map(|t| {
            t.with_timezone(&chrono::Local)
                .format("%H:%M:%S%.3f")
                .to_string()
        })
        .unwrap_or_else(|_| f.ts.clone());
    let proto = f.proto.map(|p| p.as_str()).unwrap_or("?");
    let at = match (&f.addr, f.port) {
        (Some(a), Some(p)) if a.contains(':') => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        _ => "?".into(),
    };
    let netns = f.netns.map(|n| n.to_string()).unwrap_or_else(|| "?".into());
    let pid = if f.outside_pidns {
        // The kernel saw it; this pid namespace has no number for it.
        "outside reaper's pid namespace".to_string()
    } else {
        f.pid.to_string()
    };
    let who = format!(
        "pid {pid} ({}) uid {} netns {}",
        reaper::text::term(&f.comm),
        f.uid,
        netns
    );
    match f.kind {
        "bind" if f.ok => {
            let req = match f.requested_port {
                Some(0) => " (asked for port 0)".to_string(),
                Some(p) => format!(" (asked for {p})"),
                None => String::new(),
            };
            format!(
                "{time}  {}  {proto} {at}{req}  {who}\n",
                style.green("bind     ok  ")
            )
        }
        "bind" => {
            let errno = f.errno.clone().unwrap_or_else(|| "cause unknown".into());
            let how = if f.errno_exact { "" } else { " (inferred)" };
            let holder = match (f.holder_pid, &f.holder_comm) {
                (Some(p), Some(c)) => format!("; held by pid {p} ({})", reaper::text::term(c)),
                _ => String::new(),
            };
            format!(
                "{time}  {}  {proto} {at}  {who}  {}{how}{holder}\n",
                style.red("bind     FAIL"),
                style.red(&errno)
            )
        }
        "listen" => format!(
            "{time}  {}  {proto} {at}  {who}\n",
            style.bold("listen      ")
        ),
        _ => {
            let held = f
                .held_ms
                .map(|ms| format!("  held {}", reaper::util::human_ms(ms)))
                .unwrap_or_default();
            format!(
                "{time}  {}  {proto} {at}  {who}{held}\n",
                style.dim("release     ")
            )
        }
    }
}

/// Without BPF: poll the sockets and print what appeared and disappeared.
async fn poll_view(args: WatchArgs, style: Style) -> Result<Exit> {
    let deadline = args.duration.map(|d| Instant::now() + d);
    let q = Query {
        listening_only: true,
        ..Query::default()
    };
    let mut before: BTreeMap<(u64, u64, u16), Fact> = BTreeMap::new();
    let mut first = true;
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);
    loop {
        let scan = holders::scan(&q).context("scanning sockets")?;
        let now = listening_now(&scan.holdings);
        if first {
            eprintln!(
                "reaper: polling: {} listening sockets now; printing what appears and goes away",
                now.len()
            );
        } else {
            for (k, f) in &now {
                if !before.contains_key(k) {
                    out(f, args.json, style)?;
                }
            }
            for (k, f) in &before {
                if !now.contains_key(k) {
                    let mut f = f.clone();
                    f.kind = "release";
                    f.ts = rfc3339(chrono::Utc::now());
                    out(&f, args.json, style)?;
                }
            }
        }
        first = false;
        before = now;
        let wait = match deadline {
            Some(d) => {
                let now = Instant::now();
                if now >= d {
                    break;
                }
                (d - now).min(args.poll_interval)
            }
            None => args.poll_interval,
        };
        tokio::select! {
            _ = tokio::time::sleep(wait) => {}
            _ = &mut ctrl_c => break,
        }
    }
    Ok(Exit::Ok)
}

/// The listening sockets of a poll, keyed by (netns, inode, port).
fn listening_now(holdings: &[Holding]) -> BTreeMap<(u64, u64, u16), Fact> {
    holdings
        .iter()
        .map(|h| {
            (
                (h.socket.netns, h.socket.inode, h.socket.port),
                polled_fact(h),
            )
        })
        .collect()
}

/// A listening socket seen by a poll, as the bind fact a stream would show.
fn polled_fact(h: &Holding) -> Fact {
    let s = &h.socket;
    let p = h.processes.first();
    Fact {
        ts: rfc3339(chrono::Utc::now()),
        kind: "bind",
        pid: p.map(|p| p.pid).unwrap_or(0),
        tid: p.map(|p| p.pid).unwrap_or(0),
        comm: p.map(|p| p.comm.clone()).unwrap_or_default(),
        uid: s.uid,
        netns: Some(s.netns),
        proto: Some(s.proto),
        family: Some(s.family),
        addr: Some(s.addr.to_string()),
        port: Some(s.port),
        ok: true,
        errno: None,
        errno_exact: false,
        source: "proc".into(),
        cookie: s.cookie,
        netns_cookie: 0,
        cgroup_id: 0,
        requested_port: None,
        held_ms: None,
        holder_pid: None,
        holder_comm: None,
        holder_claim: None,
        container: h.container.clone(),
        outside_pidns: false,
    }
}

fn out(f: &Fact, json: bool, style: Style) -> Result<()> {
    if json {
        json_line(f)?;
    } else {
        print(&human(f, style))?;
    }
    Ok(())
}

//! aggregate -> **finish**: the folded state becomes the [`Report`].
//!
//! Open blocks and degraded periods end at the window's end; each
//! interesting port becomes a section with its timeline, its processes and
//! its claims as bars; quiet ports are counted and the busiest few listed.

use std::collections::{HashMap, VecDeque};
use std::rc::Rc;

use super::port::{Entry, PortKey, PortState};
use super::{dur_ms, rfc, Aggregator};
use crate::journal::reader::{Location, ReadStats};
use crate::journal::ProcessRef;
use crate::report::model::{
    Bar, Block, ConflictReport, DegradedPeriod, FilterOut, Happened, HeldAtEnd, Holder,
    HostSummary, PortReport, QuietPort, QuietPorts, Report, Resolution, TimelineEntry, Window,
    SCHEMA,
};

impl Aggregator {
    /// The report; `stats` is the reader's, for the inputs and the damage.
    pub fn finish(mut self, stats: &ReadStats) -> Report {
        self.sync_files(stats);
        // Intents with no outcome after them: reaper stopped in the middle.
        let pending = std::mem::take(&mut self.pending_reapings);
        self.summary.unfinished.extend(pending.into_values());
        self.summary.unfinished.sort_by(|a, b| a.ts.cmp(&b.ts));
        let end_ms = self.filter.until_ms.or(self.last_ms);
        if let Some(end) = end_ms {
            self.close_open_blocks(end);
        }
        self.close_degraded(end_ms);
        let (ports, quiet_ports) = self.port_reports(end_ms);
        self.summary.longest_block = longest_block(&self.conflicts);
        self.summary.hosts = self.host_summaries();
        let mut quality = self.quality;
        quality.torn_lines = stats.torn_lines;
        quality.garbage_lines = stats.garbage_lines;
        quality.unknown_version = stats.unknown_version;
        quality.unknown_kind = stats.unknown_kind;
        quality.out_of_order = stats.out_of_order;
        quality.bad_lines = stats.examples.clone();
        Report {
            schema: SCHEMA.into(),
            window: Window {
                since: self.filter.since_ms.map(rfc),
                until: self.filter.until_ms.map(rfc),
                first_record: self.first_ms.map(rfc),
                last_record: self.last_ms.map(rfc),
                end: end_ms.map(rfc),
            },
            filter: FilterOut {
                port: self.filter.port,
                host: self.filter.host.clone(),
            },
            inputs: stats.files.clone(),
            summary: self.summary,
            data_quality: quality,
            conflicts: self.conflicts.into_iter().collect(),
            conflicts_dropped: self.conflicts_dropped,
            ports,
            quiet_ports,
            leaks_by_job: self.jobs.finish(),
        }
    }

    /// Unresolved blocks last until the end of the window.
    fn close_open_blocks(&mut self, end: i64) {
        let keys: Vec<PortKey> = self.ports.keys().copied().collect();
        for key in keys {
            let port = self.ports.get_mut(&key).expect("key listed");
            if let Some(ep) = port.episode.take() {
                port.blocked_ms += dur_ms(ep.start_ms, end);
                self.summary.still_blocked += 1;
                let ids = ep.ids.clone();
                port.episode = Some(ep);
                for id in ids {
                    if let Some(c) = self.conflict_mut(id) {
                        let first = crate::journal::reader::parse_ms(&c.first).unwrap_or(end);
                        c.blocked_ms = dur_ms(first, end);
                        c.resolution = Resolution::Open;
                        c.blocked_until = None;
                    }
                }
            }
        }
    }

    /// Degraded periods still open at the end of the window.
    fn close_degraded(&mut self, end_ms: Option<i64>) {
        let open_degraded: Vec<(String, (i64, String, String, Location))> = self
            .host_states
            .iter_mut()
            .filter_map(|(h, s)| s.degraded_since.take().map(|d| (h.clone(), d)))
            .collect();
        for (host, (from, mode, reason, at)) in open_degraded {
            let evidence = self.place(at);
            let to = end_ms.unwrap_or(from);
            self.push_degraded(DegradedPeriod {
                host,
                mode,
                reason,
                from: rfc(from),
                to: None,
                ms: dur_ms(from, to),
                evidence,
            });
        }
    }

    /// The ports with a conflict or a reaping (or the one `--port` asked
    /// for) in full, in port order; the quiet ones counted, the busiest
    /// few listed.
    fn port_reports(&mut self, end_ms: Option<i64>) -> (Vec<PortReport>, QuietPorts) {
        let mut ports = Vec::new();
        let mut quiet = QuietPorts::default();
        let mut quiet_rows = Vec::new();
        // Taken apart as the report is built, so the two are not both whole
        // in memory at once.
        let port_states = std::mem::take(&mut self.ports);
        for (key, port) in port_states {
            let (h, p, n) = key;
            let host = self.hosts[h as usize].clone();
            let proto = self.protos[p as usize].clone();
            let is_involved = port.counts.conflicts > 0 || port.counts.reapings > 0;
            if is_involved {
                self.summary.ports_involved += 1;
                self.summary.blocked_ms += port.blocked_ms;
            }
            if !(is_involved || self.filter.port.is_some()) {
                if port.counts.claims > 0 || port.counts.listens > 0 {
                    quiet.total += 1;
                    quiet.claims += port.counts.claims;
                    quiet.churn += port.counts.churn;
                    quiet_rows.push(QuietPort {
                        host,
                        proto,
                        port: n,
                        claims: port.counts.claims,
                        releases: port.counts.releases,
                        last: rfc(port.last_ms),
                        held_at_end: port.open.len() as u64,
                    });
                }
                continue;
            }
            let end = end_ms.unwrap_or(port.last_ms);
            ports.push(self.port_report(&host, &proto, n, port, end));
        }
        ports.sort_by(|a, b| (a.port, &a.host, &a.proto).cmp(&(b.port, &b.host, &b.proto)));
        quiet_rows.sort_by(|a, b| {
            b.claims
                .cmp(&a.claims)
                .then((a.port, &a.host, &a.proto).cmp(&(b.port, &b.host, &b.proto)))
        });
        quiet_rows.truncate(self.limits.quiet_ports_shown);
        quiet.shown = quiet_rows;
        (ports, quiet)
    }

    fn host_summaries(&self) -> Vec<HostSummary> {
        self.host_states
            .iter()
            .map(|(name, s)| HostSummary {
                name: name.clone(),
                records: s.records,
                first: rfc(s.first_ms),
                last: rfc(s.last_ms),
                starts: s.starts.clone(),
                starts_dropped: s.starts_dropped,
            })
            .collect()
    }

    fn port_report(
        &self,
        host: &str,
        proto: &str,
        n: u16,
        mut port: PortState,
        end_ms: i64,
    ) -> PortReport {
        let bars = bars(&port.entries, end_ms);
        let mut holders = Holders::default();
        let mut timeline = Vec::with_capacity(port.entries.len());
        // Conflicts sit at their first failed bind, before the record that
        // reports them was written: order by time for reading.
        let mut entries: Vec<Entry> = std::mem::take(&mut port.entries).into();
        entries.sort_by_key(|e| e.ms);
        for e in entries {
            let holder = holders.index_of(&e);
            timeline.push(TimelineEntry {
                ts: rfc(e.ms),
                pid: e.pid,
                comm: e.comm.into(),
                holder,
                netns: e.netns,
                what: e.what,
                conflict: e.conflict,
                evidence: self.place(e.at),
            });
        }
        PortReport {
            host: host.to_string(),
            proto: proto.to_string(),
            port: n,
            netns: port.netns,
            counts: port.counts,
            blocked_ms: port.blocked_ms,
            still_blocked: port.episode.is_some(),
            first: rfc(port.first_ms),
            last: rfc(port.last_ms),
            timeline,
            timeline_dropped: port.dropped,
            timeline_cap: self.limits.timeline,
            holders: holders.rows,
            bars,
            held_at_end: port
                .open
                .iter()
                .map(|c| HeldAtEnd {
                    pid: c.pid,
                    comm: c.process.comm.clone(),
                    since: rfc(c.ms),
                    evidence: self.place(c.at),
                })
                .collect(),
        }
    }
}

/// Distinct identities of a port's kept entries, first seen first.
#[derive(Default)]
struct Holders {
    rows: Vec<Holder>,
    seen: HashMap<*const ProcessRef, usize>,
}

impl Holders {
    /// The row of the entry's process (added when new); its verdict, if
    /// the entry has one, becomes the row's.
    fn index_of(&mut self, e: &Entry) -> Option<usize> {
        let p = e.process.as_ref()?;
        // One row per identity seen: the same pid before and after it was
        // orphaned reads as two rows, which is the story. Shared identities
        // are found by pointer, copies by value.
        let found = self
            .seen
            .get(&Rc::as_ptr(p))
            .copied()
            .or_else(|| self.rows.iter().position(|h| h.process == **p));
        let i = match found {
            Some(i) => i,
            None => {
                self.rows.push(Holder {
                    process: (**p).clone(),
                    netns: e.netns,
                    verdict: None,
                });
                self.rows.len() - 1
            }
        };
        self.seen.insert(Rc::as_ptr(p), i);
        if let Some(v) = &e.verdict {
            self.rows[i].verdict = Some((**v).clone());
        }
        Some(i)
    }
}

/// The conflict that kept its port blocked longest (the first of equals).
fn longest_block(conflicts: &VecDeque<ConflictReport>) -> Option<Block> {
    let mut longest: Option<Block> = None;
    for c in conflicts {
        if longest.as_ref().is_none_or(|l| c.blocked_ms > l.ms) {
            longest = Some(Block {
                host: c.host.clone(),
                proto: c.proto.clone(),
                port: c.port,
                ms: c.blocked_ms,
                conflict: c.id,
            });
        }
    }
    longest
}

/// Claims of the kept entries as intervals: a claim opens a bar, the
/// matching release closes it; a release whose claim was cut off starts at
/// the first kept entry; a claim never released ends at the window's end.
fn bars(entries: &VecDeque<Entry>, end_ms: i64) -> Vec<Bar> {
    let start = entries.front().map_or(end_ms, |e| e.ms);
    let mut open: Vec<(i64, &Entry, bool, bool)> = Vec::new();
    let mut out: Vec<(i64, Bar)> = Vec::new();
    let matches = |o: &Entry, e: &Entry| match (o.cookie, e.cookie) {
        (Some(a), Some(b)) => a == b,
        _ => o.pid == e.pid && (o.netns == e.netns || o.netns.is_none() || e.netns.is_none()),
    };
    for e in entries {
        match e.what {
            Happened::Claim { .. } => open.push((e.ms, e, false, false)),
            Happened::Listen => match open.iter_mut().find(|(_, o, _, _)| matches(o, e)) {
                Some(o) => o.3 = true,
                None => open.push((start, e, true, true)),
            },
            Happened::Release { .. } => {
                let (from, clipped, listening) =
                    match open.iter().position(|(_, o, _, _)| matches(o, e)) {
                        Some(i) => {
                            let (f, _, c, l) = open.remove(i);
                            (f, c, l)
                        }
                        None => (start, true, false),
                    };
                out.push((
                    from,
                    Bar {
                        pid: e.pid,
                        comm: e.comm.to_string(),
                        from: rfc(from),
                        to: rfc(e.ms),
                        from_clipped: clipped,
                        open: false,
                        listening,
                    },
                ));
            }
            _ => {}
        }
    }
    for (from, e, clipped, listening) in open {
        out.push((
            from,
            Bar {
                pid: e.pid,
                comm: e.comm.to_string(),
                from: rfc(from),
                to: rfc(end_ms.max(from)),
                from_clipped: clipped,
                open: true,
                listening,
            },
        ));
    }
    out.sort_by_key(|(f, b)| (*f, b.pid));
    out.into_iter().map(|(_, b)| b).collect()
}

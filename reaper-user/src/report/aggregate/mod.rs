//! journal reader -> **aggregate** -> model.
//!
//! The aggregation behind `reaper report`: records stream in by time, one at
//! a time, and fold into a [`Report`]: the summary, a section per port that
//! saw a conflict or a reaping (or the one `--port` asked for), and an entry
//! per conflict with who tried, who held, how long the port was blocked,
//! what was done and the file:line of every record used.
//!
//! Memory is bounded whatever the journal's size: a port with a conflict
//! or a reaping keeps its last [`Limits::timeline`] entries; a quiet port
//! (most are: ephemeral ports) keeps only counts and its open claims, from
//! which its timeline is rebuilt if it turns interesting (`port`); conflicts
//! keep the last [`Limits::conflicts`]; notes keep their first few. Counts
//! stay exact, and the report says when something was cut. `finish` turns
//! the state into the model; the views only put the model into words.
//!
//! How a conflict's blocked time is measured: from the conflict's `first`
//! failed bind until the first of: the holder's `release` (or a release
//! with no process named), a `reaping` whose outcome freed the port (at its
//! `port_free_at`), or a successful `claim` by another process (the port was
//! evidently free; covers a lost release). Unresolved at the end of the
//! window: blocked until the window's end, marked still blocked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use super::model::{
    ConflictReport, DataQuality, DegradedPeriod, GapNote, Happened, LossNote, ReapingDone,
    ReapingNote, Resolution, StartNote, Summary, Unfinished,
};
use crate::journal::reader::{Located, Location, ReadStats};
use crate::journal::{Body, Endpoint, Mode, ProcessRef, Record};
use crate::vocab::Outcome;

mod finish;
mod jobs;
mod port;
#[cfg(test)]
mod tests;

use port::{
    hold_evidence, join_episode, push_open, same_socket, take_open, BuildPortHasher, Entry,
    OpenClaim, PortKey, PortState,
};

/// What to keep; see the module doc.
#[derive(Clone, Debug)]
pub struct Limits {
    pub timeline: usize,
    pub conflicts: usize,
    pub notes: usize,
    pub quiet_ports_shown: usize,
    pub open_claims_per_port: usize,
}

impl Default for Limits {
    fn default() -> Limits {
        Limits {
            timeline: 200,
            conflicts: 500,
            notes: 50,
            quiet_ports_shown: 30,
            open_claims_per_port: 64,
        }
    }
}

/// Which records count.
#[derive(Clone, Debug, Default)]
pub struct Filter {
    pub since_ms: Option<i64>,
    pub until_ms: Option<i64>,
    pub port: Option<u16>,
    pub host: Option<String>,
}

/// Where a record was seen: its host, its time and its file:line.
struct Seen {
    host: String,
    ms: i64,
    at: Location,
}

struct HostState {
    records: u64,
    first_ms: i64,
    last_ms: i64,
    starts: Vec<StartNote>,
    starts_dropped: u64,
    degraded_since: Option<(i64, String, String, Location)>,
}

/// Folds records into a [`Report`]; see the module doc.
pub struct Aggregator {
    limits: Limits,
    filter: Filter,
    /// Input files, for evidence ("path:line").
    files: Vec<String>,
    hosts: Vec<String>,
    host_index: HashMap<String, u32>,
    protos: Vec<String>,
    proto_index: HashMap<String, u32>,
    ports: HashMap<PortKey, PortState, BuildPortHasher>,
    host_states: BTreeMap<String, HostState>,
    conflicts: VecDeque<ConflictReport>,
    conflicts_dropped: u64,
    next_conflict: u64,
    summary: Summary,
    quality: DataQuality,
    first_ms: Option<i64>,
    last_ms: Option<i64>,
    /// `in_progress` reapings waiting for their outcome record, by port
    /// and target identity (pid, start time).
    pending_reapings: BTreeMap<(PortKey, u32, Option<String>), Unfinished>,
    /// Leaks by job.
    jobs: jobs::Jobs,
}

/// "path:line" of a record.
fn place_in(files: &[String], at: Location) -> String {
    let path = files
        .get(at.file as usize)
        .map(String::as_str)
        .unwrap_or("?");
    format!("{path}:{}", at.line)
}

fn rfc(ms: i64) -> String {
    match chrono::DateTime::from_timestamp_millis(ms) {
        Some(t) => crate::util::rfc3339(t),
        None => format!("@{ms}ms"),
    }
}

fn dur_ms(from: i64, to: i64) -> u64 {
    (to - from).max(0) as u64
}

impl Aggregator {
    pub fn new(filter: Filter, limits: Limits) -> Aggregator {
        Aggregator {
            limits,
            filter,
            files: Vec::new(),
            hosts: Vec::new(),
            host_index: HashMap::new(),
            protos: Vec::new(),
            proto_index: HashMap::new(),
            ports: HashMap::default(),
            host_states: BTreeMap::new(),
            conflicts: VecDeque::new(),
            conflicts_dropped: 0,
            next_conflict: 1,
            summary: Summary::default(),
            quality: DataQuality::default(),
            first_ms: None,
            last_ms: None,
            pending_reapings: BTreeMap::new(),
            jobs: jobs::Jobs::default(),
        }
    }

    /// Keeps the reader's file names current (files open lazily, so the
    /// list grows while reading).
    pub fn sync_files(&mut self, stats: &ReadStats) {
        if self.files.len() != stats.files.len() {
            self.files = stats.files.iter().map(|f| f.path.clone()).collect();
        }
    }

    fn place(&self, at: Location) -> String {
        place_in(&self.files, at)
    }

    fn intern(names: &mut Vec<String>, index: &mut HashMap<String, u32>, s: &str) -> u32 {
        // Few hosts and protocols: a scan of the first few beats hashing.
        if let Some(i) = names.iter().take(8).position(|n| n == s) {
            return i as u32;
        }
        if let Some(&i) = index.get(s) {
            return i;
        }
        let i = names.len() as u32;
        names.push(s.to_string());
        index.insert(s.to_string(), i);
        i
    }

    fn key(&mut self, host: &str, at: &Endpoint) -> PortKey {
        let h = Self::intern(&mut self.hosts, &mut self.host_index, host);
        let p = Self::intern(&mut self.protos, &mut self.proto_index, at.proto.as_str());
        (h, p, at.port)
    }

    /// Takes one record, in time order.
    pub fn push(&mut self, loc: Located) {
        let Located { record, ms, at } = loc;
        let record = *record;
        if let Some(h) = &self.filter.host {
            if &record.host != h {
                return;
            }
        }
        if self.filter.until_ms.is_some_and(|u| ms >= u) {
            return;
        }
        let endpoint = endpoint_of(&record.body);
        if let (Some(p), Some(e)) = (self.filter.port, endpoint) {
            if e.port != p {
                return;
            }
        }
        if self.filter.since_ms.is_some_and(|s| ms < s) {
            // Before the window: only who holds what, so a claim made
            // earlier and still held shows as held since then.
            self.track_claims_only(record, ms, at);
            return;
        }
        self.first_ms.get_or_insert(ms);
        self.last_ms = Some(self.last_ms.map_or(ms, |l| l.max(ms)));
        self.summary.records += 1;
        // Looked up before inserting: no key allocation per record.
        match self.summary.sources.get_mut(record.source.as_str()) {
            Some(n) => *n += 1,
            None => {
                self.summary.sources.insert(record.source.to_string(), 1);
            }
        }
        if !self.host_states.contains_key(&record.host) {
            self.host_states.insert(
                record.host.clone(),
                HostState {
                    records: 0,
                    first_ms: ms,
                    last_ms: ms,
                    starts: Vec::new(),
                    starts_dropped: 0,
                    degraded_since: None,
                },
            );
        }
        let host = self
            .host_states
            .get_mut(&record.host)
            .expect("inserted above");
        host.records += 1;
        host.last_ms = host.last_ms.max(ms);
        if self.jobs.wants(&record) {
            let files = &self.files;
            self.jobs.see(&record, ms, || place_in(files, at));
        }
        self.fold(record, ms, at);
    }

    fn track_claims_only(&mut self, record: Record, ms: i64, at: Location) {
        let job = match &record.body {
            Body::Claim { job, .. } => job.as_ref().map(|j| j.words()),
            _ => None,
        };
        match record.body {
            Body::Claim {
                at: ep,
                process,
                cookie,
                ..
            }
            | Body::Listen {
                at: ep,
                process,
                cookie,
            } => {
                let key = self.key(&record.host, &ep);
                let cap = self.limits.open_claims_per_port;
                let port = self.ports.entry(key).or_default();
                if port
                    .open
                    .iter()
                    .any(|c| same_socket(c, ep.netns, cookie, process.pid))
                {
                    return;
                }
                let claim = OpenClaim {
                    job,
                    ..OpenClaim::new(ms, at, &ep, Rc::new(process), cookie, None)
                };
                push_open(port, cap, claim);
            }
            Body::Release {
                at: ep,
                process,
                cookie,
                ..
            } => {
                let key = self.key(&record.host, &ep);
                if let Some(port) = self.ports.get_mut(&key) {
                    let pid = process.as_ref().map(|p| p.pid);
                    take_open(port, ep.netns, cookie, pid);
                }
            }
            _ => {}
        }
    }

    fn fold(&mut self, record: Record, ms: i64, at: Location) {
        let seen = Seen {
            host: record.host,
            ms,
            at,
        };
        match record.body {
            Body::Claim {
                at: ep,
                process,
                cookie,
                requested_port,
                job,
                ..
            } => self.fold_claim(
                seen,
                ep,
                process,
                cookie,
                requested_port,
                job.map(|j| j.words()),
            ),
            Body::Listen {
                at: ep,
                process,
                cookie,
            } => self.fold_listen(seen, ep, process, cookie),
            Body::Release {
                at: ep,
                process,
                held_ms,
                cookie,
            } => self.fold_release(seen, ep, process, held_ms, cookie),
            body @ Body::Conflict { .. } => self.fold_conflict(seen, body),
            body @ Body::Reaping { .. } => self.fold_reaping(seen, body),
            Body::Loss { lost } => self.fold_loss(seen, lost),
            Body::Start { version, tier, .. } => self.fold_start(seen, version, tier),
            Body::Stop { .. } => {}
            Body::ClientPort {
                at: ep,
                peer,
                process,
                cookie,
                ..
            } => self.fold_client_port(seen, ep, peer, process, cookie),
            Body::Mode { mode, reason } => self.fold_mode(seen, mode, reason),
            Body::Gap { after } => self.fold_gap(seen, after),
            Body::Reconcile { .. } => self.quality.reconciles += 1,
            Body::ClaimsFull { .. } => {}
            Body::Churn {
                at: ep,
                process,
                count,
                first,
                last,
                held_ms_min,
                held_ms_max,
            } => {
                let what = Happened::Churn {
                    count,
                    first,
                    last,
                    held_ms_min,
                    held_ms_max,
                };
                self.fold_churn(seen, ep, process, what)
            }
            Body::Job(_) => {}
        }
    }

    /// A port the kernel gave to a client: an entry on the port's timeline,
    /// with the client when the daemon found it (pid 0 when it had closed).
    fn fold_client_port(
        &mut self,
        seen: Seen,
        ep: Endpoint,
        peer: String,
        process: Option<ProcessRef>,
        cookie: u64,
    ) {
        let Seen { host, ms, at } = seen;
        let key = self.key(&host, &ep);
        self.port(key, ms, ep.netns);
        let process = process.unwrap_or_else(|| ProcessRef {
            comm: "(closed)".into(),
            ..ProcessRef::default()
        });
        let entry = Entry {
            netns: ep.netns,
            cookie: Some(cookie),
            ..Entry::about(Happened::LentToClient { peer }, ms, at, Rc::new(process))
        };
        self.entry(key, entry);
    }

    /// Claims summarised as churn count as claims and releases of the port
    /// (none is open afterwards), with one timeline entry.
    fn fold_churn(&mut self, seen: Seen, ep: Endpoint, process: ProcessRef, what: Happened) {
        let Seen { host, ms, at } = seen;
        let Happened::Churn { count, .. } = what else {
            return;
        };
        let key = self.key(&host, &ep);
        let port = self.port(key, ms, ep.netns);
        port.counts.claims += count;
        port.counts.releases += count;
        port.counts.churn += count;
        let entry = Entry {
            netns: ep.netns,
            ..Entry::about(what, ms, at, Rc::new(process))
        };
        self.entry(key, entry);
    }

    fn fold_claim(
        &mut self,
        seen: Seen,
        ep: Endpoint,
        process: ProcessRef,
        cookie: Option<u64>,
        requested_port: Option<u16>,
        job: Option<String>,
    ) {
        let Seen { host, ms, at } = seen;
        let key = self.key(&host, &ep);
        let process = Rc::new(process);
        // A claim by someone else ends a block whose release we did
        // not see: the port was free.
        let conflict = self.close_episode_on_claim(key, &process, ms, at);
        let cap = self.limits.open_claims_per_port;
        let port = self.port(key, ms, ep.netns);
        port.counts.claims += 1;
        let claim = OpenClaim {
            job: job.clone(),
            ..OpenClaim::new(ms, at, &ep, process.clone(), cookie, requested_port)
        };
        push_open(port, cap, claim);
        let what = Happened::Claim {
            addr: ep.addr,
            port: ep.port,
            requested_port,
            job,
        };
        let entry = Entry {
            netns: ep.netns,
            cookie,
            conflict,
            ..Entry::about(what, ms, at, process)
        };
        self.entry(key, entry);
    }

    fn fold_listen(&mut self, seen: Seen, ep: Endpoint, process: ProcessRef, cookie: Option<u64>) {
        let Seen { host, ms, at } = seen;
        let key = self.key(&host, &ep);
        let cap = self.limits.open_claims_per_port;
        let port = self.port(key, ms, ep.netns);
        port.counts.listens += 1;
        let shared = match port
            .open
            .iter_mut()
            .find(|c| same_socket(c, ep.netns, cookie, process.pid))
        {
            Some(c) => {
                c.listening = true;
                c.listen = Some((ms, at));
                c.process.clone()
            }
            None => {
                // The claim was not seen (lost, or before the files):
                // the listen proves the hold.
                let p = Rc::new(process);
                let claim = OpenClaim {
                    listening: true,
                    listen: Some((ms, at)),
                    ..OpenClaim::new(ms, at, &ep, p.clone(), cookie, None)
                };
                push_open(port, cap, claim);
                p
            }
        };
        let entry = Entry {
            netns: ep.netns,
            cookie,
            ..Entry::about(Happened::Listen, ms, at, shared)
        };
        self.entry(key, entry);
    }

    fn fold_release(
        &mut self,
        seen: Seen,
        ep: Endpoint,
        process: Option<ProcessRef>,
        held_ms: Option<u64>,
        cookie: Option<u64>,
    ) {
        let Seen { host, ms, at } = seen;
        let key = self.key(&host, &ep);
        let port = self.port(key, ms, ep.netns);
        port.counts.releases += 1;
        let pid = process.as_ref().map(|p| p.pid);
        let open = take_open(port, ep.netns, cookie, pid);
        if port.open.is_empty() {
            // Tens of thousands of ports go quiet again: free it.
            port.open = Vec::new();
        }
        let held = held_ms.or_else(|| open.as_ref().map(|c| dur_ms(c.ms, ms)));
        let proc_rc = match (process, &open) {
            (Some(p), _) => Some(Rc::new(p)),
            (None, Some(c)) => Some(c.process.clone()),
            (None, None) => None,
        };
        let pid = proc_rc.as_ref().map_or(0, |p| p.pid);
        let conflict = self.close_episode_on_release(key, proc_rc.as_ref().map(|p| p.pid), ms, at);
        let comm: Box<str> = proc_rc
            .as_ref()
            .map_or("?".into(), |p| p.comm.as_str().into());
        self.entry(
            key,
            Entry {
                ms,
                what: Happened::Release { held_ms: held },
                pid,
                comm,
                process: proc_rc,
                verdict: None,
                netns: ep.netns,
                cookie,
                conflict,
                at,
            },
        );
    }

    /// `body` is a [`Body::Conflict`] (fold passes nothing else).
    fn fold_conflict(&mut self, seen: Seen, body: Body) {
        let Body::Conflict {
            at: ep,
            tried,
            errno,
            errno_exact,
            holders,
            held_since,
            count,
            first,
            last,
            verdict,
            action,
            ..
        } = body
        else {
            return;
        };
        let Seen { host, ms, at } = seen;
        let key = self.key(&host, &ep);
        let first_ms = crate::journal::reader::parse_ms(&first).unwrap_or(ms);
        self.summary.conflicts += 1;
        self.summary.failed_binds += count;
        let id = self.next_conflict;
        self.next_conflict += 1;
        self.port(key, ms, ep.netns);
        self.promote(key);
        let port = self.port(key, ms, ep.netns);
        port.counts.conflicts += 1;
        port.counts.failed_binds += count;
        let holder_pids: Vec<u32> = holders.iter().map(|h| h.pid).collect();
        let (claims, since_ms) = hold_evidence(port, &holder_pids);
        join_episode(port, id, first_ms, &holder_pids);
        let mut evidence: Vec<String> = claims.iter().map(|l| self.place(*l)).collect();
        evidence.push(self.place(at));
        let span_to = (first != last).then(|| last.clone());
        self.push_conflict(ConflictReport {
            id,
            host,
            proto: ep.proto.as_str().into(),
            port: ep.port,
            netns: ep.netns,
            addr: ep.addr.clone(),
            first: rfc(first_ms),
            last,
            count,
            errno: errno.clone(),
            errno_exact,
            tried: tried.clone(),
            holders: holders.clone(),
            held_since: held_since.or_else(|| since_ms.map(rfc)),
            verdict: verdict.clone(),
            action,
            resolution: Resolution::Open,
            blocked_ms: 0,
            blocked_until: None,
            done: Vec::new(),
            rebound_by: None,
            evidence,
        });
        // Holder identities: the conflict names them fully.
        for h in &holders {
            self.remember_identity(key, h, verdict.as_ref());
        }
        let what = Happened::Conflict {
            count,
            errno,
            first_ms,
            last: span_to,
            holders,
        };
        let entry = Entry {
            netns: ep.netns,
            conflict: Some(id),
            ..Entry::about(what, first_ms.min(ms), at, Rc::new(tried))
        };
        self.entry(key, entry);
    }

    /// An `in_progress` intent waits for its outcome (true: it is no reaping
    /// yet); the outcome ends the wait; an `interrupted` one stays
    /// unfinished.
    fn is_intent(&mut self, key: PortKey, u: Unfinished) -> bool {
        let identity = (key, u.target.pid, u.target.started_at.clone());
        match u.outcome {
            Outcome::InProgress => {
                self.pending_reapings.insert(identity, u);
                true
            }
            Outcome::Interrupted => {
                self.pending_reapings.remove(&identity);
                self.summary.unfinished.push(u);
                false
            }
            _ => {
                self.pending_reapings.remove(&identity);
                false
            }
        }
    }

    fn push_conflict(&mut self, report: ConflictReport) {
        self.conflicts.push_back(report);
        if self.conflicts.len() > self.limits.conflicts {
            self.conflicts.pop_front();
            self.conflicts_dropped += 1;
        }
    }

    /// `body` is a [`Body::Reaping`] (fold passes nothing else).
    fn fold_reaping(&mut self, seen: Seen, body: Body) {
        let Body::Reaping {
            at: ep,
            target,
            verdict,
            signals,
            outcome,
            port_free_at,
            elapsed_ms,
            dry_run,
            container,
            ..
        } = body
        else {
            return;
        };
        let Seen { host, ms, at } = seen;
        let key = self.key(&host, &ep);
        let u = Unfinished {
            ts: rfc(ms),
            host,
            proto: ep.proto.as_str().into(),
            port: ep.port,
            target: target.clone(),
            outcome: outcome.clone(),
            signals: signals.clone(),
            evidence: self.place(at),
        };
        if self.is_intent(key, u) {
            return;
        }
        self.summary.reapings += 1;
        *self
            .summary
            .reapings_by_outcome
            .entry(outcome.to_string())
            .or_default() += 1;
        if dry_run {
            self.summary.dry_runs += 1;
        }
        self.port(key, ms, ep.netns);
        self.promote(key);
        let port = self.port(key, ms, ep.netns);
        port.counts.reapings += 1;
        let free_ms = port_free_at
            .as_deref()
            .and_then(crate::journal::reader::parse_ms);
        let freed = !dry_run && matches!(outcome, Outcome::Freed | Outcome::Gone);
        let what = Happened::Reaping(Box::new(ReapingDone {
            verdict: verdict.clone(),
            signals: signals.clone(),
            dry_run,
            outcome: outcome.clone(),
            free_ms,
            elapsed_ms,
            container,
        }));
        let note = ReapingNote {
            ts: rfc(ms),
            target: target.clone(),
            verdict: verdict.clone(),
            signals,
            outcome,
            port_free_at,
            elapsed_ms,
            dry_run,
            evidence: self.place(at),
        };
        let conflict = self.attach_reaping(key, note, freed, free_ms.unwrap_or(ms));
        self.remember_identity(key, &target, Some(&verdict));
        let entry = Entry {
            verdict: Some(Box::new(verdict)),
            netns: ep.netns,
            conflict,
            ..Entry::about(what, ms, at, Rc::new(target))
        };
        self.entry(key, entry);
    }

    fn fold_loss(&mut self, seen: Seen, lost: u64) {
        self.quality.lost_events += lost;
        self.quality.loss_records += 1;
        if self.quality.losses.len() < self.limits.notes {
            let evidence = self.place(seen.at);
            self.quality.losses.push(LossNote {
                host: seen.host,
                ts: rfc(seen.ms),
                lost,
                evidence,
            });
        } else {
            self.quality.notes_dropped += 1;
        }
    }

    fn fold_start(&mut self, seen: Seen, version: String, tier: String) {
        let evidence = self.place(seen.at);
        let notes = self.limits.notes;
        if let Some(h) = self.host_states.get_mut(&seen.host) {
            if h.starts.len() < notes {
                h.starts.push(StartNote {
                    ts: rfc(seen.ms),
                    tier,
                    version,
                    evidence,
                });
            } else {
                h.starts_dropped += 1;
            }
        }
    }

    fn fold_mode(&mut self, seen: Seen, mode: Mode, reason: String) {
        let Seen { host, ms, at } = seen;
        let degraded = mode.is_degraded();
        let Some(h) = self.host_states.get_mut(&host) else {
            return;
        };
        match (degraded, h.degraded_since.take()) {
            (true, None) => h.degraded_since = Some((ms, mode.to_string(), reason, at)),
            (true, Some(open)) => h.degraded_since = Some(open),
            (false, Some((from, m, r, a))) => {
                let ev = self.place(a);
                self.push_degraded(DegradedPeriod {
                    host,
                    mode: m,
                    reason: r,
                    from: rfc(from),
                    to: Some(rfc(ms)),
                    ms: dur_ms(from, ms),
                    evidence: ev,
                });
            }
            (false, None) => {}
        }
    }

    fn fold_gap(&mut self, seen: Seen, after: String) {
        self.quality.gaps_total += 1;
        if self.quality.gaps.len() < self.limits.notes {
            let a = crate::journal::reader::parse_ms(&after);
            let evidence = self.place(seen.at);
            self.quality.gaps.push(GapNote {
                host: seen.host,
                after: a.map_or(after, rfc),
                noticed: rfc(seen.ms),
                ms: a.map(|a| dur_ms(a, seen.ms)),
                evidence,
            });
        } else {
            self.quality.notes_dropped += 1;
        }
    }

    fn push_degraded(&mut self, p: DegradedPeriod) {
        self.quality.degraded_total += 1;
        self.quality.degraded_ms += p.ms;
        if self.quality.degraded.len() < self.limits.notes {
            self.quality.degraded.push(p);
        } else {
            self.quality.notes_dropped += 1;
        }
    }
}

fn endpoint_of(b: &Body) -> Option<&Endpoint> {
    match b {
        Body::Claim { at, .. }
        | Body::Listen { at, .. }
        | Body::Release { at, .. }
        | Body::Conflict { at, .. }
        | Body::Reaping { at, .. } => Some(at),
        _ => None,
    }
}

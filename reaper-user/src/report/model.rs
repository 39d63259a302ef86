//! journal reader -> **model** -> markdown / html / json.
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
//! which its timeline is rebuilt if it turns interesting; conflicts keep the
//! last [`Limits::conflicts`]; notes keep their first few. Counts stay
//! exact, and the report says when something was cut. The renderers only
//! format what is here.
//!
//! How a conflict's blocked time is measured: from the conflict's `first`
//! failed bind until the first of: the holder's `release` (or a release
//! with no process named), a `reaping` whose outcome freed the port (at its
//! `port_free_at`), or a successful `claim` by another process (the port was
//! evidently free; covers a lost release). Unresolved at the end of the
//! window: blocked until the window's end, marked still blocked.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::rc::Rc;

use serde::{Deserialize, Serialize};

use super::view;
use crate::journal::reader::{BadLine, FileRead, Located, Location, ReadStats};
use crate::journal::{
    Action, Body, Endpoint, Mode, Outcome, ProcessRef, Record, SignalRecord, VerdictRecord,
};
pub use crate::util::human_ms;

/// The JSON schema name; bump the suffix on an incompatible change.
pub const SCHEMA: &str = "reaper.report/v1";

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

// ---------------------------------------------------------------- output

/// The whole report: what `--format json` prints (see docs/report.md).
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Report {
    pub schema: String,
    pub window: Window,
    pub filter: FilterOut,
    pub inputs: Vec<FileRead>,
    pub summary: Summary,
    pub data_quality: DataQuality,
    pub conflicts: Vec<ConflictReport>,
    /// Conflicts left out of `conflicts` (older than the last kept).
    pub conflicts_dropped: u64,
    pub ports: Vec<PortReport>,
    pub quiet_ports: QuietPorts,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Window {
    pub since: Option<String>,
    pub until: Option<String>,
    pub first_record: Option<String>,
    pub last_record: Option<String>,
    /// Where open claims and unresolved conflicts end: `until` if given,
    /// else the last record's time (never "now", so a report is repeatable).
    pub end: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct FilterOut {
    pub port: Option<u16>,
    pub host: Option<String>,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct Summary {
    /// Records in the window (after the host and port filters).
    pub records: u64,
    /// Conflict records and the failed binds they count.
    pub conflicts: u64,
    pub failed_binds: u64,
    /// Ports (per host) with a conflict or a reaping.
    pub ports_involved: u64,
    pub reapings: u64,
    /// Reapings by outcome ("freed", "still_held", "refused", ...).
    pub reapings_by_outcome: BTreeMap<String, u64>,
    pub dry_runs: u64,
    /// Sum over ports of the time a conflict kept them blocked.
    pub blocked_ms: u64,
    pub longest_block: Option<Block>,
    /// Ports still blocked at the end of the window.
    pub still_blocked: u64,
    pub hosts: Vec<HostSummary>,
    /// Records by `source`: the hook tier a fact came from, or "proc".
    pub sources: BTreeMap<String, u64>,
    /// Reapings that never recorded an outcome (an `in_progress` intent
    /// with nothing after it) or that a daemon stop interrupted.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub unfinished: Vec<Unfinished>,
}

/// A reaping whose signals may have been sent with no outcome on the record.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Unfinished {
    /// When the intent (or the interruption) was written.
    pub ts: String,
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub target: ProcessRef,
    /// `in_progress` (reaper stopped before it recorded an outcome) or
    /// `interrupted` (a daemon stop cut it short).
    pub outcome: Outcome,
    pub signals: Vec<SignalRecord>,
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Block {
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub ms: u64,
    pub conflict: u64,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct HostSummary {
    pub name: String,
    pub records: u64,
    pub first: String,
    pub last: String,
    /// The daemon's starts on this host: which hook tier it ran with.
    pub starts: Vec<StartNote>,
    pub starts_dropped: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct StartNote {
    pub ts: String,
    pub tier: String,
    pub version: String,
    pub evidence: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct DataQuality {
    /// Events the kernel side could not hand over, summed over `loss` records.
    pub lost_events: u64,
    pub loss_records: u64,
    pub losses: Vec<LossNote>,
    pub torn_lines: u64,
    pub garbage_lines: u64,
    pub unknown_version: u64,
    pub unknown_kind: u64,
    pub out_of_order: u64,
    pub bad_lines: Vec<BadLine>,
    pub gaps: Vec<GapNote>,
    pub gaps_total: u64,
    pub degraded: Vec<DegradedPeriod>,
    pub degraded_total: u64,
    pub degraded_ms: u64,
    pub reconciles: u64,
    pub notes_dropped: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct LossNote {
    pub host: String,
    pub ts: String,
    pub lost: u64,
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct GapNote {
    pub host: String,
    /// The last record before the crash, and when the daemon noticed.
    pub after: String,
    pub noticed: String,
    pub ms: Option<u64>,
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct DegradedPeriod {
    pub host: String,
    pub mode: String,
    pub reason: String,
    pub from: String,
    /// None: still degraded at the end of the window.
    pub to: Option<String>,
    pub ms: u64,
    pub evidence: String,
}

/// A process and what the policy said of it.
#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Holder {
    pub process: ProcessRef,
    /// The netns of the socket it held, when known.
    pub netns: Option<u64>,
    pub verdict: Option<VerdictRecord>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ConflictReport {
    /// 1-based, in time order over the whole window.
    pub id: u64,
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub netns: Option<u64>,
    pub addr: Option<String>,
    pub first: String,
    pub last: String,
    pub count: u64,
    pub errno: String,
    pub errno_exact: bool,
    pub tried: ProcessRef,
    pub holders: Vec<ProcessRef>,
    pub held_since: Option<String>,
    pub verdict: Option<VerdictRecord>,
    /// What the matching rule asked for: "report" or "reap".
    pub action: Action,
    /// How the block ended: "released" (the holder let go), "reaped" (after
    /// a reaping), "rebound" (someone else bound it: the release was not
    /// seen), "open" (still blocked at the end of the window).
    pub resolution: String,
    pub blocked_ms: u64,
    pub blocked_until: Option<String>,
    /// Reapings of the holders during the block.
    pub done: Vec<ReapingNote>,
    /// Who bound the port next.
    pub rebound_by: Option<Rebind>,
    /// file:line of every record used, in time order.
    pub evidence: Vec<String>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct ReapingNote {
    pub ts: String,
    pub target: ProcessRef,
    pub verdict: VerdictRecord,
    pub signals: Vec<SignalRecord>,
    pub outcome: Outcome,
    pub port_free_at: Option<String>,
    pub elapsed_ms: Option<u64>,
    pub dry_run: bool,
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Rebind {
    pub pid: u32,
    pub comm: String,
    pub ts: String,
    pub evidence: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct PortCounts {
    pub claims: u64,
    pub listens: u64,
    pub releases: u64,
    pub conflicts: u64,
    pub failed_binds: u64,
    pub reapings: u64,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct PortReport {
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub netns: Vec<u64>,
    pub counts: PortCounts,
    pub blocked_ms: u64,
    pub still_blocked: bool,
    pub first: String,
    pub last: String,
    pub timeline: Vec<TimelineEntry>,
    /// Entries older than the kept ones, left out (counts stay exact).
    pub timeline_dropped: u64,
    pub timeline_cap: usize,
    /// Processes of the kept entries, with full identity; entries point
    /// here by index.
    pub holders: Vec<Holder>,
    /// Claims as intervals, for the timeline picture.
    pub bars: Vec<Bar>,
    /// Claims open at the end of the window.
    pub held_at_end: Vec<HeldAtEnd>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct TimelineEntry {
    pub ts: String,
    /// "claim", "listen", "release", "conflict", "reaping".
    pub event: String,
    pub pid: u32,
    pub comm: String,
    /// Index into the port's `holders`, when the identity was kept.
    pub holder: Option<usize>,
    pub netns: Option<u64>,
    /// One line a person reads: what happened.
    pub detail: String,
    /// The conflict's id, for conflict entries and reapings during one.
    pub conflict: Option<u64>,
    pub evidence: String,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct Bar {
    pub pid: u32,
    pub comm: String,
    pub from: String,
    pub to: String,
    /// The claim was made before the first kept entry.
    pub from_clipped: bool,
    /// Still held at the end of the window.
    pub open: bool,
    pub listening: bool,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct HeldAtEnd {
    pub pid: u32,
    pub comm: String,
    pub since: String,
    pub evidence: String,
}

#[derive(Clone, Debug, Default, Serialize, Deserialize, PartialEq)]
pub struct QuietPorts {
    /// Ports (per host) with claims but no conflict or reaping.
    pub total: u64,
    pub claims: u64,
    /// The busiest few.
    pub shown: Vec<QuietPort>,
}

#[derive(Clone, Debug, Serialize, Deserialize, PartialEq)]
pub struct QuietPort {
    pub host: String,
    pub proto: String,
    pub port: u16,
    pub claims: u64,
    pub releases: u64,
    pub last: String,
    pub held_at_end: u64,
}

// ---------------------------------------------------------------- state

/// The port map is looked up once per record with small integer keys that
/// no one outside chooses (interned indices): a multiply-rotate hash beats
/// SipHash's flooding defence, which is not needed here.
#[derive(Default, Clone, Copy)]
struct BuildPortHasher;

#[derive(Default)]
struct PortHasher(u64);

impl std::hash::Hasher for PortHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.write_u64(u64::from(b));
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = (self.0.rotate_left(5) ^ n).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_u32(&mut self, n: u32) {
        self.write_u64(u64::from(n));
    }
    fn write_u16(&mut self, n: u16) {
        self.write_u64(u64::from(n));
    }
}

impl std::hash::BuildHasher for BuildPortHasher {
    type Hasher = PortHasher;
    fn build_hasher(&self) -> PortHasher {
        PortHasher::default()
    }
}

/// A port on a host: (host, proto, port), interned. The netns is a detail
/// of each entry: a host's port is what people ask about.
type PortKey = (u32, u32, u16);

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    Claim,
    Listen,
    Release,
    Conflict,
    Reaping,
}

impl Kind {
    fn name(self) -> &'static str {
        match self {
            Kind::Claim => "claim",
            Kind::Listen => "listen",
            Kind::Release => "release",
            Kind::Conflict => "conflict",
            Kind::Reaping => "reaping",
        }
    }
}

struct Entry {
    ms: i64,
    kind: Kind,
    pid: u32,
    comm: Box<str>,
    process: Option<Rc<ProcessRef>>,
    verdict: Option<Box<VerdictRecord>>,
    netns: Option<u64>,
    cookie: Option<u64>,
    detail: String,
    conflict: Option<u64>,
    at: Location,
}

impl Entry {
    /// An entry about `p`, with nothing else known yet.
    fn about(kind: Kind, ms: i64, at: Location, p: Rc<ProcessRef>) -> Entry {
        Entry {
            ms,
            kind,
            pid: p.pid,
            comm: p.comm.as_str().into(),
            process: Some(p),
            verdict: None,
            netns: None,
            cookie: None,
            detail: String::new(),
            conflict: None,
            at,
        }
    }
}

/// Where a record was seen: its host, its time and its file:line.
struct Seen {
    host: String,
    ms: i64,
    at: Location,
}

struct OpenClaim {
    ms: i64,
    pid: u32,
    netns: Option<u64>,
    cookie: Option<u64>,
    process: Rc<ProcessRef>,
    listening: bool,
    at: Location,
    /// What the claim entry says, and the listen's time and place: a quiet
    /// port keeps no timeline, so these rebuild it if the port turns
    /// interesting while the claim is open.
    addr: Option<String>,
    requested_port: Option<u16>,
    listen: Option<(i64, Location)>,
}

struct Episode {
    start_ms: i64,
    ids: Vec<u64>,
    /// Holders still holding; `all_pids`: every holder named.
    holder_pids: Vec<u32>,
    all_pids: Vec<u32>,
}

#[derive(Default)]
struct PortState {
    counts: PortCounts,
    first_ms: i64,
    last_ms: i64,
    interesting: bool,
    entries: VecDeque<Entry>,
    dropped: u64,
    open: Vec<OpenClaim>,
    episode: Option<Box<Episode>>,
    last_episode: Option<Box<Episode>>,
    blocked_ms: u64,
    netns: Vec<u64>,
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
        let path = self
            .files
            .get(at.file as usize)
            .map(String::as_str)
            .unwrap_or("?");
        format!("{path}:{}", at.line)
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
        match self.summary.sources.get_mut(&record.source) {
            Some(n) => *n += 1,
            None => {
                self.summary.sources.insert(record.source.clone(), 1);
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
        self.fold(record, ms, at);
    }

    fn track_claims_only(&mut self, record: Record, ms: i64, at: Location) {
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
                push_open(
                    port,
                    cap,
                    OpenClaim {
                        ms,
                        pid: process.pid,
                        netns: ep.netns,
                        cookie,
                        process: Rc::new(process),
                        listening: false,
                        at,
                        addr: ep.addr.clone(),
                        requested_port: None,
                        listen: None,
                    },
                );
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
            } => self.fold_claim(seen, ep, process, cookie, requested_port),
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
            Body::Mode { mode, reason } => self.fold_mode(seen, mode, reason),
            Body::Gap { after } => self.fold_gap(seen, after),
            Body::Reconcile { .. } => self.quality.reconciles += 1,
            Body::ClaimsFull { .. } => {}
            Body::Churn { .. } => {}
        }
    }

    fn fold_claim(
        &mut self,
        seen: Seen,
        ep: Endpoint,
        process: ProcessRef,
        cookie: Option<u64>,
        requested_port: Option<u16>,
    ) {
        let Seen { host, ms, at } = seen;
        let key = self.key(&host, &ep);
        // Quiet ports keep no entries: skip the words too.
        let detail = if self.keeps(key) {
            view::claim_detail(ep.addr.as_deref(), ep.port, requested_port)
        } else {
            String::new()
        };
        let process = Rc::new(process);
        // A claim by someone else ends a block whose release we did
        // not see: the port was free.
        let conflict = self.close_episode_on_claim(key, &process, ms, at);
        let cap = self.limits.open_claims_per_port;
        let port = self.port(key, ms, ep.netns);
        port.counts.claims += 1;
        push_open(
            port,
            cap,
            OpenClaim {
                ms,
                pid: process.pid,
                netns: ep.netns,
                cookie,
                process: process.clone(),
                listening: false,
                at,
                addr: ep.addr.clone(),
                requested_port,
                listen: None,
            },
        );
        let entry = Entry {
            netns: ep.netns,
            cookie,
            detail,
            conflict,
            ..Entry::about(Kind::Claim, ms, at, process)
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
                push_open(
                    port,
                    cap,
                    OpenClaim {
                        ms,
                        pid: p.pid,
                        netns: ep.netns,
                        cookie,
                        process: p.clone(),
                        listening: true,
                        at,
                        addr: ep.addr.clone(),
                        requested_port: None,
                        listen: Some((ms, at)),
                    },
                );
                p
            }
        };
        let entry = Entry {
            netns: ep.netns,
            cookie,
            detail: "listening".into(),
            ..Entry::about(Kind::Listen, ms, at, shared)
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
        let detail = match held {
            Some(h) if self.keeps(key) => view::release_detail(h),
            _ => "released".to_string(),
        };
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
                kind: Kind::Release,
                pid,
                comm,
                process: proc_rc,
                verdict: None,
                netns: ep.netns,
                cookie,
                detail,
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
        let span_to = (first != last).then_some(last.as_str());
        let detail = view::conflict_detail(count, &errno, first_ms, span_to, &holders);
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
            errno,
            errno_exact,
            tried: tried.clone(),
            holders: holders.clone(),
            held_since: held_since.or_else(|| since_ms.map(rfc)),
            verdict: verdict.clone(),
            action,
            resolution: "open".into(),
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
        let entry = Entry {
            netns: ep.netns,
            detail,
            conflict: Some(id),
            ..Entry::about(Kind::Conflict, first_ms.min(ms), at, Rc::new(tried))
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
        let mut detail = view::reaping_detail(
            &verdict,
            &signals,
            dry_run,
            outcome.as_str(),
            free_ms,
            elapsed_ms,
        );
        if let Some(c) = &container {
            detail = view::container_stopped(c, &detail);
        }
        let freed = !dry_run && matches!(outcome, Outcome::Freed | Outcome::Gone);
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
            detail,
            conflict,
            ..Entry::about(Kind::Reaping, ms, at, Rc::new(target))
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

    fn port(&mut self, key: PortKey, ms: i64, netns: Option<u64>) -> &mut PortState {
        let interesting = self.filter.port.is_some();
        let port = self.ports.entry(key).or_insert_with(|| PortState {
            first_ms: ms,
            interesting,
            ..PortState::default()
        });
        if port.first_ms == 0 {
            port.first_ms = ms;
        }
        port.interesting |= interesting;
        port.last_ms = port.last_ms.max(ms);
        if let Some(n) = netns {
            if !port.netns.contains(&n) && port.netns.len() < 8 {
                port.netns.push(n);
            }
        }
        port
    }

    /// Whether the port keeps a timeline (else entries are only counted).
    fn keeps(&self, key: PortKey) -> bool {
        self.filter.port.is_some() || self.ports.get(&key).is_some_and(|p| p.interesting)
    }

    /// A conflict or a reaping makes a port interesting: from now on it
    /// keeps a timeline, which starts with its open claims (and their
    /// listens), rebuilt from what the open claims remember.
    fn promote(&mut self, key: PortKey) {
        let Some(port) = self.ports.get_mut(&key) else {
            return;
        };
        if port.interesting {
            return;
        }
        port.interesting = true;
        let mut rebuilt = Vec::new();
        for c in &port.open {
            rebuilt.push(Entry {
                ms: c.ms,
                kind: Kind::Claim,
                pid: c.pid,
                comm: c.process.comm.as_str().into(),
                process: Some(c.process.clone()),
                verdict: None,
                netns: c.netns,
                cookie: c.cookie,
                detail: view::claim_detail(c.addr.as_deref(), key.2, c.requested_port),
                conflict: None,
                at: c.at,
            });
            if let Some((ms, at)) = c.listen {
                rebuilt.push(Entry {
                    ms,
                    kind: Kind::Listen,
                    pid: c.pid,
                    comm: c.process.comm.as_str().into(),
                    process: Some(c.process.clone()),
                    verdict: None,
                    netns: c.netns,
                    cookie: c.cookie,
                    detail: "listening".into(),
                    conflict: None,
                    at,
                });
            }
        }
        rebuilt.sort_by_key(|e| (e.ms, e.at));
        // Those were counted as not kept; they are kept after all.
        port.dropped = port.dropped.saturating_sub(rebuilt.len() as u64);
        port.entries.extend(rebuilt);
    }

    fn entry(&mut self, key: PortKey, e: Entry) {
        let Some(port) = self.ports.get_mut(&key) else {
            return;
        };
        if !port.interesting {
            // Most ports are quiet (ephemeral ports above all): they keep
            // counts and open claims, no timeline. See `promote`.
            port.dropped += 1;
            return;
        }
        let cap = self.limits.timeline;
        port.entries.push_back(e);
        while port.entries.len() > cap {
            port.entries.pop_front();
            port.dropped += 1;
        }
    }

    /// A conflict names its holders fully: attach that identity to the
    /// holders' kept entries that lack it (a port turning interesting).
    fn remember_identity(&mut self, key: PortKey, p: &ProcessRef, verdict: Option<&VerdictRecord>) {
        let Some(port) = self.ports.get_mut(&key) else {
            return;
        };
        // The identity at bind time (the open claim's: the job that started
        // it) is better evidence for a claim than the one at conflict time
        // (maybe orphaned since).
        for e in port.entries.iter_mut().filter(|e| e.process.is_none()) {
            if let Some(c) = port
                .open
                .iter()
                .find(|c| c.pid == e.pid && (e.cookie.is_none() || c.cookie == e.cookie))
            {
                e.process = Some(c.process.clone());
            }
        }
        let rc = Rc::new(p.clone());
        for e in port
            .entries
            .iter_mut()
            .filter(|e| e.pid == p.pid && e.process.is_none())
        {
            e.process = Some(rc.clone());
        }
        if let Some(v) = verdict {
            if let Some(e) = port
                .entries
                .iter_mut()
                .rev()
                .find(|e| e.pid == p.pid && e.kind != Kind::Conflict)
            {
                if e.verdict.is_none() {
                    e.verdict = Some(Box::new(v.clone()));
                }
            }
        }
    }

    fn conflict_mut(&mut self, id: u64) -> Option<&mut ConflictReport> {
        let front = self.conflicts.front()?.id;
        let idx = id.checked_sub(front)? as usize;
        self.conflicts.get_mut(idx)
    }

    fn resolve(&mut self, key: PortKey, at_ms: i64, how: &str) -> Option<u64> {
        let port = self.ports.get_mut(&key)?;
        let ep = port.episode.take()?;
        port.blocked_ms += dur_ms(ep.start_ms, at_ms);
        let ids = ep.ids.clone();
        port.last_episode = Some(ep);
        for id in &ids {
            if let Some(c) = self.conflict_mut(*id) {
                let first = crate::journal::reader::parse_ms(&c.first).unwrap_or(at_ms);
                c.blocked_ms = dur_ms(first, at_ms);
                c.blocked_until = Some(rfc(at_ms));
                c.resolution = how.to_string();
            }
        }
        ids.last().copied()
    }

    fn close_episode_on_release(
        &mut self,
        key: PortKey,
        pid: Option<u32>,
        ms: i64,
        at: Location,
    ) -> Option<u64> {
        let port = self.ports.get_mut(&key)?;
        let ep = port.episode.as_mut()?;
        let done = match pid {
            Some(p) => {
                ep.holder_pids.retain(|h| *h != p);
                ep.holder_pids.is_empty()
            }
            None => true,
        };
        let id = *ep.ids.last()?;
        let place = self.place(at);
        for i in self.ports[&key]
            .episode
            .as_ref()
            .map(|e| e.ids.clone())
            .unwrap_or_default()
        {
            if let Some(c) = self.conflict_mut(i) {
                c.evidence.push(place.clone());
            }
        }
        if done {
            self.resolve(key, ms, "released");
        }
        Some(id)
    }

    fn close_episode_on_claim(
        &mut self,
        key: PortKey,
        by: &ProcessRef,
        ms: i64,
        at: Location,
    ) -> Option<u64> {
        let place = self.place(at);
        let port = self.ports.get_mut(&key)?;
        let rebind = Rebind {
            pid: by.pid,
            comm: by.comm.clone(),
            ts: rfc(ms),
            evidence: place.clone(),
        };
        if let Some(ep) = &port.episode {
            if ep.holder_pids.contains(&by.pid) {
                return None;
            }
            let ids = ep.ids.clone();
            self.resolve(key, ms, "rebound");
            for id in &ids {
                if let Some(c) = self.conflict_mut(*id) {
                    c.rebound_by = Some(rebind.clone());
                    c.evidence.push(place.clone());
                }
            }
            return ids.last().copied();
        }
        // The first claim after a resolved block: who got the port next.
        let ep = port.last_episode.as_ref()?;
        let ids = ep.ids.clone();
        let mut linked = None;
        for id in &ids {
            if let Some(c) = self.conflict_mut(*id) {
                if c.rebound_by.is_none() {
                    c.rebound_by = Some(rebind.clone());
                    c.evidence.push(place.clone());
                    linked = Some(*id);
                }
            }
        }
        linked
    }

    fn attach_reaping(
        &mut self,
        key: PortKey,
        note: ReapingNote,
        freed: bool,
        free_ms: i64,
    ) -> Option<u64> {
        let port = self.ports.get_mut(&key)?;
        let target = note.target.pid;
        let (ids, open) = match (&port.episode, &port.last_episode) {
            (Some(ep), _) => (ep.ids.clone(), true),
            // The release usually comes first (the reaping is written once
            // the wait is over): attach to the block it ended.
            (None, Some(ep)) if ep.all_pids.contains(&target) || ep.all_pids.is_empty() => {
                (ep.ids.clone(), false)
            }
            _ => return None,
        };
        for id in &ids {
            if let Some(c) = self.conflict_mut(*id) {
                if open || c.resolution == "released" || c.resolution == "rebound" {
                    if !open && freed {
                        c.resolution = "reaped".into();
                    }
                    c.evidence.push(note.evidence.clone());
                    c.done.push(note.clone());
                }
            }
        }
        if open && freed {
            self.resolve(key, free_ms, "reaped");
        }
        ids.last().copied()
    }

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
                        c.resolution = "open".into();
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
                event: e.kind.name().into(),
                pid: e.pid,
                comm: e.comm.into(),
                holder,
                netns: e.netns,
                detail: e.detail,
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
        match e.kind {
            Kind::Claim => open.push((e.ms, e, false, false)),
            Kind::Listen => match open.iter_mut().find(|(_, o, _, _)| matches(o, e)) {
                Some(o) => o.3 = true,
                None => open.push((start, e, true, true)),
            },
            Kind::Release => {
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

/// The claims that show the hold, in time order, and the earliest of them:
/// those of the named holders (all open claims when none is named).
fn hold_evidence(port: &PortState, holder_pids: &[u32]) -> (Vec<Location>, Option<i64>) {
    let mut claims: Vec<(Location, i64)> = port
        .open
        .iter()
        .filter(|c| holder_pids.is_empty() || holder_pids.contains(&c.pid))
        .map(|c| (c.at, c.ms))
        .collect();
    let since = claims.iter().map(|(_, ms)| *ms).min();
    claims.sort();
    (claims.into_iter().map(|(at, _)| at).collect(), since)
}

/// A conflict opens the port's block, or joins the one already open.
fn join_episode(port: &mut PortState, id: u64, first_ms: i64, holder_pids: &[u32]) {
    match &mut port.episode {
        Some(ep) => {
            ep.ids.push(id);
            for p in holder_pids {
                if !ep.holder_pids.contains(p) {
                    ep.holder_pids.push(*p);
                }
                if !ep.all_pids.contains(p) {
                    ep.all_pids.push(*p);
                }
            }
        }
        None => {
            port.episode = Some(Box::new(Episode {
                start_ms: first_ms,
                ids: vec![id],
                holder_pids: holder_pids.to_vec(),
                all_pids: holder_pids.to_vec(),
            }));
        }
    }
}

fn push_open(port: &mut PortState, cap: usize, c: OpenClaim) {
    // Lost releases would let open claims pile up: keep the newest.
    if port.open.len() >= cap {
        port.open.remove(0);
    }
    port.open.push(c);
}

fn same_socket(c: &OpenClaim, netns: Option<u64>, cookie: Option<u64>, pid: u32) -> bool {
    match (c.cookie, cookie) {
        (Some(a), Some(b)) => a == b,
        _ => c.pid == pid && c.netns == netns,
    }
}

fn take_open(
    port: &mut PortState,
    netns: Option<u64>,
    cookie: Option<u64>,
    pid: Option<u32>,
) -> Option<OpenClaim> {
    let i = port
        .open
        .iter()
        .position(|c| match (c.cookie, cookie, pid) {
            (Some(a), Some(b), _) => a == b,
            (_, _, Some(p)) => c.pid == p && (c.netns == netns || netns.is_none()),
            // No cookie, no process: the oldest claim in that netns.
            (_, _, None) => c.netns == netns,
        })?;
    Some(port.open.remove(i))
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

/// "10:04:01.100": times inside a report whose window gives the date.
pub(super) fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%H:%M:%S%.3f").to_string())
}

pub(super) fn clock_str(ts: &str) -> String {
    crate::journal::reader::parse_ms(ts).map_or_else(|| ts.to_string(), clock)
}

/// How renderers print a time: the clock alone when the whole window is
/// one UTC day (the header gives the date), else date and clock.
#[derive(Clone, Copy, Debug)]
pub struct TimeFmt {
    pub one_day: bool,
}

impl TimeFmt {
    pub fn of(r: &Report) -> TimeFmt {
        let day = |t: &Option<String>| t.as_deref().map(|s| s.get(..10).unwrap_or(s).to_string());
        let first = day(&r.window.since).or_else(|| day(&r.window.first_record));
        let end = day(&r.window.end);
        TimeFmt {
            one_day: first.is_some() && first == end,
        }
    }

    pub fn at(self, ts: &str) -> String {
        match chrono::DateTime::parse_from_rfc3339(ts) {
            Ok(t) => {
                let t = t.with_timezone(&chrono::Utc);
                if self.one_day {
                    t.format("%H:%M:%S%.3f").to_string()
                } else {
                    t.format("%Y-%m-%d %H:%M:%S%.3f").to_string()
                }
            }
            Err(_) => ts.to_string(),
        }
    }

    /// Date and clock, always.
    pub fn full(ts: &str) -> String {
        TimeFmt { one_day: false }.at(ts)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::journal::reader::MemoryReader;
    use std::io::Cursor;

    pub(crate) fn report_of(text: &str, filter: Filter, limits: Limits) -> Report {
        let mut r = MemoryReader::new(vec![(
            "demo.jsonl".to_string(),
            Cursor::new(text.as_bytes().to_vec()),
        )]);
        let mut agg = Aggregator::new(filter, limits);
        agg.sync_files(&r.stats);
        while let Some(rec) = r.next_record().unwrap() {
            agg.push(rec);
        }
        agg.finish(&r.stats)
    }

    #[test]
    fn an_intent_without_an_outcome_is_an_unfinished_reaping() {
        let intent = |pid: u32, ts: &str| {
            format!(
                r#"{{"v":1,"ts":"{ts}","host":"h","source":"proc","kind":"reaping","proto":"tcp","port":8080,"target":{{"pid":{pid},"comm":"srv","started_at":"2026-11-30T10:00:00Z"}},"verdict":{{"decision":"reap","reasons":["r"]}},"outcome":"in_progress"}}"#
            )
        };
        let text = [
            intent(7, "2026-11-30T12:00:00.000Z"),
            // pid 8's intent is followed by its outcome: finished.
            intent(8, "2026-11-30T12:00:01.000Z"),
            r#"{"v":1,"ts":"2026-11-30T12:00:02.000Z","host":"h","source":"proc","kind":"reaping","proto":"tcp","port":8080,"target":{"pid":8,"comm":"srv","started_at":"2026-11-30T10:00:00Z"},"verdict":{"decision":"reap","reasons":["r"]},"signals":[{"pid":8,"signal":"SIGTERM","ts":"2026-11-30T12:00:01.500Z"}],"outcome":"freed"}"#.to_string(),
        ]
        .join("\n");
        let r = report_of(&text, Filter::default(), Limits::default());
        assert_eq!(r.summary.unfinished.len(), 1, "{:?}", r.summary.unfinished);
        assert_eq!(r.summary.unfinished[0].target.pid, 7);
        assert_eq!(r.summary.unfinished[0].outcome, Outcome::InProgress);
        // Intents are not reapings; the outcome is.
        assert_eq!(r.summary.reapings, 1);
        let rows = super::super::view::summary_rows(&r);
        let row = rows
            .iter()
            .find(|(k, _)| *k == "Unfinished reapings")
            .unwrap();
        assert!(
            row.1
                .starts_with("pid 7 (srv) on tcp/8080 on h: started at"),
            "{}",
            row.1
        );
        assert!(row.1.contains("never finished"), "{}", row.1);
    }

    fn demo() -> Report {
        report_of(
            super::super::DEMO_JOURNAL,
            Filter::default(),
            Limits::default(),
        )
    }

    #[test]
    fn the_demo_story_adds_up() {
        let r = demo();
        assert_eq!(r.summary.conflicts, 1);
        assert_eq!(r.summary.failed_binds, 3);
        assert_eq!(r.summary.ports_involved, 1);
        assert_eq!(r.summary.reapings_by_outcome.get("freed"), Some(&1));
        let c = &r.conflicts[0];
        assert_eq!(c.resolution, "reaped");
        assert_eq!(c.tried.comm, "platform-server");
        assert_eq!(c.holders[0].ppid, Some(1));
        assert_eq!(c.done.len(), 1);
        assert!(c.rebound_by.is_some());
        assert!(c.blocked_ms > 0);
        assert_eq!(r.summary.blocked_ms, c.blocked_ms);
        let p = &r.ports[0];
        assert_eq!(p.port, 8080);
        // Two claims: the orphan's (released) and the new server's (open).
        assert_eq!(p.bars.len(), 2);
        assert!(!p.bars[0].open && p.bars[1].open);
        assert_eq!(p.held_at_end.len(), 1);
        // Every entry carries its evidence.
        assert!(p
            .timeline
            .iter()
            .all(|e| e.evidence.starts_with("demo.jsonl:")));
    }

    #[test]
    fn unresolved_conflicts_last_until_the_window_end() {
        let text = super::super::DEMO_JOURNAL
            .lines()
            .filter(|l| {
                !l.contains("\"kind\":\"release\"")
                    && !l.contains("\"kind\":\"reaping\"")
                    && !l.contains(r#""process":{"pid":5120"#)
            })
            .collect::<Vec<_>>()
            .join("\n");
        let r = report_of(&text, Filter::default(), Limits::default());
        let c = &r.conflicts[0];
        assert_eq!(c.resolution, "open");
        assert_eq!(r.summary.still_blocked, 1);
        let end = crate::journal::reader::parse_ms(r.window.end.as_ref().unwrap()).unwrap();
        let first = crate::journal::reader::parse_ms(&c.first).unwrap();
        assert_eq!(c.blocked_ms, (end - first) as u64);
    }

    #[test]
    fn timelines_are_capped_and_say_so() {
        let mut lines = Vec::new();
        for i in 0..50u32 {
            let ts = rfc(1_715_680_800_000 + i as i64 * 1000);
            lines.push(format!(r#"{{"v":1,"ts":"{ts}","host":"h","source":"cgroup","kind":"claim","proto":"tcp","port":9000,"process":{{"pid":{i},"comm":"x"}}}}"#));
            lines.push(format!(r#"{{"v":1,"ts":"{ts}","host":"h","source":"cgroup","kind":"release","proto":"tcp","port":9000,"process":{{"pid":{i},"comm":"x"}}}}"#));
        }
        let limits = Limits {
            timeline: 10,
            ..Limits::default()
        };
        let r = report_of(
            &lines.join("\n"),
            Filter {
                port: Some(9000),
                ..Filter::default()
            },
            limits,
        );
        let p = &r.ports[0];
        assert_eq!(p.timeline.len(), 10);
        assert_eq!(p.timeline_dropped, 90);
        assert_eq!(p.counts.claims, 50);
        // Without --port the port is quiet: counted, not listed.
        let r = report_of(&lines.join("\n"), Filter::default(), Limits::default());
        assert!(r.ports.is_empty());
        assert_eq!(r.quiet_ports.total, 1);
        assert_eq!(r.quiet_ports.claims, 50);
    }

    #[test]
    fn a_port_turning_interesting_keeps_its_open_claims_and_says_what_it_lost() {
        // An earlier claim and release on :8080, before the demo's story.
        let early = r#"{"v":1,"ts":"2024-05-14T09:59:00.000Z","host":"runner-7","source":"cgroup","kind":"claim","netns":4026531840,"proto":"tcp","addr":"0.0.0.0","port":8080,"process":{"pid":4000,"comm":"platform-server"}}
{"v":1,"ts":"2024-05-14T09:59:30.000Z","host":"runner-7","source":"cgroup","kind":"release","netns":4026531840,"proto":"tcp","addr":"0.0.0.0","port":8080,"process":{"pid":4000,"comm":"platform-server"}}"#;
        let r = report_of(
            &format!("{early}\n{}", super::super::DEMO_JOURNAL),
            Filter::default(),
            Limits::default(),
        );
        let p = &r.ports[0];
        assert_eq!(p.counts.claims, 3);
        // The orphan's claim and listen were rebuilt; the early pair is gone.
        assert_eq!(p.timeline_dropped, 2);
        assert_eq!(p.timeline[0].event, "claim");
        assert_eq!(p.timeline[0].pid, 4242);
        assert_eq!(p.timeline[1].event, "listen");
        // With --port, the same port keeps everything.
        let r = report_of(
            &format!("{early}\n{}", super::super::DEMO_JOURNAL),
            Filter {
                port: Some(8080),
                ..Filter::default()
            },
            Limits::default(),
        );
        assert_eq!(r.ports[0].timeline_dropped, 0);
        assert_eq!(r.ports[0].timeline[0].pid, 4000);
    }

    #[test]
    fn filters_by_host_port_and_time() {
        let all = demo();
        let none = report_of(
            super::super::DEMO_JOURNAL,
            Filter {
                host: Some("elsewhere".into()),
                ..Filter::default()
            },
            Limits::default(),
        );
        assert_eq!(none.summary.records, 0);
        let other = report_of(
            super::super::DEMO_JOURNAL,
            Filter {
                port: Some(9),
                ..Filter::default()
            },
            Limits::default(),
        );
        assert_eq!(other.summary.conflicts, 0);
        assert!(other.summary.records < all.summary.records);
        let first = crate::journal::reader::parse_ms(&all.conflicts[0].first).unwrap();
        let late = report_of(
            super::super::DEMO_JOURNAL,
            Filter {
                since_ms: Some(first + 60_000),
                ..Filter::default()
            },
            Limits::default(),
        );
        assert_eq!(late.summary.conflicts, 0);
    }
}

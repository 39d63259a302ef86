//! journal -> **reader** -> report.
//!
//! Reading journals back, streaming: one record in memory per input at a
//! time, whatever the size of the files.
//!
//! - Several inputs (several hosts' journals) merge by `ts`; each record
//!   keeps its own `host`.
//! - Rotation: given `reaper.jsonl`, its rotated siblings `reaper.jsonl.N`
//!   (any number of digits; a higher N is older, as the writer and logrotate
//!   number them) are read first, oldest first, then the file itself. A path
//!   that already ends in `.N` is read alone. Compressed rotations (`.gz`) are
//!   not read.
//! - Damage is counted, never fatal: a torn last line (a crash mid-write) is
//!   `torn_lines`; a torn line that a restarted writer appended to is split
//!   and the record after the tear is kept; a record of a newer schema
//!   (`v` above [`SCHEMA_VERSION`]) or an unknown `kind` is counted and
//!   skipped; anything else that does not parse is garbage, counted with
//!   its file:line in a bounded list of examples.
//!
//! The line-level work is pure functions over `impl BufRead` and byte
//! slices ([`read_line_bounded`], [`classify_line`], [`RecordStream`]), so
//! it can be fuzzed without files.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::fs::File;
use std::io::{self, BufRead, BufReader, Read};
use std::path::{Path, PathBuf};

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};

use super::{
    Action, Body, Endpoint, Family, HolderVerdict, Mode, Outcome, ProcessRef, Proto, Record,
    SignalRecord, VerdictRecord, SCHEMA_VERSION,
};

/// A longer line is garbage: bounded memory even on a file that is not a
/// journal at all (a binary blob with no newline).
pub const MAX_LINE_BYTES: usize = 1 << 20;

/// How many bad lines are kept as examples (the counts stay exact).
pub const MAX_EXAMPLES: usize = 20;

/// The `kind`s this version knows; a v1 record of another kind is from a
/// newer writer that added one, not garbage.
const KNOWN_KINDS: &[&str] = &[
    "claim",
    "listen",
    "release",
    "conflict",
    "reaping",
    "loss",
    "start",
    "stop",
    "mode",
    "gap",
    "reconcile",
    "claims_full",
    "churn",
];

/// Where a record came from: an index into [`ReadStats::files`] and a
/// 1-based line number.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct Location {
    pub file: u32,
    pub line: u64,
}

/// A record with its time parsed and its place in the input.
#[derive(Clone, Debug, PartialEq)]
pub struct Located {
    /// Boxed: a record is large, and it moves through the merge.
    pub record: Box<Record>,
    /// `ts` in milliseconds since the Unix epoch.
    pub ms: i64,
    pub at: Location,
}

/// A line that could not be used, for the report's examples.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadLine {
    pub file: String,
    pub line: u64,
    pub problem: String,
}

/// One file read.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileRead {
    pub path: String,
    pub lines: u64,
    pub records: u64,
}

/// What the reader saw, damage included.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReadStats {
    pub files: Vec<FileRead>,
    pub records: u64,
    pub torn_lines: u64,
    pub unknown_version: u64,
    pub unknown_kind: u64,
    pub garbage_lines: u64,
    /// Records older than one already returned (a clock step, or a file
    /// that is not sorted): used where they fall, counted here.
    pub out_of_order: u64,
    pub examples: Vec<BadLine>,
}

impl ReadStats {
    /// "path:line" of a location, for evidence.
    pub fn place(&self, at: Location) -> String {
        let path = self
            .files
            .get(at.file as usize)
            .map(|f| f.path.as_str())
            .unwrap_or("?");
        format!("{path}:{}", at.line)
    }

    fn bad(&mut self, at: Location, problem: String) {
        if self.examples.len() < MAX_EXAMPLES {
            let file = self
                .files
                .get(at.file as usize)
                .map(|f| f.path.clone())
                .unwrap_or_default();
            self.examples.push(BadLine {
                file,
                line: at.line,
                problem,
            });
        }
    }
}

/// What one line turned out to be.
#[derive(Debug, PartialEq)]
pub enum Line {
    Record(Box<Record>, i64),
    Blank,
    /// An unterminated last line that does not parse: a crash mid-write.
    Torn,
    /// A torn line with a later record appended to it: the tear is counted,
    /// the record after it is kept.
    TornThen(Box<Record>, i64),
    UnknownVersion(u64),
    UnknownKind(String),
    Garbage(String),
}

#[derive(Deserialize)]
struct Probe {
    v: Option<u64>,
    kind: Option<String>,
}

/// Classifies one line (without its newline). `terminated` is false for a
/// last line with no newline after it. Pure: this is the fuzzing target.
pub fn classify_line(bytes: &[u8], terminated: bool) -> Line {
    let trimmed = trim_ascii(bytes);
    if trimmed.is_empty() {
        return Line::Blank;
    }
    match parse_record(trimmed) {
        Ok(line) => line,
        Err(err) => {
            if !terminated {
                return Line::Torn;
            }
            // A writer restarted after a crash appends to the torn line: the
            // record starts at the last `{"v":` (the writer puts `v` first).
            if let Some(pos) = rfind(trimmed, br#"{"v":"#).filter(|&p| p > 0) {
                if let Ok(Line::Record(r, ms)) = parse_record(&trimmed[pos..]) {
                    return Line::TornThen(r, ms);
                }
            }
            err
        }
    }
}

/// Every field any record kind has, flat: serde's derive for `Record`
/// (flatten + internal tag) buffers each line into an intermediate tree
/// first, which made parsing most of a report's time. This reads the line
/// once; [`Wire::into_record`] checks what each kind requires. Anything it
/// rejects goes through the derive, which decides (and words the error).
#[derive(Deserialize)]
struct Wire {
    v: u32,
    ts: String,
    host: String,
    source: String,
    kind: String,
    netns: Option<u64>,
    proto: Option<Proto>,
    family: Option<Family>,
    addr: Option<String>,
    port: Option<u16>,
    process: Option<ProcessRef>,
    cookie: Option<u64>,
    requested_port: Option<u16>,
    job: Option<crate::vocab::Job>,
    job_via: Option<String>,
    held_ms: Option<u64>,
    tried: Option<ProcessRef>,
    errno: Option<String>,
    errno_exact: Option<bool>,
    holders: Option<Vec<ProcessRef>>,
    held_since: Option<String>,
    count: Option<u64>,
    first: Option<String>,
    last: Option<String>,
    verdict: Option<VerdictRecord>,
    verdicts: Option<Vec<HolderVerdict>>,
    action: Option<Action>,
    target: Option<ProcessRef>,
    signals: Option<Vec<SignalRecord>>,
    outcome: Option<Outcome>,
    port_free_at: Option<String>,
    elapsed_ms: Option<u64>,
    dry_run: Option<bool>,
    stop_signal: Option<String>,
    container: Option<super::ContainerRecord>,
    lost: Option<u64>,
    version: Option<String>,
    tier: Option<String>,
    pid: Option<u32>,
    #[serde(default)]
    reserved_ports: Option<String>,
    reason: Option<String>,
    mode: Option<Mode>,
    after: Option<String>,
    added: Option<u64>,
    removed: Option<u64>,
    unstored: Option<u64>,
    capacity: Option<u64>,
    held_ms_min: Option<u64>,
    held_ms_max: Option<u64>,
}

impl Wire {
    /// Where a bind record happened.
    fn at(&self) -> Option<Endpoint> {
        Some(Endpoint {
            netns: self.netns,
            proto: self.proto?,
            family: self.family,
            addr: self.addr.clone(),
            port: self.port?,
        })
    }

    fn into_record(mut self) -> Option<Record> {
        let (v, ts, host, source) = (
            self.v,
            std::mem::take(&mut self.ts),
            std::mem::take(&mut self.host),
            std::mem::take(&mut self.source),
        );
        let body = match self.kind.as_str() {
            "claim" | "listen" | "release" | "conflict" | "reaping" | "churn" => self.bind_body(),
            _ => self.daemon_body(),
        }?;
        Some(Record {
            v,
            ts,
            host,
            source: source.into(),
            body,
        })
    }

    /// The body of a record about one (netns, proto, port).
    fn bind_body(self) -> Option<Body> {
        let w = self;
        Some(match w.kind.as_str() {
            "claim" => Body::Claim {
                at: w.at()?,
                process: w.process?,
                cookie: w.cookie,
                requested_port: w.requested_port,
                job: w.job,
                job_via: w.job_via,
            },
            "listen" => Body::Listen {
                at: w.at()?,
                process: w.process?,
                cookie: w.cookie,
            },
            "release" => Body::Release {
                at: w.at()?,
                process: w.process,
                held_ms: w.held_ms,
                cookie: w.cookie,
            },
            "conflict" => Body::Conflict {
                at: w.at()?,
                tried: w.tried?,
                errno: w.errno?,
                errno_exact: w.errno_exact?,
                holders: w.holders?,
                held_since: w.held_since,
                count: w.count?,
                first: w.first?,
                last: w.last?,
                verdict: w.verdict,
                verdicts: w.verdicts.unwrap_or_default(),
                action: w.action?,
            },
            "reaping" => Body::Reaping {
                at: w.at()?,
                target: w.target?,
                verdict: w.verdict?,
                signals: w.signals.unwrap_or_default(),
                outcome: w.outcome?,
                port_free_at: w.port_free_at,
                elapsed_ms: w.elapsed_ms,
                dry_run: w.dry_run.unwrap_or_default(),
                stop_signal: w.stop_signal,
                container: w.container,
            },
            "churn" => Body::Churn {
                at: w.at()?,
                process: w.process?,
                count: w.count?,
                first: w.first?,
                last: w.last?,
                held_ms_min: w.held_ms_min?,
                held_ms_max: w.held_ms_max?,
            },
            _ => return None,
        })
    }

    /// The body of a record about the daemon itself.
    fn daemon_body(self) -> Option<Body> {
        let w = self;
        Some(match w.kind.as_str() {
            "loss" => Body::Loss { lost: w.lost? },
            "start" => Body::Start {
                version: w.version?,
                tier: w.tier?,
                pid: w.pid,
                reserved_ports: w.reserved_ports,
            },
            "stop" => Body::Stop { reason: w.reason? },
            "mode" => Body::Mode {
                mode: w.mode?,
                reason: w.reason?,
            },
            "gap" => Body::Gap { after: w.after? },
            "reconcile" => Body::Reconcile {
                added: w.added?,
                removed: w.removed?,
            },
            "claims_full" => Body::ClaimsFull {
                unstored: w.unstored?,
                capacity: w.capacity?,
            },
            _ => return None,
        })
    }
}

/// A line to a record: the flat fast path, else serde's derive.
fn decode(bytes: &[u8]) -> serde_json::Result<Record> {
    if let Some(r) = serde_json::from_slice::<Wire>(bytes)
        .ok()
        .and_then(Wire::into_record)
    {
        return Ok(r);
    }
    serde_json::from_slice::<Record>(bytes)
}

fn parse_record(bytes: &[u8]) -> std::result::Result<Line, Line> {
    match decode(bytes) {
        Ok(r) => {
            if u64::from(r.v) > u64::from(SCHEMA_VERSION) {
                return Ok(Line::UnknownVersion(r.v.into()));
            }
            if r.v == 0 {
                return Err(Line::Garbage("version 0 is not a journal version".into()));
            }
            match parse_ms(&r.ts) {
                Some(ms) => Ok(Line::Record(Box::new(r), ms)),
                None => Err(Line::Garbage(format!("ts '{}' is not RFC 3339", r.ts))),
            }
        }
        Err(e) => {
            // Why it failed decides how it is counted: a newer schema or a
            // new kind is expected from a newer writer; the rest is damage.
            if let Ok(p) = serde_json::from_slice::<Probe>(bytes) {
                match (p.v, p.kind) {
                    (Some(v), _) if v > u64::from(SCHEMA_VERSION) => {
                        return Err(Line::UnknownVersion(v))
                    }
                    (Some(_), Some(kind)) if !KNOWN_KINDS.contains(&kind.as_str()) => {
                        return Err(Line::UnknownKind(kind))
                    }
                    _ => {}
                }
            }
            Err(Line::Garbage(short(&e.to_string())))
        }
    }
}

/// Parses an RFC 3339 time to milliseconds since the epoch.
pub fn parse_ms(ts: &str) -> Option<i64> {
    // Every record has a time or three: the writer's own form
    // ("2024-05-14T10:04:12.405Z") is read by hand, anything else by chrono.
    fast_ms(ts.as_bytes()).or_else(|| {
        chrono::DateTime::parse_from_rfc3339(ts)
            .ok()
            .map(|t| t.timestamp_millis())
    })
}

fn fast_ms(b: &[u8]) -> Option<i64> {
    if b.len() != 24
        || b[4] != b'-'
        || b[7] != b'-'
        || b[10] != b'T'
        || b[13] != b':'
        || b[16] != b':'
        || b[19] != b'.'
        || b[23] != b'Z'
    {
        return None;
    }
    let num = |r: std::ops::Range<usize>| -> Option<i64> {
        b[r].iter().try_fold(0i64, |acc, &c| {
            c.is_ascii_digit().then(|| acc * 10 + i64::from(c - b'0'))
        })
    };
    let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
    let (h, mi, s, ms) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..23)?);
    if !(1..=12).contains(&mo) || d < 1 || d > days_in_month(y, mo) || h > 23 || mi > 59 || s > 59 {
        // Leap seconds and anything odd: chrono decides.
        return None;
    }
    // Days from the civil date (proleptic Gregorian, March-based year).
    let (y2, m2) = if mo <= 2 {
        (y - 1, mo + 9)
    } else {
        (y, mo - 3)
    };
    let era = y2.div_euclid(400);
    let yoe = y2 - era * 400;
    let doy = (153 * m2 + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    let days = era * 146_097 + doe - 719_468;
    Some(((days * 24 + h) * 60 + mi) * 60_000 + s * 1000 + ms)
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if (y % 4 == 0 && y % 100 != 0) || y % 400 == 0 => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

fn short(s: &str) -> String {
    const MAX: usize = 160;
    if s.len() <= MAX {
        return s.to_string();
    }
    let mut end = MAX;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &s[..end])
}

fn trim_ascii(b: &[u8]) -> &[u8] {
    let start = b
        .iter()
        .position(|c| !c.is_ascii_whitespace())
        .unwrap_or(b.len());
    let end = b
        .iter()
        .rposition(|c| !c.is_ascii_whitespace())
        .map_or(start, |e| e + 1);
    &b[start..end]
}

fn rfind(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).rposition(|w| w == needle)
}

/// How a line read by [`read_line_bounded`] ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct LineEnd {
    /// A newline ended it (false: the end of the input did).
    pub terminated: bool,
    /// It was longer than the limit: `buf` holds only its start.
    pub too_long: bool,
}

/// Reads one line into `buf` (cleared first, newline not included), keeping
/// at most `max` bytes of it and skipping the rest. `None` at the end.
pub fn read_line_bounded<R: BufRead>(
    src: &mut R,
    buf: &mut Vec<u8>,
    max: usize,
) -> io::Result<Option<LineEnd>> {
    buf.clear();
    // read_until finds the newline with the standard library's memchr: the
    // byte scan is a good part of reading a big journal.
    let n = Read::take(&mut *src, max as u64 + 1).read_until(b'\n', buf)?;
    if n == 0 {
        return Ok(None);
    }
    if buf.last() == Some(&b'\n') {
        buf.pop();
        return Ok(Some(LineEnd {
            terminated: true,
            too_long: false,
        }));
    }
    if buf.len() <= max {
        // The input ended without a newline.
        return Ok(Some(LineEnd {
            terminated: false,
            too_long: false,
        }));
    }
    buf.truncate(max);
    // Skip the rest of the long line (rare: a plain loop will do).
    loop {
        let avail = match src.fill_buf() {
            Ok(a) => a,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
        };
        if avail.is_empty() {
            return Ok(Some(LineEnd {
                terminated: false,
                too_long: true,
            }));
        }
        match avail.iter().position(|&c| c == b'\n') {
            Some(i) => {
                src.consume(i + 1);
                return Ok(Some(LineEnd {
                    terminated: true,
                    too_long: true,
                }));
            }
            None => {
                let n = avail.len();
                src.consume(n);
            }
        }
    }
}

/// The records of one input, in file order, with damage counted into a
/// [`ReadStats`].
pub struct RecordStream<R> {
    src: R,
    file: u32,
    line: u64,
    buf: Vec<u8>,
}

impl<R: BufRead> RecordStream<R> {
    /// `file` is the index of this input in `stats.files`.
    pub fn new(src: R, file: u32) -> RecordStream<R> {
        RecordStream {
            src,
            file,
            line: 0,
            buf: Vec::new(),
        }
    }

    /// The next usable record, or `None` at the end of the input.
    pub fn next_record(&mut self, stats: &mut ReadStats) -> io::Result<Option<Located>> {
        loop {
            let Some(end) = read_line_bounded(&mut self.src, &mut self.buf, MAX_LINE_BYTES)? else {
                return Ok(None);
            };
            self.line += 1;
            let at = Location {
                file: self.file,
                line: self.line,
            };
            if let Some(f) = stats.files.get_mut(self.file as usize) {
                f.lines += 1;
            }
            if end.too_long {
                stats.garbage_lines += 1;
                stats.bad(at, format!("line longer than {MAX_LINE_BYTES} bytes"));
                continue;
            }
            let (record, ms) = match classify_line(&self.buf, end.terminated) {
                Line::Record(r, ms) => (r, ms),
                Line::TornThen(r, ms) => {
                    stats.torn_lines += 1;
                    stats.bad(
                        at,
                        "torn line (a crash mid-write); the record appended after it was kept"
                            .into(),
                    );
                    (r, ms)
                }
                Line::Blank => continue,
                Line::Torn => {
                    stats.torn_lines += 1;
                    stats.bad(at, "torn last line (a crash mid-write)".into());
                    continue;
                }
                Line::UnknownVersion(v) => {
                    stats.unknown_version += 1;
                    stats.bad(at, format!("record version {v} is newer than this reaper reads ({SCHEMA_VERSION}): skipped; upgrade reaper to read it"));
                    continue;
                }
                Line::UnknownKind(k) => {
                    stats.unknown_kind += 1;
                    stats.bad(
                        at,
                        format!("unknown record kind '{k}' (from a newer reaper?): skipped"),
                    );
                    continue;
                }
                Line::Garbage(why) => {
                    stats.garbage_lines += 1;
                    stats.bad(at, format!("not a journal record: {why}"));
                    continue;
                }
            };
            stats.records += 1;
            if let Some(f) = stats.files.get_mut(self.file as usize) {
                f.records += 1;
            }
            return Ok(Some(Located { record, ms, at }));
        }
    }
}

/// The files to read for one `--journal PATH`, oldest first: its rotated
/// siblings `PATH.N` (highest N first), then PATH itself if it exists.
/// A PATH ending in `.N` is read alone. Fails if nothing exists.
pub fn rotated_chain(path: &Path) -> io::Result<Vec<PathBuf>> {
    let name = match path.file_name().and_then(|n| n.to_str()) {
        Some(n) => n.to_string(),
        None => {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a file path",
            ))
        }
    };
    if rotation_number(&name).is_some() {
        std::fs::metadata(path)?;
        return Ok(vec![path.to_path_buf()]);
    }
    let parent = path.parent().filter(|p| !p.as_os_str().is_empty());
    let dir = parent.unwrap_or(Path::new("."));
    let prefix = format!("{name}.");
    let mut rotated: Vec<(u64, PathBuf)> = Vec::new();
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            for entry in entries.flatten() {
                let Some(n) = entry.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                if let Some(num) = n.strip_prefix(&prefix).and_then(|s| {
                    s.parse::<u64>()
                        .ok()
                        .filter(|_| s.bytes().all(|b| b.is_ascii_digit()))
                }) {
                    let p = match parent {
                        Some(par) => par.join(&n),
                        None => PathBuf::from(&n),
                    };
                    rotated.push((num, p));
                }
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    rotated.sort_by_key(|(n, _)| Reverse(*n));
    let mut files: Vec<PathBuf> = rotated.into_iter().map(|(_, p)| p).collect();
    match std::fs::metadata(path) {
        Ok(_) => files.push(path.to_path_buf()),
        Err(e) if files.is_empty() => return Err(e),
        Err(_) => {}
    }
    Ok(files)
}

fn rotation_number(name: &str) -> Option<u64> {
    let (_, suffix) = name.rsplit_once('.')?;
    if suffix.is_empty() || !suffix.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    suffix.parse().ok()
}

/// One input of a merge: anything that yields records in its own order.
pub trait Input {
    fn next_located(&mut self, stats: &mut ReadStats) -> Result<Option<Located>>;
}

impl<R: BufRead> Input for RecordStream<R> {
    fn next_located(&mut self, stats: &mut ReadStats) -> Result<Option<Located>> {
        let file = self.file;
        self.next_record(stats).with_context(|| {
            let path = stats
                .files
                .get(file as usize)
                .map(|f| f.path.as_str())
                .unwrap_or("?");
            format!("reading journal {path}")
        })
    }
}

/// One `--journal PATH`: its files, all opened before the first is read
/// (an open file follows its inode through the writer's renames, so a
/// rotation while the report reads loses nothing and fails nothing), read
/// one after the other.
pub struct Chain {
    files: std::vec::IntoIter<(u32, File)>,
    current: Option<RecordStream<BufReader<File>>>,
}

impl Input for Chain {
    fn next_located(&mut self, stats: &mut ReadStats) -> Result<Option<Located>> {
        loop {
            if let Some(stream) = &mut self.current {
                match stream.next_located(stats)? {
                    Some(r) => return Ok(Some(r)),
                    None => self.current = None,
                }
            }
            let Some((idx, f)) = self.files.next() else {
                return Ok(None);
            };
            self.current = Some(RecordStream::new(
                BufReader::with_capacity(256 * 1024, f),
                idx,
            ));
        }
    }
}

/// How often a chain is listed again when a file vanished between the
/// listing and its open (the writer rotated in between).
const CHAIN_TRIES: usize = 10;

/// Lists `path`'s chain and opens every file of it. A file that vanished
/// in between (rotated away, or renamed to the next number) means the
/// listing is stale: list and open again.
fn open_chain(path: &Path) -> Result<Vec<(PathBuf, File)>, crate::error::Error> {
    for _ in 0..CHAIN_TRIES {
        let files = rotated_chain(path).map_err(|e| {
            if e.kind() == io::ErrorKind::NotFound {
                crate::error::bad_input(format!(
                    "no journal at {} (nor rotated files {0}.N): check the path, or try --demo",
                    path.display()
                ))
            } else {
                anyhow::Error::new(e)
                    .context(format!("listing journal {}", path.display()))
                    .into()
            }
        })?;
        let mut opened = Vec::with_capacity(files.len());
        let mut stale = false;
        for f in files {
            match File::open(&f) {
                Ok(h) => opened.push((f, h)),
                Err(e) if e.kind() == io::ErrorKind::NotFound => {
                    stale = true;
                    break;
                }
                Err(e) => {
                    return Err(anyhow::Error::new(e)
                        .context(format!("opening journal {}", f.display()))
                        .into())
                }
            }
        }
        if !stale {
            return Ok(opened);
        }
    }
    Err(anyhow::anyhow!(
        "journal {} kept rotating while its files were opened ({CHAIN_TRIES} tries): try again",
        path.display()
    )
    .into())
}

/// Several inputs merged by time, holding one record per input.
pub struct Merge<I> {
    inputs: Vec<I>,
    /// (time, input, sequence) of each input's next record: the sequence
    /// keeps equal times in input order, so the merge is deterministic.
    heap: BinaryHeap<Reverse<(i64, usize, u64)>>,
    pending: Vec<Option<Located>>,
    primed: bool,
    seq: u64,
    last_ms: Option<i64>,
    pub stats: ReadStats,
}

/// The files behind `reaper report --journal ...`.
pub type JournalReader = Merge<Chain>;

/// In-memory inputs: tests, fuzzing, the built-in demo.
pub type MemoryReader<R> = Merge<RecordStream<R>>;

impl JournalReader {
    /// Opens the inputs: each path with its rotated siblings (see the
    /// module doc). A file given twice (or as a sibling of another path) is
    /// read once. A path with no file at all is bad input naming it.
    pub fn open(paths: &[PathBuf]) -> Result<JournalReader, crate::error::Error> {
        let mut stats = ReadStats::default();
        let mut seen = std::collections::HashSet::new();
        let mut chains = Vec::new();
        for path in paths {
            let mut chain = Vec::new();
            for (f, handle) in open_chain(path)? {
                // The same file twice (named twice, or renamed between two
                // listings) is read once: by its inode, not its name.
                let key = handle
                    .metadata()
                    .map(|m| {
                        use std::os::unix::fs::MetadataExt;
                        (m.dev(), m.ino())
                    })
                    .with_context(|| format!("reading journal {}", f.display()))?;
                if !seen.insert(key) {
                    continue;
                }
                let idx = stats.files.len() as u32;
                stats.files.push(FileRead {
                    path: f.display().to_string(),
                    ..FileRead::default()
                });
                chain.push((idx, handle));
            }
            chains.push(Chain {
                files: chain.into_iter(),
                current: None,
            });
        }
        Ok(Merge::from_inputs(chains, stats))
    }
}

impl<R: BufRead> MemoryReader<R> {
    /// Each `(name, reader)` is one input; `name` is what evidence shows.
    pub fn new(inputs: Vec<(String, R)>) -> MemoryReader<R> {
        let mut stats = ReadStats::default();
        let mut streams = Vec::new();
        for (i, (name, r)) in inputs.into_iter().enumerate() {
            stats.files.push(FileRead {
                path: name,
                ..FileRead::default()
            });
            streams.push(RecordStream::new(r, i as u32));
        }
        Merge::from_inputs(streams, stats)
    }
}

impl<I: Input> Merge<I> {
    fn from_inputs(inputs: Vec<I>, stats: ReadStats) -> Merge<I> {
        let n = inputs.len();
        Merge {
            inputs,
            heap: BinaryHeap::with_capacity(n),
            pending: (0..n).map(|_| None).collect(),
            primed: false,
            seq: 0,
            last_ms: None,
            stats,
        }
    }

    fn refill(&mut self, i: usize) -> Result<()> {
        if let Some(r) = self.inputs[i].next_located(&mut self.stats)? {
            self.heap.push(Reverse((r.ms, i, self.seq)));
            self.seq += 1;
            self.pending[i] = Some(r);
        }
        Ok(())
    }

    /// The next record of all inputs by time.
    pub fn next_record(&mut self) -> Result<Option<Located>> {
        crate::progress::RECORDS_READ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if !self.primed {
            self.primed = true;
            for i in 0..self.inputs.len() {
                self.refill(i)?;
            }
        }
        let Some(Reverse((_, i, _))) = self.heap.pop() else {
            return Ok(None);
        };
        let r = self.pending[i].take().expect("a queued input has a record");
        self.refill(i)?;
        if self.last_ms.is_some_and(|last| r.ms < last) {
            self.stats.out_of_order += 1;
        } else {
            self.last_ms = Some(r.ms);
        }
        Ok(Some(r))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Cursor;

    fn rec(ts: &str, host: &str, lost: u64) -> String {
        format!(
            r#"{{"v":1,"ts":"{ts}","host":"{host}","source":"cgroup","kind":"loss","lost":{lost}}}"#
        )
    }

    fn read_all(inputs: Vec<(&str, String)>) -> (Vec<Located>, ReadStats) {
        let mut r = MemoryReader::new(
            inputs
                .into_iter()
                .map(|(n, s)| (n.to_string(), Cursor::new(s.into_bytes())))
                .collect(),
        );
        let mut out = Vec::new();
        while let Some(x) = r.next_record().unwrap() {
            out.push(x);
        }
        (out, r.stats)
    }

    #[test]
    fn torn_last_line_is_counted_not_fatal() {
        let text = format!(
            "{}\n{}\n{{\"v\":1,\"ts\":\"2024-05",
            rec("2024-05-14T10:00:00.000Z", "a", 1),
            rec("2024-05-14T10:00:01.000Z", "a", 2)
        );
        let (recs, stats) = read_all(vec![("j", text)]);
        assert_eq!(recs.len(), 2);
        assert_eq!(stats.torn_lines, 1);
        assert_eq!(stats.garbage_lines, 0);
        assert_eq!(stats.examples[0].line, 3);
    }

    #[test]
    fn complete_last_line_without_newline_is_a_record() {
        let text = rec("2024-05-14T10:00:00.000Z", "a", 1);
        let (recs, stats) = read_all(vec![("j", text)]);
        assert_eq!(recs.len(), 1);
        assert_eq!(stats.torn_lines, 0);
    }

    #[test]
    fn torn_line_appended_to_keeps_the_later_record() {
        let text = format!(
            "{{\"v\":1,\"ts\":\"2024-05-14T10:00{}\n",
            rec("2024-05-14T10:00:05.000Z", "a", 7)
        );
        let (recs, stats) = read_all(vec![("j", text)]);
        assert_eq!(recs.len(), 1);
        assert_eq!(stats.torn_lines, 1);
        assert!(matches!(
            recs[0].record.body,
            crate::journal::Body::Loss { lost: 7 }
        ));
    }

    #[test]
    fn newer_versions_kinds_and_garbage_are_counted_apart() {
        let text = [
            r#"{"v":2,"ts":"2024-05-14T10:00:00.000Z","host":"a","source":"x","kind":"loss","lost":1}"#,
            r#"{"v":9,"whatever":true}"#,
            r#"{"v":1,"ts":"2024-05-14T10:00:00.000Z","host":"a","source":"x","kind":"teleport"}"#,
            "not json at all",
            "",
            r#"{"v":1,"ts":"yesterday","host":"a","source":"x","kind":"loss","lost":1}"#,
            &rec("2024-05-14T10:00:00.000Z", "a", 3),
        ]
        .join("\n")
            + "\n";
        let (recs, stats) = read_all(vec![("j.jsonl", text)]);
        assert_eq!(recs.len(), 1);
        assert_eq!(stats.unknown_version, 2);
        assert_eq!(stats.unknown_kind, 1);
        assert_eq!(stats.garbage_lines, 2);
        assert_eq!(stats.torn_lines, 0);
        let lines: Vec<u64> = stats.examples.iter().map(|b| b.line).collect();
        assert_eq!(lines, vec![1, 2, 3, 4, 6]);
        assert_eq!(stats.place(recs[0].at), "j.jsonl:7");
    }

    #[test]
    fn the_fast_path_reads_what_the_derive_reads() {
        let fixtures = concat!(env!("CARGO_MANIFEST_DIR"), "/../tests/fixtures/journals");
        let mut texts = vec![crate::report::DEMO_JOURNAL.to_string()];
        for f in [
            "torn.jsonl",
            "fleet/runner-1.jsonl",
            "fleet/runner-2.jsonl",
            "rotated/reaper.jsonl",
            "rotated/reaper.jsonl.1",
        ] {
            texts.push(std::fs::read_to_string(format!("{fixtures}/{f}")).unwrap());
        }
        let mut n = 0;
        for line in texts.iter().flat_map(|t| t.lines()) {
            let derived = serde_json::from_slice::<Record>(line.as_bytes()).ok();
            let fast = serde_json::from_slice::<Wire>(line.as_bytes())
                .ok()
                .and_then(Wire::into_record);
            if let Some(f) = &fast {
                assert_eq!(Some(f), derived.as_ref(), "{line}");
                n += 1;
            }
            // And every record serde writes reads back the same way.
            if let Some(d) = derived {
                let again = serde_json::to_vec(&d).unwrap();
                let fast = serde_json::from_slice::<Wire>(&again)
                    .ok()
                    .and_then(Wire::into_record);
                assert_eq!(fast.as_ref(), Some(&d), "{line}");
            }
        }
        assert!(n > 30, "the fast path read only {n} lines");
    }

    #[test]
    fn fast_times_agree_with_chrono() {
        for ts in [
            "2024-05-14T10:04:12.405Z",
            "1970-01-01T00:00:00.000Z",
            "2000-02-29T23:59:59.999Z",
            "2100-03-01T00:00:00.001Z",
            "1969-12-31T23:59:59.999Z",
        ] {
            let chrono = chrono::DateTime::parse_from_rfc3339(ts)
                .unwrap()
                .timestamp_millis();
            assert_eq!(fast_ms(ts.as_bytes()), Some(chrono), "{ts}");
        }
        for odd in [
            "2023-02-29T00:00:00.000Z",
            "2024-05-14T10:04:12.405+02:00",
            "2024-05-14T10:04:60.000Z",
            "2024-05-14 10:04:12.405Z",
        ] {
            assert_eq!(fast_ms(odd.as_bytes()), None, "{odd}");
        }
        assert_eq!(
            parse_ms("2024-05-14T12:04:12.405+02:00"),
            parse_ms("2024-05-14T10:04:12.405Z")
        );
    }

    #[test]
    fn examples_are_bounded_counts_are_not() {
        let text = "x\n".repeat(MAX_EXAMPLES * 3);
        let (_, stats) = read_all(vec![("j", text)]);
        assert_eq!(stats.garbage_lines, (MAX_EXAMPLES * 3) as u64);
        assert_eq!(stats.examples.len(), MAX_EXAMPLES);
    }

    #[test]
    fn inputs_merge_by_time_keeping_hosts() {
        let a = format!(
            "{}\n{}\n",
            rec("2024-05-14T10:00:00.000Z", "a", 1),
            rec("2024-05-14T10:00:02.000Z", "a", 3)
        );
        let b = format!(
            "{}\n{}\n",
            rec("2024-05-14T10:00:01.000Z", "b", 2),
            rec("2024-05-14T10:00:02.000Z", "b", 4)
        );
        let (recs, stats) = read_all(vec![("a", a), ("b", b)]);
        let hosts: Vec<&str> = recs.iter().map(|r| r.record.host.as_str()).collect();
        // Equal times keep input order.
        assert_eq!(hosts, vec!["a", "b", "a", "b"]);
        assert_eq!(stats.out_of_order, 0);
    }

    #[test]
    fn long_lines_are_cut_and_counted() {
        let mut src = Cursor::new(b"abcdefghij\nxy".to_vec());
        let mut buf = Vec::new();
        let end = read_line_bounded(&mut src, &mut buf, 4).unwrap().unwrap();
        assert_eq!(
            (buf.as_slice(), end.too_long, end.terminated),
            (&b"abcd"[..], true, true)
        );
        let end = read_line_bounded(&mut src, &mut buf, 4).unwrap().unwrap();
        assert_eq!(
            (buf.as_slice(), end.too_long, end.terminated),
            (&b"xy"[..], false, false)
        );
        assert!(read_line_bounded(&mut src, &mut buf, 4).unwrap().is_none());
    }

    #[test]
    fn rotated_siblings_are_read_oldest_first() {
        let dir = tempfile::tempdir().unwrap();
        let base = dir.path().join("reaper.jsonl");
        for (name, ts) in [
            ("reaper.jsonl.2", "2024-05-14T10:00:00.000Z"),
            ("reaper.jsonl.10", "2024-05-14T09:00:00.000Z"),
            ("reaper.jsonl.1", "2024-05-14T11:00:00.000Z"),
            ("reaper.jsonl", "2024-05-14T12:00:00.000Z"),
            ("reaper.jsonl.gz", "x"),
            ("reaper.jsonl.1x", "x"),
        ] {
            std::fs::write(dir.path().join(name), rec(ts, "a", 1) + "\n").unwrap();
        }
        let chain = rotated_chain(&base).unwrap();
        let names: Vec<String> = chain
            .iter()
            .map(|p| p.file_name().unwrap().to_string_lossy().into_owned())
            .collect();
        assert_eq!(
            names,
            vec![
                "reaper.jsonl.10",
                "reaper.jsonl.2",
                "reaper.jsonl.1",
                "reaper.jsonl"
            ]
        );
        // A rotated file named directly is read alone.
        assert_eq!(
            rotated_chain(&dir.path().join("reaper.jsonl.2"))
                .unwrap()
                .len(),
            1
        );
        // Given twice, read once.
        let mut r = JournalReader::open(&[base.clone(), base]).unwrap();
        let mut n = 0;
        while r.next_record().unwrap().is_some() {
            n += 1;
        }
        assert_eq!(n, 4);
        assert_eq!(r.stats.files.len(), 4);
    }

    #[test]
    fn a_missing_journal_is_bad_input_naming_the_path() {
        let err = JournalReader::open(&[PathBuf::from("/nonexistent/reaper.jsonl")])
            .err()
            .unwrap();
        assert_eq!(err.exit(), crate::error::Exit::BadInput);
        assert!(err.to_string().contains("/nonexistent/reaper.jsonl"));
    }
}

//! model -> **view** -> markdown / html (and json's `detail`).
//!
//! The sentences the formats print, as plain text: the summary's rows, a
//! conflict's facts, a holder's identity, the words of each timeline entry
//! ([`happened`]) and how times read ([`TimeFmt`]). The model holds facts
//! only; Markdown and HTML differ only in markup, so what a reader learns
//! cannot drift between them.

use super::model::{
    ConflictReport, DataQuality, Happened, Holder, PortReport, ReapingDone, ReapingNote, Report,
    Resolution, Summary, Unfinished,
};
use crate::journal::{ProcessRef, SignalRecord, VerdictRecord};
pub use crate::util::human_ms;

/// "10:04:01.100": times inside a report whose window gives the date.
fn clock(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map_or_else(|| ms.to_string(), |t| t.format("%H:%M:%S%.3f").to_string())
}

fn clock_str(ts: &str) -> String {
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

/// "tcp/8080 on runner-7".
pub fn port_name(proto: &str, port: u16, host: &str) -> String {
    format!("{proto}/{port} on {host}")
}

/// "pid 42 (platform-server) on tcp/8080 on runner-7: SIGTERM at 12:00:01,
/// interrupted by a daemon stop at 12:00:02 (port-side outcome unknown)".
pub fn unfinished_line(u: &Unfinished) -> String {
    let sent: Vec<String> = u
        .signals
        .iter()
        .map(|s| format!("{} at {}", s.signal, TimeFmt::full(&s.ts)))
        .collect();
    let sent = if sent.is_empty() {
        "no signal on the record".to_string()
    } else {
        sent.join(", ")
    };
    let what = if u.outcome == crate::vocab::Outcome::Interrupted {
        format!(
            "{sent}; interrupted by a daemon stop at {}, the target may still run",
            TimeFmt::full(&u.ts)
        )
    } else {
        format!(
            "started at {} and never finished (reaper stopped before it recorded an outcome: signals may have been sent)",
            TimeFmt::full(&u.ts)
        )
    };
    format!(
        "pid {} ({}) on {}: {what} [{}]",
        u.target.pid,
        u.target.comm,
        port_name(&u.proto, u.port, &u.host),
        u.evidence
    )
}

pub fn plural(n: u64, one: &str, many: &str) -> String {
    format!("{n} {}", if n == 1 { one } else { many })
}

/// The window in one line.
pub fn window_line(r: &Report) -> String {
    let w = &r.window;
    let from = w.since.as_deref().or(w.first_record.as_deref());
    let to_note = if w.until.is_some() {
        "(--until)"
    } else {
        "(end of the journal)"
    };
    match (from, w.end.as_deref()) {
        (Some(f), Some(e)) => format!("{} to {} UTC {to_note}", TimeFmt::full(f), TimeFmt::full(e)),
        _ => "no records in the window".to_string(),
    }
}

/// What was read and what was asked.
pub fn scope_line(r: &Report) -> String {
    let files: Vec<&str> = r.inputs.iter().map(|f| f.path.as_str()).collect();
    let mut s = format!(
        "{} from {}: {}",
        plural(r.summary.records, "record", "records"),
        plural(files.len() as u64, "file", "files"),
        files.join(", ")
    );
    if let Some(p) = r.filter.port {
        s.push_str(&format!("; only port {p}"));
    }
    if let Some(h) = &r.filter.host {
        s.push_str(&format!("; only host {h}"));
    }
    s
}

/// The summary table: (label, value).
pub fn summary_rows(r: &Report) -> Vec<(&'static str, String)> {
    let s = &r.summary;
    let q = &r.data_quality;
    let mut rows = vec![
        ("Conflicts", conflicts_in_all(r)),
        ("Reapings", reapings_in_all(s)),
    ];
    if !s.unfinished.is_empty() {
        // Signals may have been sent with no outcome on the record: say so
        // loudly, one sentence per reaping.
        let v: Vec<String> = s.unfinished.iter().map(unfinished_line).collect();
        rows.push(("Unfinished reapings", v.join("; ")));
    }
    rows.extend([
        ("Time ports stayed blocked", blocked_in_all(s)),
        (
            "Still blocked at the end",
            none_or(s.still_blocked, || plural(s.still_blocked, "port", "ports")),
        ),
        (
            "Data losses",
            if q.loss_records == 0 {
                "none reported by the kernel side".to_string()
            } else {
                format!(
                    "{} lost ({}): claims or releases may be missing",
                    plural(q.lost_events, "event", "events"),
                    plural(q.loss_records, "loss record", "loss records")
                )
            },
        ),
        ("Journal damage", journal_damage(q)),
        (
            "Degraded (/proc polling)",
            if q.degraded_total == 0 {
                "never".to_string()
            } else {
                format!(
                    "{}, {} in all",
                    plural(q.degraded_total, "period", "periods"),
                    human_ms(q.degraded_ms)
                )
            },
        ),
        (
            "Gaps (daemon died without a stop)",
            none_or(q.gaps_total, || plural(q.gaps_total, "gap", "gaps")),
        ),
        ("Hook tiers (daemon starts)", hook_tiers(s)),
        ("Records by source", {
            let sources: Vec<String> = s.sources.iter().map(|(k, n)| format!("{k} {n}")).collect();
            list_or_none(sources, ", ")
        }),
        ("Hosts", {
            let hosts: Vec<String> = s
                .hosts
                .iter()
                .map(|h| format!("{} ({})", h.name, plural(h.records, "record", "records")))
                .collect();
            list_or_none(hosts, ", ")
        }),
    ]);
    rows
}

/// "none" for zero, else what `some` says.
fn none_or(n: u64, some: impl FnOnce() -> String) -> String {
    if n == 0 {
        "none".to_string()
    } else {
        some()
    }
}

fn list_or_none(items: Vec<String>, sep: &str) -> String {
    if items.is_empty() {
        "none".into()
    } else {
        items.join(sep)
    }
}

fn conflicts_in_all(r: &Report) -> String {
    let s = &r.summary;
    none_or(s.conflicts, || {
        let ports = r.ports.iter().filter(|p| p.counts.conflicts > 0).count() as u64;
        format!(
            "{} ({}) on {}",
            s.conflicts,
            plural(s.failed_binds, "failed bind", "failed binds"),
            plural(ports, "port", "ports")
        )
    })
}

fn reapings_in_all(s: &Summary) -> String {
    none_or(s.reapings, || {
        let by: Vec<String> = s
            .reapings_by_outcome
            .iter()
            .map(|(o, n)| format!("{o} {n}"))
            .collect();
        let mut v = format!("{}: {}", s.reapings, by.join(", "));
        // A dry run is usually its own outcome; say so only if not.
        if s.dry_runs > 0 && !s.reapings_by_outcome.contains_key("dry_run") {
            v.push_str(&format!(" ({} dry runs)", s.dry_runs));
        }
        v
    })
}

fn blocked_in_all(s: &Summary) -> String {
    match &s.longest_block {
        None if s.blocked_ms == 0 => "none".to_string(),
        None => human_ms(s.blocked_ms),
        Some(b) => format!(
            "{} in all; longest {} ({}, conflict #{})",
            human_ms(s.blocked_ms),
            human_ms(b.ms),
            port_name(&b.proto, b.port, &b.host),
            b.conflict
        ),
    }
}

fn journal_damage(q: &DataQuality) -> String {
    let mut damage = Vec::new();
    if q.torn_lines > 0 {
        damage.push(plural(q.torn_lines, "torn line", "torn lines"));
    }
    if q.garbage_lines > 0 {
        damage.push(plural(
            q.garbage_lines,
            "unreadable line",
            "unreadable lines",
        ));
    }
    for (n, what) in [
        (q.unknown_version, "from a newer schema"),
        (q.unknown_kind, "of an unknown kind"),
        (q.out_of_order, "out of time order"),
    ] {
        if n > 0 {
            damage.push(format!("{} {what}", plural(n, "record", "records")));
        }
    }
    if damage.is_empty() {
        "none".to_string()
    } else {
        format!("{} (skipped; see Data quality)", damage.join(", "))
    }
}

/// Per host, the distinct hook tiers its daemon started with.
fn hook_tiers(s: &Summary) -> String {
    let tiers: Vec<String> = s
        .hosts
        .iter()
        .filter(|h| !h.starts.is_empty())
        .map(|h| {
            let mut t: Vec<String> = Vec::new();
            for st in &h.starts {
                let s = format!("{} (reaper {})", st.tier, st.version);
                if !t.contains(&s) {
                    t.push(s);
                }
            }
            format!("{}: {}", h.name, t.join(", "))
        })
        .collect();
    if tiers.is_empty() {
        "no start record in the window".into()
    } else {
        tiers.join("; ")
    }
}

/// "pid 4242 platform-server".
pub fn who(p: &ProcessRef) -> String {
    format!("pid {} {}", p.pid, p.comm)
}

/// A process's identity beyond pid and comm, as (label, value) pairs.
pub fn identity(p: &ProcessRef, netns: Option<u64>) -> Vec<(&'static str, String)> {
    let mut v = Vec::new();
    if let Some(e) = &p.exe {
        v.push(("exe", e.clone()));
    }
    if let Some(c) = &p.cmdline {
        v.push(("cmdline", c.clone()));
    }
    match (&p.user, p.uid) {
        (Some(u), Some(id)) => v.push(("user", format!("{u} ({id})"))),
        (Some(u), None) => v.push(("user", u.clone())),
        (None, Some(id)) => v.push(("user", format!("uid {id}"))),
        _ => {}
    }
    if let Some(s) = &p.started_at {
        v.push(("started", TimeFmt::full(s)));
    }
    let mut parents = p.ancestors.join(" < ");
    if parents.is_empty() {
        if let Some(pp) = p.ppid {
            parents = format!("{pp}");
        }
    }
    if p.orphaned == Some(true) {
        parents = format!("{parents} (orphaned)");
    }
    if !parents.is_empty() {
        v.push(("parents", parents));
    }
    if let Some(c) = &p.cgroup {
        v.push(("cgroup", c.clone()));
    }
    if let Some(c) = &p.container {
        v.push(("container", c.clone()));
    }
    if let Some(n) = netns {
        v.push(("netns", n.to_string()));
    }
    v
}

/// A verdict in one line.
pub fn verdict_line(v: &crate::journal::VerdictRecord) -> String {
    let rule = v
        .rule
        .as_deref()
        .map(|r| format!(" (rule {r})"))
        .unwrap_or_default();
    if v.reasons.is_empty() {
        format!("{}{rule}", v.decision)
    } else {
        format!("{}{rule}: {}", v.decision, v.reasons.join("; "))
    }
}

/// A conflict's title after its id: "tcp/8080 on runner-7: blocked 2.4 s, reaped".
pub fn conflict_title(c: &ConflictReport) -> String {
    let how = match c.resolution {
        Resolution::Open => "still blocked at the end of the window",
        Resolution::Reaped => "freed by a reaping",
        Resolution::Released => "released by its holder",
        Resolution::Rebound => "bound again (release not seen)",
    };
    format!(
        "{}: blocked {}, {how}",
        port_name(&c.proto, c.port, &c.host),
        human_ms(c.blocked_ms)
    )
}

/// A conflict's facts: (label, value), every value plain text.
pub fn conflict_rows(c: &ConflictReport, tf: TimeFmt) -> Vec<(&'static str, String)> {
    let mut rows = Vec::new();
    let span = if c.first == c.last {
        format!("at {}", tf.at(&c.first))
    } else {
        format!("from {} to {}", tf.at(&c.first), tf.at(&c.last))
    };
    let exact = if c.errno_exact {
        ""
    } else {
        ", errno inferred"
    };
    rows.push((
        "Who tried",
        format!(
            "{}: {} ({}{exact}) {span}",
            who(&c.tried),
            plural(c.count, "failed bind", "failed binds"),
            c.errno
        ),
    ));
    let addr = c
        .addr
        .as_deref()
        .map(|a| format!(" on {a}:{}", c.port))
        .unwrap_or_default();
    if c.holders.is_empty() {
        rows.push(("Who held", format!("not identified{addr}")));
    }
    for h in &c.holders {
        holder_rows(&mut rows, c, h, &addr, tf);
    }
    if let Some(v) = &c.verdict {
        rows.push(("Verdict", verdict_line(v)));
    }
    rows.push(("Rule asked for", c.action.to_string()));
    if c.done.is_empty() {
        rows.push(("Done", "nothing recorded".to_string()));
    }
    for d in &c.done {
        rows.push(("Done", done_line(d, tf)));
    }
    let until = match &c.blocked_until {
        Some(u) => format!("{} to {}", tf.at(&c.first), tf.at(u)),
        None => format!(
            "since {}, still blocked at the end of the window",
            tf.at(&c.first)
        ),
    };
    rows.push((
        "Blocked",
        format!(
            "{} ({until}); {}",
            human_ms(c.blocked_ms),
            resolution_words(c.resolution)
        ),
    ));
    if let Some(b) = &c.rebound_by {
        rows.push((
            "Bound next by",
            format!("pid {} {} at {}", b.pid, b.comm, tf.at(&b.ts)),
        ));
    }
    rows
}

/// "Who held" and its identity, for one holder of `c`.
fn holder_rows(
    rows: &mut Vec<(&'static str, String)>,
    c: &ConflictReport,
    h: &ProcessRef,
    addr: &str,
    tf: TimeFmt,
) {
    let since = c
        .held_since
        .as_deref()
        .map(|s| format!(" since {}", tf.at(s)))
        .unwrap_or_default();
    let orphan = if h.orphaned == Some(true) {
        ", orphaned"
    } else {
        ""
    };
    rows.push(("Who held", format!("{}{addr}{since}{orphan}", who(h))));
    let id: Vec<String> = identity(h, c.netns)
        .into_iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    if !id.is_empty() {
        rows.push(("Holder identity", id.join("; ")));
    }
}

/// A reaping during a conflict, in one line.
fn done_line(d: &ReapingNote, tf: TimeFmt) -> String {
    let mut s = if d.dry_run {
        format!("dry run on {}: would signal", who(&d.target))
    } else if d.signals.is_empty() {
        format!("{}: no signal sent", who(&d.target))
    } else {
        let sent: Vec<String> = d
            .signals
            .iter()
            .map(|s| format!("{} {}", s.signal, tf.at(&s.ts)))
            .collect();
        format!("{}: sent {}", who(&d.target), sent.join(", "))
    };
    s.push_str(&format!("; outcome {}", d.outcome));
    if let Some(f) = &d.port_free_at {
        s.push_str(&format!(", port free at {}", tf.at(f)));
    }
    if let Some(e) = d.elapsed_ms {
        s.push_str(&format!(" ({} after the first signal)", human_ms(e)));
    }
    s
}

pub fn resolution_words(r: Resolution) -> &'static str {
    match r {
        Resolution::Reaped => "the holder let go after the reaping",
        Resolution::Released => "the holder let go by itself",
        Resolution::Rebound => "another process bound the port (the release was not seen)",
        Resolution::Open => "no release, reaping or new bind seen",
    }
}

/// A port's counts in one line.
pub fn port_counts(p: &PortReport) -> String {
    let c = &p.counts;
    let mut parts = Vec::new();
    for (n, one, many) in [
        (c.claims, "claim", "claims"),
        (c.listens, "listen", "listens"),
        (c.releases, "release", "releases"),
    ] {
        if n > 0 {
            parts.push(plural(n, one, many));
        }
    }
    if c.conflicts > 0 {
        parts.push(format!(
            "{} ({})",
            plural(c.conflicts, "conflict", "conflicts"),
            plural(c.failed_binds, "failed bind", "failed binds")
        ));
    }
    if c.reapings > 0 {
        parts.push(plural(c.reapings, "reaping", "reapings"));
    }
    if p.blocked_ms > 0 {
        parts.push(format!("blocked {}", human_ms(p.blocked_ms)));
    }
    if p.still_blocked {
        parts.push("still blocked at the end".into());
    }
    if !p.netns.is_empty() {
        let n: Vec<String> = p.netns.iter().map(|n| n.to_string()).collect();
        parts.push(format!("netns {}", n.join(", ")));
    }
    parts.join(" · ")
}

/// Said when a port's timeline was cut.
pub fn truncation_note(p: &PortReport) -> Option<String> {
    (p.timeline_dropped > 0).then(|| {
        format!(
            "Showing the last {} entries; {} earlier {} not kept (the counts above are exact).",
            p.timeline.len(),
            p.timeline_dropped,
            if p.timeline_dropped == 1 {
                "entry was"
            } else {
                "entries were"
            }
        )
    })
}

/// A holder's verdict, or a dash.
pub fn holder_verdict(h: &Holder) -> String {
    h.verdict
        .as_ref()
        .map(verdict_line)
        .unwrap_or_else(|| "-".into())
}

// ------------------------------------------------- timeline entries' words

/// A timeline entry in one line a person reads: what happened.
pub fn happened(what: &Happened) -> String {
    match what {
        Happened::Claim {
            addr,
            port,
            requested_port,
            job,
        } => {
            let mut w = claim_detail(addr.as_deref(), *port, *requested_port);
            if let Some(j) = job {
                w.push_str(&format!(", charged to {j}"));
            }
            w
        }
        Happened::Listen => "listening".to_string(),
        Happened::Release { held_ms: Some(h) } => release_detail(*h),
        Happened::Release { held_ms: None } => "released".to_string(),
        Happened::Conflict {
            count,
            errno,
            first_ms,
            last,
            holders,
        } => conflict_detail(*count, errno, *first_ms, last.as_deref(), holders),
        Happened::Reaping(r) => reaping_words(r),
        Happened::Churn {
            count,
            first,
            last,
            held_ms_min,
            held_ms_max,
        } => churn_detail(*count, first, last, *held_ms_min, *held_ms_max),
        Happened::LentToClient { peer } => format!(
            "given by the kernel to a connect() to {peer} (it lies in net.ipv4.ip_local_port_range; net.ipv4.ip_local_reserved_ports keeps it back)"
        ),
    }
}

/// After a count of claims: how many of them were churn, if any.
pub fn churn_note(churn: u64) -> String {
    if churn == 0 {
        String::new()
    } else {
        format!(
            " ({churn} of them churn: bound and released within the daemon's churn window, summarised)"
        )
    }
}

/// A churn summary's entry: "bound and released 226 times from ... to ...,
/// each held 0-13 ms (churn)".
fn churn_detail(count: u64, first: &str, last: &str, min: u64, max: u64) -> String {
    let held = if min == max {
        format!("{min} ms")
    } else {
        format!("{min}-{max} ms")
    };
    format!(
        "bound and released {} from {first} to {last}, each held {held} (churn: summarised)",
        plural(count, "time", "times")
    )
}

/// A reaping's entry; a container's says the engine stopped it first.
fn reaping_words(r: &ReapingDone) -> String {
    let detail = reaping_detail(
        &r.verdict,
        &r.signals,
        r.dry_run,
        r.outcome.as_str(),
        r.free_ms,
        r.elapsed_ms,
    );
    match &r.container {
        Some(c) => container_stopped(c, &detail),
        None => detail,
    }
}

/// A claim's entry: "bound 0.0.0.0:8080 (the kernel chose the port)".
fn claim_detail(addr: Option<&str>, port: u16, requested_port: Option<u16>) -> String {
    match (requested_port, addr) {
        (Some(0), Some(a)) => format!("bound {a}:{port} (the kernel chose the port)"),
        (Some(0), None) => "bound (the kernel chose the port)".to_string(),
        (_, Some(a)) => format!("bound {a}:{port}"),
        (_, None) => "bound".to_string(),
    }
}

/// A release's entry when the hold's length is known.
fn release_detail(held_ms: u64) -> String {
    format!("released after {}", human_ms(held_ms))
}

/// "4242 platform-server, 4243 worker".
pub fn holders_short(holders: &[ProcessRef]) -> String {
    holders
        .iter()
        .map(|h| format!("{} {}", h.pid, h.comm))
        .collect::<Vec<_>>()
        .join(", ")
}

/// A conflict's entry: "3 failed binds (EADDRINUSE) 10:04:01.100 to
/// 10:04:03.900; held by 4242 platform-server". `last`: the last failed
/// bind's time when it differs from the first.
fn conflict_detail(
    count: u64,
    errno: &str,
    first_ms: i64,
    last: Option<&str>,
    holders: &[ProcessRef],
) -> String {
    let span = match last {
        None => format!("at {}", clock(first_ms)),
        Some(l) => format!("{} to {}", clock(first_ms), clock_str(l)),
    };
    let held_by = if holders.is_empty() {
        "unknown".to_string()
    } else {
        holders_short(holders)
    };
    format!(
        "{count} failed bind{} ({errno}) {span}; held by {held_by}",
        if count == 1 { "" } else { "s" },
    )
}

/// A reaping's entry: the verdict, what was sent, how it ended.
fn reaping_detail(
    verdict: &VerdictRecord,
    signals: &[SignalRecord],
    dry_run: bool,
    outcome: &str,
    free_ms: Option<i64>,
    elapsed_ms: Option<u64>,
) -> String {
    let sigs: Vec<String> = signals
        .iter()
        .map(|s| format!("{} {}", s.signal, clock_str(&s.ts)))
        .collect();
    let mut detail = format!("{}: {}", verdict.decision, verdict.reasons.join("; "));
    if dry_run {
        detail.push_str("; dry run, nothing signalled");
    } else if !sigs.is_empty() {
        detail.push_str(&format!("; sent {}", sigs.join(", ")));
    }
    detail.push_str(&format!("; outcome {outcome}"));
    if let Some(f) = free_ms {
        detail.push_str(&format!(", port free at {}", clock(f)));
    }
    if let Some(e) = elapsed_ms {
        detail.push_str(&format!(" ({} after the first signal)", human_ms(e)));
    }
    detail
}

/// A reaping of a container: the engine stopped it, then what happened.
fn container_stopped(c: &crate::journal::ContainerRecord, detail: &str) -> String {
    format!(
        "container {} ({}, image {}) stopped through the engine; {detail}",
        c.name.as_deref().unwrap_or("?"),
        c.short_id,
        c.image.as_deref().unwrap_or("?")
    )
}

/// The header of the "leaks by job" table.
pub const JOB_LEAK_HEADER: [&str; 6] = [
    "Job",
    "Port",
    "Holder",
    "Since",
    "What became of it",
    "Record",
];

/// One row of "leaks by job", in words (not escaped: the job's names and
/// the holder's comm are process-controlled; each view escapes them).
pub fn job_leak_row(l: &super::model::JobLeak, tf: TimeFmt) -> [String; 6] {
    let job = match (&l.job.name, &l.job.run) {
        (Some(n), Some(r)) => format!("{} job {} ({n}, run {r})", l.job.provider, l.job.id),
        (Some(n), None) => format!("{} job {} ({n})", l.job.provider, l.job.id),
        _ => format!("{} job {}", l.job.provider, l.job.id),
    };
    let fate = match (l.status.as_str(), &l.freed_by) {
        (_, Some(hook)) => format!("freed by {hook}"),
        ("still_held", None) => "still held".to_string(),
        ("refused", None) => "still held (refused)".to_string(),
        (other, None) => other.replace('_', " "),
    };
    [
        job,
        port_name(&l.proto, l.port, &l.host),
        l.holder.clone(),
        l.since
            .as_deref()
            .map(|t| tf.at(t))
            .unwrap_or_else(|| "-".into()),
        fate,
        l.evidence.clone(),
    ]
}

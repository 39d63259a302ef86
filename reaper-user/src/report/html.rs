//! model -> **html**: the report as one self-contained page.
//!
//! Inline CSS, no script, no font or URL from anywhere: it opens the same
//! from a CI artifact, a mail attachment or a machine without network. Each
//! port gets an SVG timeline: a bar per claim (bind to release, or to the
//! window's end), red marks for failed binds, black marks for reapings, an
//! amber band while the port was blocked. SVG elements carry classes
//! (`holder-bar`, `failed-bind`, `reaping`, `blocked`) and ids so tests
//! and stylesheets can find them.

use std::fmt::Write;

use super::model::{Bar, Happened, PortReport, Report};
use super::view::{self, human_ms, TimeFmt};
use crate::journal::reader::parse_ms;

const CSS: &str = r#"
:root { --ink: #1f2328; --muted: #59636e; --line: #d1d9e0; --bg: #ffffff; --soft: #f6f8fa;
  --bar: #3b6ea5; --bar-idle: #8fb0d6; --reaped: #c2571a; --fail: #cf222e; --reap: #111111; --blocked: #f5c451; }
* { box-sizing: border-box; }
body { margin: 0; background: var(--bg); color: var(--ink);
  font: 14px/1.45 system-ui, -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; }
main { max-width: 1180px; margin: 0 auto; padding: 24px; }
h1 { font-size: 24px; margin: 0 0 6px; }
h2 { font-size: 19px; margin: 32px 0 10px; padding-bottom: 4px; border-bottom: 1px solid var(--line); }
h3 { font-size: 16px; margin: 22px 0 8px; }
p.meta { color: var(--muted); margin: 2px 0; }
code, .mono { font-family: ui-monospace, SFMono-Regular, Menlo, Consolas, "Liberation Mono", monospace; font-size: 12.5px; }
table { border-collapse: collapse; margin: 8px 0 14px; width: 100%; }
th, td { border: 1px solid var(--line); padding: 4px 8px; text-align: left; vertical-align: top; }
th { background: var(--soft); font-weight: 600; }
table.kv th { width: 230px; }
td.num { text-align: right; font-variant-numeric: tabular-nums; }
td.when { white-space: nowrap; font-variant-numeric: tabular-nums; }
tr.ev-conflict td { background: #fff1f0; }
tr.ev-reaping td { background: #f1f1f1; }
.note { color: var(--muted); font-style: italic; }
.bad { color: var(--fail); font-weight: 600; }
article { margin-bottom: 26px; }
svg.timeline { display: block; width: 100%; height: auto; border: 1px solid var(--line); border-radius: 6px; background: #fcfcfd; margin: 8px 0; }
svg .holder-bar { fill: var(--bar-idle); }
svg .holder-bar[data-listening="true"] { fill: var(--bar); }
svg .holder-bar[data-reaped="true"] { fill: var(--reaped); }
svg .bar-label { font-size: 11px; fill: #ffffff; }
svg .bar-label.outside { fill: var(--ink); }
svg .failed-bind line, svg .failed-bind path { stroke: var(--fail); fill: var(--fail); }
svg .failed-bind rect { fill: var(--fail); opacity: .25; }
svg .reaping line, svg .reaping path { stroke: var(--reap); fill: var(--reap); }
svg .blocked { fill: var(--blocked); opacity: .35; }
svg .axis line { stroke: var(--line); }
svg .axis text, svg .lane-label { font-size: 10.5px; fill: var(--muted); }
.legend span { display: inline-block; margin-right: 16px; color: var(--muted); font-size: 12.5px; }
.legend i { display: inline-block; width: 14px; height: 10px; margin-right: 5px; vertical-align: baseline; }
"#;

fn code(s: &str) -> String {
    format!("<code>{}</code>", esc(s))
}

fn kv_table(out: &mut String, rows: &[(&str, String)]) {
    out.push_str("<table class=\"kv\">\n");
    for (k, v) in rows {
        let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(v));
    }
    out.push_str("</table>\n");
}

/// An id fragment: letters, digits and dashes.
fn slug(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() {
                c.to_ascii_lowercase()
            } else {
                '-'
            }
        })
        .collect()
}

pub fn render(r: &Report) -> String {
    let tf = TimeFmt::of(r);
    let mut out = String::with_capacity(64 * 1024);
    head(&mut out, r);
    // The pictures first: a reader sees who held what, and when it broke,
    // before any table.
    timelines(&mut out, r, tf);
    out.push_str("<section id=\"summary\">\n<h2>Summary</h2>\n");
    kv_table(&mut out, &view::summary_rows(r));
    out.push_str("</section>\n");
    conflicts(&mut out, r, tf);
    out.push_str("<section id=\"ports\">\n<h2>Ports</h2>\n");
    if r.ports.is_empty() {
        out.push_str("<p>No port saw a conflict or a reaping in the window.</p>\n");
    }
    for p in &r.ports {
        port_section(&mut out, p, tf);
    }
    out.push_str("</section>\n");
    quiet_ports(&mut out, r, tf);
    leaks_by_job(&mut out, r, tf);
    data_quality(&mut out, r, tf);
    inputs(&mut out, r);
    out.push_str("</main>\n</body>\n</html>\n");
    out
}

fn head(out: &mut String, r: &Report) {
    out.push_str("<!DOCTYPE html>\n<html lang=\"en\">\n<head>\n<meta charset=\"utf-8\">\n");
    out.push_str("<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\n");
    let title = match r.filter.port {
        Some(p) => format!("reaper report: port {p}"),
        None => "reaper report".to_string(),
    };
    let _ = writeln!(
        out,
        "<title>{}</title>\n<style>{CSS}</style>\n</head>\n<body>\n<main>",
        esc(&title)
    );
    let _ = writeln!(out, "<h1>{}</h1>", esc(&title));
    let _ = writeln!(
        out,
        "<p class=\"meta\"><b>Window:</b> {}</p>",
        esc(&view::window_line(r))
    );
    let _ = writeln!(
        out,
        "<p class=\"meta\"><b>Read:</b> {}</p>",
        esc(&view::scope_line(r))
    );
}

fn timelines(out: &mut String, r: &Report, tf: TimeFmt) {
    if r.ports.is_empty() {
        return;
    }
    out.push_str("<section id=\"timelines\">\n<h2>Timelines</h2>\n");
    for p in &r.ports {
        let id = port_id(p);
        let _ = writeln!(
            out,
            "<h3><a href=\"#{id}\">{}</a></h3>",
            esc(&view::port_name(&p.proto, p.port, &p.host))
        );
        timeline_svg(out, r, p, &id, tf);
    }
    out.push_str(LEGEND);
    out.push_str("</section>\n");
}

fn conflicts(out: &mut String, r: &Report, tf: TimeFmt) {
    out.push_str("<section id=\"conflicts\">\n<h2>Conflicts</h2>\n");
    if r.conflicts.is_empty() {
        out.push_str("<p>No failed bind of a held port in the window.</p>\n");
    }
    if r.conflicts_dropped > 0 {
        let _ = writeln!(
            out,
            "<p class=\"note\">{} earlier conflicts are not listed (only the last {} are kept); the summary counts them all.</p>",
            r.conflicts_dropped,
            r.conflicts.len()
        );
    }
    for c in &r.conflicts {
        let _ = writeln!(out, "<article class=\"conflict\" id=\"conflict-{}\">", c.id);
        let _ = writeln!(
            out,
            "<h3>Conflict #{}: {}</h3>",
            c.id,
            esc(&view::conflict_title(c))
        );
        out.push_str("<table class=\"kv\">\n");
        for (k, v) in view::conflict_rows(c, tf) {
            let _ = writeln!(out, "<tr><th>{}</th><td>{}</td></tr>", esc(k), esc(&v));
        }
        let ev: Vec<String> = c.evidence.iter().map(|e| code(e)).collect();
        let _ = writeln!(out, "<tr><th>Evidence</th><td>{}</td></tr>", ev.join(", "));
        out.push_str("</table>\n</article>\n");
    }
    out.push_str("</section>\n");
}

fn quiet_ports(out: &mut String, r: &Report, tf: TimeFmt) {
    if r.quiet_ports.total == 0 {
        return;
    }
    let q = &r.quiet_ports;
    out.push_str("<section id=\"other-ports\">\n<h2>Other ports</h2>\n");
    let _ = writeln!(
        out,
        "<p>{} saw {}{} and no conflict{}.</p>",
        esc(&view::plural(q.total, "port", "ports")),
        esc(&view::plural(q.claims, "claim", "claims")),
        esc(&view::churn_note(q.churn)),
        if q.shown.len() < q.total as usize {
            format!(
                "; the {} busiest (use <code>--port P</code> for one's timeline)",
                q.shown.len()
            )
        } else {
            " (use <code>--port P</code> for one's timeline)".into()
        }
    );
    out.push_str("<table>\n<tr><th>Port</th><th>Host</th><th>Claims</th><th>Releases</th><th>Held at end</th><th>Last seen</th></tr>\n");
    for p in &q.shown {
        let _ = writeln!(
            out,
            "<tr><td>{}/{}</td><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td><td class=\"when\">{}</td></tr>",
            esc(&p.proto),
            p.port,
            esc(&p.host),
            p.claims,
            p.releases,
            p.held_at_end,
            esc(&tf.at(&p.last))
        );
    }
    out.push_str("</table>\n</section>\n");
}

fn leaks_by_job(out: &mut String, r: &Report, tf: TimeFmt) {
    if r.leaks_by_job.is_empty() {
        return;
    }
    out.push_str("<section id=\"leaks-by-job\">\n<h2>Leaks by job</h2>\n<table>\n<tr>");
    for h in view::JOB_LEAK_HEADER {
        let _ = write!(out, "<th>{}</th>", esc(h));
    }
    out.push_str("</tr>\n");
    for l in &r.leaks_by_job {
        out.push_str("<tr>");
        for c in view::job_leak_row(l, tf) {
            let _ = write!(out, "<td>{}</td>", esc(&c));
        }
        out.push_str("</tr>\n");
    }
    out.push_str("</table>\n</section>\n");
}

fn inputs(out: &mut String, r: &Report) {
    out.push_str("<section id=\"inputs\">\n<h2>Inputs</h2>\n<table>\n<tr><th>File</th><th>Lines</th><th>Records</th></tr>\n");
    for f in &r.inputs {
        let _ = writeln!(
            out,
            "<tr><td>{}</td><td class=\"num\">{}</td><td class=\"num\">{}</td></tr>",
            code(&f.path),
            f.lines,
            f.records
        );
    }
    out.push_str("</table>\n</section>\n");
    let _ = writeln!(
        out,
        "<p class=\"note\">reaper report, schema <code>{}</code></p>",
        super::model::SCHEMA
    );
}

const LEGEND: &str = "<p class=\"legend\"><span><i style=\"background:#3b6ea5\"></i>held, listening</span><span><i style=\"background:#8fb0d6\"></i>bound, not listening</span><span><i style=\"background:#c2571a\"></i>held by a process later reaped</span><span><i style=\"background:#cf222e\"></i>failed binds</span><span><i style=\"background:#111111\"></i>reaping</span><span><i style=\"background:#f5c451\"></i>port blocked</span></p>\n";

fn port_id(p: &PortReport) -> String {
    format!("port-{}-{}-{}", slug(&p.host), slug(&p.proto), p.port)
}

fn port_section(out: &mut String, p: &PortReport, tf: TimeFmt) {
    let id = port_id(p);
    let _ = writeln!(out, "<article class=\"port\" id=\"{id}\">");
    let _ = writeln!(
        out,
        "<h3>{}</h3>",
        esc(&view::port_name(&p.proto, p.port, &p.host))
    );
    let _ = writeln!(out, "<p>{}</p>", esc(&view::port_counts(p)));
    if let Some(note) = view::truncation_note(p) {
        let _ = writeln!(out, "<p class=\"note\">{}</p>", esc(&note));
    }
    let _ = writeln!(out, "<p><a href=\"#{id}-timeline\">timeline</a></p>");

    out.push_str("<table class=\"timeline\">\n<tr><th>Time (UTC)</th><th>Event</th><th>Process</th><th>What happened</th><th>Evidence</th></tr>\n");
    for e in &p.timeline {
        let holder = e
            .holder
            .map(|h| format!(" (#{})", h + 1))
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<tr class=\"ev-{}\"><td class=\"when\">{}</td><td>{}</td><td>{} {}{}</td><td>{}</td><td>{}</td></tr>",
            e.what.event(),
            esc(&tf.at(&e.ts)),
            e.what.event(),
            e.pid,
            code(&e.comm),
            esc(&holder),
            esc(&view::happened(&e.what)),
            code(&e.evidence)
        );
    }
    out.push_str("</table>\n");
    if !p.holders.is_empty() {
        out.push_str("<p>Processes of this timeline, one row per identity seen (a process orphaned since its bind shows twice):</p>\n<table class=\"holders\">\n<tr><th>#</th><th>PID</th><th>comm</th><th>Identity</th><th>Verdict</th></tr>\n");
        for (i, h) in p.holders.iter().enumerate() {
            let id: Vec<String> = view::identity(&h.process, h.netns)
                .into_iter()
                .map(|(k, v)| format!("{} {}", esc(k), code(&v)))
                .collect();
            let _ = writeln!(
                out,
                "<tr><td class=\"num\">{}</td><td class=\"num\">{}</td><td>{}</td><td>{}</td><td>{}</td></tr>",
                i + 1,
                h.process.pid,
                code(&h.process.comm),
                id.join("<br>"),
                esc(&view::holder_verdict(h))
            );
        }
        out.push_str("</table>\n");
    }
    if !p.held_at_end.is_empty() {
        let held: Vec<String> = p
            .held_at_end
            .iter()
            .map(|h| {
                format!(
                    "pid {} {} since {} ({})",
                    h.pid,
                    code(&h.comm),
                    esc(&tf.at(&h.since)),
                    code(&h.evidence)
                )
            })
            .collect();
        let _ = writeln!(
            out,
            "<p><b>Held at the end of the window:</b> {}</p>",
            held.join(", ")
        );
    }
    out.push_str("</article>\n");
}

const SVG_W: f64 = 1120.0;
const LEFT: f64 = 12.0;
const RIGHT: f64 = 12.0;
const MARKS_H: f64 = 22.0;
const LANE_H: f64 = 26.0;
const BAR_H: f64 = 18.0;
const AXIS_H: f64 = 26.0;
const MAX_LANES: usize = 40;

/// Tick steps, in ms, from a second to a week.
const STEPS: &[i64] = &[
    1_000,
    2_000,
    5_000,
    10_000,
    15_000,
    30_000,
    60_000,
    120_000,
    300_000,
    600_000,
    900_000,
    1_800_000,
    3_600_000,
    7_200_000,
    10_800_000,
    21_600_000,
    43_200_000,
    86_400_000,
    172_800_000,
    604_800_000,
];

/// The picture's geometry: where a time falls, where the lanes are.
struct Chart {
    /// The padded span shown.
    t0: i64,
    t1: i64,
    /// What was added on each side of the data.
    pad: i64,
    /// Top of the lanes, and their height together.
    top: f64,
    height: f64,
}

impl Chart {
    fn x(&self, t: i64) -> f64 {
        let span = (self.t1 - self.t0) as f64;
        let plot_w = SVG_W - LEFT - RIGHT;
        LEFT + (t - self.t0) as f64 / span * plot_w
    }

    fn bottom(&self) -> f64 {
        self.top + self.height
    }
}

fn ms(s: &str) -> i64 {
    parse_ms(s).unwrap_or(0)
}

fn timeline_svg(out: &mut String, r: &Report, p: &PortReport, id: &str, tf: TimeFmt) {
    let Some((t0, t1)) = time_span(r, p) else {
        return;
    };
    // Some room on both sides so marks at the edges stay visible.
    let pad = (t1 - t0).max(1_000) / 40;
    let (placed, lanes) = lanes(&p.bars);
    let chart = Chart {
        t0: t0 - pad,
        t1: t1 + pad,
        pad,
        top: MARKS_H,
        height: lanes as f64 * LANE_H,
    };
    let h = chart.bottom() + AXIS_H;
    let _ = writeln!(
        out,
        "<svg class=\"timeline\" id=\"{id}-timeline\" xmlns=\"http://www.w3.org/2000/svg\" viewBox=\"0 0 {SVG_W} {h}\" width=\"{SVG_W}\" height=\"{h}\" role=\"img\" aria-label=\"Timeline of {}\">",
        esc(&view::port_name(&p.proto, p.port, &p.host))
    );
    axis(out, &chart, tf);
    blocked_periods(out, r, p, id, &chart);
    claim_bars(out, p, &placed, id, &chart, tf);
    failed_binds_and_reapings(out, p, id, &chart, tf);
    out.push_str("</svg>\n");
}

/// The picture spans the kept entries and bars, to the window's end; None
/// when there is nothing to draw.
fn time_span(r: &Report, p: &PortReport) -> Option<(i64, i64)> {
    let mut t0 = i64::MAX;
    let mut t1 = i64::MIN;
    for e in &p.timeline {
        t0 = t0.min(ms(&e.ts));
        t1 = t1.max(ms(&e.ts));
    }
    for b in &p.bars {
        t0 = t0.min(ms(&b.from));
        t1 = t1.max(ms(&b.to));
    }
    if let Some(end) = r.window.end.as_deref() {
        t1 = t1.max(ms(end));
    }
    (t0 != i64::MAX).then_some((t0, t1))
}

/// A bar with its lane, from and to.
type Placed<'a> = (usize, &'a Bar, i64, i64);

/// A bar goes in the first lane free at its start (the last lane takes the
/// rest past [`MAX_LANES`]). Returns the bars placed and the lane count.
fn lanes(bars: &[Bar]) -> (Vec<Placed<'_>>, usize) {
    let mut lane_end: Vec<i64> = Vec::new();
    let mut placed = Vec::new();
    for b in bars {
        let (f, t) = (ms(&b.from), ms(&b.to));
        let lane = match lane_end.iter().position(|&e| e <= f) {
            Some(l) => l,
            None if lane_end.len() < MAX_LANES => {
                lane_end.push(i64::MIN);
                lane_end.len() - 1
            }
            None => MAX_LANES - 1,
        };
        lane_end[lane] = lane_end[lane].max(t);
        placed.push((lane, b, f, t));
    }
    (placed, lane_end.len().max(1))
}

/// A gridline and a label per tick.
fn axis(out: &mut String, chart: &Chart, tf: TimeFmt) {
    let span = (chart.t1 - chart.t0) as f64;
    let step = STEPS
        .iter()
        .copied()
        .find(|s| span / *s as f64 <= 8.0)
        .unwrap_or(604_800_000);
    out.push_str("<g class=\"axis\">\n");
    let mut t = (chart.t0 / step + 1) * step;
    while t < chart.t1 {
        let xt = chart.x(t);
        let label = chrono::DateTime::from_timestamp_millis(t)
            .map(|d| {
                if step >= 86_400_000 || !tf.one_day && step >= 3_600_000 {
                    d.format("%m-%d %H:%M").to_string()
                } else if step >= 60_000 {
                    d.format("%H:%M").to_string()
                } else {
                    d.format("%H:%M:%S").to_string()
                }
            })
            .unwrap_or_default();
        let _ = writeln!(
            out,
            "<line x1=\"{xt:.1}\" x2=\"{xt:.1}\" y1=\"{}\" y2=\"{:.1}\"/><text x=\"{xt:.1}\" y=\"{:.1}\" text-anchor=\"middle\">{}</text>",
            chart.top,
            chart.bottom(),
            chart.bottom() + 16.0,
            esc(&label)
        );
        t += step;
    }
    out.push_str("</g>\n");
}

/// The port's blocked periods, under everything else.
fn blocked_periods(out: &mut String, r: &Report, p: &PortReport, id: &str, chart: &Chart) {
    for c in r
        .conflicts
        .iter()
        .filter(|c| c.port == p.port && c.host == p.host && c.proto == p.proto)
    {
        let from = ms(&c.first);
        let to = c
            .blocked_until
            .as_deref()
            .map(ms)
            .unwrap_or(chart.t1 - chart.pad);
        let _ = writeln!(
            out,
            "<rect class=\"blocked\" id=\"{id}-blocked-{}\" x=\"{:.1}\" y=\"{}\" width=\"{:.1}\" height=\"{}\"><title>blocked {} (conflict #{})</title></rect>",
            c.id,
            chart.x(from),
            chart.top,
            (chart.x(to) - chart.x(from)).max(1.0),
            chart.height,
            esc(&human_ms(c.blocked_ms)),
            c.id
        );
    }
}

/// A bar per claim, labelled with its process.
fn claim_bars(
    out: &mut String,
    p: &PortReport,
    placed: &[Placed],
    id: &str,
    chart: &Chart,
    tf: TimeFmt,
) {
    let reaped: Vec<u32> = p
        .timeline
        .iter()
        .filter(|e| matches!(e.what, Happened::Reaping(_)))
        .map(|e| e.pid)
        .collect();
    for (i, (lane, b, f, t)) in placed.iter().enumerate() {
        let bx = chart.x(*f);
        let bw = (chart.x(*t) - bx).max(2.0);
        let by = chart.top + *lane as f64 * LANE_H + (LANE_H - BAR_H) / 2.0;
        let end_words = if b.open {
            "held at the end of the window".to_string()
        } else {
            format!("released {}", tf.at(&b.to))
        };
        let tip = format!(
            "pid {} {}: {}{} to {} ({})",
            b.pid,
            b.comm,
            if b.from_clipped { "before " } else { "" },
            tf.at(&b.from),
            end_words,
            human_ms((*t - *f).max(0) as u64)
        );
        let _ = writeln!(
            out,
            "<rect class=\"holder-bar\" id=\"{id}-bar-{}\" x=\"{bx:.1}\" y=\"{by:.1}\" width=\"{bw:.1}\" height=\"{BAR_H}\" rx=\"3\" data-pid=\"{}\" data-listening=\"{}\" data-reaped=\"{}\"><title>{}</title></rect>",
            i + 1,
            b.pid,
            b.listening,
            reaped.contains(&b.pid),
            esc(&tip)
        );
        bar_label(out, &format!("{} {}", b.pid, b.comm), bx, bw, by);
    }
}

/// The label sits inside a wide bar, else beside it.
fn bar_label(out: &mut String, label: &str, bx: f64, bw: f64, by: f64) {
    let text_w = label.chars().count() as f64 * 6.4 + 8.0;
    let ty = by + BAR_H - 5.0;
    let (tx, anchor, outside) = if bw >= text_w {
        (bx + 5.0, "start", false)
    } else if bx + bw + text_w <= SVG_W - RIGHT {
        (bx + bw + 4.0, "start", true)
    } else {
        (bx - 4.0, "end", true)
    };
    let _ = writeln!(
        out,
        "<text class=\"bar-label{}\" x=\"{tx:.1}\" y=\"{ty:.1}\" text-anchor=\"{anchor}\">{}</text>",
        if outside { " outside" } else { "" },
        esc(label)
    );
}

/// Failed binds (red) and reapings (black): a line across the lanes and a
/// marker above them.
fn failed_binds_and_reapings(
    out: &mut String,
    p: &PortReport,
    id: &str,
    chart: &Chart,
    tf: TimeFmt,
) {
    let bottom = chart.bottom();
    for (i, e) in p.timeline.iter().enumerate() {
        let (class, what) = match e.what {
            Happened::Conflict { .. } => ("failed-bind", "failed bind"),
            Happened::Reaping(_) => ("reaping", "reaping"),
            _ => continue,
        };
        let mx = chart.x(ms(&e.ts));
        let tip = format!(
            "{} {}: pid {} {}: {}",
            what,
            tf.at(&e.ts),
            e.pid,
            e.comm,
            view::happened(&e.what)
        );
        let marker = if class == "failed-bind" {
            format!(
                "<path d=\"M{:.1} 4 L{:.1} 4 L{mx:.1} 16 Z\"/>",
                mx - 6.0,
                mx + 6.0
            )
        } else {
            format!(
                "<path d=\"M{mx:.1} 3 L{:.1} 10 L{mx:.1} 17 L{:.1} 10 Z\"/>",
                mx + 6.0,
                mx - 6.0
            )
        };
        let _ = writeln!(
            out,
            "<g class=\"{class}\" id=\"{id}-{class}-{}\"><title>{}</title>{marker}<line x1=\"{mx:.1}\" x2=\"{mx:.1}\" y1=\"16\" y2=\"{bottom:.1}\" stroke-width=\"2\"/></g>",
            i + 1,
            esc(&tip)
        );
    }
}

fn data_quality(out: &mut String, r: &Report, tf: TimeFmt) {
    let q = &r.data_quality;
    out.push_str("<section id=\"data-quality\">\n<h2>Data quality</h2>\n");
    let mut any = false;
    if !q.losses.is_empty() {
        any = true;
        out.push_str("<p>Events the kernel side could not hand over:</p>\n<table>\n<tr><th>Time (UTC)</th><th>Host</th><th>Events lost</th><th>Evidence</th></tr>\n");
        for l in &q.losses {
            let _ = writeln!(out, "<tr><td class=\"when\">{}</td><td>{}</td><td class=\"num bad\">{}</td><td>{}</td></tr>", esc(&tf.at(&l.ts)), esc(&l.host), l.lost, code(&l.evidence));
        }
        out.push_str("</table>\n");
    }
    if !q.gaps.is_empty() {
        any = true;
        out.push_str("<p>Gaps: the daemon died without a stop record; records in between may be missing:</p>\n<table>\n<tr><th>Host</th><th>Last record before</th><th>Noticed at</th><th>Length</th><th>Evidence</th></tr>\n");
        for g in &q.gaps {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td class=\"when\">{}</td><td class=\"when\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&g.host),
                esc(&tf.at(&g.after)),
                esc(&tf.at(&g.noticed)),
                esc(&g.ms.map(human_ms).unwrap_or_else(|| "-".into())),
                code(&g.evidence)
            );
        }
        out.push_str("</table>\n");
    }
    if !q.degraded.is_empty() {
        any = true;
        out.push_str("<p>Degraded periods (polling /proc instead of kernel hooks: short-lived binds may be missed):</p>\n<table>\n<tr><th>Host</th><th>Mode</th><th>Why</th><th>From</th><th>To</th><th>Length</th><th>Evidence</th></tr>\n");
        for d in &q.degraded {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{}</td><td class=\"when\">{}</td><td class=\"when\">{}</td><td>{}</td><td>{}</td></tr>",
                esc(&d.host),
                esc(&d.mode),
                esc(&d.reason),
                esc(&tf.at(&d.from)),
                esc(&d.to.as_deref().map(|t| tf.at(t)).unwrap_or_else(|| "end of window".into())),
                esc(&human_ms(d.ms)),
                code(&d.evidence)
            );
        }
        out.push_str("</table>\n");
    }
    if !q.bad_lines.is_empty() {
        any = true;
        let _ = writeln!(
            out,
            "<p>Lines skipped (first {}):</p>\n<table>\n<tr><th>Where</th><th>Problem</th></tr>",
            q.bad_lines.len()
        );
        for b in &q.bad_lines {
            let _ = writeln!(
                out,
                "<tr><td>{}</td><td>{}</td></tr>",
                code(&format!("{}:{}", b.file, b.line)),
                esc(&b.problem)
            );
        }
        out.push_str("</table>\n");
    }
    if q.notes_dropped > 0 {
        any = true;
        let _ = writeln!(
            out,
            "<p class=\"note\">{} more notes not listed; the summary counts them all.</p>",
            q.notes_dropped
        );
    }
    if !any {
        out.push_str(
            "<p>Nothing to report: no losses, gaps, degraded periods or damaged lines.</p>\n",
        );
    }
    out.push_str("</section>\n");
}

/// Escapes text for an HTML or SVG text node or attribute. Control and bidi
/// characters a process chose are shown visibly first (`crate::text::term`):
/// a right-to-left override would reorder the page, and the page may be read
/// with `cat`.
fn esc(s: &str) -> String {
    let mut out = String::with_capacity(s.len());
    for c in crate::text::term(s).chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&#39;"),
            _ => out.push(c),
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn html_escapes_entities_and_shows_controls() {
        assert_eq!(
            esc("<b a='1'>&\"\x1b]52;c;x\x07\u{202e}"),
            "&lt;b a=&#39;1&#39;&gt;&amp;&quot;\\x1b]52;c;x\\x07\\u{202e}"
        );
    }

    use crate::report::{build_from, Filter, Limits, DEMO_JOURNAL};

    fn demo_html() -> String {
        let r = build_from(
            vec![("demo.jsonl".into(), DEMO_JOURNAL.as_bytes())],
            Filter::default(),
            Limits::default(),
        )
        .unwrap();
        render(&r)
    }

    #[test]
    fn the_page_is_self_contained() {
        let h = demo_html();
        assert!(!h.contains("<script"));
        assert!(!h.contains("<link"));
        assert!(!h.contains("@import"));
        assert!(!h.contains("url("));
        // The only URL is the SVG namespace, which is a name, not a fetch.
        assert_eq!(
            h.matches("http").count(),
            h.matches("http://www.w3.org/2000/svg").count()
        );
    }

    #[test]
    fn the_demo_timeline_has_its_marks() {
        let h = demo_html();
        assert_eq!(h.matches("class=\"holder-bar\"").count(), 2);
        assert_eq!(h.matches("class=\"failed-bind\"").count(), 1);
        assert_eq!(h.matches("class=\"reaping\"").count(), 1);
        assert_eq!(h.matches("class=\"blocked\"").count(), 1);
        assert!(h.contains(">4242 platform-server</text>"));
    }

    #[test]
    fn text_is_escaped() {
        let line = r#"{"v":1,"ts":"2024-05-14T10:00:00.000Z","host":"h","source":"cgroup","kind":"reaping","proto":"tcp","port":1,"target":{"pid":1,"comm":"<script>"},"verdict":{"decision":"reap","reasons":["a & b"]},"outcome":"freed"}"#;
        let r = build_from(
            vec![("x".into(), line.as_bytes())],
            Filter::default(),
            Limits::default(),
        )
        .unwrap();
        let h = render(&r);
        assert!(!h.contains("<script>"));
        assert!(h.contains("&lt;script&gt;"));
    }
}

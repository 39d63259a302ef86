//! model -> **markdown**: the report as a GitHub PR comment.
//!
//! GitHub-flavoured Markdown only (tables, code spans, no HTML), so it reads
//! the same pasted into a comment, a terminal or a CI summary.

use std::fmt::Write;

use super::model::{ConflictReport, DataQuality, PortReport, Report, TimelineEntry};
use super::view::{self, human_ms, TimeFmt};
use crate::text;

/// Plain text in a table cell: control characters shown visibly (a newline
/// cannot end the row), pipes and every other markup character escaped.
fn cell(s: &str) -> String {
    text::md_text(s)
}

/// A code span in a table cell. GitHub splits cells on `|` even inside code
/// spans unless it is written `\|`, and reads `\\|` as an escaped backslash
/// and a cell edge: text that holds a backslash before a pipe is shown as
/// escaped plain text instead.
fn cell_code(s: &str) -> String {
    if text::term(s).contains("\\|") {
        text::md_text(s)
    } else {
        text::md_code(s).replace('|', "\\|")
    }
}

/// A code span outside tables.
fn code(s: &str) -> String {
    text::md_code(s)
}

/// Plain text outside tables.
fn plain(s: &str) -> String {
    text::md_text(s)
}

/// A PR comment holds 65,536 characters: past these, the Markdown lists
/// the rest compactly and points to `--format html` / `json`, which keep
/// everything the model kept.
const MD_CONFLICTS: usize = 20;
const MD_CONFLICT_ROWS: usize = 100;
const MD_PORTS: usize = 10;
const MD_TIMELINE: usize = 30;

fn table(out: &mut String, header: &[&str], rows: &[Vec<String>]) {
    let _ = writeln!(out, "| {} |", header.join(" | "));
    let _ = writeln!(out, "|{}", "---|".repeat(header.len()));
    for r in rows {
        let _ = writeln!(out, "| {} |", r.join(" | "));
    }
    out.push('\n');
}

fn kv_table(out: &mut String, rows: &[(&str, String)]) {
    let rows: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, v)| vec![format!("**{k}**"), cell(v)])
        .collect();
    table(out, &["", ""], &rows);
}

pub fn render(r: &Report) -> String {
    let tf = TimeFmt::of(r);
    let mut out = String::new();
    header(&mut out, r);
    conflicts(&mut out, r, tf);
    ports(&mut out, r, tf);
    quiet_ports(&mut out, r, tf);
    leaks_by_job(&mut out, r, tf);
    data_quality(&mut out, r, tf);
    inputs(&mut out, r);
    out
}

fn leaks_by_job(out: &mut String, r: &Report, tf: TimeFmt) {
    if r.leaks_by_job.is_empty() {
        return;
    }
    let _ = writeln!(
        out,
        "## Leaks by job
"
    );
    let rows: Vec<Vec<String>> = r
        .leaks_by_job
        .iter()
        .map(|l| {
            let [job, port, holder, since, fate, record] = view::job_leak_row(l, tf);
            vec![
                cell(&job),
                cell(&port),
                cell_code(&holder),
                since,
                cell(&fate),
                cell_code(&record),
            ]
        })
        .collect();
    table(out, &view::JOB_LEAK_HEADER, &rows);
}

fn header(out: &mut String, r: &Report) {
    let _ = writeln!(out, "# reaper report\n");
    let _ = writeln!(out, "**Window:** {}  ", plain(&view::window_line(r)));
    let _ = writeln!(out, "**Read:** {}\n", plain(&view::scope_line(r)));
    let _ = writeln!(out, "## Summary\n");
    kv_table(out, &view::summary_rows(r));
}

/// The last [`MD_CONFLICTS`] in full, the earlier ones a row each.
fn conflicts(out: &mut String, r: &Report, tf: TimeFmt) {
    let _ = writeln!(out, "## Conflicts\n");
    if r.conflicts.is_empty() {
        let _ = writeln!(out, "No failed bind of a held port in the window.\n");
    }
    if r.conflicts_dropped > 0 {
        let _ = writeln!(
            out,
            "_{} earlier conflicts are not listed (only the last {} are kept); the summary counts them all._\n",
            r.conflicts_dropped,
            r.conflicts.len()
        );
    }
    let older = r.conflicts.len().saturating_sub(MD_CONFLICTS);
    if older > 0 {
        let _ = writeln!(
            out,
            "The last {MD_CONFLICTS} conflicts in full; {} earlier below in short (all of them: `--format html` or `json`).\n",
            older
        );
    }
    for c in &r.conflicts[older..] {
        conflict_in_full(out, c, tf);
    }
    if older > 0 {
        earlier_conflicts(out, &r.conflicts[..older], tf);
    }
}

fn conflict_in_full(out: &mut String, c: &ConflictReport, tf: TimeFmt) {
    let _ = writeln!(
        out,
        "### Conflict #{}: {}\n",
        c.id,
        plain(&view::conflict_title(c))
    );
    let mut rows = view::conflict_rows(c, tf);
    let ev: Vec<String> = c.evidence.iter().map(|e| cell_code(e)).collect();
    rows.push(("Evidence", String::new()));
    let mut t: Vec<Vec<String>> = rows
        .iter()
        .map(|(k, v)| vec![format!("**{k}**"), cell(v)])
        .collect();
    if let Some(last) = t.last_mut() {
        last[1] = ev.join(", ");
    }
    table(out, &["", ""], &t);
}

/// `older`: the conflicts not shown in full; the last [`MD_CONFLICT_ROWS`]
/// of them get a row.
fn earlier_conflicts(out: &mut String, older: &[ConflictReport], tf: TimeFmt) {
    let _ = writeln!(
        out,
        "Earlier conflicts{}:\n",
        if older.len() > MD_CONFLICT_ROWS {
            format!(" (the last {MD_CONFLICT_ROWS})")
        } else {
            String::new()
        }
    );
    let rows: Vec<Vec<String>> = older[older.len().saturating_sub(MD_CONFLICT_ROWS)..]
        .iter()
        .map(|c| {
            vec![
                format!("#{}", c.id),
                tf.at(&c.first),
                cell(&view::port_name(&c.proto, c.port, &c.host)),
                cell(&format!("{} {}", c.tried.pid, c.tried.comm)),
                cell(&view::holders_short(&c.holders)),
                human_ms(c.blocked_ms),
                cell(c.resolution.as_str()),
            ]
        })
        .collect();
    table(
        out,
        &[
            "Conflict",
            "First failed bind",
            "Port",
            "Tried",
            "Held by",
            "Blocked",
            "Ended",
        ],
        &rows,
    );
}

/// The ports with the most trouble get sections; the others a row each.
fn ports(out: &mut String, r: &Report, tf: TimeFmt) {
    let _ = writeln!(out, "## Ports\n");
    let mut detailed: Vec<usize> = (0..r.ports.len()).collect();
    if r.ports.len() > MD_PORTS {
        detailed.sort_by_key(|&i| {
            let p = &r.ports[i];
            std::cmp::Reverse((p.counts.conflicts + p.counts.reapings, p.blocked_ms))
        });
        detailed.truncate(MD_PORTS);
        detailed.sort_unstable();
        let _ = writeln!(
            out,
            "{} ports saw a conflict or a reaping: the {MD_PORTS} with the most in full, the rest in the table after them (all in full: `--format html` or `json`, or `--port P`).\n",
            r.ports.len()
        );
    }
    if r.ports.is_empty() {
        let _ = writeln!(out, "No port saw a conflict or a reaping in the window.\n");
    }
    for p in detailed.iter().map(|&i| &r.ports[i]) {
        port_section(out, p, tf);
    }
    if detailed.len() < r.ports.len() {
        let rest: Vec<&PortReport> = (0..r.ports.len())
            .filter(|i| !detailed.contains(i))
            .map(|i| &r.ports[i])
            .collect();
        other_ports(out, &rest, tf);
    }
}

fn port_section(out: &mut String, p: &PortReport, tf: TimeFmt) {
    let _ = writeln!(
        out,
        "### {}\n",
        plain(&view::port_name(&p.proto, p.port, &p.host))
    );
    let _ = writeln!(out, "{}\n", plain(&view::port_counts(p)));
    if let Some(note) = view::truncation_note(p) {
        let _ = writeln!(out, "_{}_\n", plain(&note));
    }
    let skip = p.timeline.len().saturating_sub(MD_TIMELINE);
    if skip > 0 {
        let _ = writeln!(out, "_The last {MD_TIMELINE} entries here; {skip} earlier kept ones: `--format html` or `json`._\n");
    }
    let shown = &p.timeline[skip..];
    timeline(out, shown, tf);
    if !p.holders.is_empty() {
        timeline_processes(out, p, shown);
    }
    if !p.held_at_end.is_empty() {
        held_at_end(out, p, tf);
    }
}

fn timeline(out: &mut String, shown: &[TimelineEntry], tf: TimeFmt) {
    let rows: Vec<Vec<String>> = shown
        .iter()
        .map(|e| {
            let holder = e
                .holder
                .map(|h| format!(" (#{})", h + 1))
                .unwrap_or_default();
            vec![
                tf.at(&e.ts),
                cell(e.what.event()),
                cell(&format!("{} {}{holder}", e.pid, e.comm)),
                cell(&view::happened(&e.what)),
                cell_code(&e.evidence),
            ]
        })
        .collect();
    table(
        out,
        &[
            "Time (UTC)",
            "Event",
            "Process",
            "What happened",
            "Evidence",
        ],
        &rows,
    );
}

/// The identities behind the `shown` entries.
fn timeline_processes(out: &mut String, p: &PortReport, shown: &[TimelineEntry]) {
    let _ = writeln!(out, "Processes of this timeline, one row per identity seen (a process orphaned since its bind shows twice):\n");
    let used: std::collections::BTreeSet<usize> = shown.iter().filter_map(|e| e.holder).collect();
    let rows: Vec<Vec<String>> = p
        .holders
        .iter()
        .enumerate()
        .filter(|(i, _)| used.contains(i))
        .map(|(i, h)| {
            let id: Vec<String> = view::identity(&h.process, h.netns)
                .into_iter()
                .map(|(k, v)| format!("{} {}", cell(k), cell_code(&v)))
                .collect();
            vec![
                (i + 1).to_string(),
                h.process.pid.to_string(),
                cell_code(&h.process.comm),
                id.join("; "),
                cell(&view::holder_verdict(h)),
            ]
        })
        .collect();
    table(out, &["#", "PID", "comm", "Identity", "Verdict"], &rows);
}

fn held_at_end(out: &mut String, p: &PortReport, tf: TimeFmt) {
    let held: Vec<String> = p
        .held_at_end
        .iter()
        .map(|h| {
            format!(
                "pid {} {} since {} ({})",
                h.pid,
                code(&h.comm),
                tf.at(&h.since),
                code(&h.evidence)
            )
        })
        .collect();
    let _ = writeln!(
        out,
        "**Held at the end of the window:** {}\n",
        held.join(", ")
    );
}

/// Ports past [`MD_PORTS`]: a row each.
fn other_ports(out: &mut String, rest: &[&PortReport], tf: TimeFmt) {
    let rows: Vec<Vec<String>> = rest
        .iter()
        .map(|p| {
            vec![
                format!("{}/{}", p.proto, p.port),
                cell(&p.host),
                p.counts.conflicts.to_string(),
                p.counts.failed_binds.to_string(),
                p.counts.reapings.to_string(),
                human_ms(p.blocked_ms),
                tf.at(&p.last),
            ]
        })
        .collect();
    let _ = writeln!(out, "Other ports with conflicts or reapings:\n");
    table(
        out,
        &[
            "Port",
            "Host",
            "Conflicts",
            "Failed binds",
            "Reapings",
            "Blocked",
            "Last seen",
        ],
        &rows,
    );
}

fn quiet_ports(out: &mut String, r: &Report, tf: TimeFmt) {
    if r.quiet_ports.total == 0 {
        return;
    }
    let q = &r.quiet_ports;
    let _ = writeln!(out, "## Other ports\n");
    let _ = writeln!(
        out,
        "{} saw {}{} and no conflict{}.\n",
        view::plural(q.total, "port", "ports"),
        view::plural(q.claims, "claim", "claims"),
        view::churn_note(q.churn),
        if q.shown.len() < q.total as usize {
            format!(
                "; the {} busiest (use `--port P` for one's timeline)",
                q.shown.len()
            )
        } else {
            " (use `--port P` for one's timeline)".into()
        }
    );
    let rows: Vec<Vec<String>> = q
        .shown
        .iter()
        .map(|p| {
            vec![
                format!("{}/{}", p.proto, p.port),
                cell(&p.host),
                p.claims.to_string(),
                p.releases.to_string(),
                p.held_at_end.to_string(),
                tf.at(&p.last),
            ]
        })
        .collect();
    table(
        out,
        &[
            "Port",
            "Host",
            "Claims",
            "Releases",
            "Held at end",
            "Last seen",
        ],
        &rows,
    );
}

fn data_quality(out: &mut String, r: &Report, tf: TimeFmt) {
    let q = &r.data_quality;
    let _ = writeln!(out, "## Data quality\n");
    // Each writes its table when it has rows; all run (no short-circuit).
    let any = [
        losses(out, q, tf),
        gaps(out, q, tf),
        degraded(out, q, tf),
        bad_lines(out, q),
        notes_dropped(out, q),
    ]
    .contains(&true);
    if !any {
        let _ = writeln!(
            out,
            "Nothing to report: no losses, gaps, degraded periods or damaged lines.\n"
        );
    }
}

fn losses(out: &mut String, q: &DataQuality, tf: TimeFmt) -> bool {
    if q.losses.is_empty() {
        return false;
    }
    let rows: Vec<Vec<String>> = q
        .losses
        .iter()
        .map(|l| {
            vec![
                tf.at(&l.ts),
                cell(&l.host),
                l.lost.to_string(),
                cell_code(&l.evidence),
            ]
        })
        .collect();
    let _ = writeln!(out, "Events the kernel side could not hand over:\n");
    table(
        out,
        &["Time (UTC)", "Host", "Events lost", "Evidence"],
        &rows,
    );
    true
}

fn gaps(out: &mut String, q: &DataQuality, tf: TimeFmt) -> bool {
    if q.gaps.is_empty() {
        return false;
    }
    let rows: Vec<Vec<String>> = q
        .gaps
        .iter()
        .map(|g| {
            vec![
                cell(&g.host),
                tf.at(&g.after),
                tf.at(&g.noticed),
                g.ms.map(human_ms).unwrap_or_else(|| "-".into()),
                cell_code(&g.evidence),
            ]
        })
        .collect();
    let _ = writeln!(
        out,
        "Gaps: the daemon died without a stop record; records in between may be missing:\n"
    );
    table(
        out,
        &[
            "Host",
            "Last record before",
            "Noticed at",
            "Length",
            "Evidence",
        ],
        &rows,
    );
    true
}

fn degraded(out: &mut String, q: &DataQuality, tf: TimeFmt) -> bool {
    if q.degraded.is_empty() {
        return false;
    }
    let rows: Vec<Vec<String>> = q
        .degraded
        .iter()
        .map(|d| {
            vec![
                cell(&d.host),
                cell(&d.mode),
                cell(&d.reason),
                tf.at(&d.from),
                d.to.as_deref()
                    .map(|t| tf.at(t))
                    .unwrap_or_else(|| "end of window".into()),
                human_ms(d.ms),
                cell_code(&d.evidence),
            ]
        })
        .collect();
    let _ = writeln!(out, "Degraded periods (polling /proc instead of kernel hooks: short-lived binds may be missed):\n");
    table(
        out,
        &["Host", "Mode", "Why", "From", "To", "Length", "Evidence"],
        &rows,
    );
    true
}

fn bad_lines(out: &mut String, q: &DataQuality) -> bool {
    if q.bad_lines.is_empty() {
        return false;
    }
    let rows: Vec<Vec<String>> = q
        .bad_lines
        .iter()
        .map(|b| {
            vec![
                cell_code(&format!("{}:{}", b.file, b.line)),
                cell(&b.problem),
            ]
        })
        .collect();
    let _ = writeln!(out, "Lines skipped (first {}):\n", q.bad_lines.len());
    table(out, &["Where", "Problem"], &rows);
    true
}

fn notes_dropped(out: &mut String, q: &DataQuality) -> bool {
    if q.notes_dropped == 0 {
        return false;
    }
    let _ = writeln!(
        out,
        "_{} more notes not listed; the summary counts them all._\n",
        q.notes_dropped
    );
    true
}

fn inputs(out: &mut String, r: &Report) {
    let _ = writeln!(out, "## Inputs\n");
    let rows: Vec<Vec<String>> = r
        .inputs
        .iter()
        .map(|f| {
            vec![
                cell_code(&f.path),
                f.lines.to_string(),
                f.records.to_string(),
            ]
        })
        .collect();
    table(out, &["File", "Lines", "Records"], &rows);
    let _ = writeln!(out, "_reaper report, schema `{}`_", super::model::SCHEMA);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cells_cannot_break_tables() {
        assert_eq!(cell("a|b\nc"), r"a\|b\\nc");
        assert_eq!(cell_code("x`y|z"), "``x`y\\|z``");
        assert_eq!(cell_code("a\\|b"), "a\\\\\\|b");
        assert_eq!(plain("*x* [y]"), "\\*x\\* \\[y\\]");
    }

    #[test]
    fn what_a_process_chose_cannot_reach_the_reader_raw() {
        let evil = "srv\x1b]52;c;Zm9v\x07|[x](http://e)\n# h\u{9b}\u{202e}";
        for md in [cell(evil), cell_code(evil), code(evil), plain(evil)] {
            assert!(!md.chars().any(crate::text::is_unsafe), "{md:?}");
            assert!(!md.contains('\n'), "{md:?}");
        }
        // A pipe never ends a cell: every one is escaped.
        let c = cell_code(evil);
        assert_eq!(c.matches('|').count(), c.matches("\\|").count());
    }
}

//! journal -> **report**.
//!
//! Forensics from one or more journals: "what held :8080, since when, and
//! what did we kill?". The journal reader streams records by time into the
//! [`aggregate::Aggregator`], which folds them into a bounded
//! [`model::Report`]: facts only. [`view`] puts those facts into words;
//! [`markdown`] (a PR comment), [`html`] (one self-contained file with an
//! SVG timeline per port) and [`json`] (`reaper.report/v1`, docs/report.md)
//! only render them. `reaper report` is `commands::report` over this module.

use std::io::BufRead;

use anyhow::Result;
use chrono::{DateTime, Utc};

use crate::journal::reader::{Input, Merge};

mod aggregate;
mod html;
mod json;
mod markdown;
mod model;
mod view;

pub use aggregate::{Filter, Limits};
pub use model::Report;

/// `--format`: a PR comment, one HTML page, or `reaper.report/v1`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    Md,
    Html,
    Json,
}

/// The journal behind `reaper report --demo`: an orphaned `platform-server`
/// holding :8080 on a CI runner, the next job's server failing to bind, the
/// daemon reaping the orphan, the new server binding.
pub const DEMO_JOURNAL: &str = include_str!("demo.jsonl");

/// The name the demo's evidence points at.
pub const DEMO_NAME: &str = "demo.jsonl";

/// Reads every record of `reader` into a report.
pub fn build<I: Input>(reader: &mut Merge<I>, filter: Filter, limits: Limits) -> Result<Report> {
    let mut agg = aggregate::Aggregator::new(filter, limits);
    while let Some(rec) = reader.next_record()? {
        // Files open lazily: evidence names need the list as it grows.
        agg.sync_files(&reader.stats);
        agg.push(rec);
    }
    Ok(agg.finish(&reader.stats))
}

/// A report from in-memory journals (the demo, tests).
pub fn build_from<R: BufRead>(
    inputs: Vec<(String, R)>,
    filter: Filter,
    limits: Limits,
) -> Result<Report> {
    let mut reader = crate::journal::reader::MemoryReader::new(inputs);
    build(&mut reader, filter, limits)
}

/// The report as text in `format`.
pub fn render(report: &Report, format: Format) -> String {
    match format {
        Format::Md => markdown::render(report),
        Format::Html => html::render(report),
        Format::Json => json::render(report),
    }
}

/// Writes the report in `format` to `out`. JSON is serialized straight into
/// the writer: for a big report, the text never sits whole in memory.
pub fn write(report: &Report, format: Format, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    match format {
        Format::Json => json::write(report, out),
        _ => out.write_all(render(report, format).as_bytes()),
    }
}

/// Parses `--since`/`--until`: RFC 3339, or a duration before `now` ("30m",
/// "2h", "1d", "1h30m", optionally followed by "ago"). Bad input names the
/// flag and the accepted forms.
pub fn parse_time(flag: &str, value: &str, now: DateTime<Utc>) -> Result<i64, crate::error::Error> {
    let v = value.trim();
    if let Ok(t) = DateTime::parse_from_rfc3339(v) {
        return Ok(t.timestamp_millis());
    }
    let rel = v.strip_suffix("ago").map(str::trim_end).unwrap_or(v);
    if !rel.is_empty() && rel.starts_with(|c: char| c.is_ascii_digit()) {
        if let Ok(d) = humantime::parse_duration(rel) {
            if let Ok(d) = chrono::Duration::from_std(d) {
                if let Some(t) = now.checked_sub_signed(d) {
                    return Ok(t.timestamp_millis());
                }
            }
        }
    }
    Err(crate::error::bad_input(format!(
        "{flag} '{value}' is not a time: give RFC 3339 (e.g. 2024-05-14T10:00:00Z) \
         or a duration before now (e.g. 30m, 2h, 1d)"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn now() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2024-05-14T12:00:00Z")
            .unwrap()
            .with_timezone(&Utc)
    }

    #[test]
    fn times_are_rfc3339_or_before_now() {
        let ms = |s| parse_time("--since", s, now()).unwrap();
        assert_eq!(ms("2024-05-14T10:00:00Z"), ms("2h"));
        assert_eq!(ms("2024-05-14T11:30:00+00:00"), ms("30m"));
        assert_eq!(ms("2024-05-13T12:00:00Z"), ms("1d"));
        assert_eq!(ms("1h30m ago"), ms("90m"));
    }

    #[test]
    fn bad_times_name_the_flag_and_the_forms() {
        for bad in ["yesterday", "", "-2h", "2024-05-14", "h"] {
            let err = parse_time("--until", bad, now()).unwrap_err();
            assert_eq!(err.exit(), crate::error::Exit::BadInput, "{bad}");
            let msg = err.to_string();
            assert!(
                msg.contains("--until") && msg.contains("RFC 3339") && msg.contains("2h"),
                "{msg}"
            );
        }
    }
}

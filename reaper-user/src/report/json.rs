//! model -> **json**: the report for machines, schema `reaper.report/v1`.
//!
//! The [`Report`] serialized as is; docs/report.md documents every field.
//! Compatible changes (a new optional field) keep `v1`; anything else bumps
//! [`SCHEMA`](super::model::SCHEMA).

use super::model::Report;

/// Pretty-printed, with a final newline: diffs well and pipes into `jq`.
pub fn render(r: &Report) -> String {
    let mut s = serde_json::to_string_pretty(r).expect("a report serializes");
    s.push('\n');
    s
}

/// The same, into a writer.
pub fn write(r: &Report, out: &mut dyn std::io::Write) -> std::io::Result<()> {
    serde_json::to_writer_pretty(&mut *out, r)?;
    out.write_all(b"\n")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{build_from, Filter, Limits, DEMO_JOURNAL};

    #[test]
    fn the_json_reads_back_and_names_its_schema() {
        let r = build_from(
            vec![("demo.jsonl".into(), DEMO_JOURNAL.as_bytes())],
            Filter::default(),
            Limits::default(),
        )
        .unwrap();
        let text = render(&r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], "reaper.report/v1");
        let back: Report = serde_json::from_str(&text).unwrap();
        assert_eq!(back, r);
    }
}

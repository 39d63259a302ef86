//! model -> **json**: the report for machines, schema `reaper.report/v1`.
//!
//! The [`Report`] serialized as is, but for a timeline entry's facts, which
//! JSON gives as the entry's `event` and its words (`detail`, from
//! [`view::happened`]). docs/report.md documents every field. Compatible
//! changes (a new optional field) keep `v1`; anything else bumps
//! [`SCHEMA`](super::model::SCHEMA).

use serde::ser::{Serialize, SerializeStruct, Serializer};

use super::model::{Report, TimelineEntry};
use super::view;

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

/// `{ts, event, pid, comm, holder, netns, detail, conflict, evidence}`, in
/// that order (the v1 layout).
impl Serialize for TimelineEntry {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut e = s.serialize_struct("TimelineEntry", 9)?;
        e.serialize_field("ts", &self.ts)?;
        e.serialize_field("event", self.what.event())?;
        e.serialize_field("pid", &self.pid)?;
        e.serialize_field("comm", &self.comm)?;
        e.serialize_field("holder", &self.holder)?;
        e.serialize_field("netns", &self.netns)?;
        e.serialize_field("detail", &view::happened(&self.what))?;
        e.serialize_field("conflict", &self.conflict)?;
        e.serialize_field("evidence", &self.evidence)?;
        e.end()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::report::{build_from, Filter, Limits, DEMO_JOURNAL};

    #[test]
    fn the_json_names_its_schema_and_words_each_entry() {
        let r = build_from(
            vec![("demo.jsonl".into(), DEMO_JOURNAL.as_bytes())],
            Filter::default(),
            Limits::default(),
        )
        .unwrap();
        let text = render(&r);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], "reaper.report/v1");
        // The text is the model serialized whole.
        assert_eq!(v, serde_json::to_value(&r).unwrap());
        let timeline = v["ports"][0]["timeline"].as_array().unwrap();
        assert_eq!(timeline.len(), r.ports[0].timeline.len());
        for (json, e) in timeline.iter().zip(&r.ports[0].timeline) {
            assert_eq!(json.as_object().unwrap().len(), 9, "{json}");
            assert_eq!(json["event"], e.what.event());
            assert_eq!(json["detail"], view::happened(&e.what));
        }
        // Field order is the v1 layout.
        let entry = text.find("\"timeline\": [").unwrap();
        let order = [
            "\"ts\"",
            "\"event\"",
            "\"pid\"",
            "\"detail\"",
            "\"evidence\"",
        ];
        let at: Vec<usize> = order
            .iter()
            .map(|k| entry + text[entry..].find(k).unwrap())
            .collect();
        assert!(at.windows(2).all(|w| w[0] < w[1]), "{at:?}");
    }
}

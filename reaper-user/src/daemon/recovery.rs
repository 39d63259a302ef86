//! Crash recovery at start: did the previous run stop cleanly?
//!
//! The last complete line of the journal says. A line cut short by a crash
//! (no newline at the end) is tolerated: it is skipped here, and closed with
//! a newline before the daemon appends, so the next record starts clean.

use std::fs::{File, OpenOptions};
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use anyhow::{Context, Result};

/// How much of the end of the journal is read to find the last record.
const TAIL: u64 = 256 * 1024;

/// The last complete record's `kind` and `ts`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LastRecord {
    pub kind: String,
    pub ts: String,
}

/// Reads the last complete, parseable record of a journal (None when empty
/// or missing); also returns whether the file ends in a torn line.
pub fn last_record(path: &Path) -> Result<(Option<LastRecord>, bool)> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok((None, false)),
        Err(e) => return Err(e).with_context(|| format!("reading the journal {}", path.display())),
    };
    let len = f.metadata()?.len();
    let start = len.saturating_sub(TAIL);
    f.seek(SeekFrom::Start(start))?;
    let mut buf = Vec::new();
    f.read_to_end(&mut buf)?;
    let torn = !buf.is_empty() && !buf.ends_with(b"\n");
    let complete = match buf.iter().rposition(|&b| b == b'\n') {
        Some(i) => &buf[..i],
        None => return Ok((None, torn)),
    };
    for line in complete.split(|&b| b == b'\n').rev() {
        let Ok(v) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if let (Some(kind), Some(ts)) = (
            v.get("kind").and_then(|k| k.as_str()),
            v.get("ts").and_then(|t| t.as_str()),
        ) {
            return Ok((
                Some(LastRecord {
                    kind: kind.into(),
                    ts: ts.into(),
                }),
                torn,
            ));
        }
    }
    Ok((None, torn))
}

/// Ends a torn last line with a newline so it stays one bad line.
pub fn close_torn_line(path: &Path) -> Result<()> {
    let mut f = OpenOptions::new()
        .append(true)
        .open(path)
        .with_context(|| {
            format!(
                "opening the journal {} to close its torn last line",
                path.display()
            )
        })?;
    f.write_all(b"\n")
        .with_context(|| format!("closing the torn last line of {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_the_last_complete_record_past_a_torn_line() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("j");
        assert_eq!(last_record(&p).unwrap(), (None, false));
        std::fs::write(&p, "{\"kind\":\"start\",\"ts\":\"T1\"}\n{\"kind\":\"claim\",\"ts\":\"T2\"}\n{\"kind\":\"cla").unwrap();
        let (last, torn) = last_record(&p).unwrap();
        assert!(torn);
        assert_eq!(
            last.unwrap(),
            LastRecord {
                kind: "claim".into(),
                ts: "T2".into()
            }
        );
        close_torn_line(&p).unwrap();
        assert!(!last_record(&p).unwrap().1);
    }
}

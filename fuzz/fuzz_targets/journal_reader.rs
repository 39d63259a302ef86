//! Journal bytes -> records, as `reaper report` reads them: torn lines,
//! garbage, unknown versions and kinds, several inputs merged by time.
//! Invariants: no panic on any bytes; every line is accounted for (records
//! and damage never exceed the lines read); records come out in time order
//! except those counted out of order; every record written back as JSON
//! reads back as the same record.
#![no_main]

use std::io::Cursor;

use libfuzzer_sys::fuzz_target;
use reaper::journal::reader::{classify_line, Line, MemoryReader};

fuzz_target!(|data: &[u8]| {
    // The first byte splits the rest into two hosts' journals.
    let Some((&cut, rest)) = data.split_first() else {
        return;
    };
    let at = (cut as usize * rest.len()) / 255;
    let (a, b) = rest.split_at(at.min(rest.len()));
    let mut r = MemoryReader::new(vec![
        ("a".to_string(), Cursor::new(a)),
        ("b".to_string(), Cursor::new(b)),
    ]);
    let mut n = 0u64;
    let mut last = i64::MIN;
    let mut backwards = 0u64;
    while let Some(loc) = r.next_record().expect("reading memory cannot fail") {
        n += 1;
        if loc.ms < last {
            backwards += 1;
        } else {
            last = loc.ms;
        }
        let line = serde_json::to_vec(&*loc.record).unwrap();
        match classify_line(&line, true) {
            Line::Record(back, ms) => {
                assert_eq!(*back, *loc.record);
                assert_eq!(ms, loc.ms);
            }
            other => panic!("a record did not read back: {other:?}"),
        }
    }
    let s = &r.stats;
    assert_eq!(s.records, n);
    assert_eq!(s.out_of_order, backwards);
    let lines: u64 = s.files.iter().map(|f| f.lines).sum();
    // A torn line with a record appended to it counts as both.
    assert!(s.records + s.unknown_version + s.unknown_kind + s.garbage_lines <= lines);
    assert!(s.torn_lines <= lines);
});

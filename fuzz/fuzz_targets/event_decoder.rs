//! Ring buffer records -> Event -> Matcher -> Ledger: short or garbage
//! records must be refused or handled, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper::events::Matcher;
use reaper::ledger::Ledger;
use reaper_common::Event;

fuzz_target!(|data: &[u8]| {
    let mut matcher = Matcher::new(data.first().is_some_and(|b| b & 1 == 1));
    let mut ledger = Ledger::new("cgroup");
    let mut out = Vec::new();
    for chunk in data.chunks(Event::SIZE) {
        match Event::from_bytes(chunk) {
            Some(ev) => matcher.feed(ev, &mut out),
            None => assert!(chunk.len() < Event::SIZE),
        }
    }
    matcher.flush(&mut out);
    for o in &out {
        let _ = ledger.apply(o);
    }
});

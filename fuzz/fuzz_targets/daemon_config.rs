//! The daemon's TOML config -> Config. It decides hooks, journal path,
//! metrics exposure and the kill policy, so a bad one must be refused with a
//! line, never half-read. Invariants: no panic on any text; an error says
//! something and points inside the file; an accepted config keeps its
//! promises (an absolute journal path, metrics on loopback unless allowed
//! otherwise, every reap rule naming a program) and summarises itself.
#![no_main]

use std::path::Path;

use libfuzzer_sys::fuzz_target;
use reaper::daemon::config::Config;
use reaper::vocab::Action;

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match Config::parse(text, Path::new("/etc/reaper/fuzz.toml")) {
        Err(e) => {
            assert!(!e.message.trim().is_empty(), "a blank error for {text:?}");
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= text.lines().count() + 1, "line {line}");
            }
        }
        Ok(c) => {
            assert!(c.journal.is_absolute(), "{:?}", c.journal);
            if let Some(addr) = c.metrics_listen {
                assert!(addr.ip().is_loopback() || c.metrics_allow_non_loopback);
            }
            for r in &c.policy.rules {
                if r.action == Action::Reap {
                    assert!(r.matcher.names_a_program(), "rule {}", r.name);
                }
            }
            let _ = c.summary();
        }
    }
});

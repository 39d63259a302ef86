//! Policy TOML -> rules -> verdicts. A policy file decides what gets killed,
//! so a bad one must be refused with a line number, never half-read.
//! Invariants: no panic on any text; an accepted policy has unique,
//! non-empty names and no reap rule that names no program; judging accepted
//! rules against holders never panics, always gives reasons, and never
//! reaps pid 1, reaper itself, or a holder in another network namespace.
#![no_main]

use std::collections::BTreeSet;

use libfuzzer_sys::fuzz_target;
use reaper::holders::{example, Process};
use reaper::policy::{Context, Policy};
use reaper::vocab::{Action, Decision};

const NS: u64 = 4026531840;

/// The library's example holder, in a CI job that ended (so `job =
/// "ended"` rules are exercised).
fn process(pid: u32, netns: u64) -> Process {
    Process {
        job: Some(reaper::holders::job::Job {
            provider: "github".into(),
            id: "github_1f2e".into(),
            run: None,
            name: None,
            ended: Some(true),
        }),
        ..example::server(pid, netns)
    }
}

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let policy = match Policy::from_toml_str(text) {
        Ok(p) => p,
        Err(e) => {
            assert!(!e.message.is_empty());
            if let Some(line) = e.line {
                assert!(line >= 1 && line <= text.lines().count() + 1, "line {line}");
            }
            return;
        }
    };
    let mut names = BTreeSet::new();
    for r in &policy.rules {
        assert!(!r.name.trim().is_empty());
        assert!(names.insert(r.name.clone()), "duplicate name {}", r.name);
        if r.action == Action::Reap {
            assert!(r.matcher.names_a_program());
        }
    }
    for p in &policy.protects {
        assert!(!p.name.trim().is_empty());
        assert!(names.insert(p.name.clone()), "duplicate name {}", p.name);
    }
    let ctx = Context {
        reaper_pid: 999,
        caller_chain: vec![998, 1],
        caller_netns: NS,
        netns: NS,
        now: chrono::DateTime::parse_from_rfc3339("2026-11-28T13:00:00Z")
            .unwrap()
            .into(),
        kernel_threads: BTreeSet::new(),
        workload: Default::default(),
    };
    let s = example::listener(NS);
    for (pid, netns) in [(4242, NS), (1, NS), (999, NS), (998, NS), (4243, NS + 1)] {
        let v = policy.judge(&process(pid, netns), &s, &ctx);
        assert!(!v.reasons.is_empty());
        if pid != 4242 {
            assert_eq!(v.decision, Decision::Protect, "pid {pid}: {v:?}");
        }
    }
});

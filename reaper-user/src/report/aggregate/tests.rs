use super::*;
use crate::journal::reader::MemoryReader;
use crate::report::model::Report;
use std::io::Cursor;

pub(crate) fn report_of(text: &str, filter: Filter, limits: Limits) -> Report {
    let mut r = MemoryReader::new(vec![(
        "demo.jsonl".to_string(),
        Cursor::new(text.as_bytes().to_vec()),
    )]);
    let mut agg = Aggregator::new(filter, limits);
    agg.sync_files(&r.stats);
    while let Some(rec) = r.next_record().unwrap() {
        agg.push(rec);
    }
    agg.finish(&r.stats)
}

#[test]
fn an_intent_without_an_outcome_is_an_unfinished_reaping() {
    let intent = |pid: u32, ts: &str| {
        format!(
            r#"{{"v":1,"ts":"{ts}","host":"h","source":"proc","kind":"reaping","proto":"tcp","port":8080,"target":{{"pid":{pid},"comm":"srv","started_at":"2026-11-30T10:00:00Z"}},"verdict":{{"decision":"reap","reasons":["r"]}},"outcome":"in_progress"}}"#
        )
    };
    let text = [
        intent(7, "2026-11-30T12:00:00.000Z"),
        // pid 8's intent is followed by its outcome: finished.
        intent(8, "2026-11-30T12:00:01.000Z"),
        r#"{"v":1,"ts":"2026-11-30T12:00:02.000Z","host":"h","source":"proc","kind":"reaping","proto":"tcp","port":8080,"target":{"pid":8,"comm":"srv","started_at":"2026-11-30T10:00:00Z"},"verdict":{"decision":"reap","reasons":["r"]},"signals":[{"pid":8,"signal":"SIGTERM","ts":"2026-11-30T12:00:01.500Z"}],"outcome":"freed"}"#.to_string(),
    ]
    .join("\n");
    let r = report_of(&text, Filter::default(), Limits::default());
    assert_eq!(r.summary.unfinished.len(), 1, "{:?}", r.summary.unfinished);
    assert_eq!(r.summary.unfinished[0].target.pid, 7);
    assert_eq!(r.summary.unfinished[0].outcome, Outcome::InProgress);
    // Intents are not reapings; the outcome is.
    assert_eq!(r.summary.reapings, 1);
    let rows = crate::report::view::summary_rows(&r);
    let row = rows
        .iter()
        .find(|(k, _)| *k == "Unfinished reapings")
        .unwrap();
    assert!(
        row.1
            .starts_with("pid 7 (srv) on tcp/8080 on h: started at"),
        "{}",
        row.1
    );
    assert!(row.1.contains("never finished"), "{}", row.1);
}

fn demo() -> Report {
    report_of(
        crate::report::DEMO_JOURNAL,
        Filter::default(),
        Limits::default(),
    )
}

#[test]
fn the_demo_story_adds_up() {
    let r = demo();
    assert_eq!(r.summary.conflicts, 1);
    assert_eq!(r.summary.failed_binds, 3);
    assert_eq!(r.summary.ports_involved, 1);
    assert_eq!(r.summary.reapings_by_outcome.get("freed"), Some(&1));
    let c = &r.conflicts[0];
    assert_eq!(c.resolution, Resolution::Reaped);
    assert_eq!(c.tried.comm, "platform-server");
    assert_eq!(c.holders[0].ppid, Some(1));
    assert_eq!(c.done.len(), 1);
    assert!(c.rebound_by.is_some());
    assert!(c.blocked_ms > 0);
    assert_eq!(r.summary.blocked_ms, c.blocked_ms);
    let p = &r.ports[0];
    assert_eq!(p.port, 8080);
    // Two claims: the orphan's (released) and the new server's (open).
    assert_eq!(p.bars.len(), 2);
    assert!(!p.bars[0].open && p.bars[1].open);
    assert_eq!(p.held_at_end.len(), 1);
    // Every entry carries its evidence.
    assert!(p
        .timeline
        .iter()
        .all(|e| e.evidence.starts_with("demo.jsonl:")));
}

#[test]
fn unresolved_conflicts_last_until_the_window_end() {
    let text = crate::report::DEMO_JOURNAL
        .lines()
        .filter(|l| {
            !l.contains("\"kind\":\"release\"")
                && !l.contains("\"kind\":\"reaping\"")
                && !l.contains(r#""process":{"pid":5120"#)
        })
        .collect::<Vec<_>>()
        .join("\n");
    let r = report_of(&text, Filter::default(), Limits::default());
    let c = &r.conflicts[0];
    assert_eq!(c.resolution, Resolution::Open);
    assert_eq!(r.summary.still_blocked, 1);
    let end = crate::journal::reader::parse_ms(r.window.end.as_ref().unwrap()).unwrap();
    let first = crate::journal::reader::parse_ms(&c.first).unwrap();
    assert_eq!(c.blocked_ms, (end - first) as u64);
}

#[test]
fn timelines_are_capped_and_say_so() {
    let mut lines = Vec::new();
    for i in 0..50u32 {
        let ts = rfc(1_715_680_800_000 + i as i64 * 1000);
        lines.push(format!(r#"{{"v":1,"ts":"{ts}","host":"h","source":"cgroup","kind":"claim","proto":"tcp","port":9000,"process":{{"pid":{i},"comm":"x"}}}}"#));
        lines.push(format!(r#"{{"v":1,"ts":"{ts}","host":"h","source":"cgroup","kind":"release","proto":"tcp","port":9000,"process":{{"pid":{i},"comm":"x"}}}}"#));
    }
    let limits = Limits {
        timeline: 10,
        ..Limits::default()
    };
    let r = report_of(
        &lines.join("\n"),
        Filter {
            port: Some(9000),
            ..Filter::default()
        },
        limits,
    );
    let p = &r.ports[0];
    assert_eq!(p.timeline.len(), 10);
    assert_eq!(p.timeline_dropped, 90);
    assert_eq!(p.counts.claims, 50);
    // Without --port the port is quiet: counted, not listed.
    let r = report_of(&lines.join("\n"), Filter::default(), Limits::default());
    assert!(r.ports.is_empty());
    assert_eq!(r.quiet_ports.total, 1);
    assert_eq!(r.quiet_ports.claims, 50);
}

#[test]
fn a_port_turning_interesting_keeps_its_open_claims_and_says_what_it_lost() {
    // An earlier claim and release on :8080, before the demo's story.
    let early = r#"{"v":1,"ts":"2024-05-14T09:59:00.000Z","host":"runner-7","source":"cgroup","kind":"claim","netns":4026531840,"proto":"tcp","addr":"0.0.0.0","port":8080,"process":{"pid":4000,"comm":"platform-server"}}
{"v":1,"ts":"2024-05-14T09:59:30.000Z","host":"runner-7","source":"cgroup","kind":"release","netns":4026531840,"proto":"tcp","addr":"0.0.0.0","port":8080,"process":{"pid":4000,"comm":"platform-server"}}"#;
    let r = report_of(
        &format!("{early}\n{}", crate::report::DEMO_JOURNAL),
        Filter::default(),
        Limits::default(),
    );
    let p = &r.ports[0];
    assert_eq!(p.counts.claims, 3);
    // The orphan's claim and listen were rebuilt; the early pair is gone.
    assert_eq!(p.timeline_dropped, 2);
    assert_eq!(p.timeline[0].what.event(), "claim");
    assert_eq!(p.timeline[0].pid, 4242);
    assert_eq!(p.timeline[1].what.event(), "listen");
    // With --port, the same port keeps everything.
    let r = report_of(
        &format!("{early}\n{}", crate::report::DEMO_JOURNAL),
        Filter {
            port: Some(8080),
            ..Filter::default()
        },
        Limits::default(),
    );
    assert_eq!(r.ports[0].timeline_dropped, 0);
    assert_eq!(r.ports[0].timeline[0].pid, 4000);
}

#[test]
fn filters_by_host_port_and_time() {
    let all = demo();
    let none = report_of(
        crate::report::DEMO_JOURNAL,
        Filter {
            host: Some("elsewhere".into()),
            ..Filter::default()
        },
        Limits::default(),
    );
    assert_eq!(none.summary.records, 0);
    let other = report_of(
        crate::report::DEMO_JOURNAL,
        Filter {
            port: Some(9),
            ..Filter::default()
        },
        Limits::default(),
    );
    assert_eq!(other.summary.conflicts, 0);
    assert!(other.summary.records < all.summary.records);
    let first = crate::journal::reader::parse_ms(&all.conflicts[0].first).unwrap();
    let late = report_of(
        crate::report::DEMO_JOURNAL,
        Filter {
            since_ms: Some(first + 60_000),
            ..Filter::default()
        },
        Limits::default(),
    );
    assert_eq!(late.summary.conflicts, 0);
}

#[test]
fn churn_summaries_count_as_claims_and_releases_with_one_entry() {
    let churn = |count: u64, ts: &str| {
        format!(
            r#"{{"v":1,"ts":"{ts}","host":"h","source":"cgroup","kind":"churn","proto":"tcp","addr":"127.0.0.1","port":9100,"process":{{"pid":7,"comm":"tests"}},"count":{count},"first":"2026-11-30T12:00:00.000Z","last":"2026-11-30T12:00:09.000Z","held_ms_min":0,"held_ms_max":3}}"#
        )
    };
    let text = [
        churn(4000, "2026-11-30T12:00:10.000Z"),
        churn(50, "2026-11-30T12:00:20.000Z"),
    ]
    .join("\n");
    let r = report_of(&text, Filter::default(), Limits::default());
    assert_eq!(r.quiet_ports.total, 1);
    assert_eq!(r.quiet_ports.claims, 4050);
    assert_eq!(r.quiet_ports.churn, 4050);
    assert_eq!(r.quiet_ports.shown[0].releases, 4050);
    assert_eq!(r.quiet_ports.shown[0].held_at_end, 0);
    let md = crate::report::markdown::render(&r);
    assert!(md.contains("4050 of them churn"), "{md}");
    let r = report_of(
        &text,
        Filter {
            port: Some(9100),
            ..Filter::default()
        },
        Limits::default(),
    );
    let p = &r.ports[0];
    assert_eq!((p.counts.claims, p.counts.churn), (4050, 4050));
    assert_eq!(p.timeline.len(), 2);
    assert_eq!(p.timeline[0].what.event(), "churn");
    let words = crate::report::view::happened(&p.timeline[0].what);
    assert!(
        words.starts_with("bound and released 4000 times from 2026-11-30T12:00:00.000Z"),
        "{words}"
    );
    assert!(words.contains("each held 0-3 ms"), "{words}");
    assert!(p.bars.is_empty(), "churn draws no holder bar");
}

#[test]
fn leaks_by_job_name_what_each_hook_freed_and_what_is_still_held() {
    // Job <b>|x</b> (a name a process chose) claims :8080 and :9090 (charged
    // by the daemon); its job end frees :8080; :9090's claim is still held
    // after it. A claim of another job whose end never ran is no leak.
    let job = r#"{"provider":"github","id":"g1","run":"7","name":"<b>|x</b>"}"#;
    let claim = |ts: &str, port: u16, pid: u32, job: &str| {
        format!(
            r#"{{"v":1,"ts":"{ts}","host":"h","source":"cgroup","kind":"claim","proto":"tcp","addr":"127.0.0.1","port":{port},"process":{{"pid":{pid},"comm":"srv"}},"job":{job},"job_via":"environment"}}"#
        )
    };
    let end = format!(
        r#"{{"v":1,"ts":"2026-11-30T12:00:05.000Z","host":"h","source":"proc","kind":"job","phase":"end","job":{job},"via":"daemon","ports":[{{"port":8080,"proto":"tcp","outcome":"freed"}},{{"port":6060,"proto":"tcp","outcome":"freed"}}],"leftovers":[{{"port":8080,"proto":"tcp","pid":7,"comm":"srv","decision":"reap","rule":"this job","signals":[]}},{{"port":6060,"proto":"tcp","pid":10,"comm":"srv","decision":"reap","rule":"this job","signals":[]}}],"outcome":"ok","exit":0,"message":"m","dry_run":false}}"#
    );
    let other = r#"{"provider":"github","id":"g2"}"#;
    let text = [
        claim("2026-11-30T12:00:00.000Z", 8080, 7, job),
        claim("2026-11-30T12:00:01.000Z", 9090, 8, job),
        claim("2026-11-30T12:00:02.000Z", 7070, 9, other),
        end,
        // Written after the hook's record (the daemon's churn window), made before it.
        claim("2026-11-30T12:00:03.000Z", 6060, 10, job),
    ]
    .join("\n");
    let r = report_of(&text, Filter::default(), Limits::default());
    let rows: Vec<(u16, &str, Option<&str>, Option<&str>)> = r
        .leaks_by_job
        .iter()
        .map(|l| {
            (
                l.port,
                l.status.as_str(),
                l.freed_by.as_deref(),
                l.since.as_deref(),
            )
        })
        .collect();
    assert_eq!(
        rows,
        [
            (
                8080,
                "freed",
                Some("job end of github job g1"),
                Some("2026-11-30T12:00:00.000Z")
            ),
            (
                6060,
                "freed",
                Some("job end of github job g1"),
                Some("2026-11-30T12:00:03.000Z")
            ),
            (9090, "still_held", None, Some("2026-11-30T12:00:01.000Z")),
        ]
    );
    assert_eq!(r.leaks_by_job[0].job.id, "g1");
    assert_eq!(r.leaks_by_job[2].evidence, "demo.jsonl:2");
    // The job's name is data: escaped in each view.
    let md = crate::report::render(&r, crate::report::Format::Md);
    assert!(md.contains("## Leaks by job"), "{md}");
    assert!(md.contains("\\<b\\>\\|x"), "{md}");
    assert!(!md.contains("<b>") && !md.contains(" |x"), "{md}");
    let html = crate::report::render(&r, crate::report::Format::Html);
    assert!(html.contains("&lt;b&gt;"), "{html}");
    assert!(!html.contains("<b>|x"), "{html}");
    let json = crate::report::render(&r, crate::report::Format::Json);
    assert!(json.contains("\"leaks_by_job\""), "{json}");
}

//! `reaper report` on a live journal while the daemon rotates it: a bind
//! churn makes a daemon with a tiny `journal_max_bytes` rotate many times a
//! second, and reports run against it meanwhile. Every report must succeed
//! (no ENOENT for a rotated file that was renamed or removed between the
//! listing and the open). Root; `cargo build` first.

use std::os::unix::fs::MetadataExt;
use std::time::{Duration, Instant};

use reaper_tests::daemon::{Churn, Daemon};
use reaper_tests::{reaper, require_root};

#[test]
fn reports_read_a_journal_that_rotates_under_them() {
    require_root();
    // Records are written as they come (no churn window: that would hold
    // them back a second, and the reports below would race nothing).
    let d = Daemon::start(
        "journal_max_bytes = 8192\njournal_keep = 4\njournal_churn_window = \"0s\"\n",
    );
    // 200 µs pacing: the journal rotates many times a second.
    let churn = Churn::start(Duration::from_micros(200));
    let inode = || std::fs::metadata(&d.journal).map(|m| m.ino()).ok();
    // Rotation is under way: the live file was replaced at least once.
    let first = reaper_tests::poll_until("the journal to exist", Duration::from_secs(10), &inode);
    let mut rotations = 0u32;
    let mut last = first;
    let mut runs = 0u32;
    let until = Instant::now() + Duration::from_secs(12);
    while runs < 60 && Instant::now() < until {
        let out = reaper()
            .args(["report", "--format", "json", "--journal"])
            .arg(&d.journal)
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "report run {runs} failed while the journal rotated ({rotations} rotations seen):\n{}",
            String::from_utf8_lossy(&out.stderr)
        );
        runs += 1;
        if let Some(now) = inode() {
            if now != last {
                rotations += 1;
                last = now;
            }
        }
    }
    drop(churn);
    assert!(
        rotations >= 5,
        "the journal rotated only {rotations} times during {runs} reports: the test proves nothing"
    );
    eprintln!("{runs} reports, {rotations} rotations seen between them, all read");
}

//! The daemon under a bind storm that overflows a deliberately small ring
//! buffer: the losses are journaled and counted, and a reconciliation scan
//! repairs the ledger. In its own test binary so the storm cannot starve the
//! daemons of the other tests (cargo runs test binaries one at a time).

use std::time::Duration;

use reaper_tests::daemon::*;
use serde_json::Value;

fn kind(r: &Value) -> &str {
    r["kind"].as_str().unwrap_or("")
}

fn bind_storm(n: u32) {
    for _ in 0..n {
        // SAFETY: plain syscalls on an fd this loop owns.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0);
            let mut a: libc::sockaddr_in = std::mem::zeroed();
            a.sin_family = libc::AF_INET as u16;
            a.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            libc::bind(
                fd,
                &a as *const _ as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_in>() as u32,
            );
            libc::close(fd);
        }
    }
}

#[test]
fn ring_buffer_losses_are_journaled_and_the_ledger_is_reconciled() {
    assert!(
        is_root(),
        "this test needs root: run `cargo xtask test` as root"
    );
    // The smallest ring buffer: a storm must overflow it.
    let d = Daemon::start("ringbuf_size = 4096\n");
    bind_storm(20_000);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    bind_storm(20_000);
    let loss = d.wait_record("a loss record", |r| kind(r) == "loss");
    assert!(loss["lost"].as_u64().unwrap() > 0);
    d.wait_record("a reconcile record", |r| kind(r) == "reconcile");
    assert!(d.metric("reaper_ringbuf_lost_events_total") > Some(0.0));
    // Whether its bind event was lost or not, after reconciling the ledger
    // knows the listener made during the storm.
    wait_for(
        "the ledger to know the listener",
        Duration::from_secs(10),
        || {
            let r = d.query(&format!(r#"{{"cmd":"who","port":{port}}}"#));
            (r["claims"][0]["pid"] == std::process::id()).then_some(())
        },
    );
    promtool_check(&d.scrape()).unwrap();
}

//! A bind storm overflows a deliberately small ring buffer: the losses are
//! counted and reported, never silent. In its own test binary so the storm
//! cannot starve the other tests' watchers (cargo runs binaries one by one).

use std::time::Duration;

use reaper_tests::*;
use serde_json::Value;

#[test]
fn a_storm_that_overflows_a_small_ring_buffer_reports_losses() {
    require_root();
    let mut cmd = reaper();
    cmd.args(["watch", "--json", "--all", "--ringbuf-size", "4096"]);
    let mut w = Spawned::spawn(&mut cmd);
    w.wait_err("attached", Duration::from_secs(30));
    let mut storm = Spawned::spawn(binder().args(["storm", "2", "20000"]));
    storm.wait_line("the storm to end", Duration::from_secs(120), |l| {
        l.starts_with("done")
    });
    let line = w.wait_line("a loss line", Duration::from_secs(20), |l| {
        serde_json::from_str::<Value>(l).is_ok_and(|v| v["kind"] == "loss")
    });
    let loss: Value = serde_json::from_str(&line).unwrap();
    assert!(loss["lost"].as_u64().unwrap() > 0, "{loss}");
    assert!(loss["lost_total"].as_u64().unwrap() >= loss["lost"].as_u64().unwrap());
}

//! The corners of `job start` / `job end`: a port that stays held (exit
//! 3), a holder with no job judged as `free` judges it, and a server with
//! no job variables charged by the daemon through its ancestor.

use super::*;

/// A port that stays held: the hooks say so with exit 3 and
/// `still_held`. The holder ignores SIGTERM and the deadline comes before
/// the grace ends, so no SIGKILL is sent: `job end` (the job's own server)
/// and `job start` (a server an ended job left) both give up at the
/// deadline with the server alive.
#[test]
fn the_hooks_exit_3_when_a_port_stays_held() {
    require_root();
    let mut runner = Runner::start();
    let mut a = runner.job("held", "9601");
    let pa = free_port();
    let server = a.server_with(pa, "", "--ignore-term");
    runner.track(server);
    let slow = ["--grace", "60s", "--deadline", "1s", "--json"];
    let mut args = vec!["job", "end"];
    args.extend(slow);
    let end = a.hook(&args);
    assert_eq!(end.code, 3, "{end:?}");
    let doc = end.json();
    assert_eq!(doc["outcome"], "still_held", "{doc:#}");
    assert_eq!(doc["exit"], 3);
    let p = port_doc(&doc, pa);
    assert_eq!(p["outcome"], "still_held", "{doc:#}");
    assert_eq!(p["targets"][0]["pid"], server, "{doc:#}");
    assert!(alive(server) && !can_listen(pa));

    // The job ends without its hook; the next job's start finds the port.
    a.end_without_hook();
    let mut b = runner.job("next", "9602");
    let port = pa.to_string();
    let mut args = vec!["job", "start", "--port", &port];
    args.extend(slow);
    let start = b.hook(&args);
    assert_eq!(start.code, 3, "{start:?}");
    let doc = start.json();
    let p = port_doc(&doc, pa);
    assert_eq!(p["outcome"], "still_held", "{doc:#}");
    assert_eq!(p["holders"][0]["verdict"]["rule"], "ended job", "{doc:#}");
    assert!(alive(server) && !can_listen(pa));
}

/// `job start` judges a holder that names no job by the policy alone, as
/// `free` judges it: without a policy it is kept (exit 4, nothing
/// signalled); with a policy, the verdict is `free`'s, word for word, and
/// a reap frees the port.
#[test]
fn job_start_judges_a_holder_with_no_job_as_free_does() {
    require_root();
    let mut runner = Runner::start();
    let p = free_port();
    // A server of no job: this test's own child.
    let server = reaper_tests::Spawned::spawn(
        std::process::Command::new(reaper_tests::fixture_bin("platform-server"))
            .args(["--port", &p.to_string()])
            .env_remove("RUNNER_TRACKING_ID")
            .env_remove("GITHUB_RUN_ID")
            .env_remove("CI_JOB_ID"),
    );
    poll_until("the server to listen", Duration::from_secs(10), || {
        (!can_listen(p)).then_some(())
    });
    let pid = server.pid();
    let mut d = runner.job("nojob", "9701");
    let port = p.to_string();

    let kept = d.hook(&["job", "start", "--port", &port, "--json"]);
    assert_eq!(kept.code, 4, "{kept:?}");
    let doc = kept.json();
    let h = &port_doc(&doc, p)["holders"][0];
    assert_eq!(h["process"]["pid"], pid, "{doc:#}");
    assert!(h["process"]["job"].is_null(), "{doc:#}");
    assert_eq!(h["verdict"]["decision"], "keep", "{doc:#}");
    assert!(alive(pid));

    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[rule]]\nname = \"stale test servers\"\naction = \"reap\"\nmatch = {{ exe = \"platform-server\", cmdline = \"/--port {p}$/\" }}\n"
        ),
    )
    .unwrap();
    let policy = policy.to_str().unwrap();
    let free = reaper_tests::reaper()
        .args(["free", &port, "--dry-run", "--json", "--policy", policy])
        .env("REAPER_CONTROL_SOCKET", dir.path().join("none.sock"))
        .output()
        .unwrap();
    let free: serde_json::Value = serde_json::from_slice(&free.stdout)
        .unwrap_or_else(|e| panic!("free printed no JSON ({e}): {}", reaper_tests::show(&free)));
    let dry = d.hook(&[
        "job",
        "start",
        "--port",
        &port,
        "--dry-run",
        "--json",
        "--policy",
        policy,
    ]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let doc = dry.json();
    let by_job = &port_doc(&doc, p)["holders"][0]["verdict"];
    let by_free = &free["holders"][0]["verdict"];
    assert_eq!(by_free["decision"], "reap", "{free:#}");
    assert_eq!(by_job, by_free, "job start: {doc:#}\nfree: {free:#}");
    assert!(alive(pid), "a dry run signalled");

    let start = d.hook(&[
        "job", "start", "--port", &port, "--json", "--policy", policy,
    ]);
    assert_eq!(start.code, 0, "{start:?}");
    assert_eq!(port_doc(&start.json(), p)["outcome"], "freed");
    assert!(can_listen(p));
}

/// A server whose environment names no job at all (`env -i`), started by
/// a step's shell that is still there when the daemon takes in the claim;
/// then the shell exits and the server hangs from init. The daemon
/// charged the claim through that ancestor, so `job end` frees it; a
/// scan sees a jobless orphan and only names it. (The daemon reads the
/// ancestry when it takes in the bind's event: a parent gone within that
/// moment is not seen.)
#[test]
fn a_server_with_no_job_variables_is_charged_through_its_ancestor_at_claim_time() {
    use reaper_tests::daemon::Daemon;
    require_root();
    let d = Daemon::start("");
    let mut runner = Runner::with_daemon(&d.socket);
    let mut a = runner.job("anc", "9801");
    let p = free_port();
    let go = runner.dir.path().join("anc-go");
    let server = a.jobless_server_of_a_step(p, &go);
    runner.track(server);
    let env = std::fs::read(format!("/proc/{server}/environ")).unwrap();
    assert!(env.is_empty(), "the server's environment is not empty");

    charged_through_an_ancestor(&d, p, server, &a.tracking_id);
    // The step ends: the server hangs from init, naming no job.
    std::fs::write(&go, "").unwrap();
    poll_until(
        "the server to hang from init",
        Duration::from_secs(20),
        || {
            let stat = std::fs::read_to_string(format!("/proc/{server}/stat")).ok()?;
            let ppid = stat
                .rsplit(')')
                .next()?
                .split_whitespace()
                .nth(1)?
                .to_string();
            (ppid == "1").then_some(())
        },
    );

    // A scan (no daemon) cannot charge it: named, not signalled.
    let none = runner.dir.path().join("none.sock");
    let scan = a.hook_with(
        &[("REAPER_CONTROL_SOCKET", none.to_str().unwrap())],
        &["job", "end", "--json"],
    );
    assert_eq!(scan.code, 0, "{scan:?}");
    let doc = scan.json();
    assert_eq!(doc["source"], "scan");
    assert!(
        doc["unattributed"]
            .to_string()
            .contains(&format!("\"pid\":{server}")),
        "{doc:#}"
    );
    assert!(
        alive(server),
        "the scan signalled a server it cannot charge"
    );

    let end = a.hook(&["job", "end", "--json"]);
    assert_eq!(end.code, 0, "{end:?}");
    let doc = end.json();
    assert_eq!(doc["source"], "daemon", "{doc:#}");
    let port = port_doc(&doc, p);
    assert_eq!(port["outcome"], "freed", "{doc:#}");
    assert_eq!(port["holders"][0]["process"]["pid"], server);
    assert_eq!(port["holders"][0]["verdict"]["rule"], "this job");
    assert!(!alive(server) && can_listen(p));
}

/// The daemon's claim on `port`: `server`'s, charged to the job through
/// an ancestor.
fn charged_through_an_ancestor(
    d: &reaper_tests::daemon::Daemon,
    p: u16,
    server: u32,
    tracking_id: &str,
) {
    let claim = super::charged_claim(d, p);
    assert_eq!(claim["pid"], server, "{claim:#}");
    assert_eq!(claim["job"]["id"], tracking_id, "{claim:#}");
    assert!(
        claim["job_via"]
            .as_str()
            .unwrap()
            .starts_with("ancestor pid"),
        "{claim:#}"
    );
}

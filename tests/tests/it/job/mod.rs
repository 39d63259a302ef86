//! `reaper job start` / `reaper job end` in a runner-shaped harness
//! (tests/src/runner.rs): a long-lived runner, one worker per job with
//! GitHub's variables, steps that double-fork and `setsid` their servers,
//! one that clears RUNNER_TRACKING_ID first, one that `docker run -p`s a
//! FROM-scratch container, two jobs at once. Real processes, real sockets,
//! the real Docker Engine; no daemon (the scan path).

use std::time::Duration;

use reaper_tests::containers::{alive, docker, require_docker, unique, Image, Removed};
use reaper_tests::fixture::can_listen;
use reaper_tests::runner::{Runner, Worker};
use reaper_tests::{free_port, poll_until, require_root};

fn answers(port: u16) -> bool {
    use std::io::Read;
    let Ok(mut s) = std::net::TcpStream::connect(("127.0.0.1", port)) else {
        return false;
    };
    let mut buf = String::new();
    s.read_to_string(&mut buf).is_ok() && buf == "ok\n"
}

/// The ports a `job start|end --json` document judged, sorted.
/// Job A's leftovers in the job tests: a server that keeps its variables,
/// one that clears RUNNER_TRACKING_ID first, and a container published
/// with -p (answering before this returns).
struct JobA {
    pa: u16,
    pcleared: u16,
    pc: u16,
    server_a: u32,
    cleared: u32,
    name: String,
    _removed: Removed,
}

impl JobA {
    fn start(runner: &mut Runner, a: &mut Worker, image: &Image, label: &str) -> JobA {
        let (pa, pcleared, pc) = (free_port(), free_port(), free_port());
        let server_a = a.server(pa, false);
        runner.track(server_a);
        let cleared = a.server(pcleared, true);
        runner.track(cleared);
        let name = unique(label);
        let removed = Removed(name.clone());
        a.run(&format!(
            "docker run -d --name {name} -p 127.0.0.1:{pc}:80 {}",
            image.tag
        ));
        poll_until(
            "the container's port to answer",
            Duration::from_secs(20),
            || answers(pc).then_some(()),
        );
        JobA {
            pa,
            pcleared,
            pc,
            server_a,
            cleared,
            _removed: removed,
            name,
        }
    }
}

fn ports_of(doc: &serde_json::Value) -> Vec<u16> {
    let mut v: Vec<u16> = doc["ports"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["port"].as_u64().unwrap() as u16)
        .collect();
    v.sort_unstable();
    v
}

/// The entry of one port in a `job start|end --json` document.
fn port_doc(doc: &serde_json::Value, port: u16) -> serde_json::Value {
    doc["ports"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["port"] == port)
        .unwrap_or_else(|| panic!("port {port} is not in the run: {doc:#}"))
        .clone()
}

#[test]
fn job_end_frees_exactly_the_jobs_ports_and_spares_the_rest() {
    require_docker();
    let image = Image::build();
    let mut runner = Runner::start();

    // Job A: a server that keeps its variables, one that clears
    // RUNNER_TRACKING_ID first, a container published with -p.
    let mut a = runner.job("a", "9001");
    let JobA {
        pa,
        pcleared: _,
        pc,
        server_a,
        cleared,
        name,
        _removed,
    } = JobA::start(&mut runner, &mut a, &image, "reaper-job-a");

    // Job B, at the same time: its own server.
    let mut b = runner.job("b", "9002");
    let pb = free_port();
    let server_b = b.server(pb, false);
    runner.track(server_b);

    // A's job-completed hook, as the runner runs it: a step of worker A.
    // No daemon: it says it scanned, and what a scan cannot see.
    let dry = a.hook(&["job", "end", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    for needle in [
        format!("job end for github job {} (run 9001, name build) (from a scan)", a.tracking_id),
        "note: no daemon: the holders' jobs come from their environment and ancestry now; a server that cleared its variables after its parent died cannot be charged to its job".to_string(),
        format!("port {pa}/tcp: dry run"),
        "holder(s) not attributable".to_string(),
    ] {
        assert!(dry.stdout.contains(&needle), "{needle}:\n{}", dry.stdout);
    }
    let dry = a.hook(&["job", "end", "--dry-run", "--json"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    let doc = dry.json();
    assert_eq!(port_doc(&doc, pa)["outcome"], "dry_run", "{doc:#}");
    assert!(alive(server_a), "a dry run signalled");

    let end = a.hook(&["job", "end", "--json"]);
    assert_eq!(end.code, 0, "{end:?}");
    let doc = end.json();
    assert_eq!(doc["phase"], "end");
    assert_eq!(doc["job"]["id"], a.tracking_id.as_str(), "{doc:#}");
    assert_eq!(doc["source"], "scan");
    // Exactly A's ports: its server's and its container's (not B's, not
    // the cleared-variable server's: a scan cannot charge it).
    let mut want = vec![pa, pc];
    want.sort_unstable();
    assert_eq!(ports_of(&doc), want, "{doc:#}");
    let p = port_doc(&doc, pa);
    assert_eq!(p["outcome"], "freed", "{doc:#}");
    assert_eq!(p["holders"][0]["process"]["pid"], server_a);
    assert_eq!(p["holders"][0]["verdict"]["rule"], "this job");
    let p = port_doc(&doc, pc);
    assert_eq!(p["outcome"], "freed", "{doc:#}");
    assert_eq!(p["containers"][0]["container"]["name"], name.as_str());
    assert!(p["container_stops"][0]["error"].is_null(), "{doc:#}");

    // The server that cleared its variable: named, not signalled.
    let un = doc["unattributed"].to_string();
    assert!(un.contains(&format!("\"pid\":{cleared}")), "{doc:#}");
    assert!(un.contains("tracking id (cleared)"), "{doc:#}");

    // What was freed binds; what was not is alive.
    assert!(!alive(server_a), "A's server outlived job end");
    assert!(can_listen(pa) && can_listen(pc));
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Status}}", &name]),
        "exited"
    );
    for (pid, who) in [
        (cleared, "the server that cleared its variable"),
        (server_b, "job B's server"),
        (runner.pid(), "the runner"),
        (a.pid, "job A's worker (the hook's parent)"),
        (b.pid, "job B's worker"),
    ] {
        assert!(alive(pid), "{who} (pid {pid}) was signalled");
    }
    assert!(!can_listen(pb), "job B's port was freed");
}

#[test]
fn job_start_frees_a_port_an_ended_job_left_and_refuses_a_running_jobs() {
    require_root();
    let mut runner = Runner::start();
    // Job C ends without its hook: its server is left behind.
    let mut c = runner.job("c", "9003");
    let pc = free_port();
    let left = c.server(pc, false);
    runner.track(left);
    c.end_without_hook();
    // Job B runs, with a server.
    let mut b = runner.job("b2", "9004");
    let pb = free_port();
    let server_b = b.server(pb, false);
    runner.track(server_b);

    // Job D's job-started hook.
    let mut d = runner.job("d", "9005");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let start = d.hook(&[
        "job",
        "start",
        "--port",
        &pc.to_string(),
        "--json",
        "--journal",
        journal.to_str().unwrap(),
    ]);
    assert_eq!(start.code, 0, "{start:?}");
    let doc = start.json();
    let p = port_doc(&doc, pc);
    assert_eq!(p["outcome"], "freed", "{doc:#}");
    let holder = &p["holders"][0];
    assert_eq!(holder["process"]["pid"], left);
    assert_eq!(holder["verdict"]["rule"], "ended job");
    assert_eq!(holder["process"]["job"]["id"], c.tracking_id.as_str());
    assert_eq!(holder["process"]["job"]["run"], "9003");
    assert_eq!(holder["process"]["job"]["name"], "build");
    assert!(holder["process"]["started_at"].is_string());
    assert!(!alive(left) && can_listen(pc));
    let rec = std::fs::read_to_string(&journal).unwrap();
    let rec: serde_json::Value = serde_json::from_str(rec.lines().last().unwrap()).unwrap();
    assert_eq!(rec["kind"], "job");
    assert_eq!(rec["phase"], "start");
    assert_eq!(rec["ports"][0]["outcome"], "freed");
    assert_eq!(rec["leftovers"][0]["signals"][0]["signal"], "SIGTERM");

    // A running job's port: refused, named, nothing signalled.
    let refused = d.hook(&["job", "start", "--port", &format!("{pb},{pc}")]);
    assert_eq!(refused.code, 4, "{refused:?}");
    for needle in [
        format!("port {pb}/tcp is held by pid {server_b}"),
        format!("github job {}", b.tracking_id),
        "which is still running".to_string(),
    ] {
        assert!(refused.stderr.contains(&needle), "{needle}: {refused:?}");
    }
    assert!(alive(server_b), "a running job's server was signalled");
    assert!(!can_listen(pb));
}

#[test]
fn job_summary_goes_to_github_step_summary() {
    require_root();
    let mut runner = Runner::start();
    let mut e = runner.job("e", "9006");
    let pe = free_port();
    let server = e.server(pe, false);
    runner.track(server);
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.md");
    let out = e.run(&format!(
        "GITHUB_STEP_SUMMARY='{}' NO_COLOR=1 '{}' job end",
        summary.display(),
        reaper_tests::reaper_bin().display()
    ));
    assert!(out.contains(&format!("port {pe}/tcp: freed")), "{out}");
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(
        md.starts_with("### reaper job end: github job github\\_e"),
        "{md}"
    );
    assert!(
        md.contains(&format!("| {pe}/tcp | pid {server} platform-server |")),
        "{md}"
    );
    assert!(!alive(server));
}

#[test]
fn bad_input_is_refused_with_exit_2_and_nothing_signalled() {
    require_root();
    let (holder, port) = reaper_tests::hold(&["127.0.0.1", "0", "listen"]);
    let run = |args: &[&str]| {
        let mut cmd = reaper_tests::reaper();
        cmd.args(args).env("NO_COLOR", "1");
        for v in reaper_tests::runner::JOB_VARS {
            cmd.env_remove(v);
        }
        let out = cmd.output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    };
    let (code, err) = run(&["job", "end"]);
    assert_eq!(code, 2, "{err}");
    for v in [
        "RUNNER_TRACKING_ID",
        "CI_JOB_ID",
        "BUILDKITE_JOB_ID",
        "--job ID --provider P",
    ] {
        assert!(err.contains(v), "{v}: {err}");
    }
    let (code, err) = run(&["job", "start", "--port", &port.to_string()]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("no CI job found"), "{err}");
    let (code, err) = run(&[
        "job",
        "start",
        "--job",
        "7",
        "--provider",
        "gitlab",
        "--port",
        "80-",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("range '80-' needs both ends"), "{err}");
    let (code, err) = run(&[
        "job",
        "start",
        "--job",
        "7",
        "--provider",
        "gitlab",
        "--port",
        "0",
    ]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("port 0"), "{err}");
    let (code, err) = run(&["job", "end", "--job", "7", "--provider", "circleci"]);
    assert_eq!(code, 2, "{err}");
    assert!(err.contains("'circleci' is not known"), "{err}");
    assert!(alive(holder.pid()), "bad input signalled a holder");
    assert!(!can_listen(port));
}

#[test]
fn the_hook_scripts_and_the_action_work_as_the_runner_runs_them() {
    require_root();
    let ws = reaper_tests::workspace();
    let bin = reaper_tests::reaper_bin();
    let mut runner = Runner::start();

    // deploy/hooks: job-start with REAPER_JOB_PORTS, job-end.
    let mut f = runner.job("f", "9007");
    let pf = free_port();
    let out = f.run(&format!(
        "REAPER='{}' REAPER_JOB_PORTS={pf} '{}'",
        bin.display(),
        ws.join("deploy/hooks/job-start.sh").display()
    ));
    assert!(out.contains(&format!("port {pf}/tcp: free")), "{out}");
    let server = f.server(pf, false);
    runner.track(server);
    let out = f.run(&format!(
        "REAPER='{}' '{}'",
        bin.display(),
        ws.join("deploy/hooks/job-end.sh").display()
    ));
    assert!(out.contains(&format!("port {pf}/tcp: freed")), "{out}");
    assert!(!alive(server) && can_listen(pf));

    // The Action's `mode: job-end`, through its script as action.yml runs it.
    let mut g = runner.job("g", "9008");
    let pg = free_port();
    let server = g.server(pg, false);
    runner.track(server);
    let dir = tempfile::tempdir().unwrap();
    let summary = dir.path().join("summary.md");
    g.run(&format!(
        "INPUT_MODE=job-end RUNNER_TEMP='{}' GITHUB_STEP_SUMMARY='{}' PATH='{}':\"$PATH\" bash '{}'",
        dir.path().display(),
        summary.display(),
        bin.parent().unwrap().display(),
        ws.join("deploy/action/run.sh").display()
    ));
    assert!(!alive(server) && can_listen(pg));
    let md = std::fs::read_to_string(&summary).unwrap();
    assert!(
        md.contains(&format!("| {pg}/tcp | pid {server} platform-server |")),
        "{md}"
    );
    let journal = std::fs::read_to_string(dir.path().join("reaper-journal.jsonl")).unwrap();
    assert!(journal.contains("\"kind\":\"job\""), "{journal}");
}

/// With the daemon: each claim was charged to its job when it was made,
/// so `job end` for job A frees exactly A's ports: its server, the server
/// that cleared RUNNER_TRACKING_ID and `setsid()`'d away (the scan path
/// names it and leaves it) and its container; job B's server, the runner
/// and the workers are never signalled. The hook says it asked the
/// daemon; `who`, `ports` and `report` show each claim's job.
#[test]
fn with_the_daemon_job_end_frees_the_server_that_cleared_its_variables() {
    use reaper_tests::daemon::Daemon;
    require_docker();
    let image = Image::build();
    let d = Daemon::start("");
    let mut runner = Runner::with_daemon(&d.socket);
    let mut a = runner.job("da", "9101");
    let JobA {
        pa,
        pcleared,
        pc,
        server_a,
        cleared,
        name,
        _removed,
    } = JobA::start(&mut runner, &mut a, &image, "reaper-job-da");
    let mut b = runner.job("db", "9102");
    let pb = free_port();
    let server_b = b.server(pb, false);
    runner.track(server_b);

    // The daemon charged each claim when it was made.
    let charged = |port: u16| charged_claim(&d, port);
    let c = charged(pcleared);
    assert_eq!(c["pid"], cleared);
    assert_eq!(c["job"]["id"], a.tracking_id.as_str(), "{c:#}");
    assert!(c["job_via"].as_str().unwrap().contains("run 9101"), "{c:#}");
    assert_eq!(charged(pa)["job"]["id"], a.tracking_id.as_str());
    assert_eq!(charged(pb)["job"]["id"], b.tracking_id.as_str());

    // `who` shows the claim's job (from the daemon's ledger).
    let out = reaper_tests::reaper()
        .args(["who", &pcleared.to_string()])
        .env("REAPER_CONTROL_SOCKET", &d.socket)
        .env("NO_COLOR", "1")
        .output()
        .unwrap();
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("charged to github job {}", a.tracking_id)),
        "{text}"
    );
    // `ports` too, from the daemon's ledger: the table and the JSON.
    let ports = |json: bool| {
        let mut cmd = reaper_tests::reaper();
        cmd.arg("ports")
            .env("REAPER_CONTROL_SOCKET", &d.socket)
            .env("NO_COLOR", "1");
        if json {
            cmd.arg("--json");
        }
        let out = cmd.output().unwrap();
        assert!(out.status.success(), "{}", reaper_tests::show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let table = ports(false);
    assert!(
        table.contains(&format!(
            "{cleared} platform-server [github job {}]",
            a.tracking_id
        )),
        "{table}"
    );
    let holdings: serde_json::Value = serde_json::from_str(&ports(true)).unwrap();
    let held = holdings
        .as_array()
        .unwrap()
        .iter()
        .find(|h| h["socket"]["port"] == pcleared)
        .unwrap_or_else(|| panic!("no {pcleared} in ports: {holdings:#}"));
    assert_eq!(held["processes"][0]["pid"], cleared, "{held:#}");
    assert_eq!(
        held["processes"][0]["job"]["id"],
        a.tracking_id.as_str(),
        "{held:#}"
    );

    // The hook says it asked the daemon.
    let dry = a.hook(&["job", "end", "--dry-run"]);
    assert_eq!(dry.code, 0, "{dry:?}");
    for needle in [
        format!(
            "job end for github job {} (run 9101, name build) (from a daemon)",
            a.tracking_id
        ),
        "note: asked the daemon (tier ".to_string(),
        format!("port {pcleared}/tcp: dry run"),
    ] {
        assert!(dry.stdout.contains(&needle), "{needle}:\n{}", dry.stdout);
    }
    assert!(alive(cleared) && alive(server_a), "a dry run signalled");

    let end = a.hook(&["job", "end", "--json"]);
    assert_eq!(end.code, 0, "{end:?}");
    let doc = end.json();
    assert_eq!(doc["source"], "daemon", "{doc:#}");
    let p = port_doc(&doc, pcleared);
    assert_eq!(p["outcome"], "freed", "{doc:#}");
    assert_eq!(p["holders"][0]["process"]["pid"], cleared);
    assert_eq!(p["holders"][0]["verdict"]["rule"], "this job");
    assert_eq!(port_doc(&doc, pa)["outcome"], "freed", "{doc:#}");
    // Exactly A's ports: not B's.
    let mut want = vec![pa, pcleared, pc];
    want.sort_unstable();
    assert_eq!(ports_of(&doc), want, "{doc:#}");
    let p = port_doc(&doc, pc);
    assert_eq!(p["outcome"], "freed", "{doc:#}");
    assert_eq!(p["containers"][0]["container"]["name"], name.as_str());
    assert!(p["container_stops"][0]["error"].is_null(), "{doc:#}");
    assert!(doc["unattributed"].is_null(), "{doc:#}");
    assert!(!alive(cleared) && !alive(server_a));
    assert!(can_listen(pa) && can_listen(pcleared) && can_listen(pc));
    assert_eq!(
        docker(&["inspect", "--format", "{{.State.Status}}", &name]),
        "exited"
    );
    for (pid, who) in [
        (server_b, "job B's server"),
        (runner.pid(), "the runner"),
        (a.pid, "job A's worker (the hook's parent)"),
        (b.pid, "job B's worker"),
        (d.pid(), "the daemon"),
    ] {
        assert!(alive(pid), "{who} (pid {pid}) was signalled");
    }
    assert!(!can_listen(pb), "job B's port was freed");
    assert!(
        end.stderr.is_empty(),
        "the daemon did not take the run: {end:?}"
    );

    // The daemon journaled the hook's run and counted it.
    let rec = d.wait_record("the job end record (not the dry run's)", |r| {
        r["kind"] == "job" && r["phase"] == "end" && r["dry_run"] == false
    });
    assert_eq!(rec["via"], "daemon", "{rec:#}");
    let scrape = d.scrape();
    reaper_tests::daemon::promtool_check(&scrape)
        .unwrap_or_else(|e| panic!("promtool: {e}\n{scrape}"));
    // Every holder and container the run judged stale is a leftover: A's
    // two servers and its container at least.
    let reaped = |key: &str| -> usize {
        doc["ports"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|p| p[key].as_array().cloned().unwrap_or_default())
            .filter(|j| j["verdict"]["decision"] == "reap")
            .count()
    };
    let leftovers = reaped("holders") + reaped("containers");
    assert!(leftovers >= 3, "{doc:#}");
    for line in [
        "reaper_job_end_freed_total 3".to_string(),
        format!("reaper_job_leftovers_total{{provider=\"github\"}} {leftovers}"),
        "reaper_job_leftovers_total{provider=\"gitlab\"} 0".to_string(),
    ] {
        assert!(scrape.lines().any(|l| l == line), "{line}:\n{scrape}");
    }

    // The report: each of job A's ports, since its claim, freed by its hook.
    let out = reaper_tests::reaper()
        .args(["report", "--format", "json", "--journal"])
        .arg(&d.journal)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let leaks = report["leaks_by_job"]
        .as_array()
        .unwrap_or_else(|| panic!("no leaks by job: {report:#}"));
    let leak = leaks
        .iter()
        .find(|l| l["port"] == pcleared)
        .unwrap_or_else(|| panic!("no leak of {pcleared}: {leaks:#?}"));
    assert_eq!(leak["job"]["id"], a.tracking_id.as_str(), "{leak:#}");
    assert_eq!(leak["status"], "freed");
    assert_eq!(
        leak["freed_by"],
        format!("job end of github job {}", a.tracking_id).as_str()
    );
    assert!(
        leak["since"].is_string(),
        "{leak:#}\n{}",
        std::fs::read_to_string(&d.journal).unwrap()
    );
    assert!(leaks.iter().all(|l| l["port"] != pb), "{leaks:#?}");

    // The port's timeline: its claim, charged to job A when it was made.
    let out = reaper_tests::reaper()
        .args([
            "report",
            "--format",
            "json",
            "--port",
            &pcleared.to_string(),
            "--journal",
        ])
        .arg(&d.journal)
        .output()
        .unwrap();
    let report: serde_json::Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&out.stderr)));
    let claim = report["ports"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["port"] == pcleared)
        .flat_map(|p| p["timeline"].as_array().unwrap().iter())
        .find(|e| e["event"] == "claim" && e["pid"] == cleared)
        .unwrap_or_else(|| panic!("no claim of {pcleared} by {cleared}: {report:#}"));
    assert!(
        claim["detail"]
            .as_str()
            .unwrap()
            .contains(&format!("charged to github job {}", a.tracking_id)),
        "{claim:#}"
    );
}

/// `job start` without `--port` checks the config's `[job] ports`; a config
/// that does not load is bad input (exit 2), for `job start` and for
/// `doctor --config` alike, and nothing is signalled.
#[test]
fn job_start_checks_the_configs_job_ports() {
    require_root();
    let mut runner = Runner::start();
    // A job that ended without its hook left a server on a job port.
    let mut c = runner.job("cfg-left", "9201");
    let (pleft, pfree) = (free_port(), free_port());
    let left = c.server(pleft, false);
    runner.track(left);
    c.end_without_hook();

    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("reaper.toml");
    std::fs::write(
        &good,
        format!("journal = \"/tmp/reaper-unused.jsonl\"\n[job]\nports = [{pleft}, \"{pfree}\"]\n"),
    )
    .unwrap();
    let bad = dir.path().join("bad.toml");
    std::fs::write(&bad, "[job]\nports = [\"80-\"]\n").unwrap();

    let mut d = runner.job("cfg", "9202");
    let start = d.hook(&["job", "start", "--config", good.to_str().unwrap(), "--json"]);
    assert_eq!(start.code, 0, "{start:?}");
    let doc = start.json();
    assert_eq!(port_doc(&doc, pfree)["outcome"], "already_free", "{doc:#}");
    let p = port_doc(&doc, pleft);
    assert_eq!(p["outcome"], "freed", "{doc:#}");
    assert_eq!(p["holders"][0]["verdict"]["rule"], "ended job");
    assert!(!alive(left) && can_listen(pleft));

    let refused = d.hook(&["job", "start", "--config", bad.to_str().unwrap()]);
    assert_eq!(refused.code, 2, "{refused:?}");
    assert!(
        refused.stderr.contains("line 2") && refused.stderr.contains("needs both ends"),
        "{refused:?}"
    );
    let out = reaper_tests::reaper()
        .args(["doctor", "--config"])
        .arg(&bad)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("needs both ends"), "{err}");
}

/// A rule of the user's policy keeps a job's deliberate daemon: `job end
/// --policy` leaves it running (its port `kept`, the verdict naming the
/// rule, exit 0: a kept daemon does not fail the job) and stops the job's
/// other server.
#[test]
fn a_policy_rule_keeps_a_jobs_deliberate_daemon() {
    require_root();
    let mut runner = Runner::start();
    let mut k = runner.job("keep", "9301");
    let (pkeep, pstop) = (free_port(), free_port());
    let kept = k.server(pkeep, false);
    runner.track(kept);
    let stopped = k.server(pstop, false);
    runner.track(stopped);
    let dir = tempfile::tempdir().unwrap();
    let policy = dir.path().join("policy.toml");
    std::fs::write(
        &policy,
        format!(
            "[[rule]]\nname = \"keep the cache\"\naction = \"report\"\nmatch = {{ exe = \"platform-server\", cmdline = \"/--port {pkeep}$/\" }}\n"
        ),
    )
    .unwrap();
    let end = k.hook(&["job", "end", "--json", "--policy", policy.to_str().unwrap()]);
    assert_eq!(end.code, 0, "{end:?}");
    let doc = end.json();
    let p = port_doc(&doc, pkeep);
    assert_eq!(p["outcome"], "kept", "{doc:#}");
    assert_eq!(p["holders"][0]["process"]["pid"], kept);
    assert_eq!(p["holders"][0]["verdict"]["decision"], "keep", "{doc:#}");
    assert_eq!(p["holders"][0]["verdict"]["rule"], "keep the cache");
    let p = port_doc(&doc, pstop);
    assert_eq!(p["outcome"], "freed", "{doc:#}");
    assert_eq!(p["holders"][0]["verdict"]["rule"], "this job");
    assert!(
        doc["message"]
            .as_str()
            .unwrap()
            .contains("1 kept by the policy"),
        "{doc:#}"
    );
    assert!(alive(kept), "the kept daemon was signalled");
    assert!(!can_listen(pkeep));
    assert!(!alive(stopped) && can_listen(pstop));
}

/// `job end` lists the job's processes that hold no port and stops them
/// only with `--all` (each through a plan of its own); the runner and the
/// worker, the hook's ancestors, are never among them.
#[test]
fn job_end_stops_the_jobs_processes_that_hold_no_port_only_with_all() {
    require_root();
    let mut runner = Runner::start();
    let mut w = runner.job("idle", "9401");
    let pidfile = runner.dir.path().join("idle.pid");
    w.run(&format!(
        "( setsid sleep 600 > /dev/null 2>&1 & echo $! > '{}' )",
        pidfile.display()
    ));
    let idle: u32 = std::fs::read_to_string(&pidfile)
        .unwrap()
        .trim()
        .parse()
        .unwrap();
    runner.track(idle);
    let listed = |doc: &serde_json::Value| -> serde_json::Value {
        doc["idle"]
            .as_array()
            .unwrap_or_else(|| panic!("no idle processes listed: {doc:#}"))
            .iter()
            .find(|i| i["pid"] == idle)
            .cloned()
            .unwrap_or_else(|| panic!("pid {idle} not listed: {doc:#}"))
    };

    let end = w.hook(&["job", "end", "--json"]);
    assert_eq!(end.code, 0, "{end:?}");
    let doc = end.json();
    let i = listed(&doc);
    assert_eq!(i["comm"], "sleep", "{doc:#}");
    assert!(i["stopped"].is_null(), "{doc:#}");
    assert!(alive(idle), "stopped without --all");
    for a in doc["idle"].as_array().unwrap() {
        assert!(
            a["pid"] != runner.pid() && a["pid"] != w.pid,
            "an ancestor of the hook is listed: {doc:#}"
        );
    }

    let end = w.hook(&["job", "end", "--all", "--json"]);
    assert_eq!(end.code, 0, "{end:?}");
    let doc = end.json();
    let i = listed(&doc);
    assert_eq!(i["stopped"]["pid"], idle, "{doc:#}");
    poll_until(
        "the idle process to be gone",
        Duration::from_secs(10),
        || (!alive(idle)).then_some(()),
    );
    assert!(alive(runner.pid()) && alive(w.pid));
}

mod corners;
mod table;

/// The daemon's claim on `port` once it is listened on and charged to a
/// job (polled with a deadline).
pub(super) fn charged_claim(d: &reaper_tests::daemon::Daemon, port: u16) -> serde_json::Value {
    d.wait_claim(
        "the daemon to charge the claim to its job",
        Duration::from_secs(20),
        port,
        None,
        |c| c["job"].is_object() && c["listening_at"].is_string(),
    )
    .1
}

//! Containers and CI jobs as holders, on the real Docker Engine and the
//! real kernel (root, dockerd running: `cargo xtask test` starts it).
//!
//! Build first: `cargo build -p reaper-user -p reaper-tests` (the tests run
//! `<workspace>/target/debug/reaper`). Every container and image a test
//! makes is removed when the test ends, passed or not.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use reaper::holders::{self, Query};
use reaper::policy::{Context, Policy};
use reaper::reap::container::stop_and_wait;
use reaper::reap::BindProbe;
use reaper::vocab::{Decision, Proto};
use reaper_tests::containers::{alive, docker, require_docker, Container, Image};
use reaper_tests::fixture::{can_listen, free_port, require_root, run_reaper, Holder};
use reaper_tests::{poll_until, show};
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_platform-server");

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", show(out)))
}

#[test]
fn who_names_the_container_its_image_and_the_server_inside_behind_the_proxy() {
    require_docker();
    let image = Image::build();
    let (c, port) = Container::published(
        &image,
        &[
            "--label",
            "com.docker.compose.project=shop",
            "--label",
            "com.docker.compose.service=web",
        ],
    );
    let p = port.to_string();
    let out = run_reaper(&["who", &p, "--no-bpf", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    let h = &doc["holdings"][0];
    assert_eq!(h["processes"][0]["comm"], "docker-proxy", "{doc:#}");
    let ct = &h["container"];
    assert_eq!(ct["name"], c.name.as_str(), "{doc:#}");
    assert_eq!(ct["id"], c.id.as_str());
    assert_eq!(ct["short_id"], &c.id[..12]);
    assert_eq!(ct["image"], image.tag.as_str());
    assert_eq!(ct["via"], "proxy");
    assert_eq!(ct["compose_project"], "shop");
    assert_eq!(ct["compose_service"], "web");
    assert_eq!(ct["listeners"][0]["comm"], "listener", "{doc:#}");
    assert_eq!(ct["listeners"][0]["container"], c.id.as_str());

    let out = run_reaper(&["who", &p, "--no-bpf", "--color", "never"], &[]);
    let text = String::from_utf8_lossy(&out.stdout);
    let want = format!(
        "container {} ({}, image {})",
        c.name,
        &c.id[..12],
        image.tag
    );
    assert!(text.contains(&want), "missing {want:?} in:\n{text}");
    assert!(
        text.contains("published through the engine's proxy"),
        "{text}"
    );
    assert!(text.contains("inside    pid "), "{text}");
}

#[test]
fn match_docker_proxy_is_refused_and_the_proxy_lives() {
    require_docker();
    let image = Image::build();
    let (c, port) = Container::published(&image, &[]);
    let proxies = Container::proxy_pids(port);
    assert!(!proxies.is_empty(), "no docker-proxy holds {port}");
    let out = run_reaper(
        &[
            "free",
            &port.to_string(),
            "--no-bpf",
            "--match",
            "docker-proxy",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let doc = json(&out);
    let reasons = doc["holders"][0]["verdict"]["reasons"].to_string();
    assert!(reasons.contains("part of the container engine"), "{doc:#}");
    for pid in proxies {
        assert!(alive(pid), "docker-proxy {pid} was signalled");
    }
    assert!(!can_listen(port), "the published port was released");
    assert_eq!(c.state(), "running");
}

#[test]
fn a_labelled_container_is_judged_by_label_and_stopped_through_the_engine() {
    require_docker();
    let image = Image::build();
    let (c, port) =
        Container::published(&image, &["--label", "com.docker.compose.project=preview"]);
    let scan = holders::scan(&Query {
        port: Some(port),
        proto: Some(Proto::Tcp),
        netns: None,
        listening_only: true,
    })
    .unwrap();
    let h = scan
        .holdings
        .iter()
        .find(|h| h.container.is_some())
        .unwrap_or_else(|| panic!("no holding of {port} names a container: {scan:#?}"));
    let ct = h.container.clone().unwrap();
    assert_eq!(ct.id, c.id);

    let ctx = Context::current(None).unwrap();
    let other = Policy::from_toml_str(
        "[[rule]]\nname = \"blog\"\nmatch = { container = { label = \"com.docker.compose.project=blog\" } }\n",
    )
    .unwrap();
    assert_eq!(
        other.judge_container(&ct, &h.socket, &ctx).decision,
        Decision::Keep
    );
    let policy = Policy::from_toml_str(
        "[[rule]]\nname = \"preview\"\nmatch = { container = { label = \"com.docker.compose.project=preview\" } }\n",
    )
    .unwrap();
    let v = policy.judge_container(&ct, &h.socket, &ctx);
    assert_eq!(v.decision, Decision::Reap, "{v}");

    let probes = vec![BindProbe::new(
        Proto::Tcp,
        "127.0.0.1".parse().unwrap(),
        port,
        false,
    )];
    let stop = stop_and_wait(
        &ct,
        Duration::from_secs(2),
        None,
        &probes,
        Instant::now() + Duration::from_secs(20),
    );
    assert_eq!(stop.error, None, "{stop:?}");
    assert_eq!(stop.state_after.as_deref(), Some("exited"), "{stop:?}");
    assert!(stop.port_free_at_ms.is_some(), "{stop:?}");
    assert!(can_listen(port));
    // Stopped, kept: not removed.
    assert_eq!(c.state(), "exited");
    assert_eq!(stop.name.as_deref(), Some(c.name.as_str()));
    assert_eq!(stop.image.as_deref(), Some(image.tag.as_str()));
}

#[test]
fn a_proxy_whose_container_is_gone_is_stale_and_never_killed() {
    require_docker();
    let port = free_port();
    let dir = tempfile::tempdir().unwrap();
    // The engine's own proxy binary, left forwarding to an address no
    // container has: what remains when the engine lost track of a container.
    // It reports readiness on fd 3.
    let ready = dir.path().join("ready");
    let mut proxy = ProxyGuard(
        Command::new("sh")
            .arg("-c")
            .arg(format!(
                "exec /usr/sbin/docker-proxy -proto tcp -host-ip 127.0.0.1 -host-port {port} -container-ip 192.0.2.77 -container-port 80 3>'{}'",
                ready.display()
            ))
            .stdin(Stdio::null())
            .spawn()
            .expect("cannot start /usr/sbin/docker-proxy (docker.io installs it)"),
    );
    poll_until("docker-proxy to listen", Duration::from_secs(10), || {
        (!can_listen(port)).then_some(())
    });
    let pid = proxy.0.id();
    let out = run_reaper(&["who", &port.to_string(), "--no-bpf", "--json"], &[]);
    let doc = json(&out);
    let ct = &doc["holdings"][0]["container"];
    assert_eq!(ct["stale"], true, "{doc:#}");
    assert_eq!(ct["via"], "proxy");
    let out = run_reaper(
        &["who", &port.to_string(), "--no-bpf", "--color", "never"],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(text.contains("stale proxy"), "{text}");
    assert!(text.contains("restart the engine"), "{text}");
    let out = run_reaper(
        &[
            "free",
            &port.to_string(),
            "--no-bpf",
            "--match",
            "docker-proxy",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    assert!(alive(pid), "the stale proxy was signalled");
    let _ = proxy.0.kill();
}

struct ProxyGuard(Child);

impl Drop for ProxyGuard {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// A job's server: `sh` with RUNNER_TRACKING_ID starts the server; with
/// `leave`, the shell exits at once (the server is left behind: the job
/// ended), else it waits for it (the job is still attached to its runner,
/// this test process).
fn job_server(job: &str, port: u16, leave: bool) -> Holder {
    let mut sh = Command::new("sh");
    sh.env("RUNNER_TRACKING_ID", job)
        .env("GITHUB_JOB", "integration")
        .env("GITHUB_RUN_ID", "4242");
    Holder::in_shell(sh, Path::new(SERVER), &["--port", &port.to_string()], leave)
}

fn job_policy(dir: &Path) -> String {
    let path = dir.join("policy.toml");
    std::fs::write(
        &path,
        format!(
            "[[rule]]\nname = \"ended jobs\"\nmatch = {{ exe = \"{SERVER}\", job = \"ended\" }}\n"
        ),
    )
    .unwrap();
    path.to_str().unwrap().to_string()
}

#[test]
fn a_server_left_by_an_ended_job_is_reaped_and_one_of_a_running_job_is_kept() {
    require_root();
    assert!(
        std::env::var_os("RUNNER_TRACKING_ID").is_none(),
        "this test plays the runner: run it outside a GitHub Actions job step's environment"
    );
    let dir = tempfile::tempdir().unwrap();
    let policy = job_policy(dir.path());
    let job = format!("github_reaper_test_{}", std::process::id());

    // Still attached: its shell waits for it.
    let port = free_port();
    let kept = job_server(&format!("{job}_running"), port, false);
    let out = run_reaper(&["who", &port.to_string(), "--no-bpf", "--json"], &[]);
    let doc = json(&out);
    let j = &doc["holdings"][0]["processes"][0]["job"];
    assert_eq!(j["provider"], "github", "{doc:#}");
    assert_eq!(j["id"], format!("{job}_running").as_str());
    assert_eq!(j["name"], "integration");
    assert_eq!(j["ended"], false);
    let out = run_reaper(
        &[
            "free",
            &port.to_string(),
            "--no-bpf",
            "--policy",
            &policy,
            "--json",
        ],
        &[],
    );
    assert_ne!(out.status.code(), Some(0), "{}", show(&out));
    let reasons = json(&out)["holders"][0]["verdict"]["reasons"].to_string();
    assert!(reasons.contains("is still running"), "{reasons}");
    assert!(
        alive(kept.pid()),
        "the server of a running job was signalled"
    );

    // Left behind: the shell exited, only the orphan carries the job id.
    let port = free_port();
    let left = job_server(&format!("{job}_ended"), port, true);
    let out = run_reaper(
        &["who", &port.to_string(), "--no-bpf", "--color", "never"],
        &[],
    );
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("github job {job}_ended (integration), ended")),
        "{text}"
    );
    let out = run_reaper(
        &[
            "free",
            &port.to_string(),
            "--no-bpf",
            "--policy",
            &policy,
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(doc["outcome"], "freed", "{doc:#}");
    assert!(
        doc["holders"][0]["verdict"]["reasons"]
            .to_string()
            .contains("has ended"),
        "{doc:#}"
    );
    poll_until(
        "the ended job's server to exit",
        Duration::from_secs(10),
        || (!alive(left.pid())).then_some(()),
    );
    assert!(can_listen(port));
    drop(kept);
}

#[test]
fn watch_names_the_container_of_a_bind() {
    require_docker();
    let image = Image::build();
    let mut watch = reaper_tests::Spawned::spawn(reaper_tests::reaper().args(["watch", "--json"]));
    watch.wait_err("attached", Duration::from_secs(30));
    let c = Container::run(&image, &[]);
    // Other engineers' bind storms may fill the ring buffer and lose the
    // container's bind (watch says so in a loss line): each round without it
    // restarts the container, which binds again.
    let want = format!("\"name\":\"{}\"", c.name);
    let mut found = None;
    let mut losses = 0;
    for _round in 0..5 {
        let end = Instant::now() + Duration::from_secs(8);
        while let Some(l) = watch.line(end.saturating_duration_since(Instant::now())) {
            if l.contains(&want) && l.contains("\"kind\":\"bind\"") {
                found = Some(l);
                break;
            }
            losses += usize::from(l.contains("\"kind\":\"loss\""));
        }
        if found.is_some() {
            break;
        }
        docker(&["restart", "-t", "1", &c.id]);
    }
    let line = found.unwrap_or_else(|| {
        panic!(
            "watch never showed container {} binding in 5 rounds ({losses} loss lines)",
            c.name
        )
    });
    let fact: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(fact["comm"], "listener", "{fact:#}");
    assert_eq!(fact["port"], 80);
    assert_eq!(fact["container"]["id"], c.id.as_str());
    assert_eq!(fact["container"]["image"], image.tag.as_str());
}

#[test]
fn free_by_match_of_the_server_inside_stops_the_container_and_journals_it() {
    require_docker();
    let image = Image::build();
    let (c, port) = Container::published(&image, &[]);
    let p = port.to_string();

    let out = run_reaper(
        &[
            "free",
            &p,
            "--no-bpf",
            "--match",
            "listener",
            "--dry-run",
            "--color",
            "never",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains(&format!("would stop container {}", c.name)),
        "{text}"
    );
    assert!(text.contains("STOP THROUGH THE ENGINE"), "{text}");
    assert_eq!(c.state(), "running", "a dry run stopped it");

    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let out = run_reaper(
        &[
            "free",
            &p,
            "--no-bpf",
            "--match",
            "listener",
            "--grace",
            "2s",
            "--journal",
            journal.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(doc["outcome"], "freed", "{doc:#}");
    assert_eq!(
        doc["containers"][0]["verdict"]["decision"], "reap",
        "{doc:#}"
    );
    assert_eq!(
        doc["container_stops"][0]["state_after"], "exited",
        "{doc:#}"
    );
    // The port bound again after the stop: when is on the record.
    assert!(
        doc["container_stops"][0]["port_free_at_ms"].is_u64(),
        "{doc:#}"
    );
    assert!(
        doc["signals"].as_array().unwrap().is_empty(),
        "a process was signalled: {doc:#}"
    );
    assert!(can_listen(port), "the port does not bind after the stop");
    // Stopped, kept: not removed.
    assert_eq!(c.state(), "exited");

    let text = std::fs::read_to_string(&journal).unwrap();
    let records: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let done = records
        .iter()
        .find(|r| r["kind"] == "reaping" && r["outcome"] == "freed")
        .unwrap_or_else(|| panic!("no freed reaping in the journal:\n{text}"));
    assert_eq!(done["container"]["id"], c.id.as_str(), "{done:#}");
    assert_eq!(done["container"]["name"], c.name.as_str());
    assert_eq!(done["container"]["image"], image.tag.as_str());
    assert_eq!(done["container"]["stop"]["state_after"], "exited");
    assert_eq!(done["target"]["comm"], "listener");
    assert!(
        records
            .iter()
            .any(|r| r["outcome"] == "in_progress" && r["container"]["id"] == c.id.as_str()),
        "no intent before the stop:\n{text}"
    );
}

#[test]
fn the_daemon_stops_a_labelled_container_that_a_failed_bind_runs_into() {
    require_docker();
    let image = Image::build();
    let project = reaper_tests::containers::unique("preview");
    let label = format!("com.docker.compose.project={project}");
    let (c, port) = Container::published(&image, &["--label", &label]);
    // A big ring buffer: other runs may storm binds on the host.
    let d = reaper_tests::daemon::Daemon::start(&format!(
        "ringbuf_size = 67108864\njournal_max_bytes = 0\n[[rule]]\nname = \"preview\"\naction = \"reap\"\nmatch = {{ container = {{ label = \"{label}\" }} }}\n"
    ));
    let mut binders = Vec::new();
    let mut done = None;
    for _round in 0..6 {
        let (b, failed) = reaper_tests::try_binds(port, 3);
        binders.push(b);
        if failed == 0 {
            break;
        }
        done = reaper_tests::poll_for(Duration::from_secs(15), || {
            d.records().into_iter().find(|r| {
                r["kind"] == "reaping"
                    && r["container"]["id"] == c.id.as_str()
                    && r["outcome"] != "in_progress"
            })
        });
        if done.is_some() {
            break;
        }
    }
    let done = done.unwrap_or_else(|| {
        panic!(
            "the daemon never reaped container {} on port {port}; its log:\n{}",
            c.name,
            d.log_text()
        )
    });
    assert_eq!(done["outcome"], "freed", "{done:#}");
    assert_eq!(done["verdict"]["rule"], "preview");
    assert_eq!(done["container"]["name"], c.name.as_str());
    assert_eq!(done["container"]["stop"]["state_after"], "exited");
    assert!(
        done["container"]["stop"]["port_free_at_ms"].is_u64(),
        "{done:#}"
    );
    assert!(done["signals"].as_array().unwrap().is_empty(), "{done:#}");
    assert_eq!(c.state(), "exited");
    assert!(can_listen(port));
}

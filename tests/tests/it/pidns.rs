//! A daemon in a container of its own pid namespace (no `hostPID`, no
//! `--pid=host`): the kernel side numbers pids as the daemon's /proc does,
//! so a conflict inside the container names its holder and the daemon
//! reaps it; a failed bind of a process outside (the host) is journaled as
//! such, with the reason its holders cannot be read, never as a conflict
//! with no holders and nothing said.
//!
//! The container is the Debian image the systemd test boots (`cargo xtask
//! systemd-image`, cached), running the workspace's own debug build of
//! reaper and the fixtures, bind-mounted (the host is the same Debian).

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reaper_tests::containers::{docker, require_docker, unique, Removed};
use reaper_tests::daemon::read_journal;
use reaper_tests::{fixture_bin, hold, poll_for, poll_until, reaper_bin, show, try_bind};
use serde_json::Value;

const IMAGE: &str = "reaper-test/debian-systemd:bookworm-1";

/// A container with its own pid and network namespaces, removed on drop.
struct Boxed {
    container: Removed,
}

impl Boxed {
    fn start(state: &Path) -> Boxed {
        require_docker();
        let inspect = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .unwrap();
        assert!(
            inspect.status.success(),
            "no image {IMAGE}: `cargo xtask systemd-image` builds it (cargo xtask test does)"
        );
        let name = unique("reaper-pidns");
        let mount = |from: &Path, to: &str| format!("{}:{to}:ro", from.display());
        docker(&[
            "run",
            "--detach",
            "--init",
            "--name",
            &name,
            // What the DaemonSet grants, one by one (--privileged is refused
            // here); the host's cgroup tree for the cgroup hooks.
            "--cap-add",
            "SYS_ADMIN",
            "--cap-add",
            "NET_ADMIN",
            "--cap-add",
            "SYS_PTRACE",
            "--cap-add",
            "DAC_READ_SEARCH",
            "--cgroupns=host",
            "--volume",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
            "--volume",
            &mount(&reaper_bin(), "/usr/local/bin/reaper"),
            "--volume",
            &mount(
                &fixture_bin("platform-server"),
                "/usr/local/bin/platform-server",
            ),
            "--volume",
            &mount(&fixture_bin("binder"), "/usr/local/bin/binder"),
            "--volume",
            &format!("{}:/state", state.display()),
            IMAGE,
            "sleep",
            "infinity",
        ]);
        Boxed {
            container: Removed(name),
        }
    }

    fn sh(&self, script: &str) -> String {
        let out = Command::new("docker")
            .args(["exec", self.container.name(), "sh", "-c", script])
            .output()
            .unwrap();
        assert!(out.status.success(), "{script}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).trim().to_string()
    }
}

fn records(state: &Path) -> Vec<Value> {
    read_journal(&state.join("journal.jsonl"))
}

#[test]
fn a_daemon_in_its_own_pid_namespace_names_and_reaps_holders_and_marks_outsiders() {
    let state = tempfile::tempdir().unwrap();
    let b = Boxed::start(state.path());
    let own_pidns = b.sh("readlink /proc/self/ns/pid");
    assert_ne!(
        own_pidns,
        std::fs::read_link("/proc/self/ns/pid")
            .unwrap()
            .to_string_lossy(),
        "the container must have a pid namespace of its own"
    );
    let doctor = b.sh("reaper doctor 2>&1 || true");
    assert!(
        doctor.contains(&format!("pidns       {own_pidns} (not the host's)")),
        "doctor says whose pids reaper sees:\n{doctor}"
    );
    // A stale server inside: orphaned (its shell exits), adopted by the
    // container's init. Its pid as the container numbers it.
    let port = 8000 + (std::process::id() % 1000) as u16;
    let stale: u32 = b
        .sh(&format!(
            "platform-server --port {port} --addr 0.0.0.0 --comm stale-pidns > /state/stale.out 2>&1 & \
             for i in $(seq 100); do grep -q ready /state/stale.out && break; sleep 0.1; done; cut -d' ' -f2 /state/stale.out"
        ))
        .parse()
        .unwrap();
    std::fs::write(
        state.path().join("reaper.toml"),
        "journal = \"/state/journal.jsonl\"\ncontrol_socket = \"/state/reaper.sock\"\nconflict_window = \"2s\"\nreap_grace = \"2s\"\nreap_deadline = \"10s\"\nringbuf_size = 67108864\n\
             [[rule]]\nname = \"stale-in-container\"\naction = \"reap\"\nmatch = { exe = \"/usr/local/bin/platform-server\", comm = \"stale-pidns\", orphaned = true }\n",
    )
    .unwrap();
    b.sh("reaper daemon --config /state/reaper.toml > /state/daemon.log 2>&1 &");
    let log = || std::fs::read_to_string(state.path().join("daemon.log")).unwrap_or_default();
    poll_until("the daemon to be ready", Duration::from_secs(60), || {
        log().contains("reaper daemon ready").then_some(())
    });
    assert!(
        log().contains(&format!(
            "numbers processes as pid namespace {own_pidns} (not the host's)"
        )),
        "the daemon says whose pids it reports:\n{}",
        log()
    );

    // A bind inside fails on the stale server's port: a conflict whose
    // holder is the server, by the container's pid, and the rule reaps it.
    let mut reaping = None;
    let mut binder_pid = 0;
    for _ in 0..5 {
        let out = b.sh(&format!(
            "binder try 0.0.0.0 {port} & p=$!; wait $p; echo pid $p"
        ));
        binder_pid = out
            .lines()
            .find_map(|l| l.strip_prefix("pid "))
            .unwrap()
            .parse()
            .unwrap();
        reaping = poll_for(Duration::from_secs(15), || {
            records(state.path()).into_iter().find(|r| {
                r["kind"] == "reaping" && r["outcome"] != "in_progress" && r["port"] == port
            })
        });
        if reaping.is_some() {
            break;
        }
    }
    let all = records(state.path());
    let reaping = reaping.unwrap_or_else(|| {
        panic!(
            "no reaping of {port} inside the container; journal:\n{all:#?}\nlog:\n{}",
            log()
        )
    });
    let conflict = all
        .iter()
        .find(|r| r["kind"] == "conflict" && r["port"] == port)
        .unwrap_or_else(|| panic!("no conflict on {port}: {all:#?}"));
    let holders: Vec<u64> = conflict["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(holders, vec![stale as u64], "{conflict:#}");
    assert_eq!(conflict["tried"]["pid"], binder_pid, "{conflict:#}");
    assert!(conflict["tried"]["outside_pidns"].is_null(), "{conflict:#}");
    let netns: u64 = b
        .sh("readlink /proc/self/ns/net")
        .trim_start_matches("net:[")
        .trim_end_matches(']')
        .parse()
        .unwrap();
    assert_eq!(
        conflict["netns"], netns,
        "the container's netns: {conflict:#}"
    );
    assert_eq!(reaping["outcome"], "freed", "{reaping:#}");
    assert_eq!(
        reaping["verdict"]["rule"], "stale-in-container",
        "{reaping:#}"
    );
    assert!(
        !b.sh("cat /proc/[0-9]*/comm")
            .lines()
            .any(|c| c == "stale-pidns"),
        "the stale server is gone"
    );

    // A failed bind on the host, outside the daemon's pid namespace (and in
    // a network namespace none of its processes is in): said, not guessed.
    let (_holder, host_port) = hold(&["0.0.0.0", "0", "listen"]);
    let mut outside = None;
    for _ in 0..5 {
        let (_pid, said) = try_bind(&["0.0.0.0", &host_port.to_string()]);
        assert!(said.starts_with("err"), "{said}");
        outside = poll_for(Duration::from_secs(10), || {
            records(state.path())
                .into_iter()
                .find(|r| r["kind"] == "conflict" && r["port"] == host_port)
        });
        if outside.is_some() {
            break;
        }
    }
    let outside = outside.unwrap_or_else(|| {
        panic!(
            "the host's failed bind of {host_port} was not journaled; log:\n{}",
            log()
        )
    });
    assert_eq!(outside["tried"]["pid"], 0, "{outside:#}");
    assert_eq!(outside["tried"]["outside_pidns"], true, "{outside:#}");
    assert_eq!(outside["action"], "report", "{outside:#}");
    let why = outside["verdict"]["reasons"].to_string();
    assert!(
        why.contains("none reaper can see") && why.contains("hostPID: true"),
        "the record says why no holder is named, and the fix: {outside:#}"
    );
}

/// Whose pids reaper speaks is the pid namespace of the /proc it reads: in
/// a new pid namespace that kept the host's /proc, the host's (no mapping);
/// with a /proc of its own, its own (mapped).
#[test]
fn the_pid_namespace_is_the_one_of_the_proc_reaper_reads() {
    reaper_tests::require_root();
    let doctor = |extra: &[&str]| {
        let out = Command::new("unshare")
            .args(["--pid", "--fork"])
            .args(extra)
            .arg(reaper_bin())
            .arg("doctor")
            .output()
            .expect("unshare (util-linux)");
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.lines()
            .find(|l| l.starts_with("pidns"))
            .unwrap_or_else(|| panic!("no pidns line: {}", show(&out)))
            .to_string()
    };
    let host = doctor(&[]);
    assert!(
        host.ends_with("pid:[4026531836] (the host's)"),
        "the host's /proc: {host}"
    );
    let own = doctor(&["--mount-proc"]);
    assert!(own.contains("(not the host's)"), "its own /proc: {own}");
}

/// `reaper watch` in a pid namespace of its own (with its own /proc): a
/// bind on the host is shown, and said to be outside, not given a pid.
#[test]
fn watch_in_its_own_pid_namespace_says_a_host_binder_is_outside() {
    reaper_tests::require_root();
    let mut watch = reaper_tests::Spawned::spawn(
        Command::new("unshare")
            .args(["--pid", "--fork", "--mount-proc"])
            .arg(reaper_bin())
            .args(["watch", "--duration", "60"]),
    );
    watch.wait_err("watching binds", Duration::from_secs(30));
    let port = reaper_tests::free_port();
    let line = {
        let mut found = None;
        for _ in 0..3 {
            let (_holder, _) = hold(&["127.0.0.1", &port.to_string()]);
            found = poll_for(Duration::from_secs(5), || {
                watch
                    .line(Duration::from_millis(200))
                    .filter(|l| l.contains(&format!("127.0.0.1:{port}")) && l.contains("(binder)"))
            });
            if found.is_some() {
                break;
            }
        }
        found.unwrap_or_else(|| panic!("watch never showed the host's bind of {port}"))
    };
    assert!(
        line.contains("pid outside reaper's pid namespace (binder)"),
        "{line}"
    );
    // Its network namespace named all the same, by the event's netns
    // cookie (no process of that namespace is in watch's /proc but watch).
    assert!(
        line.contains(&format!("netns {}", reaper_tests::own_netns())),
        "{line}"
    );
}

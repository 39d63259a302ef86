//! User names where /etc/passwd is not the host's: the FROM-scratch image
//! (no /etc/passwd at all) names the host's users when it shares the host's
//! pid namespace (it reads /proc/1/root/etc/passwd, or /proc/2/root/etc/passwd), and a policy naming a
//! user no file knows is refused at load, naming the rule and the user.
//!
//! The image comes from `cargo xtask image` (cargo xtask test builds it).

use std::io::{BufRead, BufReader};
use std::process::{Command, Output, Stdio};

use reaper_tests::{free_port, reaper, require_root, show};
use serde_json::Value;

const IMAGE: &str = "ghcr.io/reaper/reaper";
const VERSION: &str = env!("CARGO_PKG_VERSION");

const UNKNOWN: &str = "no-such-user-reaper-test";

fn config_naming(dir: &std::path::Path, user: &str) -> std::path::PathBuf {
    let path = dir.join("reaper.toml");
    std::fs::write(
        &path,
        format!(
            "journal = \"/var/lib/reaper/journal.jsonl\"\n[[protect]]\nname = \"database\"\nmatch = {{ user = \"{user}\" }}\n"
        ),
    )
    .unwrap();
    path
}

#[test]
fn a_protection_naming_an_unknown_user_is_a_config_error_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let config = config_naming(dir.path(), UNKNOWN);
    let out = reaper()
        .args(["daemon", "--check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "protect 'database': user \"{UNKNOWN}\" is not known here"
        )),
        "{err}"
    );
    // A name the host knows loads.
    let config = config_naming(dir.path(), "root");
    let out = reaper()
        .args(["daemon", "--check-config"])
        .arg(&config)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
}

fn image() -> String {
    let image = format!("{IMAGE}:{VERSION}");
    let ok = Command::new("docker")
        .args(["image", "inspect", &image])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .unwrap_or_else(|e| {
            panic!("no docker client ({e}): cargo xtask setup --test installs docker.io")
        });
    assert!(
        ok.success(),
        "no image {image}: run `cargo xtask image` (cargo xtask test does)"
    );
    image
}

/// `docker run` of the image with what `who` needs to see the host's
/// sockets and processes; `host_pid`: share the host's pid namespace.
fn in_image(host_pid: bool, args: &[&str], mount: Option<&std::path::Path>) -> Output {
    let mut c = Command::new("docker");
    c.args(["run", "--rm", "--net", "host", "--cap-drop", "ALL"]);
    for cap in ["SYS_PTRACE", "DAC_READ_SEARCH", "NET_ADMIN", "SYS_ADMIN"] {
        c.args(["--cap-add", cap]);
    }
    if host_pid {
        c.args(["--pid", "host"]);
    }
    if let Some(dir) = mount {
        c.arg("--volume").arg(format!("{}:/cfg:ro", dir.display()));
    }
    c.arg(image()).args(args);
    c.output().expect("docker run")
}

#[test]
fn the_scratch_image_names_host_users_under_host_pid_and_refuses_what_it_cannot_resolve() {
    require_root();
    // A holder running as `nobody`, a user of the host's /etc/passwd.
    let port = free_port();
    let mut holder = Command::new("setpriv")
        .args(["--reuid", "65534", "--regid", "65534", "--clear-groups"])
        // Debian's python3 by path: a python3 earlier on root's PATH may live
        // where `nobody` cannot read.
        .args(["/usr/bin/python3", "-c"])
        .arg(format!(
            "import socket,sys\ns=socket.socket()\ns.bind(('127.0.0.1',{port}))\ns.listen()\nprint('ready',flush=True)\nsys.stdin.read()"
        ))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("setpriv and python3");
    let mut line = String::new();
    BufReader::new(holder.stdout.take().unwrap())
        .read_line(&mut line)
        .unwrap();
    assert_eq!(line.trim(), "ready");
    let pid = holder.id();

    let out = in_image(true, &["who", &port.to_string(), "--json"], None);
    assert!(out.status.success(), "who in the image: {}", show(&out));
    let who: Value = serde_json::from_slice(&out.stdout).unwrap();
    let procs: Vec<&Value> = who["holdings"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|h| h["processes"].as_array().into_iter().flatten())
        .filter(|p| p["pid"] == pid)
        .collect();
    assert!(
        !procs.is_empty(),
        "the holder (pid {pid}) is found: {who:#}"
    );
    assert_eq!(
        procs[0]["user"], "nobody",
        "the image has no /etc/passwd: the host's names the holder's user: {who:#}"
    );

    // Without the host's pid namespace no file names the users: a policy
    // naming one is refused at load, naming it and the fix.
    let dir = tempfile::tempdir().unwrap();
    config_naming(dir.path(), "nobody");
    let out = in_image(
        false,
        &["daemon", "--check-config", "/cfg/reaper.toml"],
        Some(dir.path()),
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("protect 'database': user \"nobody\" is not known here")
            && err.contains("hostPID: true"),
        "{err}"
    );
    // With it, the same config loads.
    let out = in_image(
        true,
        &["daemon", "--check-config", "/cfg/reaper.toml"],
        Some(dir.path()),
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    drop(holder.stdin.take());
    let _ = holder.wait();
}

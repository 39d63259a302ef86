//! The .deb under real systemd: a Debian bookworm root filesystem
//! (debootstrap, imported into the local Docker Engine by `cargo xtask
//! systemd-image`, which `cargo xtask test` runs; cached) booted with
//! systemd as PID 1. Inside: apt installs the .deb of `cargo xtask dist`,
//! the service is enabled and active, a stale server on port 81 is freed
//! by a reap rule when a bind of 81 fails (the daemon runs in the
//! container's own pid namespace: its conflict names the holder by the
//! container's pid), `systemctl reload` with a broken
//! config keeps the running one, an upgrade to a rebuilt .deb restarts it,
//! `apt remove` stops it.
//!
//! `docker run --privileged` is refused on this kind of machine: the
//! container gets the capabilities one by one (those of the unit, plus
//! SYS_ADMIN for systemd's own mounts), the host's cgroup namespace and a
//! writable /sys/fs/cgroup, as systemd needs.

use std::path::PathBuf;
use std::process::{Command, Output};
use std::time::Duration;

use reaper_tests::containers::Removed;
use reaper_tests::{poll_until, require_root, show, workspace};

const IMAGE: &str = "reaper-test/debian-systemd:bookworm-1";
const VERSION: &str = env!("CARGO_PKG_VERSION");

/// A booted container, removed on drop.
struct Booted {
    container: Removed,
}

impl Booted {
    fn boot(dist: &std::path::Path) -> Booted {
        let inspect = Command::new("docker")
            .args(["image", "inspect", IMAGE])
            .output()
            .unwrap_or_else(|e| {
                panic!("no docker client ({e}): cargo xtask setup --test installs docker.io")
            });
        assert!(
            inspect.status.success(),
            "no image {IMAGE}: `cargo xtask systemd-image` builds it (cargo xtask test does)"
        );
        let name = format!("reaper-systemd-test-{}", std::process::id());
        let mut run = Command::new("docker");
        run.args(["run", "--detach", "--name", &name]);
        // (Not BPF and PERFMON by name: engines before 23.0 refuse them;
        // SYS_ADMIN lets the kernel do what they allow.)
        for cap in ["SYS_ADMIN", "NET_ADMIN", "SYS_PTRACE", "DAC_READ_SEARCH"] {
            run.args(["--cap-add", cap]);
        }
        run.args([
            "--cgroupns=host",
            "--volume",
            "/sys/fs/cgroup:/sys/fs/cgroup:rw",
            "--tmpfs",
            "/run",
            "--tmpfs",
            "/run/lock",
            "--security-opt",
            "seccomp=unconfined",
            "--security-opt",
            "apparmor=unconfined",
        ])
        .arg("--volume")
        .arg(format!("{}:/dist:ro", dist.display()))
        .args([IMAGE, "/lib/systemd/systemd"]);
        let out = run.output().unwrap();
        assert!(
            out.status.success(),
            "this Docker Engine cannot start systemd as PID 1 here: {}",
            show(&out)
        );
        let b = Booted {
            container: Removed(name),
        };
        let state = poll_until(
            "systemd in the container to finish booting",
            Duration::from_secs(60),
            || {
                let s = b.sh("systemctl is-system-running || true");
                let s = String::from_utf8_lossy(&s.stdout).trim().to_string();
                matches!(s.as_str(), "running" | "degraded").then_some(s)
            },
        );
        if state == "degraded" {
            eprintln!(
                "systemd booted degraded; failed units:\n{}",
                String::from_utf8_lossy(&b.sh("systemctl --failed --no-legend").stdout)
            );
        }
        b
    }

    fn sh(&self, script: &str) -> Output {
        Command::new("docker")
            .args(["exec", self.container.name(), "sh", "-c", script])
            .output()
            .unwrap()
    }

    fn ok(&self, script: &str) -> String {
        let out = self.sh(script);
        assert!(out.status.success(), "{script}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    fn active(&self) -> String {
        String::from_utf8_lossy(&self.sh("systemctl is-active reaper").stdout)
            .trim()
            .to_string()
    }

    fn main_pid(&self) -> u32 {
        self.ok("systemctl show --property MainPID --value reaper")
            .trim()
            .parse()
            .unwrap()
    }

    fn wait_active(&self, what: &str) -> u32 {
        poll_until(what, Duration::from_secs(30), || {
            (self.active() == "active" && self.main_pid() != 0).then(|| self.main_pid())
        })
    }

    fn logs(&self) -> String {
        String::from_utf8_lossy(&self.sh("journalctl -u reaper --no-pager -o cat").stdout)
            .into_owned()
    }
}

/// Copies a fixture binary into the container's /usr/local/bin.
fn install_fixture(b: &Booted, name: &str) {
    let copy = Command::new("docker")
        .arg("cp")
        .arg(reaper_tests::fixture_bin(name))
        .arg(format!("{}:/usr/local/bin/{name}", b.container.name()))
        .output()
        .unwrap();
    assert!(copy.status.success(), "{}", show(&copy));
}

/// The journal the packaged config writes, as records.
fn journal(b: &Booted) -> Vec<serde_json::Value> {
    String::from_utf8_lossy(&b.sh("cat /var/lib/reaper/journal.jsonl").stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The daemon (systemd's unit, with CAP_NET_BIND_SERVICE for its bind
/// probe) reaps an orphaned server on port 81 when a bind of 81 fails; its
/// conflict names the holder by the container's own pid.
fn stale_server_below_1024_is_freed(b: &Booted) {
    const PORT: u16 = 81;
    install_fixture(b, "platform-server");
    install_fixture(b, "binder");
    // The rule first: the packaged config's last rule reports everything.
    b.ok(r#"sed -i '0,/^\[\[rule\]\]/s//[[rule]]\nname = "stale below 1024"\naction = "reap"\nmatch = { exe = "\/usr\/local\/bin\/platform-server", comm = "stale-sd", orphaned = true }\n\n[[rule]]/' /etc/reaper/reaper.toml"#);
    b.ok("systemctl reload reaper");
    poll_until(
        "the daemon to reload with the rule",
        Duration::from_secs(20),
        || b.logs().contains("SIGHUP: reloaded").then_some(()),
    );
    // Orphaned: its shell exits, systemd (PID 1) adopts it.
    let stale: u64 = b
        .ok(&format!(
            "setsid sh -c 'platform-server --port {PORT} --addr 0.0.0.0 --comm stale-sd > /tmp/stale.out 2>&1 &'; \
             for i in $(seq 100); do grep -q ready /tmp/stale.out && break; sleep 0.1; done; cut -d' ' -f2 /tmp/stale.out"
        ))
        .trim()
        .parse()
        .unwrap();
    let mut reaping = None;
    for _ in 0..5 {
        let tried = b.ok(&format!("binder try 0.0.0.0 {PORT}"));
        assert!(
            tried.starts_with("err"),
            "the stale server holds {PORT}: {tried}"
        );
        reaping = reaper_tests::poll_for(Duration::from_secs(20), || {
            journal(b).into_iter().find(|r| {
                r["kind"] == "reaping" && r["port"] == PORT && r["outcome"] != "in_progress"
            })
        });
        if reaping.is_some() {
            break;
        }
    }
    let records = journal(b);
    let reaping = reaping.unwrap_or_else(|| {
        panic!(
            "no reaping of port {PORT}; journal:\n{records:#?}\nlog:\n{}",
            b.logs()
        )
    });
    assert_eq!(reaping["outcome"], "freed", "{reaping:#}\n{}", b.logs());
    assert_eq!(
        reaping["verdict"]["rule"], "stale below 1024",
        "{reaping:#}"
    );
    let conflict = records
        .iter()
        .find(|r| r["kind"] == "conflict" && r["port"] == PORT)
        .unwrap_or_else(|| panic!("no conflict on {PORT}: {records:#?}"));
    assert_eq!(
        conflict["holders"][0]["pid"], stale,
        "the holder by the container's pid: {conflict:#}"
    );
    assert_eq!(
        b.ok(&format!("binder try 0.0.0.0 {PORT}")).trim(),
        format!("ok {PORT}"),
        "port {PORT} binds again"
    );
}

fn dist() -> PathBuf {
    let dir = workspace().join("target/dist");
    assert!(
        dir.join(format!("reaper_{VERSION}-1_amd64.deb")).is_file(),
        "no .deb in {}: run `cargo xtask dist` first (cargo xtask test does)",
        dir.display()
    );
    dir
}

/// The same package rebuilt as the next Debian revision (an upgrade).
fn rebuilt_deb(dist: &std::path::Path, into: &std::path::Path) -> PathBuf {
    let tree = into.join("tree");
    let out = Command::new("dpkg-deb")
        .arg("--raw-extract")
        .arg(dist.join(format!("reaper_{VERSION}-1_amd64.deb")))
        .arg(&tree)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let control = tree.join("DEBIAN/control");
    let text = std::fs::read_to_string(&control).unwrap().replace(
        &format!("Version: {VERSION}-1"),
        &format!("Version: {VERSION}-2"),
    );
    std::fs::write(&control, text).unwrap();
    let deb = into.join(format!("reaper_{VERSION}-2_amd64.deb"));
    let out = Command::new("dpkg-deb")
        .args(["--root-owner-group", "--build"])
        .arg(&tree)
        .arg(&deb)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    deb
}

#[test]
fn the_deb_under_systemd_installs_starts_reloads_upgrades_and_stops_on_remove() {
    require_root();
    let dist = dist();
    let upgrade_dir = tempfile::tempdir().unwrap();
    let upgrade = rebuilt_deb(&dist, upgrade_dir.path());
    let b = Booted::boot(&dist);

    // Install: the maintainer scripts reload systemd, enable and start it.
    b.ok(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /dist/reaper_{VERSION}-1_amd64.deb"
    ));
    b.ok("systemctl enable --now reaper");
    assert_eq!(
        b.ok("systemctl is-enabled reaper").trim(),
        "enabled",
        "the package enables the unit"
    );
    let first = b.wait_active("reaper.service to be active after apt install");
    b.ok("systemd-analyze verify /lib/systemd/system/reaper.service");
    poll_until(
        "the daemon to log that it is ready",
        Duration::from_secs(30),
        || b.logs().contains("reaper daemon ready").then_some(()),
    );

    // A stale server on a port below 1024, inside the container's own pid
    // namespace: a failed bind there runs into it, and a reap rule frees it.
    stale_server_below_1024_is_freed(&b);

    // A broken config on reload: refused, the running one kept.
    b.ok("cp /etc/reaper/reaper.toml /tmp/good.toml && echo 'this is = = not toml' >> /etc/reaper/reaper.toml");
    b.ok("systemctl reload reaper");
    poll_until(
        "the daemon to refuse the broken config",
        Duration::from_secs(20),
        || {
            b.logs()
                .contains("SIGHUP: keeping the running config, the new one is refused")
                .then_some(())
        },
    );
    assert_eq!(b.active(), "active", "{}", b.logs());
    assert_eq!(b.main_pid(), first, "a refused reload does not restart it");
    b.ok("cp /tmp/good.toml /etc/reaper/reaper.toml");

    // Upgrade to a rebuilt package: restarted (a new main pid), active.
    let name = upgrade.file_name().unwrap().to_string_lossy().into_owned();
    let copy = Command::new("docker")
        .arg("cp")
        .arg(&upgrade)
        .arg(format!("{}:/tmp/{name}", b.container.name()))
        .output()
        .unwrap();
    assert!(copy.status.success(), "{}", show(&copy));
    b.ok(&format!(
        "DEBIAN_FRONTEND=noninteractive apt-get install -y -q /tmp/{name}"
    ));
    let after = b.wait_active("reaper.service to be active after the upgrade");
    assert_ne!(
        after,
        first,
        "the upgrade restarted the daemon:\n{}",
        b.logs()
    );
    assert!(
        b.ok("dpkg-query -W -f '${Version}' reaper").ends_with("-2"),
        "the upgrade is installed"
    );

    // Remove: stopped, its process gone.
    b.ok("DEBIAN_FRONTEND=noninteractive apt-get remove -y -q reaper");
    poll_until(
        "reaper.service to stop on apt remove",
        Duration::from_secs(20),
        || (b.active() != "active").then_some(()),
    );
    // (minbase has no ps: read every process's comm from /proc.)
    let comms = b.ok("cat /proc/[0-9]*/comm 2>/dev/null || true");
    assert!(
        !comms.lines().any(|l| l.trim() == "reaper"),
        "a reaper process survives apt remove:\n{comms}"
    );
}

//! What ships, checked with each ecosystem's own tools: the systemd unit
//! (`systemd-analyze verify`), its stop timeout against the daemon's own
//! wait, the DaemonSet's grace, and the runner drop-in.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use reaper::daemon::STOP_WAIT;
use reaper_tests::{reaper_bin, workspace};

fn read(rel: &str) -> String {
    std::fs::read_to_string(workspace().join(rel)).unwrap_or_else(|e| panic!("{rel}: {e}"))
}

/// The value of `key=` in a unit file (the last one wins, as in systemd).
fn unit_value<'a>(unit: &'a str, key: &str) -> Option<&'a str> {
    unit.lines()
        .rev()
        .find_map(|l| l.trim().strip_prefix(key)?.strip_prefix('='))
}

fn seconds(v: &str) -> Duration {
    let v = v.trim();
    let n: u64 = v
        .trim_end_matches('s')
        .parse()
        .unwrap_or_else(|_| panic!("{v:?}: not a number of seconds"));
    Duration::from_secs(n)
}

#[test]
fn the_unit_bounds_the_capabilities_the_bind_probe_needs() {
    let unit = read("deploy/reaper.service");
    for key in ["CapabilityBoundingSet", "AmbientCapabilities"] {
        let caps = unit_value(&unit, key).unwrap_or_else(|| panic!("no {key}= in the unit"));
        assert!(
            caps.split_whitespace().any(|c| c == "CAP_NET_BIND_SERVICE"),
            "{key}= lacks CAP_NET_BIND_SERVICE: the bind probe after a reaping of a port below 1024 fails: {caps}"
        );
    }
}

#[test]
fn the_stop_timeouts_outwait_the_daemons_own_stop_wait() {
    let unit = read("deploy/reaper.service");
    let stop = seconds(unit_value(&unit, "TimeoutStopSec").expect("TimeoutStopSec= in the unit"));
    assert!(
        stop >= STOP_WAIT * 2,
        "TimeoutStopSec={stop:?} does not leave the daemon's {STOP_WAIT:?} stop wait room to journal the interrupted reapings"
    );
    let ds = read("deploy/k8s/daemonset.yaml");
    let grace = ds
        .lines()
        .find_map(|l| l.trim().strip_prefix("terminationGracePeriodSeconds:"))
        .map(seconds)
        .expect("terminationGracePeriodSeconds in the DaemonSet");
    assert!(
        grace >= STOP_WAIT * 2,
        "the DaemonSet's terminationGracePeriodSeconds ({grace:?}) races the daemon's {STOP_WAIT:?} stop wait"
    );
}

#[test]
fn the_unit_orders_the_runner_through_a_drop_in_not_a_unit_that_does_not_exist() {
    let unit = read("deploy/reaper.service");
    let before = unit_value(&unit, "Before").unwrap_or_default();
    assert!(
        !before
            .split_whitespace()
            .any(|u| u == "actions.runner.service"),
        "actions.runner.service is no unit GitHub's runner installs: {before}"
    );
    let dropin = read("deploy/actions-runner-reaper.conf");
    assert!(
        dropin.contains("actions.runner.<org>-<repo>.<runner name>.service"),
        "the drop-in says which unit it is for"
    );
    assert_eq!(unit_value(&dropin, "After"), Some("reaper.service"));
    assert_eq!(unit_value(&dropin, "Wants"), Some("reaper.service"));
}

/// `systemd-analyze verify` on the unit (with its binary path pointed at
/// the reaper built here) and on a runner unit carrying the drop-in.
#[test]
fn systemd_analyze_verifies_the_unit_and_the_runner_drop_in() {
    let bin = reaper_bin();
    let dir = tempfile::tempdir().unwrap();
    let unit =
        read("deploy/reaper.service").replace("/usr/local/bin/reaper", &bin.display().to_string());
    std::fs::write(dir.path().join("reaper.service"), unit).unwrap();
    // A stand-in for GitHub's templated runner unit, with the drop-in.
    let runner = "actions.runner.acme-platform.runner-7.service";
    std::fs::write(
        dir.path().join(runner),
        "[Unit]\nDescription=GitHub Actions Runner\n[Service]\nExecStart=/bin/true\n[Install]\nWantedBy=multi-user.target\n",
    )
    .unwrap();
    let dropin_dir = dir.path().join(format!("{runner}.d"));
    std::fs::create_dir(&dropin_dir).unwrap();
    std::fs::copy(
        workspace().join("deploy/actions-runner-reaper.conf"),
        dropin_dir.join("reaper.conf"),
    )
    .unwrap();
    let out = Command::new("systemd-analyze")
        .arg("verify")
        .arg(dir.path().join("reaper.service"))
        .arg(dir.path().join(runner))
        .env("SYSTEMD_UNIT_PATH", format!("{}:", dir.path().display()))
        .output()
        .expect("systemd-analyze (Debian's systemd package) is installed");
    let said = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "systemd-analyze verify: {:?}\n{said}",
        out.status
    );
    assert!(Path::new(&bin).is_file());
}

/// The capability names of a unit key, as setpriv spells them: `+bpf,+kill`.
fn setpriv_caps(unit: &str, key: &str) -> String {
    let caps = unit_value(unit, key).unwrap_or_else(|| panic!("no {key}= in the unit"));
    let list: Vec<String> = caps
        .split_whitespace()
        .map(|c| format!("+{}", c.trim_start_matches("CAP_").to_lowercase()))
        .collect();
    format!("-all,{}", list.join(","))
}

/// A mask of a unit key's capabilities.
fn unit_mask(unit: &str, key: &str) -> u64 {
    unit_value(unit, key)
        .unwrap()
        .split_whitespace()
        .map(|c| {
            let name = c.trim_start_matches("CAP_");
            (0..64)
                .find(|&i| reaper::caps::names(1 << i) == name)
                .unwrap_or_else(|| panic!("{c}: not a capability reaper knows"))
        })
        .fold(0u64, |m, i| m | 1 << i)
}

/// A port below 1024 nothing holds now.
fn low_port() -> u16 {
    (700..1000)
        .rev()
        .find(|&p| reaper_tests::daemon::bindable(p))
        .expect("a free port below 1024")
}

/// The daemon run with exactly the unit's bounding, inheritable and ambient
/// sets (setpriv, as systemd would set them): no warning about the bounding
/// set it may not touch, a log line saying what it runs with, exactly what
/// it keeps of the unit's set, and it frees a stale holder of a port below
/// 1024 (its bind probe needs CAP_NET_BIND_SERVICE) as `freed`.
#[test]
fn the_daemon_with_the_units_capabilities_frees_a_port_below_1024() {
    use reaper_tests::daemon::{wait_for, Daemon};
    use reaper_tests::fixture::Holder;
    use reaper_tests::try_binds;
    reaper_tests::require_root();
    let unit = read("deploy/reaper.service");
    let port = low_port();
    let holder = Holder::orphan(port, "rp-lowport", &[]);
    let bounding = setpriv_caps(&unit, "CapabilityBoundingSet");
    let ambient = setpriv_caps(&unit, "AmbientCapabilities");
    let d = Daemon::start(&holder.rule("stale low port", Some("reap"))).restart_setpriv(&[
        "--bounding-set",
        &bounding,
        "--inh-caps",
        &ambient,
        "--ambient-caps",
        &ambient,
    ]);
    let log = d.log_text();
    assert!(
        !log.contains("could not drop capabilities"),
        "the daemon warns under the unit's sets:\n{log}"
    );
    assert!(
        log.contains("capabilities: effective") && log.contains("reducing it needs CAP_SETPCAP"),
        "the daemon says what it runs with:\n{log}"
    );
    let unit_set = unit_mask(&unit, "CapabilityBoundingSet");
    let keeps = reaper::caps::mask_of(reaper::caps::DAEMON_KEEPS) & unit_set;
    let sets = reaper::caps::sets_of(&d.pid().to_string()).unwrap();
    assert_eq!(
        (sets.effective, sets.permitted),
        (keeps, keeps),
        "effective/permitted: {} / {}, want {}",
        reaper::caps::names(sets.effective),
        reaper::caps::names(sets.permitted),
        reaper::caps::names(keeps)
    );
    assert_eq!(
        sets.bounding,
        Some(unit_set),
        "the bounding set is the unit's"
    );
    assert_eq!(sets.ambient, Some(0));

    let (_binder, failed) = try_binds(port, 3);
    assert!(failed >= 1, "the binder's binds of :{port} failed");
    let reaping = d.wait_record("the reaping of the low port's holder", |r| {
        r["kind"] == "reaping" && r["port"] == port && r["outcome"] != "in_progress"
    });
    assert_eq!(reaping["outcome"], "freed", "{reaping}");
    wait_for("the holder to be gone", Duration::from_secs(5), || {
        (!holder.alive()).then_some(())
    });
}

/// A tool `cargo xtask setup --test` installs into the Python venv.
fn pytool(name: &str) -> std::path::PathBuf {
    let p = workspace().join("target/tools/venv/bin").join(name);
    assert!(
        p.is_file(),
        "{} is missing: `cargo xtask setup --test` installs it (from PyPI, into target/tools/venv)",
        p.display()
    );
    p
}

fn show(out: &std::process::Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// action.yml against the GitHub Actions schema check-jsonschema vendors.
#[test]
fn check_jsonschema_validates_the_action() {
    let out = Command::new(pytool("check-jsonschema"))
        .args(["--builtin-schema", "vendor.github-actions"])
        .arg(workspace().join("action.yml"))
        .output()
        .unwrap();
    assert!(out.status.success(), "check-jsonschema: {}", show(&out));
    let action = read("action.yml");
    assert!(
        !action.contains("action_repository"),
        "the Action must not depend on github.action_repository (empty for `uses: ./`)"
    );
}

/// Both manifests validate (strictly: no unknown fields) for the minimum
/// Kubernetes version they state, and that minimum is real: the version
/// before it refuses them.
#[test]
fn kubernetes_validate_accepts_the_manifests_from_the_version_they_state() {
    let files = [
        "deploy/k8s/daemonset.yaml",
        "deploy/k8s/runner-sidecar.yaml",
    ];
    for f in files {
        assert!(
            read(f).contains("Requires Kubernetes 1.30 or later"),
            "{f} states its minimum Kubernetes version"
        );
    }
    let validate = |version: &str| {
        Command::new(pytool("kubernetes-validate"))
            .args(["--strict", "-k", version])
            .args(files.map(|f| workspace().join(f)))
            .output()
            .unwrap()
    };
    let out = validate("1.30.0");
    assert!(
        out.status.success(),
        "kubernetes-validate 1.30: {}",
        show(&out)
    );
    let said = String::from_utf8_lossy(&out.stdout);
    assert!(!said.contains("ERROR"), "{said}");
    for resource in [
        "resourcequota/reaper-node-critical",
        "daemonset/reaper",
        "deployment/ci-runner",
    ] {
        assert!(
            said.contains(&format!("passed for resource {resource}")),
            "{said}"
        );
    }
    let before = validate("1.29.0");
    let said = String::from_utf8_lossy(&before.stdout);
    assert!(
        said.contains("'appArmorProfile' was unexpected"),
        "1.29 should refuse appArmorProfile, or the stated minimum is wrong: {}",
        show(&before)
    );
}

/// The DaemonSet's priority class is covered by a ResourceQuota in its own
/// namespace, so clusters that keep critical classes to kube-system admit it.
#[test]
fn the_daemonsets_critical_priority_has_a_quota_in_its_namespace() {
    let ds = read("deploy/k8s/daemonset.yaml");
    let docs: Vec<&str> = ds.split("\n---\n").collect();
    let quota = docs
        .iter()
        .find(|d| d.contains("kind: ResourceQuota"))
        .expect("a ResourceQuota in daemonset.yaml");
    let daemonset = docs
        .iter()
        .find(|d| d.contains("kind: DaemonSet"))
        .expect("the DaemonSet");
    let class = daemonset
        .lines()
        .find_map(|l| l.trim().strip_prefix("priorityClassName:"))
        .map(str::trim)
        .expect("a priorityClassName");
    assert_eq!(class, "system-node-critical");
    assert!(quota.contains("scopeName: PriorityClass"), "{quota}");
    assert!(quota.contains(&format!("values: [{class}]")), "{quota}");
    let ns = |doc: &str| {
        doc.lines()
            .find_map(|l| l.trim().strip_prefix("namespace:"))
            .map(|n| n.trim().to_string())
    };
    assert_eq!(
        ns(quota),
        ns(daemonset),
        "the quota is in the DaemonSet's namespace"
    );
}

// ---- The .deb, checked with Debian's own tools ----

fn deb() -> std::path::PathBuf {
    let version = env!("CARGO_PKG_VERSION");
    let p = workspace().join(format!("target/dist/reaper_{version}-1_amd64.deb"));
    assert!(
        p.is_file(),
        "{} is missing: run `cargo xtask dist` first (cargo xtask test does)",
        p.display()
    );
    p
}

fn deb_info(part: &str) -> String {
    let out = Command::new("dpkg-deb")
        .arg("--info")
        .arg(deb())
        .arg(part)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "dpkg-deb --info {part}: {}",
        show(&out)
    );
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// The control fields a Debian user sees, and the maintainer scripts of
/// cargo-deb's systemd support.
#[test]
fn the_deb_has_a_maintainer_address_a_whole_summary_and_systemd_scripts() {
    let control = deb_info("control");
    let field = |name: &str| {
        control
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}: ")))
            .unwrap_or_else(|| panic!("no {name} in:\n{control}"))
            .to_string()
    };
    let maintainer = field("Maintainer");
    assert!(
        maintainer.contains('<') && maintainer.contains('@') && maintainer.ends_with('>'),
        "Maintainer without an address: {maintainer}"
    );
    let summary = field("Description");
    assert!(
        summary.len() < 80,
        "summary of {} chars: {summary}",
        summary.len()
    );
    assert!(!summary.to_lowercase().starts_with("reaper"), "{summary}");
    let postinst = deb_info("postinst");
    assert!(postinst.contains("daemon-reload"), "{postinst}");
    assert!(postinst.contains("reaper.service"), "{postinst}");
    let prerm = deb_info("prerm");
    assert!(
        prerm.contains("stop") && prerm.contains("reaper.service"),
        "{prerm}"
    );
    let postrm = deb_info("postrm");
    assert!(postrm.contains("daemon-reload"), "{postrm}");
}

/// lintian, Debian's package checker: no error or warning, and the one
/// override (the static binary) is used.
#[test]
fn lintian_passes_the_deb() {
    let out = Command::new("lintian")
        .args([
            "--fail-on",
            "error,warning",
            "--display-info",
            "--show-overrides",
        ])
        .arg(deb())
        .output()
        .expect("lintian (Debian's lintian package; cargo xtask setup --test installs it)");
    let said = String::from_utf8_lossy(&out.stdout);
    // (lintian's status is 2 with --display-info as root even when clean:
    // the tags are the verdict.)
    assert!(
        !said.trim().is_empty(),
        "lintian said nothing: {}",
        show(&out)
    );
    assert!(
        !said
            .lines()
            .any(|l| l.starts_with("E: ") || l.starts_with("W: ")),
        "{said}"
    );
    assert!(
        said.contains("shared-library-lacks-prerequisites"),
        "the static binary's override is used: {said}"
    );
    eprintln!("lintian says:\n{said}");
}

/// The licences ship everywhere the binary does.
#[test]
fn licences_and_notices_ship_in_the_deb_and_the_tarball() {
    let root = tempfile::tempdir().unwrap();
    let out = Command::new("dpkg")
        .arg("-x")
        .arg(deb())
        .arg(root.path())
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", show(&out));
    let doc = root.path().join("usr/share/doc/reaper");
    let copyright = std::fs::read_to_string(doc.join("copyright")).unwrap();
    assert!(
        copyright.starts_with(
            "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/"
        ),
        "{copyright}"
    );
    assert!(
        copyright.contains("License: MIT or Apache-2.0"),
        "{copyright}"
    );
    let notices = std::fs::read_to_string(doc.join("THIRD-PARTY-NOTICES")).unwrap();
    for krate in ["tokio", "aya", "serde", "clap"] {
        assert!(
            notices.contains(&format!("\n  {krate} ")),
            "the notices name {krate}"
        );
    }
    assert!(
        notices.contains("Permission is hereby granted"),
        "full licence texts"
    );
    let version = env!("CARGO_PKG_VERSION");
    let tarball = workspace().join(format!(
        "target/dist/reaper-{version}-x86_64-linux-musl.tar.gz"
    ));
    let list = Command::new("tar")
        .arg("-tzf")
        .arg(&tarball)
        .output()
        .unwrap();
    let list = String::from_utf8_lossy(&list.stdout);
    for f in ["LICENSE-MIT", "LICENSE-APACHE", "THIRD-PARTY-NOTICES"] {
        assert!(
            list.lines().any(|l| l.ends_with(&format!("/{f}"))),
            "{f} not in the tarball:\n{list}"
        );
    }
}

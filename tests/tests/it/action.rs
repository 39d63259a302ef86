//! The GitHub Action's script (deploy/action/run.sh) where a runner differs
//! from the happy path ship.rs covers: boolean inputs spelled yes/1 (and a
//! bad one refused before any signal), the version and download location
//! from the action's own files, a runner that is not x86_64, and the
//! journal handed to the job's user after a sudo run.
//!
//! A runner's identity is simulated with small shims on PATH (`uname`,
//! `id`, `sudo`), the only way to be an arm64 or non-root runner here; the
//! stale server, the signals and reaper are real.

use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::PathBuf;
use std::process::{Command, Output};

use reaper_tests::fixture::Holder;
use reaper_tests::{free_port, reaper_bin, require_root, show, workspace};

/// A runner: a temp dir (RUNNER_TEMP) with a bin/ of shims first on PATH.
struct Runner {
    temp: tempfile::TempDir,
}

impl Runner {
    fn new() -> Runner {
        let r = Runner {
            temp: tempfile::tempdir().unwrap(),
        };
        std::fs::create_dir_all(r.bin()).unwrap();
        r
    }

    fn bin(&self) -> PathBuf {
        self.temp.path().join("bin")
    }

    fn shim(&self, name: &str, script: &str) {
        let p = self.bin().join(name);
        std::fs::write(&p, format!("#!/bin/sh\n{script}\n")).unwrap();
        std::fs::set_permissions(&p, std::fs::Permissions::from_mode(0o755)).unwrap();
    }

    /// reaper on PATH, as on a runner that installed it.
    fn with_reaper(&self) {
        std::os::unix::fs::symlink(reaper_bin(), self.bin().join("reaper")).unwrap();
    }

    fn run(&self, inputs: &[(&str, String)]) -> Output {
        let mut cmd = Command::new(workspace().join("deploy/action/run.sh"));
        cmd.env_clear()
            .env(
                "PATH",
                format!("{}:/usr/local/bin:/usr/bin:/bin", self.bin().display()),
            )
            .env("RUNNER_TEMP", self.temp.path())
            .env("GITHUB_STEP_SUMMARY", self.temp.path().join("summary.md"))
            .env("GITHUB_OUTPUT", self.temp.path().join("output"));
        for (k, v) in inputs {
            cmd.env(k, v);
        }
        cmd.output().expect("running the action's script")
    }

    fn journal(&self) -> PathBuf {
        self.temp.path().join("reaper-journal.jsonl")
    }
}

fn stale_inputs(stale: &Holder, port: u16) -> Vec<(&'static str, String)> {
    vec![
        ("INPUT_PORT", port.to_string()),
        ("INPUT_MATCH", stale.tag.clone()),
        ("INPUT_GRACE", "2s".into()),
        ("INPUT_DEADLINE", "10s".into()),
    ]
}

#[test]
fn dry_run_spelled_yes_or_1_signals_nothing_and_a_bad_boolean_is_refused_first() {
    require_root();
    let port = free_port();
    let stale = Holder::orphan(port, &format!("actb{}", std::process::id() % 100_000), &[]);
    for yes in ["yes", "1", "TRUE"] {
        let r = Runner::new();
        r.with_reaper();
        let mut inputs = stale_inputs(&stale, port);
        inputs.push(("INPUT_DRY_RUN", yes.into()));
        let out = r.run(&inputs);
        assert!(
            stale.alive(),
            "dry-run: {yes} signalled the holder: {}",
            show(&out)
        );
        let journal = std::fs::read_to_string(r.journal()).unwrap_or_default();
        assert!(
            journal.contains("dry_run"),
            "dry-run: {yes} ran as a dry run: {}\n{journal}",
            show(&out)
        );
    }
    for (input, bad) in [("INPUT_DRY_RUN", "maybe"), ("INPUT_TREE", "on")] {
        let r = Runner::new();
        r.with_reaper();
        let mut inputs = stale_inputs(&stale, port);
        inputs.push((input, bad.into()));
        let out = r.run(&inputs);
        assert_eq!(out.status.code(), Some(2), "{}", show(&out));
        let name = input
            .trim_start_matches("INPUT_")
            .to_lowercase()
            .replace('_', "-");
        assert!(
            String::from_utf8_lossy(&out.stderr).contains(&format!(
                "input '{name}' must be true or false (or yes/no, 1/0), got '{bad}'"
            )),
            "{}",
            show(&out)
        );
        assert!(stale.alive(), "a refused input signals nothing");
        assert!(!r.journal().exists(), "nothing ran: {}", show(&out));
    }
}

#[test]
fn without_a_version_the_action_installs_its_own_release() {
    // No reaper on PATH, no inputs naming a version or a tarball: the
    // action's own Cargo.toml names both. (No network here: the download
    // fails, with the action's own message and exit 2.)
    let r = Runner::new();
    let out = r.run(&[("INPUT_PORT", "8080".into())]);
    let cargo = std::fs::read_to_string(workspace().join("Cargo.toml")).unwrap();
    let version = env!("CARGO_PKG_VERSION");
    let repo = cargo
        .lines()
        .find_map(|l| l.strip_prefix("repository = "))
        .expect("a repository in Cargo.toml")
        .trim_matches('"');
    let url =
        format!("{repo}/releases/download/v{version}/reaper-{version}-x86_64-linux-musl.tar.gz");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("installing reaper {version} from {url}")),
        "{}",
        show(&out)
    );
    match out.status.code() {
        Some(2) => assert!(err.contains(&format!("could not download {url}")), "{err}"),
        // A machine that reaches the release downloads and checks it.
        Some(0) => {}
        other => panic!("exit {other:?}, not the action's own: {}", show(&out)),
    }
}

#[test]
fn a_runner_that_is_not_x86_64_gets_a_clear_error_before_any_download() {
    let r = Runner::new();
    r.shim("uname", "echo aarch64");
    r.shim("curl", "echo curl was called >&2; exit 99");
    let out = r.run(&[("INPUT_PORT", "8080".into())]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("this runner is aarch64: reaper's releases are built for x86_64 only"),
        "{err}"
    );
    assert!(!err.contains("curl was called"), "{err}");
}

#[test]
fn the_journal_belongs_to_the_jobs_user_after_a_sudo_run() {
    require_root();
    let port = free_port();
    let stale = Holder::orphan(port, &format!("actj{}", std::process::id() % 100_000), &[]);
    let r = Runner::new();
    r.with_reaper();
    // The job runs as nobody (65534) and reaches root through sudo, as on a
    // hosted runner. The shims stand in for that identity; the commands
    // sudo runs are real (this test is root).
    r.shim(
        "id",
        "case \"$1\" in -u|-g) echo 65534 ;; -un) echo nobody ;; *) exec /usr/bin/id \"$@\" ;; esac",
    );
    r.shim(
        "sudo",
        "echo \"sudo $*\" >>\"$RUNNER_TEMP/sudo.log\"\nwhile [ \"${1#-}\" != \"$1\" ]; do shift; done\nexec \"$@\"",
    );
    let out = r.run(&stale_inputs(&stale, port));
    assert!(out.status.success(), "{}", show(&out));
    assert!(!stale.alive(), "the stale holder was stopped");
    let sudo = std::fs::read_to_string(r.temp.path().join("sudo.log")).unwrap();
    assert!(sudo.contains("chown 65534:65534"), "{sudo}");
    let meta = std::fs::metadata(r.journal()).unwrap();
    assert_eq!(
        (meta.uid(), meta.gid()),
        (65534, 65534),
        "the journal is the job user's"
    );
    // And that user really reads it.
    let read = Command::new("setpriv")
        .args([
            "--reuid",
            "65534",
            "--regid",
            "65534",
            "--clear-groups",
            "cat",
        ])
        .arg(r.journal())
        .output()
        .unwrap();
    assert!(
        read.status.success(),
        "nobody cannot read it: {}",
        show(&read)
    );
    assert!(String::from_utf8_lossy(&read.stdout).contains(&stale.tag));
    let output = std::fs::read_to_string(r.temp.path().join("output")).unwrap();
    assert!(
        output.contains(&format!("journal={}", r.journal().display())),
        "{output}"
    );
}

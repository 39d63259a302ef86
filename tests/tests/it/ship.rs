//! What ships, as a user without a toolchain meets it: the static binary,
//! the tarball and the .deb of `cargo xtask dist` (target/dist/), the image
//! of `cargo xtask image` run under Docker with the DaemonSet's privileges,
//! and the GitHub Action's script against a real stale server.
//!
//! `cargo xtask test` builds target/dist and the image before these run;
//! alone: `cargo xtask image && sudo -E cargo test -p reaper-tests --test it ship::`.

use std::net::TcpListener;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use reaper_tests::containers::Removed;
use reaper_tests::daemon::bindable;
use reaper_tests::fixture::Holder;
use reaper_tests::{free_port, poll_until, require_root, show, workspace};
use serde_json::Value;

const VERSION: &str = env!("CARGO_PKG_VERSION");
const IMAGE: &str = "ghcr.io/reaper/reaper";

fn dist() -> PathBuf {
    let dir = workspace().join("target/dist");
    assert!(
        dir.join("reaper").is_file() && dir.join("SHA256SUMS").is_file(),
        "{} has no build: run `cargo xtask dist` first (cargo xtask test does)",
        dir.display()
    );
    dir
}

fn run(cmd: &mut Command) -> Output {
    cmd.output()
        .unwrap_or_else(|e| panic!("cannot run {:?}: {e}", cmd.get_program()))
}

fn ok(cmd: &mut Command) -> String {
    let out = run(cmd);
    assert!(out.status.success(), "{cmd:?}: {}", show(&out));
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// `readelf` on a file: (program headers, section names).
fn elf(path: &Path) -> (String, Vec<String>) {
    let headers = ok(Command::new("readelf").arg("-lW").arg(path));
    let sections = ok(Command::new("readelf").arg("-SW").arg(path));
    let names = sections
        .lines()
        .filter_map(|l| {
            let l = l.trim_start();
            l.starts_with('[')
                .then(|| {
                    l.split(']')
                        .nth(1)?
                        .split_whitespace()
                        .next()
                        .map(String::from)
                })
                .flatten()
        })
        .collect();
    (headers, names)
}

#[test]
fn the_static_binary_is_small_stripped_and_loads_its_bpf_object() {
    require_root();
    let bin = dist().join("reaper");
    let size = std::fs::metadata(&bin).unwrap().len();
    assert!(
        size <= 15 * 1024 * 1024,
        "reaper is {size} bytes, over 15 MiB"
    );
    let (headers, sections) = elf(&bin);
    assert!(
        !headers.contains("INTERP"),
        "reaper asks for a dynamic loader: not static\n{headers}"
    );
    let dynamic = ok(Command::new("readelf").arg("-dW").arg(&bin));
    assert!(
        !dynamic.contains("(NEEDED)"),
        "reaper links shared libraries:\n{dynamic}"
    );
    assert!(
        !sections
            .iter()
            .any(|s| [".debug_info", ".debug_line", ".debug_str"].contains(&s.as_str())),
        "reaper still carries debug info: {sections:?}"
    );
    assert!(
        sections.iter().any(|s| s == ".gnu_debuglink"),
        "{sections:?}"
    );
    let (_, debug_sections) = elf(&dist().join("reaper.debug"));
    assert!(
        debug_sections.iter().any(|s| s == ".debug_line"),
        "reaper.debug has no line tables: {debug_sections:?}"
    );
    assert_eq!(
        ok(Command::new(&bin).arg("--version")).trim(),
        format!("reaper {VERSION}")
    );
    // The embedded eBPF object loads and attaches: doctor probes each hook.
    let doctor: Value =
        serde_json::from_str(&ok(Command::new(&bin).args(["doctor", "--json"]))).unwrap();
    assert_eq!(doctor["tier"], "cgroup", "{doctor:#}");
    let probes = doctor["probes"].as_array().unwrap();
    assert!(
        probes.iter().any(|p| p["attaches"] == true),
        "no hook of the static binary's BPF object attached: {doctor:#}"
    );
}

#[test]
fn the_checksums_match_and_the_tarball_holds_binary_man_page_and_completions() {
    let dir = dist();
    let sums = ok(Command::new("sha256sum")
        .args(["--check", "--strict", "SHA256SUMS"])
        .current_dir(&dir));
    let name = format!("reaper-{VERSION}-x86_64-linux-musl");
    let deb = format!("reaper_{VERSION}-1_amd64.deb");
    for f in ["reaper", "reaper.debug", &format!("{name}.tar.gz"), &deb] {
        assert!(
            sums.contains(&format!("{f}: OK")),
            "{f} not in SHA256SUMS:\n{sums}"
        );
    }
    let tarball = dir.join(format!("{name}.tar.gz"));
    let mut listed: Vec<String> = ok(Command::new("tar").arg("-tzf").arg(&tarball))
        .lines()
        .map(String::from)
        .collect();
    listed.sort();
    let mut want: Vec<String> = [
        "",
        "LICENSE-APACHE",
        "LICENSE-MIT",
        "README.md",
        "THIRD-PARTY-NOTICES",
        "actions-runner-reaper.conf",
        "completions/",
        "completions/_reaper",
        "completions/reaper.bash",
        "completions/reaper.fish",
        "hooks/",
        "hooks/buildkite/",
        "hooks/buildkite/pre-command",
        "hooks/buildkite/pre-exit",
        "hooks/job-end.sh",
        "hooks/job-start.sh",
        "reaper",
        "reaper.1",
        "reaper.service",
        "reaper.toml",
    ]
    .iter()
    .map(|f| format!("{name}/{f}"))
    .collect();
    want.sort();
    assert_eq!(listed, want);
    let tmp = tempfile::tempdir().unwrap();
    ok(Command::new("tar")
        .arg("-xzf")
        .arg(&tarball)
        .arg("-C")
        .arg(tmp.path()));
    let top = tmp.path().join(&name);
    assert_eq!(
        std::fs::read(top.join("reaper")).unwrap(),
        std::fs::read(dir.join("reaper")).unwrap(),
        "the tarball's reaper is the one checked here"
    );
    for hook in HOOKS {
        let mode = std::fs::metadata(top.join("hooks").join(hook))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(
            mode & 0o111,
            0o111,
            "the tarball's hooks/{hook} is not executable"
        );
    }
    let man = std::fs::read_to_string(top.join("reaper.1")).unwrap();
    assert!(
        man.starts_with(".ie") || man.contains(".TH reaper"),
        "{}",
        &man[..200.min(man.len())]
    );
    let bash = std::fs::read_to_string(top.join("completions/reaper.bash")).unwrap();
    assert!(
        bash.contains("complete") && bash.contains("free"),
        "bash completions"
    );
    // The completions really complete: bash offers the subcommands.
    let words = ok(Command::new("bash").arg("-c").arg(format!(
        "source '{}'; COMP_WORDS=(reaper fr); COMP_CWORD=1; COMP_LINE='reaper fr'; COMP_POINT=9; _reaper reaper fr reaper; echo \"${{COMPREPLY[@]}}\"",
        top.join("completions/reaper.bash").display()
    )));
    assert!(
        words.split_whitespace().any(|w| w == "free"),
        "bash completed 'fr' to {words:?}"
    );
}

#[test]
fn the_deb_unpacks_into_a_scratch_root_and_its_reaper_runs() {
    require_root();
    let deb = dist().join(format!("reaper_{VERSION}-1_amd64.deb"));
    let info = ok(Command::new("dpkg-deb").arg("--info").arg(&deb));
    for field in [
        "Package: reaper",
        "Architecture: amd64",
        &format!("Version: {VERSION}-1"),
    ] {
        assert!(info.contains(field), "{field} missing:\n{info}");
    }
    let conffiles = ok(Command::new("dpkg-deb")
        .arg("--info")
        .arg(&deb)
        .arg("conffiles"));
    assert_eq!(conffiles.trim(), "/etc/reaper/reaper.toml");

    let root = tempfile::tempdir().unwrap();
    ok(Command::new("dpkg").arg("-x").arg(&deb).arg(root.path()));
    let file = |rel: &str| {
        let p = root.path().join(rel);
        assert!(p.is_file(), "the .deb has no /{rel}");
        p
    };
    let bin = file("usr/bin/reaper");
    assert_eq!(
        std::fs::metadata(&bin).unwrap().permissions().mode() & 0o777,
        0o755
    );
    file("usr/share/man/man1/reaper.1.gz");
    file("usr/share/bash-completion/completions/reaper");
    file("usr/share/zsh/vendor-completions/_reaper");
    file("usr/share/fish/vendor_completions.d/reaper.fish");
    let unit = std::fs::read_to_string(file("usr/lib/systemd/system/reaper.service")).unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/reaper daemon --config /etc/reaper/reaper.toml"),
        "the unit runs the packaged binary:\n{unit}"
    );
    assert!(!unit.contains("/usr/local/bin"), "{unit}");
    let config = file("etc/reaper/reaper.toml");

    assert_eq!(
        ok(Command::new(&bin).arg("--version")).trim(),
        format!("reaper {VERSION}")
    );
    // The packaged config is valid for the packaged binary, as the unit's
    // ExecStartPre checks it.
    ok(Command::new(&bin)
        .args(["daemon", "--check-config"])
        .arg(&config));
    // And it does its job: who holds a port this test holds.
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let who: Value = serde_json::from_str(&ok(Command::new(&bin)
        .args(["who", &port.to_string(), "--json"])
        .env("REAPER_CONTROL_SOCKET", root.path().join("no-daemon.sock"))))
    .unwrap();
    assert!(holds(&who, std::process::id()), "{who:#}");

    // The runner hooks docs/ci.md points at, executable, and working as a
    // Buildkite agent runs them: it sources a job hook in a wrapper shell
    // that reads the environment back afterwards (so the hook must not
    // exec), and the pre-command and pre-exit hooks run the packaged
    // job-start.sh and job-end.sh, which run the packaged reaper for the
    // job the environment names.
    let hooks = root.path().join("usr/share/reaper/hooks");
    for hook in HOOKS {
        let mode = std::fs::metadata(file(&format!("usr/share/reaper/hooks/{hook}")))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o755, "/usr/share/reaper/hooks/{hook}");
    }
    let port = free_port();
    let hook = |name: &str| {
        let out = run(Command::new("bash")
            .arg("-c")
            .arg(". \"$1\"; status=$?; echo \"the wrapper goes on: $status\"; exit $status")
            .arg("wrapper")
            .arg(hooks.join("buildkite").join(name))
            .env("REAPER_HOOKS", &hooks)
            .env("REAPER", &bin)
            .env("REAPER_JOB_PORTS", port.to_string())
            .env("BUILDKITE_JOB_ID", format!("ship-{}", std::process::id()))
            .env("BUILDKITE_BUILD_ID", "ship")
            .env("NO_COLOR", "1")
            .env("REAPER_CONTROL_SOCKET", root.path().join("no-daemon.sock")));
        assert_eq!(out.status.code(), Some(0), "{name}: {}", show(&out));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let start = hook("pre-command");
    assert!(start.contains("the wrapper goes on: 0"), "{start}");
    assert!(
        start.contains("job start for buildkite job ship-")
            && start.contains(&format!("port {port}/tcp: free")),
        "{start}"
    );
    let end = hook("pre-exit");
    assert!(
        end.contains("the job left no port held") && end.contains("the wrapper goes on: 0"),
        "{end}"
    );
}

/// The runner hooks the tarball and the .deb ship (deploy/hooks/).
const HOOKS: [&str; 4] = [
    "job-start.sh",
    "job-end.sh",
    "buildkite/pre-command",
    "buildkite/pre-exit",
];

/// Whether a `who --json` answer names `pid` as a holder.
fn holds(who: &Value, pid: u32) -> bool {
    who["holdings"].as_array().is_some_and(|hs| {
        hs.iter().any(|h| {
            h["processes"]
                .as_array()
                .is_some_and(|ps| ps.iter().any(|p| p["pid"] == pid))
        })
    })
}

// ---- The image, under Docker with the manifest's privileges ----

fn docker_ready() -> String {
    let out = Command::new("docker").arg("info").output();
    match out {
        Ok(o) if o.status.success() => {}
        Ok(o) => panic!(
            "the Docker Engine does not answer (`docker info`: {}): cargo xtask test starts dockerd; by hand: `dockerd &`",
            String::from_utf8_lossy(&o.stderr).trim()
        ),
        Err(e) => panic!(
            "no docker client ({e}): `cargo xtask setup --test` installs Debian's docker.io"
        ),
    }
    let image = format!("{IMAGE}:{VERSION}");
    let inspect = run(Command::new("docker").args(["image", "inspect", &image]));
    assert!(
        inspect.status.success(),
        "no image {image}: run `cargo xtask image` (cargo xtask test does)"
    );
    image
}

/// What deploy/k8s/daemonset.yaml grants the reaper container, as
/// `docker run` flags: host PID and network namespaces, the capabilities
/// (all others dropped), the seccomp profile, and the host paths mounted.
/// Host paths outside /sys are replaced by directories of `scratch` (the
/// test must not write the host's /var/lib/reaper); the ConfigMap is `config`.
struct Grant {
    args: Vec<String>,
    args_for_reaper: Vec<String>,
}

fn manifest_grant(scratch: &Path, config: &Path) -> Grant {
    let text = std::fs::read_to_string(workspace().join("deploy/k8s/daemonset.yaml")).unwrap();
    let mut args = vec!["--cap-drop".to_string(), "ALL".to_string()];
    let flag = |key: &str| text.lines().any(|l| l.trim() == format!("{key}: true"));
    assert!(
        flag("hostPID") && flag("hostNetwork"),
        "the DaemonSet runs in the host's PID and network namespaces"
    );
    args.extend(["--pid", "host", "--net", "host"].map(String::from));
    let caps = text
        .lines()
        .find_map(|l| l.trim().strip_prefix("add: ["))
        .expect("capabilities add: [...] in the manifest");
    let engine_knows = engine_knows_bpf_caps();
    for cap in caps.trim_end_matches(']').split(',') {
        let cap = cap.trim().trim_matches('"');
        if matches!(cap, "BPF" | "PERFMON") && !engine_knows {
            // Engines before 23.0 refuse these names. SYS_ADMIN (granted
            // too) lets the kernel do what either allows, so the container
            // runs with fewer privileges than the manifest, not more.
            eprintln!("this Docker Engine does not know CAP_{cap}; SYS_ADMIN stands in for it");
            continue;
        }
        args.push("--cap-add".into());
        args.push(cap.to_string());
    }
    let lines: Vec<&str> = text.lines().collect();
    let seccomp = lines
        .iter()
        .position(|l| l.trim() == "seccompProfile:")
        .map(|at| lines[at + 1].trim())
        .expect("a seccompProfile in the manifest");
    match seccomp {
        "type: RuntimeDefault" => {} // Docker's default profile
        "type: Unconfined" => {
            args.extend(["--security-opt", "seccomp=unconfined"].map(String::from))
        }
        other => panic!("seccompProfile {other}: not mapped to docker run"),
    }
    assert!(
        text.contains(&format!("image: {IMAGE}:{VERSION}")),
        "the DaemonSet runs the image `cargo xtask image` builds ({IMAGE}:{VERSION})"
    );
    // volumeMounts: `- { name: N, mountPath: P[, readOnly: true] }`;
    // volumes: `- name: N` then `hostPath: { path: H, ... }` or `configMap:`.
    let field = |l: &str, key: &str| -> Option<String> {
        let at = l.find(&format!("{key}: "))? + key.len() + 2;
        Some(l[at..].split([',', '}']).next()?.trim().to_string())
    };
    let mut mounts = 0;
    for l in &lines {
        let (Some(name), Some(path)) = (field(l, "name"), field(l, "mountPath")) else {
            continue;
        };
        let ro = l.contains("readOnly: true");
        let at = lines
            .iter()
            .position(|v| v.trim() == format!("- name: {name}"))
            .unwrap_or_else(|| panic!("volume {name} is mounted but not declared"));
        let source = lines[at + 1];
        let host = if source.contains("configMap:") {
            config.to_path_buf()
        } else {
            let host = field(source, "path").unwrap_or_else(|| panic!("volume {name}: {source}"));
            if host.starts_with("/sys/") {
                PathBuf::from(host)
            } else {
                let p = scratch.join(name);
                std::fs::create_dir_all(&p).unwrap();
                p
            }
        };
        args.push("--volume".into());
        args.push(format!(
            "{}:{path}{}",
            host.display(),
            if ro { ":ro" } else { "" }
        ));
        mounts += 1;
    }
    assert!(
        mounts >= 3,
        "the manifest mounts the config, journal and socket directories"
    );
    let reaper_args = lines
        .iter()
        .find_map(|l| l.trim().strip_prefix("args: ["))
        .expect("the container's args")
        .trim_end_matches(']')
        .split(',')
        .map(|a| a.trim().trim_matches('"').to_string())
        .collect();
    Grant {
        args,
        args_for_reaper: reaper_args,
    }
}

/// Whether the Engine accepts CAP_BPF and CAP_PERFMON by name (23.0 on).
fn engine_knows_bpf_caps() -> bool {
    let v = ok(Command::new("docker").args(["version", "--format", "{{.Server.Version}}"]));
    let major: u32 = v
        .trim()
        .split('.')
        .next()
        .unwrap_or("0")
        .parse()
        .unwrap_or(0);
    major >= 23
}

#[test]
fn the_image_answers_who_for_a_listener_on_the_host() {
    require_root();
    let image = docker_ready();
    let scratch = tempfile::tempdir().unwrap();
    let grant = manifest_grant(scratch.path(), scratch.path());
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let out = run(Command::new("docker")
        .args(["run", "--rm"])
        .args(&grant.args)
        .arg(&image)
        .args(["who", &port.to_string(), "--json"]));
    assert!(
        out.status.success(),
        "reaper who in the image: {}",
        show(&out)
    );
    let who: Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(who["held"], true, "{who:#}");
    assert!(
        holds(&who, std::process::id()),
        "the image's reaper sees this test (host pid {}) holding {port}: {who:#}",
        std::process::id()
    );
}

#[test]
fn the_image_daemon_with_the_manifest_privileges_records_host_binds() {
    require_root();
    let image = docker_ready();
    let scratch = tempfile::tempdir().unwrap();
    let config_dir = scratch.path().join("etc");
    std::fs::create_dir_all(&config_dir).unwrap();
    let metrics = free_port();
    std::fs::write(
        config_dir.join("reaper.toml"),
        format!(
            "journal = \"/var/lib/reaper/journal.jsonl\"\n\
             metrics_listen = \"127.0.0.1:{metrics}\"\n\
             control_socket = \"/run/reaper/reaper.sock\"\n\
             hooks = \"auto\"\n"
        ),
    )
    .unwrap();
    let grant = manifest_grant(scratch.path(), &config_dir);
    let name = format!("reaper-ship-test-{}", std::process::id());
    let out = run(Command::new("docker")
        .args(["run", "--detach", "--name", &name])
        .args(&grant.args)
        .arg(&image)
        .args(&grant.args_for_reaper));
    assert!(out.status.success(), "docker run: {}", show(&out));
    let container = Removed(name);
    let logs = || {
        let o = run(Command::new("docker").args(["logs", &container.0]));
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    // The control socket appears in the host directory mounted at /run/reaper.
    let socket = scratch.path().join("run/reaper.sock");
    poll_until(
        &format!("the daemon's control socket at {}", socket.display()),
        Duration::from_secs(30),
        || {
            let running = ok(Command::new("docker").args([
                "inspect",
                "--format",
                "{{.State.Running}}",
                &container.0,
            ]));
            assert_eq!(
                running.trim(),
                "true",
                "the daemon exited; its log:\n{}",
                logs()
            );
            std::os::unix::net::UnixStream::connect(&socket).ok()
        },
    );
    // The seed scan (claims that predate the daemon) is done: a bind from
    // now on can only reach the ledger through the kernel hook.
    poll_until("the daemon's seed scan", Duration::from_secs(30), || {
        logs().contains("seeded the ledger").then_some(())
    });
    // A bind on the host after that: the ledger has it, seen by the kernel
    // hook (not by a scan), with the host's pid.
    let l = TcpListener::bind("0.0.0.0:0").unwrap();
    let port = l.local_addr().unwrap().port();
    let who = poll_until(
        "the daemon's ledger to hold this test's bind",
        Duration::from_secs(10),
        || {
            let out = run(Command::new("docker").args([
                "exec",
                &container.0,
                "/usr/bin/reaper",
                "who",
                &port.to_string(),
                "--json",
            ]));
            let who: Value = serde_json::from_slice(&out.stdout).ok()?;
            let ledger = who["ledger"].as_array()?;
            ledger
                .iter()
                .any(|c| c["pid"] == std::process::id())
                .then_some(who)
        },
    );
    assert_eq!(who["source"], "daemon", "{who:#}");
    let claim = who["ledger"]
        .as_array()
        .unwrap()
        .iter()
        .find(|c| c["pid"] == std::process::id())
        .unwrap();
    let text = reaper_tests::daemon::scrape_at(&format!("127.0.0.1:{metrics}").parse().unwrap());
    assert_eq!(
        claim["source"], "cgroup",
        "seen by the cgroup bind hook (a \"proc\" claim comes from a scan: lost events? {:?}): {claim:#}",
        reaper_tests::daemon::metric_in(&text, "reaper_ringbuf_lost_events_total")
    );
    assert!(text.contains("reaper_degraded 0"), "{text}");
    assert!(
        text.contains("reaper_tier{tier=\"cgroup\"} 1"),
        "{text}\nlog:\n{}",
        logs()
    );
    // The journal is on the host, where the manifest's hostPath puts it.
    let journal = std::fs::read_to_string(scratch.path().join("journal/journal.jsonl")).unwrap();
    assert!(journal.contains("\"kind\":\"start\""), "{journal}");
    drop(l);
}

// ---- The GitHub Action's script ----

fn action_env(cmd: &mut Command, temp: &Path) -> PathBuf {
    let summary = temp.join("step-summary.md");
    std::fs::write(&summary, "").unwrap();
    cmd.env_clear()
        .env("PATH", "/usr/local/bin:/usr/bin:/bin")
        .env("RUNNER_TEMP", temp)
        .env("GITHUB_STEP_SUMMARY", &summary)
        .env("GITHUB_OUTPUT", temp.join("output"))
        .env("GITHUB_PATH", temp.join("path"));
    summary
}

#[test]
fn the_action_frees_a_stale_server_and_writes_the_job_summary() {
    require_root();
    let port = free_port();
    let tag = format!("shipact{}", std::process::id() % 100_000);
    let stale = Holder::orphan(port, &tag, &[]);
    let temp = tempfile::tempdir().unwrap();
    // reaper on PATH, as on a runner that installed the .deb.
    let bin_dir = temp.path().join("bin");
    std::fs::create_dir_all(&bin_dir).unwrap();
    std::os::unix::fs::symlink(reaper_tests::reaper_bin(), bin_dir.join("reaper")).unwrap();
    let mut cmd = Command::new(workspace().join("deploy/action/run.sh"));
    let summary = action_env(&mut cmd, temp.path());
    cmd.env(
        "PATH",
        format!("{}:/usr/local/bin:/usr/bin:/bin", bin_dir.display()),
    )
    .env("INPUT_PORT", port.to_string())
    .env("INPUT_MATCH", &tag)
    .env("INPUT_EXE", reaper_tests::fixture_bin("platform-server"))
    .env("INPUT_GRACE", "2s")
    .env("INPUT_DEADLINE", "10s");
    let out = run(&mut cmd);
    assert!(out.status.success(), "the action's script: {}", show(&out));
    assert!(!stale.alive(), "the stale server is gone");
    assert!(bindable(port), "the port binds again");
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary.contains(&format!("### reaper free {port}: exit 0")),
        "{summary}"
    );
    assert!(
        summary.contains(&stale.pid().to_string()) && summary.contains(&tag),
        "the summary names the process reaped (pid {}, {tag}):\n{summary}",
        stale.pid()
    );
    let journal = temp.path().join("reaper-journal.jsonl");
    assert!(
        std::fs::read_to_string(&journal).unwrap().contains(&tag),
        "the run is in the journal in RUNNER_TEMP"
    );
    let output = std::fs::read_to_string(temp.path().join("output")).unwrap();
    assert!(output.contains("status=0"), "{output}");
}

#[test]
fn the_action_installs_reaper_from_the_release_tarball_and_checks_its_sum() {
    require_root();
    let dir = dist();
    let temp = tempfile::tempdir().unwrap();
    let url = format!(
        "file://{}/reaper-{VERSION}-x86_64-linux-musl.tar.gz",
        dir.display()
    );
    let port = free_port();
    let mut cmd = Command::new(workspace().join("deploy/action/run.sh"));
    let summary = action_env(&mut cmd, temp.path());
    cmd.env("INPUT_PORT", port.to_string())
        .env("INPUT_MATCH", "nothing-holds-this")
        .env("INPUT_VERSION", VERSION)
        .env("INPUT_TARBALL_URL", &url);
    let out = run(&mut cmd);
    assert!(out.status.success(), "the action's script: {}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("reaper-{VERSION}-x86_64-linux-musl.tar.gz: OK")),
        "{err}"
    );
    let installed = temp
        .path()
        .join(format!("reaper-action/reaper-{VERSION}-x86_64-linux-musl"));
    assert!(
        err.contains(&format!(
            "using reaper {VERSION} at {}",
            installed.join("reaper").display()
        )),
        "{err}"
    );
    let path = std::fs::read_to_string(temp.path().join("path")).unwrap();
    assert_eq!(
        path.trim(),
        installed.display().to_string(),
        "later steps find reaper on PATH"
    );
    let summary = std::fs::read_to_string(&summary).unwrap();
    assert!(
        summary.contains(&format!("### reaper free {port}: exit 0")),
        "{summary}"
    );

    // A tarball that does not match SHA256SUMS is refused before it runs.
    let fake = tempfile::tempdir().unwrap();
    let name = format!("reaper-{VERSION}-x86_64-linux-musl.tar.gz");
    std::fs::copy(dir.join("SHA256SUMS"), fake.path().join("SHA256SUMS")).unwrap();
    std::fs::write(fake.path().join(&name), b"not the release").unwrap();
    let mut cmd = Command::new(workspace().join("deploy/action/run.sh"));
    action_env(&mut cmd, temp.path());
    cmd.env("INPUT_PORT", port.to_string())
        .env("INPUT_MATCH", "nothing-holds-this")
        .env("INPUT_VERSION", VERSION)
        .env(
            "INPUT_TARBALL_URL",
            format!("file://{}/{name}", fake.path().display()),
        );
    let out = run(&mut cmd);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("does not match the release's SHA256SUMS"),
        "{}",
        show(&out)
    );
}

#[test]
fn every_input_of_the_action_reaches_its_script() {
    let action = std::fs::read_to_string(workspace().join("action.yml")).unwrap();
    // run.sh, the helpers it sources and the job modes' script.
    let script: String = ["run.sh", "inputs.sh", "job.sh"]
        .iter()
        .map(|f| std::fs::read_to_string(workspace().join("deploy/action").join(f)).unwrap())
        .collect();
    let inputs: Vec<&str> = action
        .split("\ninputs:\n")
        .nth(1)
        .and_then(|rest| rest.split("\noutputs:\n").next())
        .expect("an inputs: block before outputs:")
        .lines()
        .filter_map(|l| l.strip_prefix("  ")?.strip_suffix(':'))
        .filter(|l| !l.starts_with(' '))
        .collect();
    for want in [
        "port", "match", "exe", "grace", "deadline", "policy", "journal",
    ] {
        assert!(
            inputs.contains(&want),
            "action.yml has no input {want}: {inputs:?}"
        );
    }
    for input in &inputs {
        let var = format!("INPUT_{}", input.to_uppercase().replace('-', "_"));
        assert!(
            action.contains(&format!("{var}: ${{{{ inputs.{input} }}}}")),
            "action.yml does not hand {input} to the script as {var}"
        );
        assert!(
            script.contains(&var),
            "the action's scripts never read {var}"
        );
    }
}

//! `cargo xtask dist` and `cargo xtask image`: reaper for machines without
//! a toolchain.
//!
//! - `dist`  a static (musl) reaper with its eBPF object embedded, stripped,
//!   its debug info in `reaper.debug` beside it; a tarball (binary, man
//!   page, completions, systemd unit, example config); a `.deb` (cargo-deb,
//!   metadata in reaper-user/Cargo.toml); SHA256SUMS. All in target/dist/.
//! - `image` the container image `deploy/Dockerfile` describes (`FROM
//!   scratch` plus that binary), built by the local Docker Engine.
//!
//! The Docker Engine for the tests is started here too (`Dockerd`): the
//! image and container tests need it, and CI machines start no services.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use crate::{cargo, check, have, output_ok, root, say};

/// The Rust target of the shipped binary: static, no libc needed on the host.
pub const MUSL: &str = "x86_64-unknown-linux-musl";
/// The cargo profile of the shipped binary (see Cargo.toml).
const PROFILE: &str = "static";
/// The image `cargo xtask image` builds; deploy/k8s names it.
pub const IMAGE: &str = "ghcr.io/reaper/reaper";
/// The shipped binary's size limit.
const MAX_BYTES: u64 = 15 * 1024 * 1024;

/// What `dist` made.
pub struct Dist {
    pub version: String,
    pub dir: PathBuf,
}

/// Adds the musl target to the stable toolchain when it is missing (once).
pub fn setup_musl() -> Result<()> {
    let installed = output_ok(Command::new("rustup").args(["target", "list", "--installed"]))
        .unwrap_or_default();
    if !installed.lines().any(|l| l.trim() == MUSL) {
        say(&format!(
            "adding the {MUSL} target (the shipped reaper is a static binary)"
        ));
        check(Command::new("rustup").args(["target", "add", MUSL]))?;
    }
    // The static build compiles mimalloc's C source (reaper-user/Cargo.toml).
    if !have("musl-gcc") {
        crate::apt_install(
            &["musl-tools"],
            "musl-gcc compiles the static reaper's allocator (mimalloc)",
        )?;
    }
    Ok(())
}

/// Installs cargo-deb when it is missing.
pub fn setup_cargo_deb() -> Result<()> {
    if output_ok(Command::new("cargo").args(["deb", "--version"])).is_none() {
        say("installing cargo-deb (builds reaper's .deb; about a minute, once)");
        check(Command::new("cargo").args(["install", "cargo-deb", "--locked"]))?;
    }
    Ok(())
}

/// The workspace version, from the `[workspace.package]` table.
pub fn version() -> Result<String> {
    let text = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let mut in_package = false;
    for line in text.lines() {
        let line = line.trim();
        if line.starts_with('[') {
            in_package = line == "[workspace.package]";
        } else if in_package {
            if let Some(v) = line.strip_prefix("version") {
                let v = v.trim_start().trim_start_matches('=').trim();
                return Ok(v.trim_matches('"').to_string());
            }
        }
    }
    bail!("no version in [workspace.package] of Cargo.toml")
}

/// Builds everything into target/dist/ (emptied first).
pub fn dist() -> Result<Dist> {
    setup_musl()?;
    setup_cargo_deb()?;
    crate::licenses::setup_cargo_about()?;
    if !have("objcopy") || !have("readelf") {
        crate::apt_install(&["binutils"], "objcopy splits the debug info off")?;
    }
    let t = Instant::now();
    let version = version()?;
    let target = root().join("target");
    let dir = target.join("dist");
    // Staging (the files the tarball and the .deb are made of) stays out of
    // target/dist, which holds exactly what is shipped.
    let stage = target.join("dist-stage");
    for d in [&dir, &stage] {
        if d.exists() {
            std::fs::remove_dir_all(d).with_context(|| format!("emptying {}", d.display()))?;
        }
        std::fs::create_dir_all(d)?;
    }
    say(&format!(
        "dist 1/5: building the static reaper ({MUSL}, profile {PROFILE})"
    ));
    let built = build_static()?;
    say("dist 2/5: splitting the debug info into reaper.debug, stripping reaper");
    let bin = split_debug_info(&built, &dir, &version)?;
    say("dist 3/5: man page, shell completions, licences and third-party notices (cargo about: the licence check)");
    stage_files(&bin, &stage)?;
    crate::licenses::stage(&stage)?;
    let name = format!("reaper-{version}-x86_64-linux-musl");
    say(&format!("dist 4/5: {name}.tar.gz"));
    tarball(&stage, &name, &dir)?;
    say("dist 5/5: the .deb (cargo-deb) and SHA256SUMS");
    check(
        cargo()
            .args([
                "deb",
                "--quiet",
                "-p",
                "reaper-user",
                "--no-build",
                "--no-strip",
            ])
            .args(["--target", MUSL, "--profile", PROFILE, "--output"])
            .arg(&dir),
    )?;
    let files = checksums(&dir)?;
    say(&format!(
        "dist: target/dist/ has {} and SHA256SUMS (reaper: {:.1} MB) in {:.0} s",
        files.join(", "),
        std::fs::metadata(&bin)?.len() as f64 / 1e6,
        t.elapsed().as_secs_f64()
    ));
    Ok(Dist { version, dir })
}

/// The static binary alone, stripped as `dist` ships it, in
/// target/bench-dist/: what the benchmarks that judge what people install
/// run, without the tarball, the .deb and the notices. Returns the folder.
pub fn static_for_bench() -> Result<PathBuf> {
    setup_musl()?;
    if !have("objcopy") {
        crate::apt_install(&["binutils"], "objcopy strips the binary")?;
    }
    say(&format!(
        "building the static reaper ({MUSL}, profile {PROFILE}), as `cargo xtask dist` does"
    ));
    let built = build_static()?;
    let dir = root().join("target").join("bench-dist");
    std::fs::create_dir_all(&dir)?;
    check(
        Command::new("objcopy")
            .arg("--strip-all")
            .arg(&built)
            .arg(dir.join("reaper")),
    )?;
    Ok(dir)
}

/// `cargo build` of the static binary; returns its path.
fn build_static() -> Result<PathBuf> {
    check(cargo().args([
        "build",
        "-p",
        "reaper-user",
        "--bin",
        "reaper",
        "--profile",
        PROFILE,
        "--target",
        MUSL,
    ]))?;
    Ok(root()
        .join("target")
        .join(MUSL)
        .join(PROFILE)
        .join("reaper"))
}

/// target/dist/reaper (stripped, with a debuglink) and reaper.debug; checks
/// the size limit and that the binary runs.
fn split_debug_info(built: &Path, dir: &Path, version: &str) -> Result<PathBuf> {
    let bin = dir.join("reaper");
    check(
        Command::new("objcopy")
            .arg("--only-keep-debug")
            .arg(built)
            .arg(dir.join("reaper.debug")),
    )?;
    // The debuglink names reaper.debug, so gdb finds it beside the binary
    // (or under /usr/lib/debug) and checks its CRC.
    check(
        Command::new("objcopy")
            .args(["--strip-all", "--add-gnu-debuglink=reaper.debug"])
            .arg(built)
            .arg("reaper")
            .current_dir(dir),
    )?;
    let size = std::fs::metadata(&bin)?.len();
    if size > MAX_BYTES {
        bail!(
            "{} is {size} bytes, over the {MAX_BYTES}-byte limit",
            bin.display()
        );
    }
    let said = output_ok(Command::new(&bin).arg("--version")).unwrap_or_default();
    if said.trim() != format!("reaper {version}") {
        bail!(
            "{} --version says {said:?}, not reaper {version}",
            bin.display()
        );
    }
    Ok(bin)
}

/// What the tarball and the .deb are made of, in `stage`: the binary, the
/// man page (plain and gzipped), completions, and the unit for /usr/bin.
fn stage_files(bin: &Path, stage: &Path) -> Result<()> {
    let from_bin = |args: &[&str], to: &Path| -> Result<()> {
        let out = Command::new(bin)
            .args(args)
            .output()
            .with_context(|| format!("running reaper {}", args.join(" ")))?;
        if !out.status.success() {
            bail!(
                "reaper {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        std::fs::write(to, out.stdout).with_context(|| format!("writing {}", to.display()))
    };
    let completions = stage.join("completions");
    std::fs::create_dir_all(&completions)?;
    from_bin(&["man"], &stage.join("reaper.1"))?;
    from_bin(&["completions", "bash"], &completions.join("reaper.bash"))?;
    from_bin(&["completions", "zsh"], &completions.join("_reaper"))?;
    from_bin(&["completions", "fish"], &completions.join("reaper.fish"))?;
    check(
        Command::new("gzip")
            .args(["-9", "-n", "-k", "reaper.1"])
            .current_dir(stage),
    )?;
    std::fs::copy(bin, stage.join("reaper"))?;
    // The .deb installs reaper in /usr/bin; the unit in deploy/ is written
    // for an install by hand into /usr/local/bin.
    let unit = std::fs::read_to_string(root().join("deploy/reaper.service"))?;
    std::fs::create_dir_all(stage.join("deb"))?;
    std::fs::write(
        stage.join("deb/reaper.service"),
        unit.replace("/usr/local/bin/reaper", "/usr/bin/reaper"),
    )?;
    Ok(())
}

/// `dir`/`name`.tar.gz: one top directory `name` with the binary, the man
/// page, completions, the unit, the example config, the README and the
/// runner hooks.
fn tarball(stage: &Path, name: &str, dir: &Path) -> Result<()> {
    let top = stage.join(name);
    std::fs::create_dir_all(top.join("completions"))?;
    std::fs::create_dir_all(top.join("hooks/buildkite"))?;
    for (from, to) in [
        (stage.join("reaper"), "reaper"),
        (stage.join("reaper.1"), "reaper.1"),
        (
            stage.join("completions/reaper.bash"),
            "completions/reaper.bash",
        ),
        (stage.join("completions/_reaper"), "completions/_reaper"),
        (
            stage.join("completions/reaper.fish"),
            "completions/reaper.fish",
        ),
        (root().join("deploy/reaper.service"), "reaper.service"),
        (root().join("deploy/reaper.toml"), "reaper.toml"),
        (root().join("README.md"), "README.md"),
        (root().join("LICENSE-MIT"), "LICENSE-MIT"),
        (root().join("LICENSE-APACHE"), "LICENSE-APACHE"),
        (stage.join("THIRD-PARTY-NOTICES"), "THIRD-PARTY-NOTICES"),
        (
            root().join("deploy/actions-runner-reaper.conf"),
            "actions-runner-reaper.conf",
        ),
        // The runner hooks (docs/ci.md); std::fs::copy keeps their mode.
        (
            root().join("deploy/hooks/job-start.sh"),
            "hooks/job-start.sh",
        ),
        (root().join("deploy/hooks/job-end.sh"), "hooks/job-end.sh"),
        (
            root().join("deploy/hooks/buildkite/pre-command"),
            "hooks/buildkite/pre-command",
        ),
        (
            root().join("deploy/hooks/buildkite/pre-exit"),
            "hooks/buildkite/pre-exit",
        ),
    ] {
        std::fs::copy(&from, top.join(to))
            .with_context(|| format!("copying {}", from.display()))?;
    }
    // Owner, order and times fixed: the same build gives the same bytes.
    check(
        Command::new("tar")
            .args([
                "--owner=0",
                "--group=0",
                "--numeric-owner",
                "--sort=name",
                "--mtime=@0",
                "--use-compress-program=gzip -9n",
                "-cf",
            ])
            .arg(dir.join(format!("{name}.tar.gz")))
            .arg(name)
            .current_dir(stage),
    )
}

/// SHA256SUMS over every file in `dir`; returns their names.
fn checksums(dir: &Path) -> Result<Vec<String>> {
    let mut files: Vec<String> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .collect();
    files.sort();
    let sums = Command::new("sha256sum")
        .args(&files)
        .current_dir(dir)
        .output()
        .context("running sha256sum")?;
    if !sums.status.success() {
        bail!("sha256sum failed");
    }
    std::fs::write(dir.join("SHA256SUMS"), sums.stdout)?;
    Ok(files)
}

/// `cargo xtask image`: dist, then the image, with the Engine running (it
/// is started for the build, and stopped after, when it was not running).
pub fn build_image() -> Result<()> {
    let built = dist()?;
    let Some(_engine) = Dockerd::ensure()? else {
        bail!("no Docker Engine (dockerd): `cargo xtask setup --test` installs Debian's docker.io");
    };
    let tag = image(&built)?;
    say(&format!("built {tag}; deploy/k8s names it"));
    Ok(())
}

/// Builds the image from target/dist/reaper (run `dist` first), tagged
/// with the version and `latest`.
pub fn image(dist: &Dist) -> Result<String> {
    if !have("docker") {
        bail!("no docker client: `cargo xtask setup --test` installs Debian's docker.io");
    }
    let tag = format!("{IMAGE}:{}", dist.version);
    say(&format!("building the image {tag} (deploy/Dockerfile)"));
    // The build context holds the binary and its licences alone (not
    // reaper.debug and the packages beside it in target/dist).
    let context = root().join("target/dist-stage/image");
    std::fs::create_dir_all(&context)?;
    std::fs::copy(dist.dir.join("reaper"), context.join("reaper"))?;
    for f in ["LICENSE-MIT", "LICENSE-APACHE"] {
        std::fs::copy(root().join(f), context.join(f))?;
    }
    std::fs::copy(
        root().join("target/dist-stage/THIRD-PARTY-NOTICES"),
        context.join("THIRD-PARTY-NOTICES"),
    )?;
    check(
        Command::new("docker")
            .args(["build", "--quiet", "--file"])
            .arg(root().join("deploy/Dockerfile"))
            .args(["--tag", &tag, "--tag", &format!("{IMAGE}:latest")])
            .arg(&context),
    )?;
    Ok(tag)
}

/// A Docker Engine for the tests: the one running, or one started here
/// (stopped again on drop).
pub struct Dockerd {
    started: Option<Child>,
}

impl Dockerd {
    /// Starts dockerd in the background when `docker info` fails, and waits
    /// (up to a minute) until it answers. Without docker installed, says so
    /// and returns None: the container tests then fail with the reason.
    pub fn ensure() -> Result<Option<Dockerd>> {
        if !have("dockerd") || !have("docker") {
            say("no Docker Engine here (dockerd): the container tests will fail saying so; `cargo xtask setup --test` installs docker.io");
            return Ok(None);
        }
        if answers() {
            return Ok(Some(Dockerd { started: None }));
        }
        say("starting dockerd in the background for the container tests");
        let log = root().join("target/dockerd.log");
        let out = std::fs::File::create(&log)?;
        let child = Command::new("dockerd")
            .stdin(Stdio::null())
            .stdout(out.try_clone()?)
            .stderr(out)
            .spawn()
            .context("starting dockerd")?;
        let d = Dockerd {
            started: Some(child),
        };
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut pause = Duration::from_millis(50);
        while !answers() {
            if Instant::now() > deadline {
                bail!(
                    "dockerd did not answer `docker info` within 60 s; its log: {}",
                    log.display()
                );
            }
            std::thread::sleep(pause);
            pause = (pause * 2).min(Duration::from_secs(1));
        }
        Ok(Some(d))
    }
}

impl Drop for Dockerd {
    fn drop(&mut self) {
        if let Some(child) = self.started.as_mut() {
            say("stopping the dockerd this run started");
            // SIGTERM: dockerd stops its containers and containerd, then exits.
            // SAFETY: kill with a pid we spawned and have not reaped.
            unsafe { libc::kill(child.id() as i32, libc::SIGTERM) };
            let deadline = Instant::now() + Duration::from_secs(20);
            while matches!(child.try_wait(), Ok(None)) {
                if Instant::now() > deadline {
                    say("dockerd did not stop within 20 s of SIGTERM; killing it");
                    let _ = child.kill();
                    let _ = child.wait();
                    return;
                }
                std::thread::sleep(Duration::from_millis(100));
            }
        }
    }
}

fn answers() -> bool {
    Command::new("docker")
        .arg("info")
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

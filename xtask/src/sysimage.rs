//! `cargo xtask systemd-image`: the Debian image the systemd test runs
//! with systemd as PID 1 (tests/tests/systemd.rs).
//!
//! No image registry is reachable from CI machines, so the image is made
//! here from Debian's own packages: `debootstrap` builds a bookworm root
//! filesystem from the mirror apt already uses, and `docker import` turns
//! it into a local image. That takes minutes (about 9 the first time on a
//! 2-core machine), so the image is cached in the Engine and rebuilt only
//! when it is missing; `cargo xtask test` calls [`ensure`] before the tests.

use std::path::Path;
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use crate::{apt_install, check, have, root, say};

/// The local image the systemd test runs. The tag names the package set:
/// a change to [`PACKAGES`] must change it, so a stale cache is not reused.
pub const IMAGE: &str = "reaper-test/debian-systemd:bookworm-1";
/// The suite debootstrap installs.
const SUITE: &str = "bookworm";
/// Packages beyond `minbase`: systemd as init, D-Bus for systemctl, and the
/// clients the test uses inside (ss, ps).
const PACKAGES: &str = "systemd,systemd-sysv,dbus,iproute2,procps";

/// True when the image is in the local Engine.
pub fn present() -> bool {
    Command::new("docker")
        .args(["image", "inspect", IMAGE])
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .is_ok_and(|s| s.success())
}

/// Builds the image unless the Engine has it already (the Engine must be
/// running: see `dist::Dockerd`).
pub fn ensure() -> Result<()> {
    if present() {
        say(&format!(
            "systemd test image {IMAGE} is cached in the Engine; not rebuilding"
        ));
        return Ok(());
    }
    if !have("debootstrap") {
        apt_install(
            &["debootstrap", "debian-archive-keyring"],
            "the systemd test's image is a Debian root filesystem",
        )?;
    }
    let mirror = mirror();
    let t = Instant::now();
    say(&format!(
        "building the systemd test image {IMAGE}: debootstrap {SUITE} from {mirror} (about 9 minutes, once; cached after)"
    ));
    let dir = root().join("target/systemd-rootfs");
    if dir.exists() {
        std::fs::remove_dir_all(&dir).with_context(|| format!("emptying {}", dir.display()))?;
    }
    let mut boot = Command::new("debootstrap");
    boot.args(["--variant=minbase", &format!("--include={PACKAGES}")]);
    let keyring = Path::new("/usr/share/keyrings/debian-archive-keyring.gpg");
    if keyring.exists() {
        boot.arg(format!("--keyring={}", keyring.display()));
    }
    boot.arg(SUITE).arg(&dir).arg(&mirror);
    check(&mut boot).context(
        "debootstrap failed (its log: target/systemd-rootfs/debootstrap/debootstrap.log)",
    )?;
    // The apt cache is not needed in the image (the test installs a local .deb).
    let _ = std::fs::remove_dir_all(dir.join("var/cache/apt/archives"));
    say(&format!(
        "importing {} into the Engine as {IMAGE}",
        dir.display()
    ));
    let tar = Command::new("tar")
        .args(["--numeric-owner", "-C"])
        .arg(&dir)
        .args(["-c", "."])
        .stdout(Stdio::piped())
        .spawn()
        .context("running tar")?;
    let imported = Command::new("docker")
        .args([
            "import",
            "--change",
            "CMD [\"/lib/systemd/systemd\"]",
            "-",
            IMAGE,
        ])
        .stdin(tar.stdout.context("tar's stdout")?)
        .stdout(Stdio::null())
        .status()
        .context("running docker import")?;
    if !imported.success() {
        bail!("docker import of {} failed ({imported})", dir.display());
    }
    std::fs::remove_dir_all(&dir).with_context(|| format!("removing {}", dir.display()))?;
    say(&format!(
        "systemd test image {IMAGE} built in {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

/// The Debian mirror apt uses here (its sources), else deb.debian.org.
fn mirror() -> String {
    let mut texts = Vec::new();
    if let Ok(t) = std::fs::read_to_string("/etc/apt/sources.list") {
        texts.push(t);
    }
    if let Ok(dir) = std::fs::read_dir("/etc/apt/sources.list.d") {
        let mut paths: Vec<_> = dir.filter_map(|e| e.ok()).map(|e| e.path()).collect();
        paths.sort();
        for p in paths {
            let name = p.to_string_lossy();
            if name.ends_with(".sources") || name.ends_with(".list") {
                if let Ok(t) = std::fs::read_to_string(&p) {
                    texts.push(t);
                }
            }
        }
    }
    texts
        .iter()
        .find_map(|t| mirror_in(t))
        .unwrap_or_else(|| "http://deb.debian.org/debian".into())
}

/// The first Debian archive (not the security one) that offers [`SUITE`],
/// in one-line (`deb URI SUITE ...`) or deb822 (`URIs:`/`Suites:`) format.
fn mirror_in(text: &str) -> Option<String> {
    let debian = |uri: &str| uri.contains("debian") && !uri.contains("security");
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        if words.first() == Some(&"deb") {
            let rest: Vec<&str> = words[1..]
                .iter()
                .copied()
                .filter(|w| !w.starts_with('['))
                .collect();
            if rest.len() >= 2 && rest[1] == SUITE && debian(rest[0]) {
                return Some(rest[0].to_string());
            }
        }
    }
    for stanza in text.split("\n\n") {
        let field = |name: &str| {
            stanza
                .lines()
                .find_map(|l| l.strip_prefix(name).map(|v| v.trim().to_string()))
        };
        let (Some(uris), Some(suites)) = (field("URIs:"), field("Suites:")) else {
            continue;
        };
        let types = field("Types:").unwrap_or_default();
        if types.split_whitespace().any(|t| t == "deb")
            && suites.split_whitespace().any(|s| s == SUITE)
        {
            if let Some(uri) = uris.split_whitespace().find(|u| debian(u)) {
                return Some(uri.to_string());
            }
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use super::mirror_in;

    #[test]
    fn finds_the_mirror_in_both_formats() {
        let deb822 = "Types: deb\n# a comment\nURIs: http://deb.debian.org/debian\nSuites: bookworm bookworm-updates\nComponents: main\n\nTypes: deb\nURIs: http://deb.debian.org/debian-security\nSuites: bookworm-security\n";
        assert_eq!(
            mirror_in(deb822).as_deref(),
            Some("http://deb.debian.org/debian")
        );
        let one_line = "deb http://security.debian.org/debian-security bookworm-security main\ndeb [arch=amd64] http://ftp.de.debian.org/debian bookworm main\n";
        assert_eq!(
            mirror_in(one_line).as_deref(),
            Some("http://ftp.de.debian.org/debian")
        );
        assert_eq!(
            mirror_in("deb http://example.org/ubuntu jammy main\n"),
            None
        );
    }
}

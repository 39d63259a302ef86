//! Licences of what ships: reaper's own (LICENSE-MIT, LICENSE-APACHE) and
//! the third-party notices, generated from Cargo.lock by cargo-about
//! (deploy/licenses/about.toml lists the licences accepted; a crate under
//! any other makes the generation, and so `dist` and `test`, fail: the
//! licence check). They go into the tarball, the .deb (debian/copyright,
//! machine-readable, plus the notices) and the image.

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};

use crate::{check, output_ok, root, say};

/// cargo-about, pinned: its CLI and template fields are what this file uses.
const CARGO_ABOUT: &str = "0.9.3";

/// Installs cargo-about when it is missing (a release build from
/// crates.io: several minutes on a fresh 2-core machine, once).
pub fn setup_cargo_about() -> Result<()> {
    let have = output_ok(Command::new("cargo").args(["about", "--version"]))
        .is_some_and(|v| v.contains(CARGO_ABOUT));
    if !have {
        say(&format!(
            "installing cargo-about {CARGO_ABOUT} (the third-party notices and the licence check; a release build from crates.io, about 6 minutes on 2 idle cores, once)"
        ));
        check(Command::new("cargo").args([
            "install",
            &format!("cargo-about@{CARGO_ABOUT}"),
            "--locked",
            "--features",
            "cli",
        ]))?;
    }
    Ok(())
}

/// The manifests whose crates end up in the shipped binary: reaper-user
/// and the eBPF object it embeds (a workspace of its own).
const MANIFESTS: &[&str] = &["reaper-user/Cargo.toml", "reaper-ebpf/Cargo.toml"];

/// Writes `stage`/THIRD-PARTY-NOTICES and `stage`/copyright (DEP-5, for
/// the .deb); returns the notices' path. Fails naming the crate when a
/// licence is not accepted.
pub fn stage(stage: &Path) -> Result<PathBuf> {
    setup_cargo_about()?;
    let dir = root().join("deploy/licenses");
    let mut notices = String::new();
    for manifest in MANIFESTS {
        // Every crate of the lock file in the local registry (cargo about
        // runs --offline: it reads the licence files the crates ship).
        check(
            Command::new("cargo")
                .args(["fetch", "--locked", "--quiet", "--manifest-path"])
                .arg(root().join(manifest)),
        )?;
        let out = Command::new("cargo")
            // --offline: only what the crates themselves ship, no network look-ups.
            .args([
                "about",
                "generate",
                "--fail",
                "--locked",
                "--offline",
                "--config",
            ])
            .arg(dir.join("about.toml"))
            .arg("--manifest-path")
            .arg(root().join(manifest))
            .arg(dir.join("notices.hbs"))
            .current_dir(root())
            .output()
            .context("running cargo about")?;
        if !out.status.success() {
            bail!(
                "licence check: cargo about generate for {manifest} failed (a crate under a licence deploy/licenses/about.toml does not accept?):\n{}",
                String::from_utf8_lossy(&out.stderr)
            );
        }
        if !notices.is_empty() {
            notices.push_str("\n\nIn the eBPF object embedded in the binary:\n\n");
        }
        notices.push_str(&String::from_utf8_lossy(&out.stdout));
    }
    let path = stage.join("THIRD-PARTY-NOTICES");
    std::fs::write(&path, notices)?;
    std::fs::write(stage.join("copyright"), copyright()?)?;
    Ok(path)
}

/// debian/copyright in the machine-readable format: reaper's own files
/// under MIT or Apache-2.0, the MIT text in full, Apache-2.0 by reference
/// to Debian's common licences, and a pointer to the third-party notices.
fn copyright() -> Result<String> {
    let cargo = std::fs::read_to_string(root().join("Cargo.toml"))?;
    let repo = cargo
        .lines()
        .find_map(|l| l.trim().strip_prefix("repository = "))
        .map(|v| v.trim_matches('"').to_string())
        .context("no repository in [workspace.package] of Cargo.toml")?;
    let mit = std::fs::read_to_string(root().join("LICENSE-MIT"))?;
    let mit_body: String = mit
        .lines()
        .skip_while(|l| !l.starts_with("Permission"))
        .map(|l| {
            if l.trim().is_empty() {
                " .\n".to_string()
            } else {
                format!(" {l}\n")
            }
        })
        .collect();
    Ok(format!(
        "Format: https://www.debian.org/doc/packaging-manuals/copyright-format/1.0/\n\
         Upstream-Name: reaper\n\
         Source: {repo}\n\
         Comment: reaper is one statically linked binary. The Rust crates linked\n \
         into it, with their licences' full texts, are listed in\n \
         /usr/share/doc/reaper/THIRD-PARTY-NOTICES.\n\
         \n\
         Files: *\n\
         Copyright: 2026 The reaper developers\n\
         License: MIT or Apache-2.0\n\
         \n\
         License: MIT\n{mit_body}\
         \n\
         License: Apache-2.0\n \
         On Debian systems, the complete text of the Apache License, Version 2.0,\n \
         can be found in /usr/share/common-licenses/Apache-2.0.\n"
    ))
}

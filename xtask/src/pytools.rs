//! The Python tools the tests validate deploy/ with, from PyPI, in a venv
//! of their own (target/tools/venv; Debian's python3 is externally managed):
//! - check-jsonschema: action.yml against the GitHub Actions schema it vendors;
//! - kubernetes-validate: deploy/k8s against the Kubernetes API's schemas.
//!
//! Versions are pinned, so a new release cannot change a test's verdict.
//! About 2.5 minutes the first time on a 2-core machine; nothing after.

use std::path::PathBuf;
use std::process::Command;
use std::time::Instant;

use anyhow::Result;

use crate::{apt_install, check, root, say};

/// The venv, under target/ (the tests look for the tools here).
pub const VENV: &str = "target/tools/venv";

/// (the command it installs, the pinned requirement).
const TOOLS: &[(&str, &str)] = &[
    ("check-jsonschema", "check-jsonschema==0.39.0"),
    ("kubernetes-validate", "kubernetes-validate==1.37.0"),
];

fn venv() -> PathBuf {
    root().join(VENV)
}

/// Creates the venv and installs what is missing from it.
pub fn setup() -> Result<()> {
    let bin = venv().join("bin");
    let missing: Vec<&str> = TOOLS
        .iter()
        .filter(|(cmd, _)| !bin.join(cmd).is_file())
        .map(|(_, req)| *req)
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    let t = Instant::now();
    if !bin.join("pip").is_file() {
        let made = Command::new("python3")
            .args(["-m", "venv"])
            .arg(venv())
            .status()
            .is_ok_and(|s| s.success());
        if !made {
            apt_install(&["python3-venv"], "the tests' Python tools live in a venv")?;
            check(Command::new("python3").args(["-m", "venv"]).arg(venv()))?;
        }
    }
    say(&format!(
        "installing {} from PyPI into {VENV} (the tests validate action.yml and deploy/k8s with them; about 2.5 minutes, once)",
        missing.join(" ")
    ));
    check(
        Command::new(bin.join("pip"))
            .args(["install", "--quiet", "--disable-pip-version-check"])
            .args(&missing),
    )?;
    say(&format!(
        "Python tools installed in {:.0} s",
        t.elapsed().as_secs_f64()
    ));
    Ok(())
}

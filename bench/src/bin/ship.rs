//! Benchmark: what ships. The size of the static binary of `cargo xtask
//! dist` (and of its split debug info) beside the release build, and the
//! wall time of `reaper --version` (spawn to exit, as a CI step pays it)
//! for both, interleaved in each round with /bin/true as the floor of a
//! spawn on this machine.
//!
//! Usage: ship [--quick]   (`cargo xtask bench` runs `cargo xtask dist` and
//! the release build first; $REAPER_DIST and $REAPER_BIN point elsewhere).

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};
use reaper_bench::emit;

fn main() -> Result<()> {
    let quick = std::env::args().any(|a| a == "--quick");
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf();
    let dist = std::env::var_os("REAPER_DIST")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/dist"));
    let release = std::env::var_os("REAPER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| root.join("target/release/reaper"));
    let static_bin = dist.join("reaper");
    for p in [&static_bin, &release] {
        if !p.is_file() {
            bail!(
                "{} is missing: run `cargo xtask dist` and `cargo build --release -p reaper-user`",
                p.display()
            );
        }
    }

    let mib = |p: &Path| -> Result<f64> {
        Ok(std::fs::metadata(p)
            .with_context(|| p.display().to_string())?
            .len() as f64
            / 1048576.0)
    };
    emit(
        "ship",
        "size: static reaper (dist, stripped)",
        "MiB",
        &[mib(&static_bin)?],
        Some("target 15 MiB".into()),
    );
    emit(
        "ship",
        "size: reaper.debug (dist, line tables)",
        "MiB",
        &[mib(&dist.join("reaper.debug"))?],
        None,
    );
    emit(
        "ship",
        "size: release reaper (glibc, debug = 1)",
        "MiB",
        &[mib(&release)?],
        None,
    );

    let subjects: [(&str, &Path, &[&str]); 3] = [
        (
            "--version: static reaper (dist)",
            &static_bin,
            &["--version"],
        ),
        (
            "--version: release reaper (glibc)",
            &release,
            &["--version"],
        ),
        ("spawn floor: /bin/true", Path::new("/bin/true"), &[]),
    ];
    let rounds = if quick { 50 } else { 300 };
    let mut samples = vec![Vec::with_capacity(rounds); subjects.len()];
    for round in 0..rounds {
        // The order rotates so no subject always runs on a warm cache.
        for k in 0..subjects.len() {
            let i = (round + k) % subjects.len();
            let (_, bin, args) = subjects[i];
            let t = Instant::now();
            let st = Command::new(bin)
                .args(args)
                .stdout(Stdio::null())
                .status()
                .with_context(|| format!("running {}", bin.display()))?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            if !st.success() {
                bail!("{} {} failed: {st}", bin.display(), args.join(" "));
            }
            samples[i].push(ms);
        }
    }
    for (i, ((name, _, _), s)) in subjects.iter().zip(&samples).enumerate() {
        let note = if i == 0 {
            "spawn to exit; target 1 ms"
        } else {
            "spawn to exit"
        };
        emit("ship", name, "ms", s, Some(note.into()));
    }
    Ok(())
}

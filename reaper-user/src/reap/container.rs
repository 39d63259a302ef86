//! reap -> **container**: a container holder stopped through the engine
//! (the engine sends the stop signal, then SIGKILL when the grace ends),
//! after re-checking that it is still the container judged. The only engine
//! call that changes anything; holders only read through the engine.
//!
//! The stop signal is the one a rule (or `free --signal`) names, passed to
//! the engine's stop; else the container's own, which the engine uses when
//! asked for none (the image's STOPSIGNAL, else SIGTERM): reaper reads it
//! (`Config.StopSignal`) only to journal what was sent. An engine older
//! than API 1.42 (Docker 23) ignores a stop's `signal` and would send its
//! own: there the rule's signal goes with a kill, the grace is waited out,
//! and a stop with no grace ends what still runs.

use std::time::Duration;

use anyhow::{anyhow, Context};
use bollard::query_parameters::{
    InspectContainerOptions, KillContainerOptionsBuilder, StopContainerOptionsBuilder,
};
use bollard::Docker;

use crate::holders::container::engine::{
    containers, socket_path, state, stop_signal, with_engine, TIMEOUT_SECS,
};
use crate::holders::container::{short, Container};
use crate::journal::ContainerStop;
use crate::vocab::Signal;

use super::{wait_bindable, BindProbe};

/// Stops a container through the engine: `signal` (None: its own stop
/// signal), then SIGKILL after `grace`. Returns when the engine says it
/// stopped. The container is kept (`exited`), not removed.
fn stop(id: &str, grace: Duration, signal: Option<Signal>) -> anyhow::Result<()> {
    let id_owned = id.to_string();
    let secs = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
    // The engine answers a stop only after the grace (and the kill).
    let timeout = TIMEOUT_SECS + secs as u64;
    let out = with_engine(timeout, move |docker| async move {
        let v = docker.client_version();
        match signal {
            Some(sig) if (v.major_version, v.minor_version) < STOP_SIGNAL_API => {
                stop_by_kill(&docker, &id_owned, sig, grace).await
            }
            _ => {
                let mut opts = StopContainerOptionsBuilder::new().t(secs);
                if let Some(sig) = signal {
                    opts = opts.signal(sig.as_str());
                }
                docker.stop_container(&id_owned, Some(opts.build())).await?;
                Ok(())
            }
        }
    })
    .with_context(|| format!("stopping container {}", short(id)))?;
    out.ok_or_else(|| {
        anyhow!(
            "no container engine socket at {}: cannot stop container {}",
            socket_path().display(),
            short(id)
        )
    })
}

/// The engine API whose stop takes a `signal` (Docker 23); older engines
/// ignore it and send the container's own.
const STOP_SIGNAL_API: (usize, usize) = (1, 42);

/// The stop of an engine older than [`STOP_SIGNAL_API`]: `sig` with a
/// kill, the engine's state polled until it stops running or the grace
/// ends, then a stop with no grace (SIGKILL to what still runs; a stop also
/// marks it stopped by hand, so a restart policy leaves it).
async fn stop_by_kill(
    docker: &Docker,
    id: &str,
    sig: Signal,
    grace: Duration,
) -> anyhow::Result<()> {
    let kill = KillContainerOptionsBuilder::new()
        .signal(sig.as_str())
        .build();
    docker.kill_container(id, Some(kill)).await?;
    let deadline = tokio::time::Instant::now() + grace;
    while tokio::time::Instant::now() < deadline {
        let running = docker
            .inspect_container(id, None::<InspectContainerOptions>)
            .await?
            .state
            .and_then(|s| s.running);
        if running != Some(true) {
            break;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let now = StopContainerOptionsBuilder::new().t(0).build();
    docker.stop_container(id, Some(now)).await?;
    Ok(())
}

/// Stops a container holder: re-checks through the engine that the
/// container is still the one judged (same id, same image, running), then
/// stops it with `signal` (None: its own stop signal) and `grace` (kept as
/// `exited`, not removed). The port is not waited for here: the caller
/// probes it once every target is done.
pub fn stop_judged(judged: &Container, grace: Duration, signal: Option<Signal>) -> ContainerStop {
    let start = std::time::Instant::now();
    let mut out = ContainerStop {
        id: judged.id.clone(),
        name: judged.name.clone(),
        image: judged.image.clone(),
        grace_ms: grace.as_millis() as u64,
        signal: None,
        signal_from: None,
        stopped_at_ms: None,
        state_after: None,
        port_free_at_ms: None,
        error: None,
    };
    let now = match containers() {
        Ok(Some(list)) => list.into_iter().find(|c| c.id == judged.id),
        Ok(None) => {
            out.error = Some(format!(
                "no container engine socket at {}",
                socket_path().display()
            ));
            return out;
        }
        Err(e) => {
            out.error = Some(format!("{e:#}"));
            return out;
        }
    };
    match now {
        Some(c) if c.image == judged.image && c.state.as_deref() == Some("running") => {}
        Some(c) => {
            out.error = Some(format!(
                "container {} changed since it was judged (state {}, image {}): not stopped",
                judged.short_id,
                c.state.as_deref().unwrap_or("?"),
                c.image.as_deref().unwrap_or("?")
            ));
            return out;
        }
        None => {
            out.error = Some(format!(
                "container {} is gone since it was judged: nothing to stop",
                judged.short_id
            ));
            return out;
        }
    }
    let (sent, from) = match signal {
        Some(sig) => (sig.as_str().to_string(), "rule"),
        None => match stop_signal(&judged.id) {
            Ok(Some(own)) => (signal_name(&own), "container"),
            Ok(None) => (Signal::Term.as_str().to_string(), "default"),
            Err(e) => (format!("its own (unreadable: {e:#})"), "container"),
        },
    };
    out.signal = Some(sent);
    out.signal_from = Some(from.to_string());
    if let Err(e) = stop(&judged.id, grace, signal) {
        out.error = Some(format!("{e:#}"));
        return out;
    }
    out.stopped_at_ms = Some(start.elapsed().as_millis() as u64);
    out.state_after = state(&judged.id).ok().flatten();
    out
}

/// A stop signal as the engine keeps it ("SIGQUIT", "QUIT", "3"), by
/// its name when reaper knows it, else as written.
fn signal_name(own: &str) -> String {
    own.parse::<Signal>()
        .map(|s| s.as_str().to_string())
        .unwrap_or_else(|_| own.trim().to_string())
}

/// [`stop_judged`], then waits until the probes bind (or `deadline`).
pub fn stop_and_wait(
    judged: &Container,
    grace: Duration,
    signal: Option<Signal>,
    probes: &[BindProbe],
    deadline: std::time::Instant,
) -> ContainerStop {
    let start = std::time::Instant::now();
    let mut out = stop_judged(judged, grace, signal);
    if out.error.is_some() {
        return out;
    }
    let wait = wait_bindable(probes, deadline);
    out.port_free_at_ms = wait.free_at.map(|t| (t - start).as_millis() as u64);
    if wait.free_at.is_none() {
        out.error = Some(format!(
            "the container stopped but the port did not bind again before the deadline{}",
            wait.last_error
                .map(|e| format!(" ({e})"))
                .unwrap_or_default()
        ));
    }
    out
}

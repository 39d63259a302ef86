//! reap -> **container**: a container holder stopped through the engine
//! (the engine sends the stop signal, then SIGKILL when the grace ends),
//! after re-checking that it is still the container judged. The only engine
//! call that changes anything; holders only read through the engine.
//!
//! The stop signal is the one a rule (or `free --signal`) names, passed to
//! the engine's stop; else the container's own, which the engine uses when
//! asked for none (the image's STOPSIGNAL, else SIGTERM): reaper reads it
//! (`Config.StopSignal`) only to journal what was sent.

use std::time::Duration;

use anyhow::{anyhow, Context};
use bollard::query_parameters::StopContainerOptionsBuilder;

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
        let mut opts = StopContainerOptionsBuilder::new().t(secs);
        if let Some(sig) = signal {
            opts = opts.signal(sig.as_str());
        }
        let opts = opts.build();
        docker.stop_container(&id_owned, Some(opts)).await?;
        Ok(())
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

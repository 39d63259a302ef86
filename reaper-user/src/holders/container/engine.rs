//! holders: container -> **engine** (Docker Engine API, or podman's
//! compatible socket).
//!
//! The few calls reaper makes: list containers (name, image, labels, state,
//! addresses, port map), a container's main pid, and stop one with a grace
//! (the engine sends SIGTERM, then SIGKILL when the grace ends). Through
//! `bollard` on the unix socket; each call runs on its own short-lived
//! thread with a current-thread runtime, so sync commands and the daemon's
//! runtime can both call it.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{anyhow, Context};
use bollard::query_parameters::{
    InspectContainerOptions, ListContainersOptions, StopContainerOptionsBuilder,
};
use bollard::Docker;

use super::{short, Container, Published};

/// How long one call may take before reaper goes on without the engine.
const TIMEOUT_SECS: u64 = 10;

/// The engine's socket: `DOCKER_HOST` when it is a `unix://` path (podman's
/// compatible socket is set this way), else /var/run/docker.sock.
pub fn socket_path() -> PathBuf {
    std::env::var("DOCKER_HOST")
        .ok()
        .and_then(|h| h.strip_prefix("unix://").map(PathBuf::from))
        .unwrap_or_else(|| PathBuf::from("/var/run/docker.sock"))
}

/// Runs one engine conversation on a fresh thread; None when there is no
/// engine socket on this host.
fn with_engine<T, F, Fut>(timeout_secs: u64, f: F) -> anyhow::Result<Option<T>>
where
    T: Send + 'static,
    F: FnOnce(Docker) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = anyhow::Result<T>>,
{
    let path = socket_path();
    if !path.exists() {
        return Ok(None);
    }
    let shown = path.display().to_string();
    let handle = std::thread::Builder::new()
        .name("reaper-engine".into())
        .spawn(move || -> anyhow::Result<T> {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .context("starting a runtime for the engine client")?;
            rt.block_on(async move {
                let docker = Docker::connect_with_unix(
                    &path.to_string_lossy(),
                    timeout_secs,
                    bollard::API_DEFAULT_VERSION,
                )?
                .negotiate_version()
                .await?;
                f(docker).await
            })
        })
        .context("starting the engine client thread")?;
    let out = handle
        .join()
        .map_err(|_| anyhow!("the engine client thread panicked"))?
        .with_context(|| format!("asking the container engine at {shown}"))?;
    Ok(Some(out))
}

/// Every container the engine knows, running or not. None: no engine here.
pub fn containers() -> anyhow::Result<Option<Vec<Container>>> {
    with_engine(TIMEOUT_SECS, |docker| async move {
        let list = docker
            .list_containers(Some(ListContainersOptions {
                all: true,
                ..Default::default()
            }))
            .await?;
        Ok(list.into_iter().filter_map(from_summary).collect())
    })
}

fn from_summary(s: bollard::models::ContainerSummary) -> Option<Container> {
    let id = s.id?;
    let labels: BTreeMap<String, String> = s.labels.unwrap_or_default().into_iter().collect();
    let name = s
        .names
        .unwrap_or_default()
        .into_iter()
        .next()
        .map(|n| n.trim_start_matches('/').to_string());
    let addresses = s
        .network_settings
        .and_then(|n| n.networks)
        .unwrap_or_default()
        .into_values()
        .flat_map(|e| [e.ip_address, e.global_ipv6_address])
        .flatten()
        .filter_map(|a| a.parse().ok())
        .collect();
    let ports = s
        .ports
        .unwrap_or_default()
        .into_iter()
        .filter_map(|p| {
            Some(Published {
                proto: p.typ.map(|t| t.to_string()).unwrap_or_else(|| "tcp".into()),
                host_ip: p.ip.unwrap_or_default(),
                host_port: p.public_port?,
                container_port: p.private_port,
            })
        })
        .collect();
    let c = Container {
        short_id: short(&id),
        id,
        runtime: Some("docker".into()),
        name,
        image: s.image,
        state: s.state.map(|st| st.to_string()),
        addresses,
        ports,
        ..Container::default()
    };
    Some(c.with_labels(labels))
}

/// The container's main process on the host (None when it is not running).
pub fn main_pid(id: &str) -> anyhow::Result<Option<u32>> {
    let id = id.to_string();
    let out = with_engine(TIMEOUT_SECS, move |docker| async move {
        let inspect = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await?;
        Ok(inspect
            .state
            .and_then(|s| s.pid)
            .filter(|&p| p > 0)
            .map(|p| p as u32))
    })?;
    Ok(out.flatten())
}

/// The engine's state word for a container (`running`, `exited`, ...).
pub fn state(id: &str) -> anyhow::Result<Option<String>> {
    let id = id.to_string();
    let out = with_engine(TIMEOUT_SECS, move |docker| async move {
        let inspect = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await?;
        Ok(inspect.state.and_then(|s| s.status).map(|s| s.to_string()))
    })?;
    Ok(out.flatten())
}

/// Stops a container through the engine: SIGTERM (or its stop signal),
/// then SIGKILL after `grace`. Returns when the engine says it stopped.
/// The container is kept (`exited`), not removed.
pub fn stop(id: &str, grace: Duration) -> anyhow::Result<()> {
    let id_owned = id.to_string();
    let secs = i32::try_from(grace.as_secs().max(1)).unwrap_or(i32::MAX);
    // The engine answers a stop only after the grace (and the kill).
    let timeout = TIMEOUT_SECS + secs as u64;
    let out = with_engine(timeout, move |docker| async move {
        let opts = StopContainerOptionsBuilder::new().t(secs).build();
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

/// What stopping a container holder did (the journal keeps it).
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ContainerStop {
    /// Full id, name and image of the container stopped (for the journal).
    pub id: String,
    pub name: Option<String>,
    pub image: Option<String>,
    /// The grace the engine was given before SIGKILL.
    pub grace_ms: u64,
    /// When the engine said it stopped, from the start.
    pub stopped_at_ms: Option<u64>,
    /// The engine's state afterwards (`exited`: stopped, kept, not removed).
    pub state_after: Option<String>,
    /// When the port bound again, from the start.
    pub port_free_at_ms: Option<u64>,
    /// What went wrong, in words.
    pub error: Option<String>,
}

/// Stops a container holder: re-checks through the engine that the
/// container is still the one judged (same id, same image, running), then
/// stops it with `grace` (kept as `exited`, not removed). The port is not
/// waited for here: the caller probes it once every target is done.
pub fn stop_judged(judged: &Container, grace: Duration) -> ContainerStop {
    let start = std::time::Instant::now();
    let mut out = ContainerStop {
        id: judged.id.clone(),
        name: judged.name.clone(),
        image: judged.image.clone(),
        grace_ms: grace.as_millis() as u64,
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
    if let Err(e) = stop(&judged.id, grace) {
        out.error = Some(format!("{e:#}"));
        return out;
    }
    out.stopped_at_ms = Some(start.elapsed().as_millis() as u64);
    out.state_after = state(&judged.id).ok().flatten();
    out
}

impl ContainerStop {
    /// The engine stopped it and it is not running any more.
    pub fn stopped(&self) -> bool {
        self.error.is_none()
            && self.stopped_at_ms.is_some()
            && self.state_after.as_deref() != Some("running")
    }
}

/// [`stop_judged`], then waits until the probes bind (or `deadline`).
pub fn stop_and_wait(
    judged: &Container,
    grace: Duration,
    probes: &[crate::reap::BindProbe],
    deadline: std::time::Instant,
) -> ContainerStop {
    let start = std::time::Instant::now();
    let mut out = stop_judged(judged, grace);
    if out.error.is_some() {
        return out;
    }
    let wait = crate::reap::wait_bindable(probes, deadline);
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

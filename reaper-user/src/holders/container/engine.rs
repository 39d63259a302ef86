//! holders: container -> **engine** (Docker Engine API, or podman's
//! compatible socket).
//!
//! The few reads reaper makes: list containers (name, image, labels, state,
//! addresses, port map), a container's main pid, state and stop signal. Stopping one is
//! an action: `reap::container`. Through `bollard` on the unix socket; each
//! call runs on its own short-lived thread with a current-thread runtime,
//! so sync commands and the daemon's runtime can both call it.

use std::collections::BTreeMap;
use std::path::PathBuf;

use anyhow::{anyhow, Context};
use bollard::query_parameters::{InspectContainerOptions, ListContainersOptions};
use bollard::Docker;

use super::{short, Container, Published};

/// How long one call may take before reaper goes on without the engine.
pub(crate) const TIMEOUT_SECS: u64 = 10;

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
pub(crate) fn with_engine<T, F, Fut>(timeout_secs: u64, f: F) -> anyhow::Result<Option<T>>
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

/// The container's own stop signal as the engine keeps it
/// (`Config.StopSignal`, from the image's STOPSIGNAL or `docker run
/// --stop-signal`); None when it has none (the engine sends SIGTERM).
pub fn stop_signal(id: &str) -> anyhow::Result<Option<String>> {
    let id = id.to_string();
    let out = with_engine(TIMEOUT_SECS, move |docker| async move {
        let inspect = docker
            .inspect_container(&id, None::<InspectContainerOptions>)
            .await?;
        Ok(inspect
            .config
            .and_then(|c| c.stop_signal)
            .filter(|s| !s.trim().is_empty()))
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

//! holders: process details -> **container** -> conflict / policy.
//!
//! Which container a holder belongs to. Two sources, joined here:
//!
//! - the cgroup path (always there, no engine needed): docker, containerd
//!   (CRI and nerdctl), CRI-O, podman (libpod), systemd-nspawn, and
//!   Kubernetes' `kubepods` tree with the pod UID, for both the cgroupfs and
//!   the systemd cgroup drivers ([`from_cgroup`], pure, unit-tested over
//!   real path formats);
//! - the engine, when its socket answers (Docker Engine API on
//!   `/var/run/docker.sock`, or podman's compatible socket through
//!   `DOCKER_HOST`): name, image, labels (Compose project/service), state,
//!   and the port map ([`engine`]).
//!
//! A port held by the engine's userland proxy (`docker-proxy`, or the
//! rootless port drivers `rootlesskit`, `slirp4netns`, `pasta`) belongs to
//! the container that publishes it: [`attribute`] finds it from the port map
//! (the proxy's `-container-ip`/`-container-port` when the engine does not
//! answer). A proxy whose container is gone is *stale*: the fix is the
//! engine's (restart it, or remove the stale endpoint), never a signal.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

use super::{Holding, Process};
use crate::vocab::Proto;

pub(crate) mod engine;

/// What a cgroup path says about a container.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CgroupIdentity {
    /// `docker`, `containerd`, `cri-o`, `podman`, `systemd-nspawn`; None when
    /// the path carries an id but not the runtime (kubepods with cgroupfs).
    pub runtime: Option<&'static str>,
    /// The container id (64 hex digits), or the machine name for nspawn.
    pub id: String,
    /// Kubernetes pod UID (with dashes) when under `kubepods`.
    pub pod_uid: Option<String>,
    /// Kubernetes QoS class: `guaranteed`, `burstable`, `besteffort`.
    pub qos: Option<&'static str>,
}

/// Systemd scope prefixes of the runtimes (`<prefix><id>.scope`).
const SCOPE_PREFIXES: &[(&str, &str)] = &[
    ("cri-containerd-", "containerd"),
    ("nerdctl-", "containerd"),
    ("docker-", "docker"),
    ("crio-", "cri-o"),
    ("libpod-", "podman"),
];

fn is_container_id(s: &str) -> bool {
    s.len() == 64 && s.bytes().all(|c| c.is_ascii_hexdigit())
}

/// The container of a cgroup path; the innermost container wins (docker in
/// docker, kind). None for a path that is not a container's.
pub fn from_cgroup(path: &str) -> Option<CgroupIdentity> {
    let parts: Vec<&str> = path.split('/').filter(|c| !c.is_empty()).collect();
    let kube = parts.iter().any(|c| c.contains("kubepods"));
    let (pod_uid, qos) = if kube { pod_of(&parts) } else { (None, None) };
    for (i, part) in parts.iter().enumerate().rev() {
        let parent = i.checked_sub(1).map(|j| parts[j]);
        if let Some((runtime, id)) = container_part(part, parent) {
            return Some(CgroupIdentity {
                runtime,
                id,
                pod_uid,
                qos,
            });
        }
        if let Some(name) = nspawn_machine(part) {
            return Some(CgroupIdentity {
                runtime: Some("systemd-nspawn"),
                id: name,
                pod_uid: None,
                qos: None,
            });
        }
    }
    None
}

/// One path component that names a container: `<runtime>-<id>.scope`
/// (systemd driver) or a bare id (cgroupfs driver, runtime from the parent).
fn container_part(part: &str, parent: Option<&str>) -> Option<(Option<&'static str>, String)> {
    let name = part.strip_suffix(".scope").unwrap_or(part);
    for (prefix, runtime) in SCOPE_PREFIXES {
        if let Some(id) = name.strip_prefix(prefix) {
            if is_container_id(id) {
                return Some((Some(runtime), id.to_ascii_lowercase()));
            }
        }
    }
    if is_container_id(name) {
        let runtime = match parent {
            Some("docker") => Some("docker"),
            Some("libpod_parent") => Some("podman"),
            Some(p) if p.starts_with("pod") || p.contains("-pod") => None,
            // containerd's cgroupfs layout is /<namespace>/<id>.
            Some(_) => Some("containerd"),
            None => None,
        };
        return Some((runtime, name.to_ascii_lowercase()));
    }
    // Any other `<something>-<id>.scope` still carries an id, except the
    // monitors' (`libpod-conmon-<id>`, `crio-conmon-<id>`): they run outside.
    let tail = name.rsplit('-').next().unwrap_or(name);
    (part.ends_with(".scope") && !name.contains("conmon-") && is_container_id(tail))
        .then(|| (None, tail.to_ascii_lowercase()))
}

/// `systemd-nspawn@NAME.service` or `machine-NAME.scope` (names are
/// systemd-escaped: `\x2d` is `-`).
fn nspawn_machine(part: &str) -> Option<String> {
    let name = part
        .strip_prefix("systemd-nspawn@")
        .and_then(|n| n.strip_suffix(".service"))
        .or_else(|| {
            part.strip_prefix("machine-")
                .and_then(|n| n.strip_suffix(".scope"))
        })?;
    (!name.is_empty()).then(|| name.replace("\\x2d", "-"))
}

/// The pod UID and QoS class in a kubepods path: `pod<uid>` (cgroupfs) or
/// `kubepods-<qos>-pod<uid_with_underscores>.slice` (systemd).
fn pod_of(parts: &[&str]) -> (Option<String>, Option<&'static str>) {
    let mut qos = None;
    let mut uid = None;
    for part in parts {
        let name = part.strip_suffix(".slice").unwrap_or(part);
        if name.contains("besteffort") {
            qos = Some("besteffort");
        } else if name.contains("burstable") {
            qos = Some("burstable");
        }
        let raw = if let Some(rest) = name.strip_prefix("pod") {
            Some(rest)
        } else {
            name.rfind("-pod").map(|i| &name[i + 4..])
        };
        if let Some(raw) = raw {
            let u = raw.replace('_', "-").to_ascii_lowercase();
            if u.len() == 36 && u.bytes().all(|c| c.is_ascii_hexdigit() || c == b'-') {
                uid = Some(u);
            }
        }
    }
    if uid.is_some() && qos.is_none() {
        qos = Some("guaranteed");
    }
    (uid, qos)
}

/// How a holding was tied to its container.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Via {
    /// The holder runs inside the container (its cgroup).
    Cgroup,
    /// The holder is the engine's userland proxy for a published port.
    Proxy,
    /// No holder socket: the engine publishes the port by DNAT.
    Dnat,
}

/// A published port from the engine's port map.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Published {
    pub proto: String,
    /// Host address (empty: every address).
    pub host_ip: String,
    pub host_port: u16,
    pub container_port: u16,
}

/// A container as reaper shows it: the `container` object of the JSON.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Container {
    /// Full id (64 hex digits), or the machine name for systemd-nspawn.
    pub id: String,
    /// The first 12 characters of the id, as `docker ps` shows it.
    pub short_id: String,
    pub runtime: Option<String>,
    /// The engine's name (without the leading `/`): the container controls
    /// none of it, but whoever started it chose it: display it escaped.
    pub name: Option<String>,
    pub image: Option<String>,
    /// The engine's state: `running`, `exited`, `paused`, ...
    pub state: Option<String>,
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    pub labels: BTreeMap<String, String>,
    pub compose_project: Option<String>,
    pub compose_service: Option<String>,
    pub pod_uid: Option<String>,
    pub pod_namespace: Option<String>,
    pub pod_name: Option<String>,
    /// The container's main process on the host (the engine's `State.Pid`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pid: Option<u32>,
    /// Its IPv4/IPv6 addresses on the engine's networks.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub addresses: Vec<IpAddr>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub ports: Vec<Published>,
    /// How the holding was tied to this container (only in a holding).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub via: Option<Via>,
    /// For a proxy: the processes inside the container that listen on the
    /// published port (what `--match` and the policy look at).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub listeners: Vec<Process>,
    /// A proxy holds the port, and the container it was started for is gone.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub stale: bool,
}

/// Compose's labels.
pub const COMPOSE_PROJECT: &str = "com.docker.compose.project";
pub const COMPOSE_SERVICE: &str = "com.docker.compose.service";
/// The labels the kubelet (dockershim, cri-dockerd, containerd CRI) sets.
const POD_NAMESPACE: &str = "io.kubernetes.pod.namespace";
const POD_NAME: &str = "io.kubernetes.pod.name";
const POD_UID: &str = "io.kubernetes.pod.uid";

impl Container {
    /// A container known from its cgroup path alone.
    pub fn from_identity(c: &CgroupIdentity) -> Container {
        Container {
            id: c.id.clone(),
            short_id: short(&c.id),
            runtime: c.runtime.map(str::to_string),
            pod_uid: c.pod_uid.clone(),
            ..Container::default()
        }
    }

    /// Fills the fields that come from labels (Compose, Kubernetes).
    pub fn with_labels(mut self, labels: BTreeMap<String, String>) -> Container {
        let get = |k: &str| labels.get(k).cloned();
        self.compose_project = get(COMPOSE_PROJECT);
        self.compose_service = get(COMPOSE_SERVICE);
        self.pod_namespace = get(POD_NAMESPACE);
        self.pod_name = get(POD_NAME);
        if self.pod_uid.is_none() {
            self.pod_uid = get(POD_UID);
        }
        self.labels = labels;
        self
    }

    /// "web (3f2a9c1b0d4e, image nginx:1.27)" in plain words.
    pub fn words(&self) -> String {
        let mut w = match &self.name {
            Some(n) => format!("{n} ({}", self.short_id),
            None => format!(
                "{} ({}",
                self.short_id,
                self.runtime.as_deref().unwrap_or("container")
            ),
        };
        if let Some(i) = &self.image {
            w.push_str(&format!(", image {i}"));
        }
        w.push(')');
        w
    }

    /// Whether the engine publishes this host port (on this address, when
    /// one is given: two containers may publish one port on two addresses).
    pub fn publishes(&self, proto: Proto, addr: Option<IpAddr>, port: u16) -> bool {
        self.ports.iter().any(|p| {
            p.host_port == port
                && p.proto == proto.to_string()
                && addr.is_none_or(|a| {
                    a.is_unspecified()
                        || matches!(p.host_ip.as_str(), "" | "0.0.0.0" | "::")
                        || p.host_ip.parse::<IpAddr>() == Ok(a)
                })
        })
    }
}

/// The first 12 characters of an id.
pub fn short(id: &str) -> String {
    id.chars().take(12).collect()
}

/// Programs that hold a port on behalf of a container (the engine's
/// userland proxy and the rootless port drivers).
pub const PROXIES: &[&str] = &["docker-proxy", "rootlesskit", "slirp4netns", "pasta"];

/// Whether a process is one of the [`PROXIES`] (by exe or argv[0]).
pub fn is_proxy(p: &Process) -> bool {
    let base = |s: &str| s.rsplit('/').next().unwrap_or(s).to_string();
    let exe = p.exe.as_deref().map(base);
    let argv0 = p.cmdline.first().map(|a| base(a));
    PROXIES
        .iter()
        .any(|n| exe.as_deref() == Some(n) || argv0.as_deref() == Some(n))
}

/// What `docker-proxy` was told on its command line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyTarget {
    pub proto: String,
    pub host_port: u16,
    pub container_ip: IpAddr,
    pub container_port: u16,
}

/// Parses `docker-proxy -proto tcp -host-ip 0.0.0.0 -host-port 8080
/// -container-ip 172.17.0.2 -container-port 80` (flags with one or two
/// dashes, `-flag value` or `-flag=value`).
pub fn proxy_target(cmdline: &[String]) -> Option<ProxyTarget> {
    let mut flags: BTreeMap<String, String> = BTreeMap::new();
    let mut it = cmdline.iter().skip(1);
    while let Some(a) = it.next() {
        let Some(f) = a.strip_prefix("--").or_else(|| a.strip_prefix('-')) else {
            continue;
        };
        match f.split_once('=') {
            Some((k, v)) => {
                flags.insert(k.to_string(), v.to_string());
            }
            None => {
                if let Some(v) = it.next() {
                    flags.insert(f.to_string(), v.clone());
                }
            }
        }
    }
    Some(ProxyTarget {
        proto: flags.get("proto").cloned().unwrap_or_else(|| "tcp".into()),
        host_port: flags.get("host-port")?.parse().ok()?,
        container_ip: flags.get("container-ip")?.parse().ok()?,
        container_port: flags.get("container-port")?.parse().ok()?,
    })
}

/// What the engine said, or why it said nothing.
#[derive(Clone, Debug, Default)]
pub struct EngineView {
    /// Every container the engine knows (running or not), by full id.
    pub containers: BTreeMap<String, Container>,
    /// Why the engine was not asked or did not answer (None: it answered,
    /// or there is no engine socket on this host).
    pub error: Option<String>,
    /// Whether an engine answered.
    pub answered: bool,
}

impl EngineView {
    /// Asks the engine, when its socket exists.
    pub fn query() -> EngineView {
        match engine::containers() {
            Ok(None) => EngineView::default(),
            Ok(Some(list)) => EngineView {
                containers: list.into_iter().map(|c| (c.id.clone(), c)).collect(),
                error: None,
                answered: true,
            },
            Err(e) => EngineView {
                error: Some(format!("{e:#}")),
                ..EngineView::default()
            },
        }
    }

    /// The running container that publishes this host port.
    pub fn publisher(&self, proto: Proto, addr: Option<IpAddr>, port: u16) -> Option<&Container> {
        self.containers
            .values()
            .find(|c| c.state.as_deref() == Some("running") && c.publishes(proto, addr, port))
    }

    /// The container with this address on an engine network.
    fn by_address(&self, ip: IpAddr) -> Option<&Container> {
        self.containers.values().find(|c| c.addresses.contains(&ip))
    }
}

/// The container of one process (from its cgroup; named by the engine when
/// it knows the id).
pub fn of_process(p: &Process, view: &EngineView) -> Option<Container> {
    let ident = from_cgroup(p.cgroup.as_deref()?)?;
    Some(match view.containers.get(&ident.id) {
        Some(c) => {
            let mut c = c.clone();
            c.pod_uid = c.pod_uid.or(ident.pod_uid);
            c.runtime = c.runtime.or(ident.runtime.map(str::to_string));
            c
        }
        None => Container::from_identity(&ident),
    })
}

/// The container a holding belongs to: the publisher of the port when a
/// proxy holds it (stale when none publishes it any more), else the
/// container its holder runs in. None for a plain host process.
pub fn attribute(h: &Holding, view: &EngineView) -> Option<Container> {
    let s = &h.socket;
    if let Some(proxy) = h.processes.iter().find(|p| is_proxy(p)) {
        let target = proxy_target(&proxy.cmdline);
        let found = view
            .publisher(s.proto, Some(s.addr), s.port)
            .cloned()
            .or_else(|| {
                let t = target.as_ref()?;
                view.by_address(t.container_ip)
                    .filter(|c| c.state.as_deref() == Some("running"))
                    .cloned()
            });
        return Some(match found {
            Some(mut c) => {
                c.via = Some(Via::Proxy);
                c
            }
            None => stale_proxy(view, target),
        });
    }
    let mut c = h.processes.iter().find_map(|p| of_process(p, view))?;
    c.via = Some(Via::Cgroup);
    Some(c)
}

/// A proxy nobody publishes: only stale when the engine answered (without
/// it, the publisher is unknown, not gone).
fn stale_proxy(view: &EngineView, target: Option<ProxyTarget>) -> Container {
    let mut c = Container {
        via: Some(Via::Proxy),
        stale: view.answered,
        ..Container::default()
    };
    if let Some(t) = target {
        c.addresses = vec![t.container_ip];
        c.ports = vec![Published {
            proto: t.proto,
            host_ip: String::new(),
            host_port: t.host_port,
            container_port: t.container_port,
        }];
    }
    c
}

/// The fix for a stale proxy, in words (never "kill it": the engine owns
/// the proxy and would not know its endpoint went away).
pub const STALE_PROXY_FIX: &str = "the engine's proxy holds the port for a container that is gone: restart the engine (systemctl restart docker) or remove the stale endpoint (docker network disconnect --force NETWORK CONTAINER); do not kill the proxy";

/// A port the engine publishes by DNAT (userland-proxy off): no socket
/// holds it on the host, but connections go to the container.
pub fn dnat_publisher(view: &EngineView, proto: Proto, port: u16) -> Option<Container> {
    let mut c = view.publisher(proto, None, port)?.clone();
    c.via = Some(Via::Dnat);
    Some(c)
}

#[cfg(test)]
mod tests {
    use super::*;

    const ID: &str = "ad20829196445c1054af943329449c4f2c89a0f572cec55225d5fd34ffea7c2c";
    const POD: &str = "8b1c5a4e-7f2d-4c3b-9a1e-0d2f3e4a5b6c";

    fn ident(path: &str) -> CgroupIdentity {
        from_cgroup(path).unwrap_or_else(|| panic!("no container in {path}"))
    }

    #[test]
    fn docker_cgroupfs_and_systemd() {
        let c = ident(&format!("/docker/{ID}"));
        assert_eq!((c.runtime, c.id.as_str()), (Some("docker"), ID));
        assert_eq!(c.pod_uid, None);
        let c = ident(&format!("/system.slice/docker-{ID}.scope"));
        assert_eq!((c.runtime, c.id.as_str()), (Some("docker"), ID));
    }

    #[test]
    fn containerd_crio_podman() {
        let c = ident(&format!("/system.slice/cri-containerd-{ID}.scope"));
        assert_eq!(c.runtime, Some("containerd"));
        let c = ident(&format!("/default/{ID}"));
        assert_eq!(c.runtime, Some("containerd"));
        let c = ident(&format!("/system.slice/nerdctl-{ID}.scope"));
        assert_eq!(c.runtime, Some("containerd"));
        let c = ident(&format!("/machine.slice/crio-{ID}.scope"));
        assert_eq!(c.runtime, Some("cri-o"));
        let c = ident(&format!("/machine.slice/libpod-{ID}.scope"));
        assert_eq!(c.runtime, Some("podman"));
        // podman with a sub-cgroup for the payload, rootless, cgroupfs.
        let c = ident(&format!("/machine.slice/libpod-{ID}.scope/container"));
        assert_eq!((c.runtime, c.id.as_str()), (Some("podman"), ID));
        let c = ident(&format!(
            "/user.slice/user-1000.slice/user@1000.service/user.slice/libpod-{ID}.scope"
        ));
        assert_eq!(c.runtime, Some("podman"));
        let c = ident(&format!("/libpod_parent/{ID}"));
        assert_eq!(c.runtime, Some("podman"));
        // The monitors are not the container.
        assert_eq!(
            from_cgroup(&format!("/machine.slice/libpod-conmon-{ID}.scope")),
            None
        );
        assert_eq!(
            from_cgroup(&format!("/system.slice/crio-conmon-{ID}.scope")),
            None
        );
    }

    #[test]
    fn kubepods_cgroupfs_driver() {
        for (qos_dir, qos) in [
            ("burstable/", "burstable"),
            ("besteffort/", "besteffort"),
            ("", "guaranteed"),
        ] {
            let c = ident(&format!("/kubepods/{qos_dir}pod{POD}/{ID}"));
            assert_eq!(c.id, ID);
            assert_eq!(c.runtime, None);
            assert_eq!(c.pod_uid.as_deref(), Some(POD));
            assert_eq!(c.qos, Some(qos));
        }
        // The pause container's and a CRI-O container's cgroupfs paths.
        let c = ident(&format!("/kubepods/burstable/pod{POD}/crio-{ID}"));
        assert_eq!(
            (c.runtime, c.pod_uid.as_deref()),
            (Some("cri-o"), Some(POD))
        );
    }

    #[test]
    fn kubepods_systemd_driver() {
        let uid_ = POD.replace('-', "_");
        for runtime in ["cri-containerd", "crio", "docker"] {
            let path = format!(
                "/kubepods.slice/kubepods-burstable.slice/kubepods-burstable-pod{uid_}.slice/{runtime}-{ID}.scope"
            );
            let c = ident(&path);
            assert_eq!(c.id, ID, "{path}");
            assert_eq!(c.pod_uid.as_deref(), Some(POD), "{path}");
            assert_eq!(c.qos, Some("burstable"));
        }
        let c = ident(&format!(
            "/kubepods.slice/kubepods-pod{uid_}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(
            (c.qos, c.pod_uid.as_deref()),
            (Some("guaranteed"), Some(POD))
        );
        // kind: the kubelet's tree inside a docker container; the inner wins.
        let outer = "f".repeat(64);
        let c = ident(&format!(
            "/system.slice/docker-{outer}.scope/kubelet.slice/kubelet-kubepods.slice/kubelet-kubepods-besteffort.slice/kubelet-kubepods-besteffort-pod{uid_}.slice/cri-containerd-{ID}.scope"
        ));
        assert_eq!(c.id, ID);
        assert_eq!(
            (c.qos, c.pod_uid.as_deref()),
            (Some("besteffort"), Some(POD))
        );
    }

    #[test]
    fn nspawn_machines() {
        let c = ident("/machine.slice/systemd-nspawn@build\\x2dbox.service/payload");
        assert_eq!(
            (c.runtime, c.id.as_str()),
            (Some("systemd-nspawn"), "build-box")
        );
        let c = ident("/machine.slice/machine-ci.scope");
        assert_eq!(c.id, "ci");
    }

    #[test]
    fn not_containers() {
        for path in [
            "/",
            "",
            "/user.slice/user-1000.slice/session-3.scope",
            "/system.slice/docker.service",
            "/system.slice/containerd.service",
            "/kubepods.slice/kubepods-burstable.slice",
            "/actions_job/7f3a",
        ] {
            assert_eq!(from_cgroup(path), None, "{path}");
        }
    }

    #[test]
    fn docker_proxy_command_line() {
        let argv: Vec<String> = "/usr/sbin/docker-proxy -proto tcp -host-ip 127.0.0.1 -host-port 18181 -container-ip 172.17.0.2 -container-port 80"
            .split(' ')
            .map(String::from)
            .collect();
        let t = proxy_target(&argv).unwrap();
        assert_eq!(t.proto, "tcp");
        assert_eq!(t.host_port, 18181);
        assert_eq!(t.container_ip, "172.17.0.2".parse::<IpAddr>().unwrap());
        assert_eq!(t.container_port, 80);
        let v6: Vec<String> = [
            "docker-proxy",
            "--proto=udp",
            "--host-port=53",
            "--container-ip=fd00::2",
            "--container-port=5353",
        ]
        .map(String::from)
        .to_vec();
        let t = proxy_target(&v6).unwrap();
        assert_eq!(
            (t.proto.as_str(), t.host_port, t.container_port),
            ("udp", 53, 5353)
        );
        assert_eq!(proxy_target(&["docker-proxy".to_string()]), None);
    }

    fn holding(argv: &str, cgroup: &str) -> Holding {
        Holding {
            socket: crate::holders::Socket {
                netns: 1,
                proto: Proto::Tcp,
                family: crate::vocab::Family::Ipv4,
                addr: "127.0.0.1".parse().unwrap(),
                port: 18181,
                peer: None,
                state: crate::vocab::SocketState::Listen,
                inode: 5,
                cookie: 0,
                uid: 0,
                dual_stack: false,
                timer_ms: None,
            },
            processes: vec![Process {
                pid: 10,
                ppid: 9,
                comm: argv.split(['/', ' ']).nth(3).unwrap_or("x").into(),
                exe: Some(argv.split(' ').next().unwrap().into()),
                cmdline: argv.split(' ').map(String::from).collect(),
                start_ticks: 1,
                started_at: "2026-11-30T21:00:00Z".into(),
                uid: 0,
                user: None,
                cgroup: Some(cgroup.into()),
                container: None,
                netns: Some(1),
                ancestors: vec![],
                orphaned: false,
                job: None,
            }],
            unowned_reason: None,
            container: None,
        }
    }

    fn engine_with(state: &str) -> EngineView {
        let c = Container {
            id: ID.into(),
            short_id: short(ID),
            name: Some("web".into()),
            image: Some("nginx:1.27".into()),
            state: Some(state.into()),
            addresses: vec!["172.17.0.2".parse().unwrap()],
            ports: vec![Published {
                proto: "tcp".into(),
                host_ip: "127.0.0.1".into(),
                host_port: 18181,
                container_port: 80,
            }],
            ..Container::default()
        };
        EngineView {
            containers: [(ID.to_string(), c)].into(),
            error: None,
            answered: true,
        }
    }

    const PROXY: &str = "/usr/sbin/docker-proxy -proto tcp -host-ip 127.0.0.1 -host-port 18181 -container-ip 172.17.0.2 -container-port 80";

    #[test]
    fn a_proxy_port_belongs_to_its_publisher_or_is_stale() {
        let h = holding(PROXY, "/system.slice/docker.service");
        let c = attribute(&h, &engine_with("running")).unwrap();
        assert_eq!(
            (c.name.as_deref(), c.via, c.stale),
            (Some("web"), Some(Via::Proxy), false)
        );
        // The container exited but the proxy still holds the port: stale.
        let c = attribute(&h, &engine_with("exited")).unwrap();
        assert!(c.stale && c.id.is_empty(), "{c:?}");
        assert_eq!(c.ports[0].container_port, 80);
        // No engine answer: unknown, not stale.
        let c = attribute(&h, &EngineView::default()).unwrap();
        assert!(!c.stale && c.id.is_empty(), "{c:?}");
        // A process inside a container: its own container, named by the engine.
        let h = holding("/listener", &format!("/docker/{ID}"));
        let c = attribute(&h, &engine_with("running")).unwrap();
        assert_eq!((c.name.as_deref(), c.via), (Some("web"), Some(Via::Cgroup)));
        // A host process: none.
        assert_eq!(
            attribute(
                &holding("/usr/bin/srv", "/user.slice"),
                &engine_with("running")
            ),
            None
        );
    }

    #[test]
    fn dnat_names_the_publisher_of_an_unheld_port() {
        let c = dnat_publisher(&engine_with("running"), Proto::Tcp, 18181).unwrap();
        assert_eq!((c.name.as_deref(), c.via), (Some("web"), Some(Via::Dnat)));
        assert_eq!(
            dnat_publisher(&engine_with("running"), Proto::Udp, 18181),
            None
        );
        assert_eq!(
            dnat_publisher(&engine_with("exited"), Proto::Tcp, 18181),
            None
        );
    }

    #[test]
    fn labels_fill_compose_and_pod() {
        let labels: BTreeMap<String, String> = [
            (COMPOSE_PROJECT, "shop"),
            (COMPOSE_SERVICE, "web"),
            (POD_NAMESPACE, "ci"),
            (POD_NAME, "runner-0"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let c = Container::from_identity(&ident(&format!("/docker/{ID}"))).with_labels(labels);
        assert_eq!(c.short_id, &ID[..12]);
        assert_eq!(c.compose_project.as_deref(), Some("shop"));
        assert_eq!(c.compose_service.as_deref(), Some("web"));
        assert_eq!(c.pod_name.as_deref(), Some("runner-0"));
    }
}

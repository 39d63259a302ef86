//! bindmodel: **the prediction** for one bind over every socket on its port.
//!
//! `bind()` fails with EACCES before any conflict is looked at when the port
//! lies below the namespace's `net.ipv4.ip_unprivileged_port_start` and the
//! caller lacks CAP_NET_BIND_SERVICE (`inet_port_requires_bind_service`);
//! otherwise with EADDRINUSE when any socket on the port blocks it. What
//! would make it succeed is found by asking the same model about the
//! request with other flags, and by what each blocking socket is.

use serde::{Deserialize, Serialize};

use super::{judge_unknown, Activity, Answer, Existing, Request, Rule};
use crate::vocab::Proto;

/// What `bind()` will return.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub enum Outcome {
    #[serde(rename = "ok")]
    Ok,
    #[serde(rename = "EADDRINUSE")]
    AddrInUse,
    #[serde(rename = "EACCES")]
    Access,
    /// A fact the kernel does not show decides it (see each socket's cases).
    #[serde(rename = "unknown")]
    Unknown,
}

impl Outcome {
    pub fn errno(self) -> Option<i32> {
        match self {
            Outcome::AddrInUse => Some(libc::EADDRINUSE),
            Outcome::Access => Some(libc::EACCES),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Outcome::Ok => "ok",
            Outcome::AddrInUse => "EADDRINUSE",
            Outcome::Access => "EACCES",
            Outcome::Unknown => "unknown",
        }
    }
}

/// The namespace's settings that decide a bind besides its sockets.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Setting {
    /// `net.ipv4.ip_unprivileged_port_start` of the namespace.
    pub unprivileged_port_start: u16,
    /// Whether the binder has CAP_NET_BIND_SERVICE.
    pub cap_net_bind_service: bool,
    /// `net.ipv4.ip_local_port_range`: where connect() picks ports.
    pub ephemeral: Option<(u16, u16)>,
    /// The port is in `net.ipv4.ip_local_reserved_ports`.
    pub reserved: bool,
}

/// The model's answer for one socket on the port.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Verdict {
    pub existing: Existing,
    #[serde(flatten)]
    pub answer: Answer,
    /// A connection whose port the kernel lent it from the ephemeral range
    /// (a client's connect() picked it): its fix is not the socket's flags.
    pub lent_to_client: bool,
}

impl Verdict {
    /// Some(true) blocks, Some(false) does not, None: depends on unknowns.
    pub fn blocks(&self) -> Option<bool> {
        self.answer.known.as_ref().map(|j| j.blocks)
    }
}

/// The prediction for one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Prediction {
    pub outcome: Outcome,
    pub errno: Option<i32>,
    /// Every socket on the port in the request's namespace and protocol.
    pub sockets: Vec<Verdict>,
    /// How many sockets block the bind for sure.
    pub conflicts: usize,
    /// What would make the bind succeed, most direct first.
    pub fixes: Vec<String>,
    pub setting: Setting,
}

/// Predicts `req` against every socket in `existing` (any namespace,
/// protocol or port: those not on the request's are dropped).
pub fn predict(req: &Request, existing: &[Existing], setting: &Setting) -> Prediction {
    let on_port: Vec<&Existing> = existing
        .iter()
        .filter(|e| e.netns == req.netns && e.proto == req.proto && e.port == req.port)
        .collect();
    let listener_here = on_port.iter().any(|e| e.activity == Activity::Listen);
    let sockets: Vec<Verdict> = on_port
        .iter()
        .map(|e| Verdict {
            existing: (*e).clone(),
            answer: judge_unknown(e, req),
            lent_to_client: lent(e, listener_here, setting),
        })
        .collect();
    let outcome = outcome_of(req, &sockets, setting);
    let conflicts = sockets.iter().filter(|v| v.blocks() == Some(true)).count();
    let fixes = if outcome == Outcome::Ok {
        Vec::new()
    } else {
        fixes(req, existing, &sockets, setting)
    };
    Prediction {
        outcome,
        errno: outcome.errno(),
        sockets,
        conflicts,
        fixes,
        setting: setting.clone(),
    }
}

/// A TCP connection on a port inside the ephemeral range, with no listener
/// on the port that could have accepted it: connect() was given the port.
fn lent(e: &Existing, listener_here: bool, setting: &Setting) -> bool {
    e.proto == Proto::Tcp
        && matches!(e.activity, Activity::Connected)
        && !listener_here
        && setting
            .ephemeral
            .is_some_and(|(lo, hi)| (lo..=hi).contains(&e.port))
}

fn outcome_of(req: &Request, sockets: &[Verdict], setting: &Setting) -> Outcome {
    if req.port < setting.unprivileged_port_start && !setting.cap_net_bind_service {
        return Outcome::Access;
    }
    if sockets.iter().any(|v| v.blocks() == Some(true)) {
        // udp_lib_lport_inuse stops at the first same-uid SO_REUSEPORT
        // socket it meets in the port's hash chain and says "free": with
        // both kinds on the port, the chain's order decides.
        let group = sockets.iter().any(|v| {
            v.answer
                .known
                .as_ref()
                .is_some_and(|j| j.rule == Rule::ReuseportGroup)
        });
        if req.proto == Proto::Udp && group {
            return Outcome::Unknown;
        }
        return Outcome::AddrInUse;
    }
    if sockets.iter().any(|v| v.blocks().is_none()) {
        return Outcome::Unknown;
    }
    Outcome::Ok
}

fn fixes(
    req: &Request,
    existing: &[Existing],
    sockets: &[Verdict],
    setting: &Setting,
) -> Vec<String> {
    let mut out = Vec::new();
    if req.port < setting.unprivileged_port_start && !setting.cap_net_bind_service {
        out.push(format!(
            "ports below {} need CAP_NET_BIND_SERVICE (or lower net.ipv4.ip_unprivileged_port_start)",
            setting.unprivileged_port_start
        ));
    }
    let privileged = Setting {
        cap_net_bind_service: true,
        ..setting.clone()
    };
    // Only when the sockets are what fails it.
    let mut own_fix = predict_plain(req, existing, &privileged) == Outcome::Ok;
    for (t, words) in flag_changes(req) {
        if !own_fix && predict_plain(&t, existing, &privileged) == Outcome::Ok {
            out.push(words.to_string());
            // The first (smallest) change is enough to name.
            own_fix = true;
        }
    }
    // What the blocking sockets are.
    for v in sockets.iter().filter(|v| v.blocks() != Some(false)) {
        let fix = socket_fix(v);
        if !out.contains(&fix) {
            out.push(fix);
        }
    }
    out
}

/// The same bind with other flags of its own, smallest change first, and
/// the words that name each change.
fn flag_changes(req: &Request) -> Vec<(Request, &'static str)> {
    let mut tries = Vec::new();
    if !req.reuseaddr {
        tries.push((
            Request {
                reuseaddr: true,
                ..req.clone()
            },
            "set SO_REUSEADDR on the new socket",
        ));
    }
    if !req.reuseport {
        tries.push((
            Request {
                reuseport: true,
                ..req.clone()
            },
            "set SO_REUSEPORT on the new socket",
        ));
    }
    if !req.reuseaddr && !req.reuseport {
        tries.push((
            Request {
                reuseaddr: true,
                reuseport: true,
                ..req.clone()
            },
            "set SO_REUSEADDR and SO_REUSEPORT on the new socket",
        ));
    }
    if req.addr.is_ipv6() && req.addr.is_unspecified() && !req.v6only {
        tries.push((
            Request {
                v6only: true,
                ..req.clone()
            },
            "set IPV6_V6ONLY on the new socket (IPv6 only)",
        ));
    }
    tries
}

/// What to do about one socket that blocks the bind.
fn socket_fix(v: &Verdict) -> String {
    let e = &v.existing;
    let j = v.answer.known.as_ref();
    if v.lent_to_client {
        format!(
            "port {} was lent to a client's connection by the kernel (it lies in net.ipv4.ip_local_port_range): reserve it with net.ipv4.ip_local_reserved_ports so connect() never picks it",
            e.port
        )
    } else if e.activity == Activity::TimeWait {
        "wait for the TIME_WAIT to end, or set SO_REUSEADDR on both the old and the new socket"
            .to_string()
    } else if j.is_some_and(|j| j.rule == Rule::Listening) {
        format!(
            "stop the listener on {} (reaper free {})",
            endpoint(e),
            e.port
        )
    } else if j.is_some_and(|j| j.rule == Rule::ReuseportOtherUid) {
        format!("bind as uid {}, the owner of the SO_REUSEPORT group", e.uid)
    } else {
        format!(
            "close the socket on {}:{}, or set SO_REUSEADDR on it and on the new one",
            e.addr, e.port
        )
    }
}

/// The outcome only, without fixes (no recursion).
fn predict_plain(req: &Request, existing: &[Existing], setting: &Setting) -> Outcome {
    let on_port: Vec<Verdict> = existing
        .iter()
        .filter(|e| e.netns == req.netns && e.proto == req.proto && e.port == req.port)
        .map(|e| Verdict {
            existing: e.clone(),
            answer: judge_unknown(e, req),
            lent_to_client: false,
        })
        .collect();
    outcome_of(req, &on_port, setting)
}

fn endpoint(e: &Existing) -> String {
    match e.addr {
        std::net::IpAddr::V6(a) => format!("[{a}]:{}", e.port),
        std::net::IpAddr::V4(a) => format!("{a}:{}", e.port),
    }
}

//! holders -> **bindmodel** -> policy, reap, conflict.
//!
//! Does this socket block this bind, and by which of the kernel's rules?
//! One pure function, [`judge`], answers it for one existing socket and one
//! bind request, the way Linux 6.18 decides it:
//!
//! - TCP: `inet_csk_get_port` -> `inet_csk_bind_conflict` /
//!   `inet_bhash2_addr_any_conflict` -> `inet_bind_conflict` and
//!   `inet_rcv_saddr_equal` (net/ipv4/inet_connection_sock.c), called by
//!   `bind()` with `relax` and `reuseport_ok` both true.
//! - UDP: `udp_lib_get_port` -> `udp_lib_lport_inuse` (net/ipv4/udp.c), with
//!   the same address rule.
//!
//! The rules, in the order the kernel applies them:
//! 1. Another network namespace, another protocol or another port: never a
//!    conflict (each namespace has its own bind tables).
//! 2. The two local addresses must overlap ([`overlap`]): equal, or either
//!    a wildcard, where an IPv6 wildcard covers IPv4 (and v4-mapped
//!    addresses) only when it is dual-stack (`IPV6_V6ONLY` off). An IPv6
//!    socket bound to a specific, non-mapped address is IPv6-only whatever
//!    its flag said (`__inet6_bind` sets `sk_ipv6only`).
//! 3. TCP: `SO_REUSEADDR` on both lets them share, unless the existing
//!    socket listens. Otherwise `SO_REUSEPORT` on both lets them share when
//!    both belong to the same effective uid (a TIME_WAIT socket's uid does
//!    not matter). Anything else on an overlapping address blocks the bind:
//!    a listener, a socket bound and idle, a connection whose port `connect()`
//!    picked (SYN_SENT, ESTABLISHED, ...), a TIME_WAIT.
//! 4. UDP: the same two exceptions (`SO_REUSEADDR` on both, or
//!    `SO_REUSEPORT` on both with the same uid); there is no listening state.
//!
//! Not modelled: `SO_BINDTODEVICE` (sockets bound to different devices do
//! not conflict; reaper does not read the device), flags changed after a
//! socket was bound (the kernel's per-port fast path remembers the flags at
//! bind time), and sockets sharing one reuseport group by `SO_ATTACH_*`.
//!
//! Where each fact comes from is in `facts`; a fact that cannot be read is
//! `None`, and [`judge_unknown`] answers for every value it could have
//! rather than guess.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use serde::{Deserialize, Serialize};

use crate::vocab::{Family, Proto};

pub mod facts;
pub mod predict;
pub mod setting;
pub mod words;

/// What a socket is doing, as far as the bind tables care.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Activity {
    /// TCP LISTEN: `SO_REUSEADDR` never shares a port with it.
    Listen,
    /// Bound, not listening or connected (TCP CLOSE in the bind hash, or an
    /// unconnected UDP socket).
    Bound,
    /// A connection (SYN_SENT, ESTABLISHED, FIN_WAIT, CLOSE_WAIT, ..., or a
    /// connected UDP socket): its port was bound by `bind()` or picked by
    /// `connect()`.
    Connected,
    /// TCP TIME_WAIT: the kernel keeps it, no process holds it.
    TimeWait,
}

/// One socket already on the port, with what the kernel knows of it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Existing {
    pub netns: u64,
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
    pub activity: Activity,
    /// `sk_uid`: the effective uid that created the socket.
    pub uid: u32,
    /// `IPV6_V6ONLY` (false for IPv4 sockets). None: not known.
    pub v6only: Option<bool>,
    /// `SO_REUSEADDR`. None: not known.
    pub reuseaddr: Option<bool>,
    /// `SO_REUSEPORT`. None: not known.
    pub reuseport: Option<bool>,
}

/// The bind being asked about.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Request {
    pub netns: u64,
    pub proto: Proto,
    /// The address to bind; its family is the socket's (a v4-mapped IPv6
    /// address is an IPv6 socket).
    pub addr: IpAddr,
    pub port: u16,
    pub reuseaddr: bool,
    pub reuseport: bool,
    /// `IPV6_V6ONLY` set before the bind (IPv6 only).
    pub v6only: bool,
    /// The effective uid that will create the socket.
    pub uid: u32,
}

impl Request {
    pub fn family(&self) -> Family {
        match self.addr {
            IpAddr::V4(_) => Family::Ipv4,
            IpAddr::V6(_) => Family::Ipv6,
        }
    }
}

/// The rule that decided, as a stable word (the JSON's `rule`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Rule {
    // Rules that let the bind through.
    OtherNetns,
    OtherProto,
    OtherPort,
    /// The addresses do not overlap.
    DisjointAddresses,
    /// An IPv6-only socket and an IPv4 (or v4-mapped) address.
    V6onlySplit,
    /// `SO_REUSEADDR` on both, and the existing socket does not listen.
    BothReuseaddr,
    /// `SO_REUSEPORT` on both, same uid (or the other is a TIME_WAIT).
    ReuseportGroup,
    // Rules that block it.
    /// It listens: `SO_REUSEADDR` does not share a port with a listener.
    Listening,
    /// Both set `SO_REUSEPORT`, but the uids differ.
    ReuseportOtherUid,
    /// One of the two lacks `SO_REUSEADDR` (and they are no reuseport group).
    NoReuseaddr,
}

impl Rule {
    pub fn blocks(self) -> bool {
        matches!(
            self,
            Rule::Listening | Rule::ReuseportOtherUid | Rule::NoReuseaddr
        )
    }
}

/// The answer for one socket and one request.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Judgement {
    pub blocks: bool,
    pub rule: Rule,
    /// One short line of why, for people.
    pub why: String,
}

/// The facts that are `None` in an `Existing`, by name.
pub fn unknown_facts(e: &Existing) -> Vec<&'static str> {
    let mut v = Vec::new();
    if e.reuseaddr.is_none() {
        v.push("reuseaddr");
    }
    if e.reuseport.is_none() {
        v.push("reuseport");
    }
    if e.v6only.is_none() {
        v.push("v6only");
    }
    v
}

/// Does `e` block `req`? Every fact of `e` must be known (`None` counts as
/// false); see [`judge_unknown`] otherwise.
pub fn judge(e: &Existing, req: &Request) -> Judgement {
    let say = |rule: Rule, why: String| Judgement {
        blocks: rule.blocks(),
        rule,
        why,
    };
    if let Some((rule, why)) = apart(e, req) {
        return say(rule, why);
    }
    let e_reuseaddr = e.reuseaddr.unwrap_or(false);
    let e_reuseport = e.reuseport.unwrap_or(false);
    let listening = e.proto == Proto::Tcp && e.activity == Activity::Listen;
    // TCP: inet_bind_conflict(relax = true, reuseport_ok = true); UDP:
    // udp_lib_lport_inuse. Same shape, UDP has no LISTEN and no TIME_WAIT.
    if req.reuseaddr && e_reuseaddr && !listening {
        return say(
            Rule::BothReuseaddr,
            "both set SO_REUSEADDR and it does not listen".into(),
        );
    }
    let tw = e.proto == Proto::Tcp && e.activity == Activity::TimeWait;
    if req.reuseport && e_reuseport {
        if tw || e.uid == req.uid {
            return say(
                Rule::ReuseportGroup,
                if tw {
                    "both set SO_REUSEPORT (a TIME_WAIT's uid does not matter)".into()
                } else {
                    format!("both set SO_REUSEPORT, same uid {}", e.uid)
                },
            );
        }
        return say(
            Rule::ReuseportOtherUid,
            format!(
                "both set SO_REUSEPORT, but it belongs to uid {} and the bind to uid {}",
                e.uid, req.uid
            ),
        );
    }
    if listening {
        let extra = if req.reuseaddr {
            " (SO_REUSEADDR never shares a port with a listener)"
        } else {
            ""
        };
        return say(Rule::Listening, format!("it listens{extra}"));
    }
    say(
        Rule::NoReuseaddr,
        no_reuseaddr_why(e, req.reuseaddr, e_reuseaddr),
    )
}

/// The rules under which `e` and `req` never meet: another namespace,
/// protocol or port, or addresses that do not overlap.
fn apart(e: &Existing, req: &Request) -> Option<(Rule, String)> {
    if e.netns != req.netns {
        return Some((Rule::OtherNetns, "another network namespace".into()));
    }
    if e.proto != req.proto {
        return Some((Rule::OtherProto, format!("a {} socket", e.proto)));
    }
    if e.port != req.port {
        return Some((Rule::OtherPort, format!("port {}", e.port)));
    }
    match overlap(req, e) {
        Overlap::Yes => None,
        Overlap::Disjoint => Some((
            Rule::DisjointAddresses,
            format!("{} and {} do not overlap", req.addr, e.addr),
        )),
        Overlap::V6only => Some((
            Rule::V6onlySplit,
            "IPV6_V6ONLY keeps IPv6 and IPv4 apart".into(),
        )),
    }
}

/// Why `e` blocks under [`Rule::NoReuseaddr`]: what it is, and which side
/// lacks SO_REUSEADDR.
fn no_reuseaddr_why(e: &Existing, req_reuseaddr: bool, e_reuseaddr: bool) -> String {
    let what = match (e.proto, e.activity) {
        (Proto::Tcp, Activity::TimeWait) => "a TIME_WAIT connection",
        (Proto::Tcp, Activity::Connected) => "a connection",
        (Proto::Tcp, _) => "bound, not listening",
        (Proto::Udp, Activity::Connected) => "a connected UDP socket",
        (Proto::Udp, _) => "a bound UDP socket",
    };
    let missing = match (req_reuseaddr, e_reuseaddr) {
        (false, false) => "neither sets SO_REUSEADDR",
        (false, true) => "the bind does not set SO_REUSEADDR",
        _ => "it does not set SO_REUSEADDR",
    };
    format!("{what}; {missing}")
}

/// The answer for every value the unknown facts of `e` could have.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Answer {
    /// Some when the answer is the same whatever the unknown facts are.
    pub known: Option<Judgement>,
    /// The facts not known (reuseaddr, reuseport, v6only).
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub unknown: Vec<String>,
    /// When not known: the answer under each assignment of the unknown facts.
    #[serde(skip_serializing_if = "Vec::is_empty", default)]
    pub cases: Vec<Case>,
}

/// One assignment of the unknown facts and the answer under it.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Case {
    pub reuseaddr: Option<bool>,
    pub reuseport: Option<bool>,
    pub v6only: Option<bool>,
    pub blocks: bool,
    pub rule: Rule,
}

/// Like [`judge`], for an `e` whose facts may be unknown: tries every value
/// they could have, and says "known" only when all agree.
pub fn judge_unknown(e: &Existing, req: &Request) -> Answer {
    let unknown = unknown_facts(e);
    if unknown.is_empty() {
        return Answer {
            known: Some(judge(e, req)),
            unknown: Vec::new(),
            cases: Vec::new(),
        };
    }
    let mut cases = Vec::new();
    for bits in 0u8..(1 << unknown.len()) {
        let mut t = e.clone();
        let mut case = Case {
            reuseaddr: None,
            reuseport: None,
            v6only: None,
            blocks: false,
            rule: Rule::OtherNetns,
        };
        for (i, name) in unknown.iter().enumerate() {
            let v = bits & (1 << i) != 0;
            match *name {
                "reuseaddr" => (t.reuseaddr, case.reuseaddr) = (Some(v), Some(v)),
                "reuseport" => (t.reuseport, case.reuseport) = (Some(v), Some(v)),
                _ => (t.v6only, case.v6only) = (Some(v), Some(v)),
            }
        }
        let j = judge(&t, req);
        case.blocks = j.blocks;
        case.rule = j.rule;
        cases.push((case, j));
    }
    let first = cases[0].1.clone();
    let agree = cases.iter().all(|(_, j)| j.blocks == first.blocks);
    Answer {
        known: agree.then(|| {
            if cases.iter().all(|(_, j)| j.rule == first.rule) {
                first
            } else {
                // Same outcome by different rules: say the outcome plainly.
                Judgement {
                    blocks: first.blocks,
                    rule: first.rule,
                    why: first.why.clone(),
                }
            }
        }),
        unknown: unknown.iter().map(|s| s.to_string()).collect(),
        cases: cases.into_iter().map(|(c, _)| c).collect(),
    }
}

/// The bind reaper means when it says a socket holds a port: the next
/// server on the port, binding the socket's own address as the socket's
/// own uid, with SO_REUSEADDR for TCP (what servers set, and what reaper's
/// own probe in `reap::bind` sets) and no option for UDP.
pub fn next_server(e: &Existing) -> Request {
    Request {
        netns: e.netns,
        proto: e.proto,
        addr: e.addr,
        port: e.port,
        reuseaddr: e.proto == Proto::Tcp,
        reuseport: false,
        v6only: false,
        uid: e.uid,
    }
}

/// Whether `e` keeps the next server ([`next_server`]) from binding: a
/// listener, any UDP socket, and a TCP socket without SO_REUSEADDR; None
/// when a fact not known decides.
pub fn blocks_next_server(e: &Existing) -> Option<bool> {
    judge_unknown(e, &next_server(e)).known.map(|j| j.blocks)
}

/// A TCP connection on a port no socket listens on (in its namespace): not
/// one a server accepted, so a client's, whose port `connect()` picked (or
/// bound): signalling it frees the port from a client, not a stale server.
pub fn client_connection(e: &Existing, on_port: &[Existing]) -> bool {
    e.proto == Proto::Tcp
        && e.activity == Activity::Connected
        && !on_port.iter().any(|o| {
            o.activity == Activity::Listen
                && o.proto == Proto::Tcp
                && o.netns == e.netns
                && o.port == e.port
        })
}

/// Whether a bind of `new` meets a socket bound to `bound`, for two bound
/// sockets whose IPV6_V6ONLY is not known: taken as off (the default),
/// except where binding a specific IPv6 address sets it.
pub fn addresses_overlap(bound: IpAddr, new: IpAddr) -> bool {
    let forced = |a: IpAddr| matches!(v6_kind(a), V6Kind::Other(_)) && a.is_ipv6();
    let req = Request {
        netns: 0,
        proto: Proto::Tcp,
        addr: new,
        port: 0,
        reuseaddr: false,
        reuseport: false,
        v6only: false,
        uid: 0,
    };
    let e = Existing {
        netns: 0,
        proto: Proto::Tcp,
        addr: bound,
        port: 0,
        activity: Activity::Bound,
        uid: 0,
        v6only: Some(forced(bound)),
        reuseaddr: None,
        reuseport: None,
    };
    overlap(&req, &e) == Overlap::Yes
}

/// Whether two local addresses meet in the bind table.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Overlap {
    Yes,
    Disjoint,
    /// They would meet, but an IPV6_V6ONLY socket keeps IPv4 out.
    V6only,
}

/// An IPv6 address as `ipv6_addr_type` sorts it for this rule.
#[derive(Clone, Copy, PartialEq, Eq)]
enum V6Kind {
    Any,
    /// v4-mapped (or an IPv4 socket's address, which the kernel compares
    /// as mapped): compared as the IPv4 `sk_rcv_saddr`.
    Mapped(Ipv4Addr),
    Other(Ipv6Addr),
}

fn v6_kind(a: IpAddr) -> V6Kind {
    match a {
        IpAddr::V4(v4) => V6Kind::Mapped(v4),
        IpAddr::V6(v6) if v6.is_unspecified() => V6Kind::Any,
        IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
            Some(v4) => V6Kind::Mapped(v4),
            None => V6Kind::Other(v6),
        },
    }
}

/// The IPv4 `sk_rcv_saddr` of a socket as an IPv4 bind compares it: its
/// address, the mapped one, 0.0.0.0 for `::`; None for another IPv6
/// address (the kernel stores 127.0.0.6 there, which only a wildcard meets).
fn v4_view(a: IpAddr) -> Option<Ipv4Addr> {
    match v6_kind(a) {
        V6Kind::Any => Some(Ipv4Addr::UNSPECIFIED),
        V6Kind::Mapped(v4) => Some(v4),
        V6Kind::Other(_) => None,
    }
}

/// The request's effective `IPV6_V6ONLY`: its flag, or forced by binding a
/// specific IPv6 address (`__inet6_bind`).
fn request_v6only(req: &Request) -> bool {
    req.addr.is_ipv6() && (req.v6only || matches!(v6_kind(req.addr), V6Kind::Other(_)))
}

/// `inet_rcv_saddr_equal(sk = request, sk2 = existing, match_wildcard =
/// true)`, which the kernel's wildcard path applies to every socket on the
/// port; its specific-address path (bhash2: the exact address's bucket and
/// the wildcard buckets) reaches the same answer for every address a socket
/// can bind. `V6only` when the addresses would meet but an IPV6_V6ONLY
/// socket keeps IPv4 out.
pub fn overlap(req: &Request, e: &Existing) -> Overlap {
    let e_v6only = e.addr.is_ipv6() && e.v6only.unwrap_or(false);
    let meet = |yes: bool| if yes { Overlap::Yes } else { Overlap::Disjoint };
    if req.addr.is_ipv4() {
        // ipv4_rcv_saddr_equal: an IPv6-only socket never meets IPv4.
        let r = v4_view(req.addr).expect("an IPv4 address");
        let e4 = v4_view(e.addr);
        let would = r.is_unspecified() || e4 == Some(r) || e4.is_some_and(|a| a.is_unspecified());
        return match (would, e_v6only) {
            (true, true) => Overlap::V6only,
            (yes, _) => meet(yes),
        };
    }
    // ipv6_rcv_saddr_equal.
    let r_v6only = request_v6only(req);
    let (t1, t2) = (v6_kind(req.addr), v6_kind(e.addr));
    if let (V6Kind::Mapped(a), V6Kind::Mapped(b)) = (t1, t2) {
        let would = a == b || a.is_unspecified() || b.is_unspecified();
        return match (would, e_v6only) {
            (true, true) => Overlap::V6only,
            (yes, _) => meet(yes),
        };
    }
    if t1 == V6Kind::Any && t2 == V6Kind::Any {
        return Overlap::Yes;
    }
    let mut split = false;
    if t2 == V6Kind::Any {
        if !(e_v6only && matches!(t1, V6Kind::Mapped(_))) {
            return Overlap::Yes;
        }
        split = true;
    }
    if t1 == V6Kind::Any {
        if !(r_v6only && matches!(t2, V6Kind::Mapped(_))) {
            return Overlap::Yes;
        }
        split = true;
    }
    if let (V6Kind::Other(a), V6Kind::Other(b)) = (t1, t2) {
        if a == b {
            return Overlap::Yes;
        }
    }
    if split {
        Overlap::V6only
    } else {
        Overlap::Disjoint
    }
}

#[cfg(test)]
mod tests;

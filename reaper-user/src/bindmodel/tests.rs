//! The model's rules one at a time; the kernel itself checks them in
//! tests/tests/it/why.rs (the matrix).

use std::net::IpAddr;

use super::predict::{predict, Outcome, Setting};
use super::*;

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn sock(addr: &str, act: Activity) -> Existing {
    let a = ip(addr);
    Existing {
        netns: 1,
        proto: Proto::Tcp,
        addr: a,
        port: 8080,
        activity: act,
        uid: 0,
        v6only: Some(false),
        reuseaddr: Some(false),
        reuseport: Some(false),
    }
}

fn req(addr: &str) -> Request {
    Request {
        netns: 1,
        proto: Proto::Tcp,
        addr: ip(addr),
        port: 8080,
        reuseaddr: false,
        reuseport: false,
        v6only: false,
        uid: 0,
    }
}

fn blocks(e: &Existing, r: &Request) -> bool {
    judge(e, r).blocks
}

#[test]
fn a_listener_blocks_a_plain_bind_and_a_reuseaddr_bind() {
    let mut e = sock("0.0.0.0", Activity::Listen);
    e.reuseaddr = Some(true);
    let mut r = req("0.0.0.0");
    assert_eq!(judge(&e, &r).rule, Rule::Listening);
    r.reuseaddr = true;
    assert_eq!(judge(&e, &r).rule, Rule::Listening);
}

#[test]
fn reuseaddr_on_both_shares_with_anything_but_a_listener() {
    for act in [Activity::Bound, Activity::Connected, Activity::TimeWait] {
        let mut e = sock("127.0.0.1", act);
        e.reuseaddr = Some(true);
        let mut r = req("127.0.0.1");
        assert!(blocks(&e, &r), "{act:?}: the bind lacks SO_REUSEADDR");
        r.reuseaddr = true;
        assert_eq!(judge(&e, &r).rule, Rule::BothReuseaddr, "{act:?}");
        e.reuseaddr = Some(false);
        assert_eq!(judge(&e, &r).rule, Rule::NoReuseaddr, "{act:?}");
    }
}

#[test]
fn reuseport_needs_both_and_the_same_uid_except_against_time_wait() {
    let mut e = sock("0.0.0.0", Activity::Listen);
    e.reuseport = Some(true);
    e.uid = 1000;
    let mut r = req("0.0.0.0");
    r.reuseport = true;
    assert_eq!(judge(&e, &r).rule, Rule::ReuseportOtherUid);
    r.uid = 1000;
    assert_eq!(judge(&e, &r).rule, Rule::ReuseportGroup);
    e.activity = Activity::TimeWait;
    r.uid = 0;
    assert_eq!(judge(&e, &r).rule, Rule::ReuseportGroup);
    // UDP has no TIME_WAIT exception: the uid decides.
    e.proto = Proto::Udp;
    r.proto = Proto::Udp;
    e.activity = Activity::Bound;
    assert_eq!(judge(&e, &r).rule, Rule::ReuseportOtherUid);
}

#[test]
fn addresses_wildcards_and_v6only() {
    use Overlap::*;
    let cases = [
        // (request, existing, existing v6only, request v6only, overlap)
        ("0.0.0.0", "127.0.0.1", false, false, Yes),
        ("127.0.0.1", "127.0.0.2", false, false, Disjoint),
        ("127.0.0.1", "0.0.0.0", false, false, Yes),
        ("0.0.0.0", "::", false, false, Yes),
        ("0.0.0.0", "::", true, false, V6only),
        ("::", "0.0.0.0", false, false, Yes),
        ("::", "0.0.0.0", false, true, V6only),
        ("::", "::", true, true, Yes),
        ("::1", "0.0.0.0", false, false, Disjoint),
        ("::1", "::", true, false, Yes),
        ("::ffff:127.0.0.1", "127.0.0.1", false, false, Yes),
        ("::ffff:127.0.0.1", "::", true, false, V6only),
        ("127.0.0.1", "::ffff:127.0.0.1", false, false, Yes),
        ("127.0.0.1", "::1", true, false, Disjoint),
        // A dual-stack connection on ::1 still meets an IPv4 wildcard (its
        // IPv4 sk_rcv_saddr is 127.0.0.6, which only a wildcard matches).
        ("0.0.0.0", "::1", false, false, Yes),
        ("0.0.0.0", "::1", true, false, V6only),
    ];
    for (r, e, e6, r6, want) in cases {
        let mut ex = sock(e, Activity::Connected);
        ex.v6only = Some(e6);
        let mut rq = req(r);
        rq.v6only = r6;
        assert_eq!(
            overlap(&rq, &ex),
            want,
            "bind {r} (v6only {r6}) vs {e} (v6only {e6})"
        );
    }
}

#[test]
fn other_namespace_protocol_or_port_never_blocks() {
    let e = sock("0.0.0.0", Activity::Listen);
    let mut r = req("0.0.0.0");
    r.netns = 2;
    assert_eq!(judge(&e, &r).rule, Rule::OtherNetns);
    r.netns = 1;
    r.proto = Proto::Udp;
    assert_eq!(judge(&e, &r).rule, Rule::OtherProto);
}

#[test]
fn unknown_flags_give_every_case_and_no_guess() {
    let mut e = sock("127.0.0.1", Activity::TimeWait);
    e.reuseaddr = None;
    e.reuseport = None;
    let mut r = req("127.0.0.1");
    // A plain bind: blocked whatever the closed socket had.
    assert_eq!(judge_unknown(&e, &r).known.map(|j| j.blocks), Some(true));
    r.reuseaddr = true;
    let a = judge_unknown(&e, &r);
    assert!(a.known.is_none());
    assert_eq!(a.cases.len(), 4);
    assert!(a
        .cases
        .iter()
        .all(|c| c.blocks == (c.reuseaddr == Some(false))));
}

fn setting() -> Setting {
    Setting {
        unprivileged_port_start: 1024,
        cap_net_bind_service: true,
        ephemeral: Some((32768, 60999)),
        reserved: false,
    }
}

#[test]
fn eacces_comes_before_conflicts() {
    let mut r = req("0.0.0.0");
    r.port = 80;
    let mut e = sock("0.0.0.0", Activity::Listen);
    e.port = 80;
    let s = Setting {
        cap_net_bind_service: false,
        ..setting()
    };
    let p = predict(&r, &[e.clone()], &s);
    assert_eq!(p.outcome, Outcome::Access);
    assert_eq!(p.conflicts, 1);
    assert_eq!(predict(&r, &[e], &setting()).outcome, Outcome::AddrInUse);
}

#[test]
fn fixes_name_the_smallest_change_of_the_new_socket() {
    let mut e = sock("0.0.0.0", Activity::Bound);
    e.reuseaddr = Some(true);
    let p = predict(&req("0.0.0.0"), &[e], &setting());
    assert_eq!(p.outcome, Outcome::AddrInUse);
    assert_eq!(p.fixes[0], "set SO_REUSEADDR on the new socket");
}

#[test]
fn a_client_connection_in_the_ephemeral_range_is_a_port_lent_by_the_kernel() {
    let mut e = sock("127.0.0.1", Activity::Connected);
    e.port = 40000;
    let mut r = req("0.0.0.0");
    r.port = 40000;
    let p = predict(&r, &[e.clone()], &setting());
    assert!(p.sockets[0].lent_to_client);
    assert!(p
        .fixes
        .iter()
        .any(|f| f.contains("ip_local_reserved_ports")));
    // The same port under a listener: an accepted connection, not lent.
    let mut l = e.clone();
    l.activity = Activity::Listen;
    let p = predict(&r, &[e, l], &setting());
    assert!(!p.sockets[0].lent_to_client);
}

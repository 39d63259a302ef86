//! holders: **sockets from netlink sock_diag** -> fd map -> process details.
//!
//! Asks the kernel for its TCP and UDP sockets (IPv4 and IPv6) with one
//! NETLINK_SOCK_DIAG dump each: local and remote ends, state, owner uid,
//! inode (the key that joins a socket to the processes holding it), the
//! socket cookie (the key the BPF side uses), the timer of TIME_WAIT sockets
//! and, for IPv6 listeners, IPV6_V6ONLY. A netlink socket answers for the
//! network namespace it was created in; `netns` creates it in the right one.
//!
//! The wire formats (`struct nlmsghdr`, `inet_diag_req_v2`, `inet_diag_msg`,
//! netlink attributes) are laid out by hand from the kernel's uapi headers
//! and parsed by pure functions over bytes, so that they can be fuzzed.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::os::fd::{AsRawFd, OwnedFd};

use nix::sys::socket::{self, AddressFamily, MsgFlags, SockFlag, SockProtocol, SockType};

use super::Socket;
use crate::vocab::{Family, Proto, SocketState};

const NLMSG_HDRLEN: usize = 16;
const NLMSG_ERROR: u16 = 2;
const NLMSG_DONE: u16 = 3;
const NLM_F_REQUEST: u16 = 0x1;
const NLM_F_DUMP: u16 = 0x300;
const SOCK_DIAG_BY_FAMILY: u16 = 20;
/// The older TCP request (`struct inet_diag_req`). The kernel answers it
/// for both families in one walk of its TCP hash tables, where
/// SOCK_DIAG_BY_FAMILY walks them once per family.
const TCPDIAG_GETSOCK: u16 = 18;
/// sizeof(struct inet_diag_req): family, src_len, dst_len, ext, sockid,
/// states, dbs.
const COMPAT_REQ_LEN: usize = 4 + SOCKID_LEN + 8;
/// sizeof(struct inet_diag_req_v2): family, protocol, ext, pad, states, sockid.
const REQ_LEN: usize = 8 + SOCKID_LEN;
/// sizeof(struct inet_diag_sockid): sport, dport, src[4], dst[4], if, cookie[2].
const SOCKID_LEN: usize = 48;
/// sizeof(struct inet_diag_msg): family, state, timer, retrans, sockid,
/// expires, rqueue, wqueue, uid, inode.
pub const DIAG_MSG_LEN: usize = 4 + SOCKID_LEN + 20;
/// Attribute carrying IPV6_V6ONLY; the kernel adds it, unasked, to IPv6
/// sockets in LISTEN or CLOSE (which is what unconnected UDP is).
const INET_DIAG_SKV6ONLY: u16 = 11;

/// TCP states, as the kernel numbers them (include/net/tcp_states.h).
pub const TCP_ESTABLISHED: u8 = 1;
pub const TCP_SYN_RECV: u8 = 3;
pub const TCP_TIME_WAIT: u8 = 6;
pub const TCP_CLOSE: u8 = 7;
pub const TCP_LISTEN: u8 = 10;
pub const TCP_NEW_SYN_RECV: u8 = 12;
/// Bound but neither listening nor connected (kernel 6.6+ dumps these only
/// when asked for this state): it holds the port all the same.
pub const TCP_BOUND_INACTIVE: u8 = 13;

/// The states to ask for. Every state except SYN-RECV: pending connections
/// are minisockets of a listener with no inode of their own, and the listener
/// already answers for the port. BOUND-INACTIVE is asked for explicitly,
/// because the kernel only dumps those when asked.
pub fn states_mask(proto: Proto, listening_only: bool) -> u32 {
    match (proto, listening_only) {
        (Proto::Tcp, true) => 1 << TCP_LISTEN,
        (Proto::Udp, true) => 1 << TCP_CLOSE,
        (Proto::Tcp, false) => {
            ((1u32 << (TCP_BOUND_INACTIVE + 1)) - 1)
                & !1
                & !(1 << TCP_SYN_RECV)
                & !(1 << TCP_NEW_SYN_RECV)
        }
        (Proto::Udp, false) => (1 << TCP_ESTABLISHED) | (1 << TCP_CLOSE),
    }
}

/// `INET_DIAG_REQ_BYTECODE`: a filter program the kernel runs on each
/// socket before it is put in the dump (include/uapi/linux/inet_diag.h).
const INET_DIAG_REQ_BYTECODE: u16 = 1;
const INET_DIAG_BC_S_GE: u8 = 2;
const INET_DIAG_BC_S_LE: u8 = 3;

/// The filter "local port == `port`", as `ss 'sport = :PORT'` asks.
///
/// Each op is {code, yes, no}: the kernel moves `yes` or `no` bytes on and
/// accepts the socket when it lands exactly on the end (so `no` = the
/// bytes left + 4 rejects). A port comparison carries the port in the
/// `no` field of the op that follows it. S_GE and S_LE (not S_EQ, 4.16+)
/// so that every kernel with sock_diag filters takes it.
pub fn port_filter(port: u16) -> [u8; 16] {
    let op = |code: u8, yes: u8, no: u16| {
        let n = no.to_ne_bytes();
        [code, yes, n[0], n[1]]
    };
    let mut b = [0u8; 16];
    b[0..4].copy_from_slice(&op(INET_DIAG_BC_S_GE, 8, 20));
    b[4..8].copy_from_slice(&op(0, 0, port));
    b[8..12].copy_from_slice(&op(INET_DIAG_BC_S_LE, 8, 12));
    b[12..16].copy_from_slice(&op(0, 0, port));
    b
}

/// The bytes of one dump request; with `port`, the kernel sends only that
/// port's sockets.
pub fn dump_request(
    family: Family,
    proto: Proto,
    states: u32,
    seq: u32,
    port: Option<u16>,
) -> Vec<u8> {
    let mut b = header(SOCK_DIAG_BY_FAMILY, REQ_LEN, seq, port);
    b.push(match family {
        Family::Ipv4 => libc::AF_INET as u8,
        Family::Ipv6 => libc::AF_INET6 as u8,
    });
    b.push(match proto {
        Proto::Tcp => libc::IPPROTO_TCP as u8,
        Proto::Udp => libc::IPPROTO_UDP as u8,
    });
    b.push(0); // idiag_ext: nothing extra; SKV6ONLY comes without asking.
    b.push(0);
    b.extend_from_slice(&states.to_ne_bytes());
    b.resize(NLMSG_HDRLEN + REQ_LEN, 0); // sockid: zero, a dump ignores it.
    with_filter(b, port)
}

/// The bytes of one TCP dump request for both families at once (the
/// kernel's compatibility request, which it dumps as family AF_UNSPEC).
pub fn dump_request_tcp_both(states: u32, seq: u32, port: Option<u16>) -> Vec<u8> {
    let mut b = header(TCPDIAG_GETSOCK, COMPAT_REQ_LEN, seq, port);
    // family, src_len, dst_len, ext: the dump ignores the family.
    b.extend_from_slice(&[libc::AF_INET as u8, 0, 0, 0]);
    b.resize(NLMSG_HDRLEN + 4 + SOCKID_LEN, 0); // sockid: zero.
    b.extend_from_slice(&states.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes()); // dbs
    with_filter(b, port)
}

/// A dump request's netlink header, for a request of `req_len` bytes and
/// the port filter when there is one.
fn header(kind: u16, req_len: usize, seq: u32, port: Option<u16>) -> Vec<u8> {
    let attr_len = port.map_or(0, |_| 4 + 16);
    let len = NLMSG_HDRLEN + req_len + attr_len;
    let mut b = Vec::with_capacity(len);
    b.extend_from_slice(&(len as u32).to_ne_bytes());
    b.extend_from_slice(&kind.to_ne_bytes());
    b.extend_from_slice(&(NLM_F_REQUEST | NLM_F_DUMP).to_ne_bytes());
    b.extend_from_slice(&seq.to_ne_bytes());
    b.extend_from_slice(&0u32.to_ne_bytes());
    b
}

/// Appends the port filter attribute, when there is a port.
fn with_filter(mut b: Vec<u8>, port: Option<u16>) -> Vec<u8> {
    if let Some(f) = port.map(port_filter) {
        b.extend_from_slice(&((4 + f.len()) as u16).to_ne_bytes());
        b.extend_from_slice(&INET_DIAG_REQ_BYTECODE.to_ne_bytes());
        b.extend_from_slice(&f);
    }
    b
}

/// What one received buffer held.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Batch {
    pub sockets: Vec<Socket>,
    /// NLMSG_DONE was seen: the dump is complete.
    pub done: bool,
    /// The kernel refused the dump (positive errno), or the bytes did not
    /// parse (EPROTO).
    pub error: Option<i32>,
}

/// Parses the netlink messages in one received buffer.
pub fn parse_batch(buf: &[u8], netns: u64, proto: Proto) -> Batch {
    let mut out = Batch::default();
    let mut at = 0;
    while at + NLMSG_HDRLEN <= buf.len() {
        let len = u32::from_ne_bytes(buf[at..at + 4].try_into().unwrap()) as usize;
        let kind = u16::from_ne_bytes(buf[at + 4..at + 6].try_into().unwrap());
        if len < NLMSG_HDRLEN || at + len > buf.len() {
            out.error = Some(libc::EPROTO);
            return out;
        }
        let payload = &buf[at + NLMSG_HDRLEN..at + len];
        match kind {
            NLMSG_DONE => {
                out.done = true;
                return out;
            }
            NLMSG_ERROR => {
                let code = payload
                    .get(..4)
                    .map(|b| i32::from_ne_bytes(b.try_into().unwrap()))
                    .unwrap_or(-libc::EPROTO);
                // 0 is an acknowledgement, not an error.
                if code != 0 {
                    out.error = Some(if code < 0 && code != i32::MIN {
                        -code
                    } else {
                        libc::EPROTO
                    });
                    return out;
                }
            }
            SOCK_DIAG_BY_FAMILY | TCPDIAG_GETSOCK => match parse_diag_msg(payload, netns, proto) {
                Some(s) => out.sockets.push(s),
                None => {
                    out.error = Some(libc::EPROTO);
                    return out;
                }
            },
            _ => {}
        }
        // Messages are 4-byte aligned.
        at += (len + 3) & !3;
    }
    out
}

/// Parses one `inet_diag_msg` and its attributes.
pub fn parse_diag_msg(p: &[u8], netns: u64, proto: Proto) -> Option<Socket> {
    if p.len() < DIAG_MSG_LEN {
        return None;
    }
    let u32_at = |o: usize| u32::from_ne_bytes(p[o..o + 4].try_into().unwrap());
    let family = Family::from_af(p[0])?;
    let state = p[1];
    let timer = p[2];
    let sport = u16::from_be_bytes([p[4], p[5]]);
    let dport = u16::from_be_bytes([p[6], p[7]]);
    let addr_at = |o: usize| -> IpAddr {
        match family {
            Family::Ipv4 => IpAddr::V4(Ipv4Addr::new(p[o], p[o + 1], p[o + 2], p[o + 3])),
            Family::Ipv6 => {
                IpAddr::V6(Ipv6Addr::from(<[u8; 16]>::try_from(&p[o..o + 16]).unwrap()))
            }
        }
    };
    let addr = addr_at(8);
    let peer = addr_at(24);
    let cookie = u32_at(44) as u64 | (u32_at(48) as u64) << 32;
    let expires = u32_at(52);
    let uid = u32_at(64);
    let inode = u32_at(68) as u64;
    let mut v6only = None;
    let mut at = DIAG_MSG_LEN;
    while at + 4 <= p.len() {
        let len = u16::from_ne_bytes([p[at], p[at + 1]]) as usize;
        let kind = u16::from_ne_bytes([p[at + 2], p[at + 3]]);
        if len < 4 || at + len > p.len() {
            return None;
        }
        if kind == INET_DIAG_SKV6ONLY && len > 4 {
            v6only = Some(p[at + 4] != 0);
        }
        at += (len + 3) & !3;
    }
    let connected = !peer.is_unspecified() || dport != 0;
    Some(Socket {
        netns,
        proto,
        family,
        addr,
        port: sport,
        peer: connected.then_some((peer, dport)),
        state: SocketState::from_kernel(proto, state),
        inode,
        cookie,
        uid,
        dual_stack: family == Family::Ipv6 && addr.is_unspecified() && v6only == Some(false),
        timer_ms: (timer != 0).then_some(expires as u64),
    })
}

/// A NETLINK_SOCK_DIAG socket; it answers for the network namespace of the
/// thread that created it, for as long as it lives.
pub fn open() -> io::Result<OwnedFd> {
    socket::socket(
        AddressFamily::Netlink,
        SockType::Datagram,
        SockFlag::SOCK_CLOEXEC,
        SockProtocol::NetlinkSockDiag,
    )
    .map_err(io::Error::from)
}

/// Dumps one (family, protocol) over an open sock_diag socket; with
/// `port`, only that port's sockets (filtered in the kernel).
pub fn dump(
    fd: &OwnedFd,
    netns: u64,
    family: Family,
    proto: Proto,
    listening_only: bool,
    seq: u32,
    port: Option<u16>,
) -> io::Result<Vec<Socket>> {
    let req = dump_request(family, proto, states_mask(proto, listening_only), seq, port);
    run_dump(fd, netns, proto, &req)
}

/// Sends one dump request and collects its sockets.
fn run_dump(fd: &OwnedFd, netns: u64, proto: Proto, req: &[u8]) -> io::Result<Vec<Socket>> {
    socket::send(fd.as_raw_fd(), req, MsgFlags::empty()).map_err(io::Error::from)?;
    // The kernel never puts more than 32 KiB in one dump message.
    let mut buf = vec![0u8; 64 * 1024];
    let mut sockets = Vec::new();
    loop {
        let n =
            socket::recv(fd.as_raw_fd(), &mut buf, MsgFlags::empty()).map_err(io::Error::from)?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "sock_diag closed the dump",
            ));
        }
        let batch = parse_batch(&buf[..n], netns, proto);
        sockets.extend(batch.sockets);
        if let Some(errno) = batch.error {
            return Err(io::Error::from_raw_os_error(errno));
        }
        if batch.done {
            return Ok(sockets);
        }
    }
}

/// Every TCP and UDP socket (both families) of the namespace `fd` was
/// opened in; with `port`, that port's only. A kernel that refuses the
/// filter (EINVAL) is asked for everything, which the caller filters.
pub fn dump_all(
    fd: &OwnedFd,
    netns: u64,
    protos: &[Proto],
    listening_only: bool,
    port: Option<u16>,
) -> io::Result<Vec<Socket>> {
    let mut all = Vec::new();
    let mut seq = 1;
    let mut port = port;
    for &proto in protos {
        if proto == Proto::Tcp {
            // Both families in one walk of the TCP tables; a kernel that
            // refuses the request is asked a family at a time.
            let states = states_mask(proto, listening_only);
            let both = run_dump(fd, netns, proto, &dump_request_tcp_both(states, seq, port));
            seq += 1;
            if let Ok(got) = both {
                all.extend(got);
                continue;
            }
        }
        for family in [Family::Ipv4, Family::Ipv6] {
            let got = match dump(fd, netns, family, proto, listening_only, seq, port) {
                Err(e) if port.is_some() && e.raw_os_error() == Some(libc::EINVAL) => {
                    port = None;
                    seq += 1;
                    dump(fd, netns, family, proto, listening_only, seq, None)?
                }
                r => r?,
            };
            all.extend(got);
            seq += 1;
        }
    }
    Ok(all)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn diag_msg(
        family: u8,
        state: u8,
        sport: u16,
        src: &[u8],
        inode: u32,
        attrs: &[(u16, &[u8])],
    ) -> Vec<u8> {
        let mut p = vec![0u8; DIAG_MSG_LEN];
        p[0] = family;
        p[1] = state;
        p[2] = if state == TCP_TIME_WAIT { 3 } else { 0 };
        p[4..6].copy_from_slice(&sport.to_be_bytes());
        p[8..8 + src.len()].copy_from_slice(src);
        p[44..48].copy_from_slice(&0xdead_beefu32.to_ne_bytes());
        p[48..52].copy_from_slice(&0x1u32.to_ne_bytes());
        p[52..56].copy_from_slice(&59_000u32.to_ne_bytes());
        p[64..68].copy_from_slice(&1000u32.to_ne_bytes());
        p[68..72].copy_from_slice(&inode.to_ne_bytes());
        for (kind, data) in attrs {
            let len = 4 + data.len();
            p.extend_from_slice(&(len as u16).to_ne_bytes());
            p.extend_from_slice(&kind.to_ne_bytes());
            p.extend_from_slice(data);
            while !p.len().is_multiple_of(4) {
                p.push(0);
            }
        }
        p
    }

    fn nlmsg(kind: u16, payload: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        b.extend_from_slice(&((NLMSG_HDRLEN + payload.len()) as u32).to_ne_bytes());
        b.extend_from_slice(&kind.to_ne_bytes());
        b.extend_from_slice(&[0; 10]);
        b.extend_from_slice(payload);
        while !b.len().is_multiple_of(4) {
            b.push(0);
        }
        b
    }

    #[test]
    fn request_layout() {
        let r = dump_request(Family::Ipv6, Proto::Udp, 0x80, 9, None);
        assert_eq!(r.len(), 72);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 72);
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 9);
        assert_eq!(&r[16..20], &[10, 17, 0, 0]);
        assert_eq!(u32::from_ne_bytes(r[20..24].try_into().unwrap()), 0x80);
    }

    #[test]
    fn tcp_request_for_both_families_layout() {
        // struct inet_diag_req: 4 bytes, the 48-byte sockid, states, dbs.
        let r = dump_request_tcp_both(0x2fff, 3, Some(8080));
        assert_eq!(r.len(), 16 + 60 + 4 + 16);
        assert_eq!(
            u32::from_ne_bytes(r[0..4].try_into().unwrap()) as usize,
            r.len()
        );
        assert_eq!(u16::from_ne_bytes(r[4..6].try_into().unwrap()), 18);
        assert_eq!(u16::from_ne_bytes(r[6..8].try_into().unwrap()), 0x301);
        assert_eq!(u32::from_ne_bytes(r[8..12].try_into().unwrap()), 3);
        assert_eq!(u32::from_ne_bytes(r[68..72].try_into().unwrap()), 0x2fff);
        assert_eq!(u32::from_ne_bytes(r[72..76].try_into().unwrap()), 0);
        assert_eq!(u16::from_ne_bytes(r[76..78].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(r[78..80].try_into().unwrap()), 1);
        assert_eq!(&r[80..], &port_filter(8080));
        // Its answers carry the request's type and parse as the others.
        let mut m = diag_msg(10, TCP_LISTEN, 1, &[0; 16], 1, &[]);
        let len = (16 + m.len()) as u32;
        let mut buf = len.to_ne_bytes().to_vec();
        buf.extend_from_slice(&18u16.to_ne_bytes());
        buf.extend_from_slice(&[0; 10]);
        buf.append(&mut m);
        let b = parse_batch(&buf, 1, Proto::Tcp);
        assert_eq!(b.sockets.len(), 1);
        assert_eq!(b.error, None);
    }

    #[test]
    fn request_with_a_port_filter() {
        let r = dump_request(Family::Ipv4, Proto::Tcp, 0x400, 2, Some(8080));
        assert_eq!(r.len(), 72 + 4 + 16);
        assert_eq!(u32::from_ne_bytes(r[0..4].try_into().unwrap()), 92);
        // The attribute: length 20, type INET_DIAG_REQ_BYTECODE.
        assert_eq!(u16::from_ne_bytes(r[72..74].try_into().unwrap()), 20);
        assert_eq!(u16::from_ne_bytes(r[74..76].try_into().unwrap()), 1);
        let bc = &r[76..];
        // S_GE 8080: yes -> the next op, no -> past the end (16 + 4).
        assert_eq!(&bc[0..2], &[INET_DIAG_BC_S_GE, 8]);
        assert_eq!(u16::from_ne_bytes([bc[2], bc[3]]), 20);
        assert_eq!(u16::from_ne_bytes([bc[6], bc[7]]), 8080);
        // S_LE 8080: yes -> the end, no -> past it (8 + 4).
        assert_eq!(&bc[8..10], &[INET_DIAG_BC_S_LE, 8]);
        assert_eq!(u16::from_ne_bytes([bc[10], bc[11]]), 12);
        assert_eq!(u16::from_ne_bytes([bc[14], bc[15]]), 8080);
    }

    #[test]
    fn states() {
        let all = states_mask(Proto::Tcp, false);
        assert_ne!(all & (1 << TCP_BOUND_INACTIVE), 0);
        assert_ne!(all & (1 << TCP_TIME_WAIT), 0);
        assert_eq!(all & (1 << TCP_SYN_RECV), 0);
        assert_eq!(all & 1, 0);
        assert_eq!(states_mask(Proto::Udp, true), 1 << 7);
    }

    #[test]
    fn listener_v6_dual_stack_and_v6only() {
        let dual = diag_msg(
            10,
            TCP_LISTEN,
            8080,
            &[0; 16],
            77,
            &[(8, &[0]), (INET_DIAG_SKV6ONLY, &[0])],
        );
        let mut buf = nlmsg(SOCK_DIAG_BY_FAMILY, &dual);
        let only = diag_msg(
            10,
            TCP_LISTEN,
            8081,
            &[0; 16],
            78,
            &[(INET_DIAG_SKV6ONLY, &[1])],
        );
        buf.extend(nlmsg(SOCK_DIAG_BY_FAMILY, &only));
        buf.extend(nlmsg(NLMSG_DONE, &[0; 4]));
        let b = parse_batch(&buf, 5, Proto::Tcp);
        assert!(b.done);
        assert_eq!(b.error, None);
        assert_eq!(b.sockets.len(), 2);
        let s = &b.sockets[0];
        assert_eq!((s.port, s.inode, s.uid, s.netns), (8080, 77, 1000, 5));
        assert_eq!(s.cookie, 0x1_dead_beef);
        assert_eq!(s.state, SocketState::Listen);
        assert!(s.dual_stack);
        assert_eq!(s.timer_ms, None);
        assert!(!b.sockets[1].dual_stack);
    }

    #[test]
    fn time_wait_has_timer_and_no_inode() {
        let tw = diag_msg(2, TCP_TIME_WAIT, 8080, &[127, 0, 0, 1], 0, &[]);
        let b = parse_batch(&nlmsg(SOCK_DIAG_BY_FAMILY, &tw), 1, Proto::Tcp);
        let s = &b.sockets[0];
        assert_eq!(s.addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(s.state, SocketState::TimeWait);
        assert_eq!(s.timer_ms, Some(59_000));
        assert_eq!(s.inode, 0);
        assert!(!b.done);
    }

    #[test]
    fn errors_and_acks() {
        let b = parse_batch(
            &nlmsg(NLMSG_ERROR, &(-libc::ENOENT).to_ne_bytes()),
            1,
            Proto::Udp,
        );
        assert_eq!(b.error, Some(libc::ENOENT));
        let b = parse_batch(&nlmsg(NLMSG_ERROR, &0i32.to_ne_bytes()), 1, Proto::Udp);
        assert_eq!(b.error, None);
        let b = parse_batch(&nlmsg(NLMSG_ERROR, &i32::MIN.to_ne_bytes()), 1, Proto::Udp);
        assert_eq!(b.error, Some(libc::EPROTO));
        let b = parse_batch(&nlmsg(NLMSG_ERROR, &[]), 1, Proto::Udp);
        assert_eq!(b.error, Some(libc::EPROTO));
    }

    #[test]
    fn nasty_buffers_do_not_panic() {
        let good = nlmsg(
            SOCK_DIAG_BY_FAMILY,
            &diag_msg(2, TCP_LISTEN, 1, &[1, 2, 3, 4], 9, &[]),
        );
        // Every truncation of a good message, and every single-byte change.
        for cut in 0..good.len() {
            let _ = parse_batch(&good[..cut], 1, Proto::Tcp);
        }
        for i in 0..good.len() {
            for v in [0u8, 1, 3, 0x7f, 0xff] {
                let mut b = good.clone();
                b[i] = v;
                let _ = parse_batch(&b, 1, Proto::Tcp);
            }
        }
        // A length that lies.
        let mut b = good.clone();
        b[0..4].copy_from_slice(&u32::MAX.to_ne_bytes());
        assert_eq!(parse_batch(&b, 1, Proto::Tcp).error, Some(libc::EPROTO));
        b[0..4].copy_from_slice(&3u32.to_ne_bytes());
        assert_eq!(parse_batch(&b, 1, Proto::Tcp).error, Some(libc::EPROTO));
        // A short diag message, an attribute that overruns, an unknown family.
        assert!(parse_diag_msg(&[2; 71], 1, Proto::Tcp).is_none());
        let mut m = diag_msg(2, TCP_LISTEN, 1, &[0; 4], 1, &[]);
        m.extend_from_slice(&[200, 0, 11, 0, 1]);
        assert!(parse_diag_msg(&m, 1, Proto::Tcp).is_none());
        assert!(
            parse_diag_msg(&diag_msg(1, TCP_LISTEN, 1, &[0; 4], 1, &[]), 1, Proto::Tcp).is_none()
        );
        // A zero-length attribute must not loop forever.
        let mut m = diag_msg(10, TCP_LISTEN, 1, &[0; 16], 1, &[]);
        m.extend_from_slice(&[0, 0, 11, 0]);
        assert!(parse_diag_msg(&m, 1, Proto::Tcp).is_none());
    }
}

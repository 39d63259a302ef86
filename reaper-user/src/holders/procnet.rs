//! holders: **sockets from /proc/net** -> fd map -> process details.
//!
//! The fallback when netlink sock_diag is not there (no `inet_diag` /
//! `udp_diag` module, a seccomp profile that forbids AF_NETLINK): parses
//! /proc/net/{tcp,tcp6,udp,udp6} as seen from a network namespace. What it
//! cannot give: socket cookies (0), and IPV6_V6ONLY, so an IPv6 wildcard is
//! assumed dual-stack when `net.ipv6.bindv6only` is 0 (the default) — the
//! most cautious answer to "does it block an IPv4 bind of this port".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::Socket;
use crate::vocab::{Family, Proto, SocketState};

/// How to read one table.
#[derive(Clone, Copy, Debug)]
pub struct Table {
    pub proto: Proto,
    pub family: Family,
    /// Network namespace the file was read in.
    pub netns: u64,
    /// Milliseconds per clock tick (USER_HZ) of the timer column.
    pub ms_per_tick: u64,
    /// Value of net.ipv6.bindv6only in that namespace.
    pub bindv6only: bool,
}

/// The four files and what each holds.
pub const FILES: [(&str, Proto, Family); 4] = [
    ("tcp", Proto::Tcp, Family::Ipv4),
    ("tcp6", Proto::Tcp, Family::Ipv6),
    ("udp", Proto::Udp, Family::Ipv4),
    ("udp6", Proto::Udp, Family::Ipv6),
];

/// Parses a whole /proc/net/{tcp,udp}[6] file. Lines that do not parse
/// (the header, a truncated last line) are skipped.
pub fn parse_table(text: &[u8], t: Table) -> Vec<Socket> {
    text.split(|&c| c == b'\n')
        .filter_map(|line| parse_line(line, t))
        .collect()
}

/// One line: `sl local rem st tx:rx tr:when retrnsmt uid timeout inode ...`.
pub fn parse_line(line: &[u8], t: Table) -> Option<Socket> {
    let line = std::str::from_utf8(line).ok()?;
    let f: Vec<&str> = line.split_ascii_whitespace().collect();
    if f.len() < 10 || !f[0].ends_with(':') {
        return None;
    }
    let (addr, port) = parse_endpoint(f[1], t.family)?;
    let (peer, peer_port) = parse_endpoint(f[2], t.family)?;
    let state = u8::from_str_radix(f[3], 16).ok()?;
    let (timer, when) = f[5].split_once(':')?;
    let timer = u8::from_str_radix(timer, 16).ok()?;
    let when = u64::from_str_radix(when, 16).ok()?;
    let uid = f[7].parse().ok()?;
    let inode = f[9].parse().ok()?;
    let connected = !peer.is_unspecified() || peer_port != 0;
    Some(Socket {
        netns: t.netns,
        proto: t.proto,
        family: t.family,
        addr,
        port,
        peer: connected.then_some((peer, peer_port)),
        state: SocketState::from_kernel(t.proto, state),
        inode,
        cookie: 0,
        uid,
        dual_stack: t.family == Family::Ipv6 && addr.is_unspecified() && !t.bindv6only,
        timer_ms: (timer != 0).then(|| when.saturating_mul(t.ms_per_tick)),
    })
}

/// `0100007F:1F90` or `00000000000000000000000001000000:1F90`. The kernel
/// prints each 32-bit word of the address as a native-endian integer in hex
/// (so the bytes read back in network order with `to_ne_bytes`), and the port
/// in host order.
pub fn parse_endpoint(s: &str, family: Family) -> Option<(IpAddr, u16)> {
    let (a, p) = s.split_once(':')?;
    let port = u16::from_str_radix(p, 16).ok()?;
    if p.len() != 4 {
        return None;
    }
    let word = |i: usize| -> Option<[u8; 4]> {
        let hex = a.get(i * 8..i * 8 + 8)?;
        Some(u32::from_str_radix(hex, 16).ok()?.to_ne_bytes())
    };
    let addr = match (family, a.len()) {
        (Family::Ipv4, 8) => IpAddr::V4(Ipv4Addr::from(word(0)?)),
        (Family::Ipv6, 32) => {
            let mut b = [0u8; 16];
            for i in 0..4 {
                b[i * 4..i * 4 + 4].copy_from_slice(&word(i)?);
            }
            IpAddr::V6(Ipv6Addr::from(b))
        }
        _ => return None,
    };
    Some((addr, port))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn t(proto: Proto, family: Family) -> Table {
        Table {
            proto,
            family,
            netns: 7,
            ms_per_tick: 10,
            bindv6only: false,
        }
    }

    // Written for a little-endian host, like every machine reaper runs on today.
    #[cfg(target_endian = "little")]
    #[test]
    fn tcp4_listen_and_time_wait() {
        let text = b"  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode\n   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 12345 1 0000000000000000 100 0 0 10 0\n   1: 0100007F:1F90 0100007F:D431 06 00000000:00000000 03:00001770 00000000     0        0 0 3 0000000000000000\n";
        let v = parse_table(text, t(Proto::Tcp, Family::Ipv4));
        assert_eq!(v.len(), 2);
        assert_eq!(v[0].addr, IpAddr::V4(Ipv4Addr::UNSPECIFIED));
        assert_eq!(v[0].port, 2024);
        assert_eq!(v[0].state, SocketState::Listen);
        assert_eq!(v[0].inode, 12345);
        assert_eq!(v[0].peer, None);
        assert_eq!(v[0].timer_ms, None);
        assert!(!v[0].dual_stack);
        assert_eq!(v[1].addr, IpAddr::V4(Ipv4Addr::LOCALHOST));
        assert_eq!(v[1].port, 8080);
        assert_eq!(v[1].peer, Some((IpAddr::V4(Ipv4Addr::LOCALHOST), 0xD431)));
        assert_eq!(v[1].state, SocketState::TimeWait);
        assert_eq!(v[1].inode, 0);
        assert_eq!(v[1].timer_ms, Some(0x1770 * 10));
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn tcp6_wildcard_is_dual_stack_unless_bindv6only() {
        let line = b"   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 999 1 0000000000000000 100 0 0 10 0";
        let s = parse_line(line, t(Proto::Tcp, Family::Ipv6)).unwrap();
        assert_eq!(s.addr, IpAddr::V6(Ipv6Addr::UNSPECIFIED));
        assert!(s.dual_stack);
        assert_eq!(s.uid, 1000);
        let mut only = t(Proto::Tcp, Family::Ipv6);
        only.bindv6only = true;
        assert!(!parse_line(line, only).unwrap().dual_stack);
        let lo = b"   0: 00000000000000000000000001000000:1F90 00000000000000000000000000000000:0000 0A 00000000:00000000 00:00000000 00000000  1000        0 999 1";
        let s = parse_line(lo, t(Proto::Tcp, Family::Ipv6)).unwrap();
        assert_eq!(s.addr, IpAddr::V6(Ipv6Addr::LOCALHOST));
        assert!(!s.dual_stack);
    }

    #[cfg(target_endian = "little")]
    #[test]
    fn udp_unconn() {
        let line = b" 1234: 3500007F:0035 00000000:0000 07 00000000:00000000 00:00000000 00000000   101        0 4242 2 0000000000000000 0";
        let s = parse_line(line, t(Proto::Udp, Family::Ipv4)).unwrap();
        assert_eq!(s.addr, IpAddr::V4(Ipv4Addr::new(127, 0, 0, 53)));
        assert_eq!(s.port, 53);
        assert_eq!(s.state, SocketState::Unconn);
        assert_eq!(s.proto, Proto::Udp);
    }

    #[test]
    fn nasty_lines_are_skipped() {
        let tt = t(Proto::Tcp, Family::Ipv4);
        for bad in [
            &b""[..],
            b"   0:",
            b"   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0",
            b"   0: 0000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
            b"   0: 00000000:7E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
            b"   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00-00000000 00000000 0 0 1",
            b"   0: 0000000G:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
            b"   0: 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 -1",
            b"   0: 00000000:07E8 00000000:0000 1FF 00000000:00000000 00:00000000 00000000 0 0 1",
            b"   0: \xff00000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
            b"sl 00000000:07E8 00000000:0000 0A 00000000:00000000 00:00000000 00000000 0 0 1",
        ] {
            assert!(parse_line(bad, tt).is_none(), "{:?}", String::from_utf8_lossy(bad));
        }
        // An IPv6 address in the IPv4 table, or the other way round.
        let v6 = b"   0: 00000000000000000000000000000000:1F90 00000000000000000000000000000000:0000 0A 0:0 00:0 0 0 0 1";
        assert!(parse_line(v6, tt).is_none());
        assert!(parse_endpoint("00000000:0050", Family::Ipv6).is_none());
        // Multi-byte characters must not make slicing panic.
        assert!(parse_endpoint("0000000é:0050", Family::Ipv4).is_none());
        let straddling = format!("0000000é{}:0050", "0".repeat(23));
        assert!(parse_endpoint(&straddling, Family::Ipv6).is_none());
    }
}

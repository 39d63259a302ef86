//! /proc/net/{tcp,udp}[6] text -> sockets. The table is kernel-written, but
//! the parser must hold for any bytes: truncated lines, garbage, multi-byte
//! characters where hex is expected. Invariants: no panic; every socket
//! agrees with the table it came from; every endpoint printed back the way
//! the kernel prints it parses to the same endpoint; the whole-table parse
//! is the line-by-line parse.
#![no_main]

use std::net::IpAddr;

use libfuzzer_sys::fuzz_target;
use reaper::holders::procnet::{parse_endpoint, parse_line, parse_table, Table, FILES};
use reaper::vocab::Family;

/// An endpoint as the kernel prints it: each 32-bit word of the address as
/// a native-endian integer in hex, then the port in hex.
fn kernel_endpoint(addr: IpAddr, port: u16) -> String {
    let words: Vec<u8> = match addr {
        IpAddr::V4(a) => a.octets().to_vec(),
        IpAddr::V6(a) => a.octets().to_vec(),
    };
    let mut s = String::new();
    for w in words.chunks(4) {
        s.push_str(&format!(
            "{:08X}",
            u32::from_ne_bytes(w.try_into().unwrap())
        ));
    }
    s.push_str(&format!(":{port:04X}"));
    s
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, text)) = data.split_first() else {
        return;
    };
    let (_, proto, family) = FILES[(flags & 3) as usize];
    let t = Table {
        proto,
        family,
        netns: 4026531840,
        ms_per_tick: u64::from(flags >> 2) * 1000,
        bindv6only: flags & 0x80 != 0,
    };
    let sockets = parse_table(text, t);
    let by_line: Vec<_> = text
        .split(|&c| c == b'\n')
        .filter_map(|l| parse_line(l, t))
        .collect();
    assert_eq!(sockets, by_line);
    for s in &sockets {
        assert_eq!(
            (s.proto, s.family, s.netns, s.cookie),
            (proto, family, t.netns, 0)
        );
        assert_eq!(s.addr.is_ipv6(), family == Family::Ipv6);
        if let Some((peer, _)) = s.peer {
            assert_eq!(peer.is_ipv6(), family == Family::Ipv6);
        }
        if s.dual_stack {
            assert!(family == Family::Ipv6 && s.addr.is_unspecified() && !t.bindv6only);
        }
        let printed = kernel_endpoint(s.addr, s.port);
        assert_eq!(
            parse_endpoint(&printed, family),
            Some((s.addr, s.port)),
            "{printed}"
        );
    }
});

//! Netlink sock_diag replies -> sockets. Invariants: no panic and no endless
//! loop on any bytes (lying lengths, zero-length attributes, truncation); a
//! message framed around any payload parses to exactly what the payload
//! parses to on its own, or to EPROTO when the payload does not parse; every
//! socket is consistent with itself.
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper::holders::sockdiag::{parse_batch, parse_diag_msg, DIAG_MSG_LEN};
use reaper::holders::Socket;
use reaper::vocab::{Family, Proto};

/// nlmsg_type of a sock_diag answer (SOCK_DIAG_BY_FAMILY, linux/sock_diag.h).
const SOCK_DIAG_BY_FAMILY: u16 = 20;
const NETNS: u64 = 4026531840;

fn consistent(s: &Socket, proto: Proto) {
    assert_eq!((s.netns, s.proto), (NETNS, proto));
    assert_eq!(s.addr.is_ipv6(), s.family == Family::Ipv6);
    if s.dual_stack {
        assert!(s.family == Family::Ipv6 && s.addr.is_unspecified());
    }
    assert!(s.inode <= u64::from(u32::MAX));
}

fuzz_target!(|data: &[u8]| {
    let proto = if data.first().is_some_and(|b| b & 1 == 1) {
        Proto::Udp
    } else {
        Proto::Tcp
    };
    // The bytes as a received buffer.
    let batch = parse_batch(data, NETNS, proto);
    for s in &batch.sockets {
        consistent(s, proto);
    }
    if let Some(e) = batch.error {
        assert!(e > 0, "errno {e}");
    }

    // The bytes as one message's payload, alone and framed.
    let alone = parse_diag_msg(data, NETNS, proto);
    if let Some(s) = &alone {
        assert!(data.len() >= DIAG_MSG_LEN);
        assert_eq!(s.port, u16::from_be_bytes([data[4], data[5]]));
        assert_eq!(
            s.inode,
            u64::from(u32::from_ne_bytes(data[68..72].try_into().unwrap()))
        );
        consistent(s, proto);
    }
    let mut framed = Vec::with_capacity(16 + data.len() + 3);
    framed.extend_from_slice(&((16 + data.len()) as u32).to_ne_bytes());
    framed.extend_from_slice(&SOCK_DIAG_BY_FAMILY.to_ne_bytes());
    framed.extend_from_slice(&[0; 10]);
    framed.extend_from_slice(data);
    while framed.len() % 4 != 0 {
        framed.push(0);
    }
    let b = parse_batch(&framed, NETNS, proto);
    match alone {
        Some(s) => {
            assert_eq!(b.sockets, vec![s]);
            assert_eq!(b.error, None);
        }
        None => {
            assert!(b.sockets.is_empty());
            assert_eq!(b.error, Some(libc::EPROTO));
        }
    }
    assert!(!b.done);
});

//! The event ABI between reaper's eBPF programs (`reaper-ebpf`) and its
//! userspace (`reaper-user`).
//!
//! Flow: **kernel hooks** -> *ring buffer* -> ledger -> holders -> conflicts
//! -> policy -> reaping -> journal -> report/metrics/control.
//!
//! This crate is the arrow between the first two boxes: one `#[repr(C)]`
//! record that the kernel side fills and the userspace side decodes. The
//! kernel side captures facts only; every judgment happens in userspace.
#![no_std]

/// `bind()` reached the inet layer (cgroup `bind4`/`bind6`), before the
/// kernel looked for a conflict. Carries the *requested* address and port.
pub const KIND_ATTEMPT: u8 = 1;
/// The bind succeeded (cgroup `post_bind4`/`post_bind6`). Carries the port
/// actually bound: a request for port 0 resolves to the ephemeral port here.
pub const KIND_BOUND: u8 = 2;
/// A TCP socket entered `LISTEN` (tp_btf `inet_sock_set_state`).
pub const KIND_LISTEN: u8 = 3;
/// A socket that reaper saw try to bind, or listen, was released (cgroup
/// `sock_release`). Address and port are not readable there: userspace finds
/// the claim by socket cookie.
pub const KIND_RELEASE: u8 = 4;
/// The exact return value of a bind (`sys_exit_bind` tracepoint or fexit on
/// `inet_bind`/`inet6_bind`), matched to its attempt by thread id.
pub const KIND_OUTCOME: u8 = 5;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Set in [`Event::flags`] when the program could not read the comm.
pub const FLAG_NO_COMM: u8 = 1;

/// Name of the ring buffer map.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU counter of events the kernel side could not reserve
/// room for (the ring buffer was full).
pub const MAP_LOST: &str = "LOST";
/// Global set by userspace: 1 when an exact-errno tier (syscalls, fexit) is
/// attached, so the bind hooks remember the thread for its outcome.
pub const GLOBAL_EXACT: &str = "REAPER_EXACT";

/// One kernel observation. 88 bytes, 8-byte aligned; the layout is checked
/// by a unit test so both sides agree.
#[repr(C)]
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Event {
    /// CLOCK_BOOTTIME in nanoseconds (`bpf_ktime_get_boot_ns`).
    pub ts_ns: u64,
    /// Socket cookie (`bpf_get_socket_cookie`); 0 for outcome events.
    pub cookie: u64,
    /// Network namespace cookie (`bpf_get_netns_cookie`); 0 when unknown.
    pub netns_cookie: u64,
    /// cgroup v2 id of the calling task.
    pub cgroup_id: u64,
    /// Process id (thread-group id) in the initial pid namespace.
    pub tgid: u32,
    /// Thread id in the initial pid namespace.
    pub tid: u32,
    pub uid: u32,
    /// For [`KIND_OUTCOME`]: 0 or a negative errno. Otherwise 0.
    pub ret: i32,
    /// Host byte order. Requested port for attempts, bound port otherwise.
    pub port: u16,
    pub kind: u8,
    pub family: u8,
    pub protocol: u8,
    /// SOCK_STREAM = 1, SOCK_DGRAM = 2, ...
    pub sock_type: u8,
    pub flags: u8,
    pub _pad: u8,
    /// IPv4 in the first 4 bytes (network order), or the IPv6 address.
    pub addr: [u8; 16],
    /// The calling task's comm, NUL padded (at most 15 bytes of name).
    pub comm: [u8; 16],
}

impl Event {
    pub const SIZE: usize = core::mem::size_of::<Event>();

    pub const fn zeroed() -> Self {
        Event {
            ts_ns: 0,
            cookie: 0,
            netns_cookie: 0,
            cgroup_id: 0,
            tgid: 0,
            tid: 0,
            uid: 0,
            ret: 0,
            port: 0,
            kind: 0,
            family: 0,
            protocol: 0,
            sock_type: 0,
            flags: 0,
            _pad: 0,
            addr: [0; 16],
            comm: [0; 16],
        }
    }

    /// Decodes a record from the ring buffer. Short records are refused, not
    /// padded: a short record means the two sides disagree on the ABI.
    pub fn from_bytes(bytes: &[u8]) -> Option<Event> {
        if bytes.len() < Self::SIZE {
            return None;
        }
        // SAFETY: Event is repr(C), plain old data, valid for any bit pattern;
        // read_unaligned copes with the ring buffer's 8-byte alignment or less.
        Some(unsafe { core::ptr::read_unaligned(bytes.as_ptr() as *const Event) })
    }
}

#[cfg(feature = "user")]
// SAFETY: Event is repr(C) and valid for any bit pattern.
unsafe impl aya::Pod for Event {}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn layout_is_stable() {
        assert_eq!(Event::SIZE, 88);
        assert_eq!(core::mem::align_of::<Event>(), 8);
        assert_eq!(core::mem::offset_of!(Event, port), 48);
        assert_eq!(core::mem::offset_of!(Event, addr), 56);
        assert_eq!(core::mem::offset_of!(Event, comm), 72);
    }

    #[test]
    fn short_records_are_refused() {
        assert!(Event::from_bytes(&[0u8; 87]).is_none());
        let mut buf = [0u8; 88];
        buf[48] = 0x90;
        buf[49] = 0x1f;
        buf[50] = KIND_BOUND;
        let ev = Event::from_bytes(&buf).unwrap();
        assert_eq!(ev.port, 8080);
        assert_eq!(ev.kind, KIND_BOUND);
    }
}

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

/// `bind()` of a fixed port reached the inet layer (cgroup `bind4`/`bind6`),
/// before the kernel looked for a conflict. Carries the *requested* address
/// and port. Sent only by the exact-errno tiers, whose outcome event follows;
/// the cgroup tier keeps a fixed port's request in [`MAP_CLAIMS`] under this
/// kind until `post_bind` turns it into the claim (a *pending* record, which
/// readers of the map skip), and sends one event per bind ([`KIND_BOUND`] or
/// [`KIND_FAILED`]).
pub const KIND_ATTEMPT: u8 = 1;
/// The bind succeeded (cgroup `post_bind4`/`post_bind6`). Carries the port
/// actually bound: a request for port 0 resolves to the ephemeral port here
/// and [`FLAG_EPHEMERAL`] is set. The claim is also in the [`MAP_CLAIMS`] map
/// (unless [`FLAG_UNSTORED`]). A fixed port's record in the cgroup tier
/// carries its request's time (`bind4`, the same syscall): the port is taken
/// between the two hooks, so a bind that failed on it came after that time.
pub const KIND_BOUND: u8 = 2;
/// A TCP socket entered `LISTEN` (tp_btf `inet_sock_set_state`).
pub const KIND_LISTEN: u8 = 3;
/// A socket that reaper saw try to bind, or listen, was released (cgroup
/// `sock_release`). Carries the socket cookie, the time and the releasing
/// task's identity only: address and port are not readable there, and the
/// netns cookie, family, protocol and type are left 0 (each a read per
/// release); userspace finds all of them in the claim, by socket cookie.
pub const KIND_RELEASE: u8 = 4;
/// The exact return value of a bind (`sys_exit_bind` tracepoint or fexit on
/// `inet_bind`/`inet6_bind`), matched to its attempt by thread id.
pub const KIND_OUTCOME: u8 = 5;
/// A bind of a fixed port that never succeeded (cgroup tier): found when the
/// socket binds again, listens or is released. Carries the stashed request
/// (address, port, the attempt's time) and the identity of the task that
/// attempted it (falling back to socket storage when the claims map was
/// full, the identity of the task that found the failure, with the
/// attempting task's pid and tid).
pub const KIND_FAILED: u8 = 6;
/// A TCP connection left SYN_SENT on a local port userspace watches
/// ([`MAP_WATCHED`]): the port the kernel gave to a `connect()` (tp_btf
/// `inet_sock_set_state` with old state SYN_SENT; at the SYN_SENT
/// transition itself the port is not picked yet). Carries the local port,
/// the family, the peer's address ([`Event::addr`]) and port ([`Event::ret`]),
/// the socket cookie and the time. The handshake ends in whatever task the
/// network stack runs in, so the identity fields are not the client's:
/// they are left zero ([`FLAG_NO_TASK`]) and userspace finds the owner by
/// the socket cookie.
pub const KIND_CONNECT: u8 = 7;

pub const AF_INET: u8 = 2;
pub const AF_INET6: u8 = 10;
pub const IPPROTO_TCP: u8 = 6;
pub const IPPROTO_UDP: u8 = 17;

/// Set in [`Event::flags`] when the program could not read the comm.
pub const FLAG_NO_COMM: u8 = 1;
/// Set on [`KIND_BOUND`] when the request was port 0 (the kernel picked it).
pub const FLAG_EPHEMERAL: u8 = 2;
/// Set on [`KIND_BOUND`]/[`KIND_LISTEN`] when the claim could not be stored
/// in [`MAP_CLAIMS`] (the map was full; counted in [`MAP_CLAIMS_FULL`]).
pub const FLAG_UNSTORED: u8 = 4;

/// Set when the calling task is outside the pid namespace userspace named
/// in [`GLOBAL_PIDNS_INO`] (the host, a sibling container, or a namespace
/// nested in userspace's own: `bpf_get_ns_current_pid_tgid` maps only the
/// task's own namespace). Then [`Event::tgid`] is 0, and [`Event::tid`] is
/// the initial namespace's thread id, only good for joining an attempt to
/// its outcome.
pub const FLAG_OUTSIDE_PIDNS: u8 = 8;
/// Set when the record carries no task identity (pid, tid, uid, comm,
/// cgroup): see [`KIND_CONNECT`].
pub const FLAG_NO_TASK: u8 = 16;
/// Kernel-side state on a record in [`MAP_CLAIMS`]: userspace was sent the
/// claim's bind or listen, so its release is sent too (a summarised
/// ephemeral claim lacks it). May also appear on sent records; userspace
/// ignores it.
pub const FLAG_NOTIFIED: u8 = 32;

/// Name of the ring buffer map.
pub const MAP_EVENTS: &str = "EVENTS";
/// Name of the per-CPU counter of events the kernel side could not reserve
/// room for (the ring buffer was full).
pub const MAP_LOST: &str = "LOST";
/// Global set by userspace: 1 when an exact-errno tier (syscalls, fexit) is
/// attached, so the bind hooks remember the thread for its outcome.
pub const GLOBAL_EXACT: &str = "REAPER_EXACT";
/// Global set by userspace: 1 to send an event for every bind, ephemeral
/// ones included (`watch --all`); 0 summarises port-0 binds kernel-side.
pub const GLOBAL_ALL: &str = "REAPER_ALL";
/// Globals set by userspace when its pid namespace is not the initial one:
/// that namespace's nsfs device (kernel `dev_t`: major << 20 | minor) and
/// inode, from `stat /proc/self/ns/pid`. The kernel side then reports pids
/// as that namespace numbers them (`bpf_get_ns_current_pid_tgid`).
pub const GLOBAL_PIDNS_DEV: &str = "REAPER_PIDNS_DEV";
pub const GLOBAL_PIDNS_INO: &str = "REAPER_PIDNS_INO";
/// The kernel-side claims: socket cookie -> the [`Event`] of its bind (or
/// listen), removed by the release hook. In the cgroup tier it also holds a
/// fixed-port bind's request from `bind4` to `post_bind` (kind
/// [`KIND_ATTEMPT`]; one entry per socket instead of socket storage plus a
/// second insert): those are not claims and readers skip them. Read by userspace when it needs the
/// truth (start, after a loss, ephemeral claims) instead of scanning /proc.
pub const MAP_CLAIMS: &str = "CLAIMS";
/// Local ports userspace watches for `connect()`s (port, host order -> 1):
/// configured ports and ports with recent conflicts. A connection leaving
/// SYN_SENT on one is sent as [`KIND_CONNECT`]; every other connection
/// costs one lookup.
pub const MAP_WATCHED: &str = "WATCHED";
/// Global set by userspace: 0 to leave connections alone entirely (no
/// [`KIND_CONNECT`], not even the [`MAP_WATCHED`] lookup), to measure what
/// watching them costs.
pub const GLOBAL_CONNECTS: &str = "REAPER_CONNECTS";
/// Capacity of [`MAP_WATCHED`].
pub const WATCHED_MAX: u32 = 4096;
/// Default capacity of [`MAP_CLAIMS`]; userspace may resize it before load.
pub const CLAIMS_MAX_DEFAULT: u32 = 65536;
/// Per-CPU counters of the kernel side, indexed by the `COUNT_*` slots.
pub const MAP_COUNTS: &str = "COUNTS";
/// Claims [`MAP_CLAIMS`] had no room for.
pub const COUNT_CLAIMS_FULL: u32 = 0;
/// Ephemeral binds summarised (not sent).
pub const COUNT_EPHEMERAL: u32 = 1;
/// Releases of summarised claims (not sent).
pub const COUNT_EPHEMERAL_RELEASES: u32 = 2;
/// Slots in [`MAP_COUNTS`].
pub const COUNTS: u32 = 3;
/// Per-CPU, per-process (tgid) count of ephemeral binds summarised instead
/// of sent (LRU: the oldest processes leave first). Filled only when
/// [`GLOBAL_BY_PID`] is 1.
pub const MAP_EPHEMERAL: &str = "EPHEMERAL";
/// Global set by userspace: 1 to count summarised ephemeral binds per
/// process in [`MAP_EPHEMERAL`] (`watch` prints them when it ends); 0 (the
/// daemon, which reads only the total in [`MAP_COUNTS`]) spares every port-0
/// bind that hash lookup.
pub const GLOBAL_BY_PID: &str = "REAPER_BY_PID";
/// Global set by userspace: 1 when the kernel has
/// `bpf_map_lookup_percpu_elem` (Linux 5.19), which the kernel side needs to
/// let a summarised claim's release skip its lookup; 0 leaves that path
/// out (the programs still load on older kernels).
pub const GLOBAL_PERCPU_LOOKUP: &str = "REAPER_PERCPU_LOOKUP";

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
    /// Process id (thread-group id) in userspace's pid namespace (the
    /// initial one unless [`GLOBAL_PIDNS_INO`] is set); 0 with
    /// [`FLAG_OUTSIDE_PIDNS`].
    pub tgid: u32,
    /// Thread id, as `tgid` (see [`FLAG_OUTSIDE_PIDNS`]).
    pub tid: u32,
    pub uid: u32,
    /// For [`KIND_OUTCOME`]: 0 or a negative errno. For [`KIND_CONNECT`]:
    /// the peer's port (host order). On a summarised claim in
    /// [`MAP_CLAIMS`], kernel-side state (the CPU that stored it), which
    /// userspace ignores. Otherwise 0.
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

//! reaper's kernel side: **kernel hooks** -> ring buffer.
//!
//! Small and dumb on purpose: each program captures what happened and who
//! did it (pid, tid, comm, uid, cgroup, netns cookie, socket cookie, time),
//! ships one `reaper_common::Event`, and returns. Every judgment (matching
//! attempts to outcomes, inferring causes, policy) happens in userspace.
//!
//! Tiers (chosen and attached by `reaper-user/src/hooks`):
//! - `cgroup` (default): `bind4`/`bind6` see every inet bind attempt,
//!   `post_bind4`/`post_bind6` every success with the real port,
//!   `sock_release` the end of a claim, tp_btf `inet_sock_set_state` the
//!   listens. Only binds pay; other syscalls are untouched.
//! - `syscalls`: the above plus `sys_exit_bind` for the exact errno. Attaching
//!   any syscall tracepoint slows every syscall on the host.
//! - `fexit`: the above plus fexit on `inet_bind`/`inet6_bind` for the exact
//!   errno without the syscall tax (refused on some kernels).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_sock, bpf_sock_addr},
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_comm, bpf_get_current_pid_tgid,
        bpf_get_current_uid_gid, bpf_get_netns_cookie, bpf_get_socket_cookie,
        bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
    },
    macros::{btf_tracepoint, cgroup_sock, cgroup_sock_addr, fexit, lsm, map, tracepoint},
    maps::{HashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, FExitContext, LsmContext, SockAddrContext, SockContext,
        TracePointContext,
    },
    EbpfContext,
};
use aya_log_ebpf::warn;
use reaper_common::{
    Event, FLAG_NO_COMM, KIND_ATTEMPT, KIND_BOUND, KIND_LISTEN, KIND_OUTCOME, KIND_RELEASE,
};

/// Allowed: cgroup sock/sock_addr programs return 1 to let the call go on.
const ALLOW: i32 = 1;
const TCP_LISTEN: i32 = 10;
/// Offsets in `struct sock_common`, unchanged since Linux 3.x:
/// skc_num (host-order local port) and skc_family.
const SKC_NUM_OFFSET: usize = 14;
const SKC_FAMILY_OFFSET: usize = 16;

/// 256 KiB by default; userspace may resize it before load (`--ringbuf-size`).
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Events that could not be reserved because the ring buffer was full.
#[map(name = "LOST")]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// Sockets that tried to bind or listened: only their release matters. A
/// failed bind's socket is in it too, so its close resolves the failure at
/// once. A plain hash, not LRU: cheaper per bind; every entry leaves at
/// release.
#[map(name = "CLAIMED")]
static CLAIMED: HashMap<u64, u8> = HashMap::with_max_entries(65536, 0);

/// Threads inside a bind whose exact outcome an exact tier will report.
#[map(name = "PENDING")]
static PENDING: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// Set by userspace to 1 when an exact-errno program is attached.
#[no_mangle]
static REAPER_EXACT: u8 = 0;

#[inline(always)]
fn exact_tier() -> bool {
    // SAFETY: a global patched by the loader; volatile so it is not folded.
    unsafe { core::ptr::read_volatile(&REAPER_EXACT) != 0 }
}

#[inline(always)]
fn count_lost<C: EbpfContext>(ctx: &C) {
    if let Some(p) = LOST.get_ptr_mut(0) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        let n = unsafe {
            *p += 1;
            *p
        };
        // Say it once per power of two so a storm does not flood the log.
        if n & (n - 1) == 0 {
            warn!(
                ctx,
                "reaper: ring buffer full, {} events lost on this cpu", n
            );
        }
    }
}

/// Reserves an event and fills the caller's identity; `None` counts a loss.
#[inline(always)]
fn start_event<C: EbpfContext>(
    ctx: &C,
    kind: u8,
) -> Option<aya_ebpf::maps::ring_buf::RingBufEntry<Event>> {
    let Some(mut entry) = EVENTS.reserve::<Event>(0) else {
        count_lost(ctx);
        return None;
    };
    let pid_tgid = bpf_get_current_pid_tgid();
    let mut ev = Event::zeroed();
    ev.kind = kind;
    // SAFETY: helpers without preconditions.
    unsafe {
        ev.ts_ns = bpf_ktime_get_boot_ns();
        ev.cgroup_id = bpf_get_current_cgroup_id();
    }
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.uid = bpf_get_current_uid_gid() as u32;
    match bpf_get_current_comm() {
        Ok(comm) => ev.comm = comm,
        Err(_) => ev.flags |= FLAG_NO_COMM,
    }
    entry.write(ev);
    Some(entry)
}

/// Stores an IPv4 address (network order, as the context holds it).
/// The context itself must be read by the caller: the verifier checks those
/// loads where they happen.
///
/// # Safety
/// `ev` points at a reserved ring buffer record.
#[inline(always)]
unsafe fn set_addr4(ev: *mut Event, ip4: u32) {
    let a = ip4.to_ne_bytes();
    // SAFETY: the caller's promise: `ev` is a reserved record.
    unsafe {
        (*ev).addr[0] = a[0];
        (*ev).addr[1] = a[1];
        (*ev).addr[2] = a[2];
        (*ev).addr[3] = a[3];
    }
}

/// Stores an IPv6 address given as four network-order words.
///
/// # Safety
/// `ev` points at a reserved ring buffer record.
#[inline(always)]
unsafe fn set_addr6(ev: *mut Event, ip6: [u32; 4]) {
    // SAFETY: the caller's promise: `ev` is a reserved record; [u32; 4]
    // and [u8; 16] have the same size and any bits are valid for both.
    unsafe { (*ev).addr = core::mem::transmute::<[u32; 4], [u8; 16]>(ip6) };
}

// ---- cgroup tier: attempts -------------------------------------------------

#[cgroup_sock_addr(bind4)]
pub fn reaper_bind4(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, false);
    ALLOW
}

#[cgroup_sock_addr(bind6)]
pub fn reaper_bind6(ctx: SockAddrContext) -> i32 {
    on_bind(&ctx, true);
    ALLOW
}

#[inline(always)]
fn on_bind(ctx: &SockAddrContext, v6: bool) {
    let sa: *mut bpf_sock_addr = ctx.sock_addr;
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let _ = CLAIMED.insert(&cookie, &1, 0);
    let Some(mut entry) = start_event(ctx, KIND_ATTEMPT) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: ctx fields are read with the 4-byte loads the verifier allows;
    // `ev` points at the reserved, initialised record.
    unsafe {
        (*ev).cookie = cookie;
        (*ev).netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        (*ev).family = (*sa).family as u8;
        (*ev).protocol = (*sa).protocol as u8;
        (*ev).sock_type = (*sa).type_ as u8;
        (*ev).port = u16::from_be((*sa).user_port as u16);
        if v6 {
            let a = [
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ];
            set_addr6(ev, a);
        } else {
            set_addr4(ev, (*sa).user_ip4);
        }
        if exact_tier() {
            let _ = PENDING.insert(&(*ev).tid, &1, 0);
        }
    }
    entry.submit(0);
}

// ---- cgroup tier: successes (the real port) and releases --------------------

#[cgroup_sock(post_bind4)]
pub fn reaper_post_bind4(ctx: SockContext) -> i32 {
    on_post_bind(&ctx, false);
    ALLOW
}

#[cgroup_sock(post_bind6)]
pub fn reaper_post_bind6(ctx: SockContext) -> i32 {
    on_post_bind(&ctx, true);
    ALLOW
}

#[inline(always)]
fn on_post_bind(ctx: &SockContext, v6: bool) {
    let sk: *mut bpf_sock = ctx.sock;
    // SAFETY: helper on the program's own context.
    // (The cookie entered CLAIMED at the attempt.)
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    let Some(mut entry) = start_event(ctx, KIND_BOUND) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: as in on_bind.
    unsafe {
        (*ev).cookie = cookie;
        (*ev).netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        (*ev).family = (*sk).family as u8;
        (*ev).protocol = (*sk).protocol as u8;
        (*ev).sock_type = (*sk).type_ as u8;
        (*ev).port = (*sk).src_port as u16;
        if v6 {
            let a = [
                (*sk).src_ip6[0],
                (*sk).src_ip6[1],
                (*sk).src_ip6[2],
                (*sk).src_ip6[3],
            ];
            set_addr6(ev, a);
        } else {
            set_addr4(ev, (*sk).src_ip4);
        }
    }
    entry.submit(0);
}

#[cgroup_sock(sock_release)]
pub fn reaper_release(ctx: SockContext) -> i32 {
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // SAFETY: the value is not kept past this line.
    if unsafe { CLAIMED.get(&cookie) }.is_none() {
        return ALLOW;
    }
    let _ = CLAIMED.remove(&cookie);
    let sk: *mut bpf_sock = ctx.sock;
    if let Some(mut entry) = start_event(&ctx, KIND_RELEASE) {
        let ev = entry.as_mut_ptr();
        // SAFETY: as in on_bind.
        unsafe {
            (*ev).cookie = cookie;
            (*ev).netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
            (*ev).family = (*sk).family as u8;
            (*ev).protocol = (*sk).protocol as u8;
            (*ev).sock_type = (*sk).type_ as u8;
        }
        entry.submit(0);
    }
    ALLOW
}

// ---- listens ----------------------------------------------------------------

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn reaper_listen(ctx: BtfTracePointContext) -> i32 {
    let newstate: i32 = ctx.arg(2);
    if newstate != TCP_LISTEN {
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: `sk` is the tracepoint's struct sock; the helper accepts it.
    let cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    let _ = CLAIMED.insert(&cookie, &1, 0);
    // SAFETY: fixed, long-stable offsets inside struct sock_common.
    let port = unsafe { bpf_probe_read_kernel(sk.add(SKC_NUM_OFFSET) as *const u16) }.unwrap_or(0);
    // SAFETY: as above.
    let family =
        unsafe { bpf_probe_read_kernel(sk.add(SKC_FAMILY_OFFSET) as *const u16) }.unwrap_or(0);
    if let Some(mut entry) = start_event(&ctx, KIND_LISTEN) {
        let ev = entry.as_mut_ptr();
        // SAFETY: `ev` points at the reserved record.
        unsafe {
            (*ev).cookie = cookie;
            (*ev).port = port;
            (*ev).family = family as u8;
            (*ev).protocol = reaper_common::IPPROTO_TCP;
            (*ev).sock_type = 1;
        }
        entry.submit(0);
    }
    0
}

// ---- exact-errno tiers ------------------------------------------------------

#[inline(always)]
fn on_outcome<C: EbpfContext>(ctx: &C, ret: i32) {
    let tid = bpf_get_current_pid_tgid() as u32;
    // SAFETY: the value is not kept past this line.
    if unsafe { PENDING.get(&tid) }.is_none() {
        return;
    }
    let _ = PENDING.remove(&tid);
    if let Some(mut entry) = start_event(ctx, KIND_OUTCOME) {
        // SAFETY: `ev` points at the reserved record.
        unsafe { (*entry.as_mut_ptr()).ret = ret };
        entry.submit(0);
    }
}

#[tracepoint(category = "syscalls", name = "sys_exit_bind")]
pub fn reaper_sys_exit_bind(ctx: TracePointContext) -> u32 {
    // struct trace_event_raw_sys_exit: ret (long) at offset 16.
    // SAFETY: offset from the tracepoint's format file.
    let ret: i64 = unsafe { ctx.read_at(16) }.unwrap_or(0);
    on_outcome(&ctx, ret as i32);
    0
}

#[fexit(function = "inet_bind")]
pub fn reaper_fexit_inet_bind(ctx: FExitContext) -> i32 {
    // int inet_bind(struct socket *sock, struct sockaddr *uaddr, int addr_len)
    let ret: i32 = ctx.arg(3);
    on_outcome(&ctx, ret);
    0
}

#[fexit(function = "inet6_bind")]
pub fn reaper_fexit_inet6_bind(ctx: FExitContext) -> i32 {
    let ret: i32 = ctx.arg(3);
    on_outcome(&ctx, ret);
    0
}

/// Loaded only by `reaper doctor` to learn whether BPF LSM is allowed here.
#[lsm(hook = "socket_bind")]
pub fn reaper_probe_lsm(_ctx: LsmContext) -> i32 {
    0
}

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

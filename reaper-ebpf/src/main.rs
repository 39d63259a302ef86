//! reaper's kernel side: **kernel hooks** -> ring buffer (and the kernel-side
//! claims map userspace reads when it needs the truth).
//!
//! Small and dumb on purpose: each program captures what happened and who
//! did it (pid, tid, comm, uid, cgroup, netns cookie, socket cookie, time)
//! and returns. Every judgment (inferring causes, policy) happens in
//! userspace. What the kernel side keeps:
//! - per socket (`SOCKS`, socket storage, freed with the socket): a fixed
//!   port's bind request between `bind4` and `post_bind4` (a socket without
//!   storage at `post_bind` asked for port 0: no allocation for those), and
//!   whether userspace was told about the socket (so only those releases are
//!   sent);
//! - `CLAIMS`: socket cookie -> the claim's record, inserted at `post_bind`
//!   (or listen) and removed at release. A lost event loses a notification,
//!   never a claim. When the map is full the claim is counted in `COUNTS`
//!   and its event carries `FLAG_UNSTORED`.
//! - `EPHEMERAL`: binds to port 0 are summarised (counted), not sent, unless
//!   userspace sets `REAPER_ALL` (`watch --all`); per process only when it
//!   sets `REAPER_BY_PID` (`watch` prints that table; the daemon does not).
//! - `HINTS`: per CPU, the last socket whose fixed-port request waits in
//!   `CLAIMS`, the last whose claim was sent and the last whose claim was
//!   summarised, so that `post_bind` and the release skip one `CLAIMS`
//!   operation in the common case.
//!
//! Tiers (chosen and attached by `reaper-user/src/hooks`):
//! - `cgroup` (default): `bind4`/`bind6` stash the request, `post_bind4`/
//!   `post_bind6` send one event per successful bind with the real port,
//!   `sock_release` ends the claim (and sends a failure for a fixed-port bind
//!   that never succeeded), tp_btf `inet_sock_set_state` the listens. Only
//!   binds pay; other syscalls are untouched.
//! - `syscalls`: the above plus `sys_exit_bind` for the exact errno (fixed
//!   port attempts are sent at `bind4` to be joined with it). Attaching any
//!   syscall tracepoint slows every syscall on the host.
//! - `fexit`: the above plus fexit on `inet_bind`/`inet6_bind` for the exact
//!   errno without the syscall tax (refused on some kernels).
#![no_std]
#![no_main]

use aya_ebpf::{
    bindings::{bpf_pidns_info, bpf_sock, bpf_sock_addr, BPF_NOEXIST, BPF_SK_STORAGE_GET_F_CREATE},
    btf_maps::SkStorage,
    helpers::{
        bpf_get_current_cgroup_id, bpf_get_current_pid_tgid, bpf_get_current_uid_gid,
        bpf_get_netns_cookie, bpf_get_socket_cookie, bpf_ktime_get_boot_ns, bpf_probe_read_kernel,
        generated::{
            bpf_get_current_comm, bpf_get_ns_current_pid_tgid, bpf_get_smp_processor_id,
            bpf_map_lookup_percpu_elem, bpf_sk_storage_get,
        },
    },
    macros::{btf_map, btf_tracepoint, cgroup_sock, cgroup_sock_addr, fexit, lsm, map, tracepoint},
    maps::{Array, HashMap, LruPerCpuHashMap, PerCpuArray, RingBuf},
    programs::{
        BtfTracePointContext, FExitContext, LsmContext, SockAddrContext, SockContext,
        TracePointContext,
    },
    EbpfContext,
};
use aya_log_ebpf::warn;
use core::mem::MaybeUninit;

use reaper_common::{
    Event, FLAG_EPHEMERAL, FLAG_NOTIFIED, FLAG_NO_COMM, FLAG_NO_TASK, FLAG_OUTSIDE_PIDNS,
    FLAG_UNSTORED, KIND_ATTEMPT, KIND_BOUND, KIND_CONNECT, KIND_FAILED, KIND_LISTEN, KIND_OUTCOME,
    KIND_RELEASE,
};

/// Allowed: cgroup sock/sock_addr programs return 1 to let the call go on.
const ALLOW: i32 = 1;
const TCP_LISTEN: i32 = 10;
const TCP_SYN_SENT: i32 = 2;
/// Offsets in `struct sock_common`, unchanged since Linux 3.x:
/// skc_num (host-order local port) and skc_family.
const SKC_NUM_OFFSET: usize = 14;
const SKC_FAMILY_OFFSET: usize = 16;
/// skc_daddr (IPv4 peer, network order) and skc_dport (network order),
/// stable since Linux 3.x; skc_v6_daddr follows skc_net, at 56 on every
/// 64-bit kernel with network namespaces and IPv6 (a test checks it).
const SKC_DADDR_OFFSET: usize = 0;
const SKC_DPORT_OFFSET: usize = 12;
const SKC_V6_DADDR_OFFSET: usize = 56;

/// 256 KiB by default; userspace may resize it before load (`--ringbuf-size`).
#[map(name = "EVENTS")]
static EVENTS: RingBuf = RingBuf::with_byte_size(256 * 1024, 0);

/// Events that could not be reserved because the ring buffer was full.
#[map(name = "LOST")]
static LOST: PerCpuArray<u64> = PerCpuArray::with_max_entries(1, 0);

/// The claims alive: socket cookie -> the record of its bind or listen. A
/// plain (preallocated) hash, not LRU: a full map refuses, and the refusal is
/// counted, instead of silently evicting a live claim. Userspace may resize
/// it before load (`claims_max`).
#[map(name = "CLAIMS")]
static CLAIMS: HashMap<u64, Event> =
    HashMap::with_max_entries(reaper_common::CLAIMS_MAX_DEFAULT, 0);

/// Counters userspace reads cheaply (one lookup): claims `CLAIMS` had no
/// room for, ephemeral binds and releases summarised.
#[map(name = "COUNTS")]
static COUNTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(reaper_common::COUNTS, 0);

/// Ephemeral (port 0) binds per process, summarised instead of sent.
#[map(name = "EPHEMERAL")]
static EPHEMERAL: LruPerCpuHashMap<u32, u64> = LruPerCpuHashMap::with_max_entries(4096, 0);

/// Local ports whose `connect()`s are sent (see `KIND_CONNECT`); filled by
/// userspace.
#[map(name = "WATCHED")]
static WATCHED: HashMap<u16, u8> = HashMap::with_max_entries(reaper_common::WATCHED_MAX, 0);

/// Threads inside a bind whose exact outcome an exact tier will report.
#[map(name = "PENDING")]
static PENDING: HashMap<u32, u8> = HashMap::with_max_entries(16384, 0);

/// What the kernel side remembers of one socket.
#[repr(C)]
#[derive(Clone, Copy)]
pub struct SockState {
    /// The last bind attempt: when (CLOCK_BOOTTIME) and by whom (as
    /// [`current_pid_tgid`] numbers it: 0 outside reaper's pid namespace).
    ts_ns: u64,
    pid_tgid: u64,
    /// Its requested address (as in [`Event::addr`]) and port (host order).
    addr: [u8; 16],
    port: u16,
    family: u8,
    /// `ST_*` bits.
    state: u8,
    protocol: u8,
    sock_type: u8,
    _pad: u16,
}

/// A fixed-port bind was attempted and has not succeeded (cgroup tier).
const ST_PENDING: u8 = 1;
/// The socket's claim is in `CLAIMS`.
const ST_CLAIMED: u8 = 2;
/// Userspace was told of this socket: its release is sent.
const ST_NOTIFIED: u8 = 4;

/// Per-socket state, freed by the kernel with the socket.
#[btf_map]
static SOCKS: SkStorage<SockState> = SkStorage::new();

/// 1 once any socket was given storage in `SOCKS` (never reset). Until then
/// no socket has any, and the programs skip looking (a helper call, 20-30
/// ns, three times per bind): the cgroup tier creates storage only when
/// `CLAIMS` had no room, the exact tiers at every fixed-port bind.
#[map(name = "SOCKS_USED")]
static SOCKS_USED: Array<u32> = Array::with_max_entries(1, 0);

/// Per-CPU hints, each a socket cookie, that let the common case skip one
/// `CLAIMS` operation. A hint only picks which of two correct paths runs: a
/// stale one (another socket's cookie, or a thread that moved to another
/// CPU between two hooks) costs the longer path, never a wrong record.
/// Cookies are never reused, and no socket has cookie 0.
#[map(name = "HINTS")]
static HINTS: PerCpuArray<u64> = PerCpuArray::with_max_entries(3, 0);

/// Set by `bind4` when it left a fixed-port request in `CLAIMS`: that
/// socket's `post_bind` looks the request up first. Any other `post_bind`
/// inserts its claim first (a port-0 bind has no request to find), one hash
/// operation instead of a lookup and an insert.
const HINT_REQUEST: u32 = 0;
/// Set by `post_bind` when the socket's claim is in `CLAIMS` and was sent.
/// A sent claim stays sent until its release, so the release deletes it
/// without reading it first.
const HINT_SENT: u32 = 1;
/// Set by `post_bind` when it stored the socket's claim summarised (not
/// sent); the claim's `ret` names that CPU. A listen that makes such a claim
/// sent clears that CPU's hint if it still names the socket, so a release
/// that finds its hint deletes the claim without reading it and counts it.
const HINT_SUMMARISED: u32 = 2;

/// Error of a map update whose key exists (`BPF_NOEXIST`).
const EEXIST: i32 = 17;

#[inline(always)]
fn hinted(slot: u32, cookie: u64) -> bool {
    match HINTS.get_ptr(slot) {
        // SAFETY: this CPU's slot, valid for this program run.
        Some(p) => unsafe { *p == cookie },
        None => false,
    }
}

#[inline(always)]
fn hint(slot: u32, cookie: u64) {
    if let Some(p) = HINTS.get_ptr_mut(slot) {
        // SAFETY: this CPU's slot; no concurrent writer on this CPU.
        unsafe { *p = cookie };
    }
}

/// Clears CPU `cpu`'s `slot` hint if it names `cookie`. That CPU may write
/// the slot meanwhile, but only with another socket's cookie, which names
/// no claim this changes.
#[inline(always)]
fn unhint(slot: u32, cookie: u64, cpu: u32) {
    let map = &HINTS as *const PerCpuArray<u64> as *mut core::ffi::c_void;
    // SAFETY: the helper checks the map, key and CPU; NULL when out of range.
    let p = unsafe {
        bpf_map_lookup_percpu_elem(map, &slot as *const u32 as *const core::ffi::c_void, cpu)
    } as *mut u64;
    if !p.is_null() {
        // SAFETY: that CPU's slot, valid for this program run; a u64 store.
        unsafe {
            if core::ptr::read_volatile(p) == cookie {
                core::ptr::write_volatile(p, 0);
            }
        }
    }
}

/// Set by userspace to 1 when an exact-errno program is attached.
#[no_mangle]
static REAPER_EXACT: u8 = 0;

/// Set by userspace to 1 to send every bind (ephemeral ones too).
#[no_mangle]
static REAPER_ALL: u8 = 0;

/// Set by userspace to 1 to count summarised binds per process
/// (`EPHEMERAL`); 0 spares each port-0 bind that hash lookup.
#[no_mangle]
static REAPER_BY_PID: u8 = 0;

/// Set by userspace to 1 when the kernel has `bpf_map_lookup_percpu_elem`
/// (Linux 5.19): only then can a listen take back another CPU's
/// `HINT_SUMMARISED`, so only then is it set. Read-only: on an older kernel
/// the verifier prunes the helper call and the program still loads.
#[no_mangle]
static REAPER_PERCPU_LOOKUP: u8 = 0;

/// Set by userspace when it runs in a pid namespace other than the initial
/// one: that namespace's nsfs device (kernel `dev_t`) and inode. 0: pids are
/// the initial namespace's, as `bpf_get_current_pid_tgid` gives them.
#[no_mangle]
static REAPER_PIDNS_DEV: u64 = 0;
#[no_mangle]
static REAPER_PIDNS_INO: u64 = 0;

/// The caller's `tgid << 32 | tid` as userspace's pid namespace numbers it,
/// or 0 when the caller is not in that namespace (userspace cannot see it;
/// the event is flagged [`FLAG_OUTSIDE_PIDNS`]).
#[inline(always)]
fn current_pid_tgid() -> u64 {
    // SAFETY: globals patched by the loader; read-only, so the verifier
    // knows them and prunes the helper call when no namespace is set.
    let (dev, ino) = unsafe {
        (
            core::ptr::read_volatile(&REAPER_PIDNS_DEV),
            core::ptr::read_volatile(&REAPER_PIDNS_INO),
        )
    };
    if ino == 0 {
        return bpf_get_current_pid_tgid();
    }
    let mut ns = bpf_pidns_info { pid: 0, tgid: 0 };
    let size = core::mem::size_of::<bpf_pidns_info>() as u32;
    // SAFETY: `ns` is a stack buffer of `size` bytes.
    let r = unsafe { bpf_get_ns_current_pid_tgid(dev, ino, &mut ns, size) };
    if r != 0 {
        return 0;
    }
    ((ns.tgid as u64) << 32) | ns.pid as u64
}

/// Set by userspace to 0 to leave connections alone (to measure their cost).
#[no_mangle]
static REAPER_CONNECTS: u8 = 1;

/// Whether userspace asked for pids of its own pid namespace.
#[inline(always)]
fn pidns_mapped() -> bool {
    // SAFETY: as in current_pid_tgid.
    unsafe { core::ptr::read_volatile(&REAPER_PIDNS_INO) != 0 }
}

/// Sets the ids of `pid_tgid` (from [`current_pid_tgid`]) in `ev`. Outside
/// userspace's pid namespace the tgid is 0 and the tid the initial
/// namespace's: only to join an attempt to its outcome, never a pid.
#[inline(always)]
fn set_ids(ev: &mut Event, pid_tgid: u64) {
    ev.tgid = (pid_tgid >> 32) as u32;
    ev.tid = pid_tgid as u32;
    ev.flags &= !FLAG_OUTSIDE_PIDNS;
    if pid_tgid == 0 && pidns_mapped() {
        ev.flags |= FLAG_OUTSIDE_PIDNS;
        ev.tid = bpf_get_current_pid_tgid() as u32;
    }
}

/// A one-byte switch the loader patches in (`REAPER_EXACT`, ...).
#[inline(always)]
fn switch(global: &'static u8) -> bool {
    // SAFETY: a global of this object, read volatile so the compiler does
    // not fold in its value at build time; the loader's is read.
    unsafe { core::ptr::read_volatile(global) != 0 }
}

#[inline(always)]
fn exact_tier() -> bool {
    switch(&REAPER_EXACT)
}

#[inline(always)]
fn send_all() -> bool {
    switch(&REAPER_ALL)
}

#[inline(always)]
fn summary_hints() -> bool {
    switch(&REAPER_PERCPU_LOOKUP)
}

#[inline(always)]
fn count_by_pid() -> bool {
    switch(&REAPER_BY_PID)
}

/// The socket storage of `sk` (a pointer the verifier accepts for this
/// program type: the cgroup sock context itself, the sock_addr context's
/// `sk`, or a tracing `struct sock *`); created when `create`.
#[inline(always)]
fn sock_state(sk: *mut core::ffi::c_void, create: bool) -> *mut SockState {
    if let Some(used) = SOCKS_USED.get_ptr_mut(0) {
        // SAFETY: the map's one value, valid for this program run; a plain
        // u32 (set before any storage exists, so a socket with storage is
        // never taken for one without).
        unsafe {
            if create {
                if core::ptr::read_volatile(used) == 0 {
                    core::ptr::write_volatile(used, 1);
                }
            } else if core::ptr::read_volatile(used) == 0 {
                return core::ptr::null_mut();
            }
        }
    }
    let map = &SOCKS as *const SkStorage<SockState> as *mut core::ffi::c_void;
    let flags = if create {
        BPF_SK_STORAGE_GET_F_CREATE as u64
    } else {
        0
    };
    // SAFETY: the helper checks the map and socket; NULL when absent.
    unsafe { bpf_sk_storage_get(map, sk, core::ptr::null_mut(), flags) as *mut SockState }
}

#[inline(always)]
fn bump(counter: &PerCpuArray<u64>, slot: u32) -> u64 {
    match counter.get_ptr_mut(slot) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        Some(p) => unsafe {
            *p += 1;
            *p
        },
        None => 0,
    }
}

#[inline(always)]
fn count_lost<C: EbpfContext>(ctx: &C) {
    let n = bump(&LOST, 0);
    // Say it once per power of two so a storm does not flood the log.
    if n != 0 && n & (n - 1) == 0 {
        warn!(
            ctx,
            "reaper: ring buffer full, {} events lost on this cpu", n
        );
    }
}

/// A zeroed record in `slot`, written as eleven 8-byte stores. Left to
/// itself LLVM zeroes a record (and the comm buffer of aya's
/// `bpf_get_current_comm`) with a call to a byte-by-byte `memset` loop:
/// about 480 instructions, 30-70 ns per program run on the machines
/// measured.
#[inline(always)]
fn blank(slot: &mut MaybeUninit<Event>) -> &mut Event {
    const WORDS: usize = Event::SIZE / 8;
    let p = slot.as_mut_ptr() as *mut u64;
    for i in 0..WORDS {
        // SAFETY: `slot` holds Event::SIZE (a multiple of 8) bytes, 8-byte
        // aligned; volatile so LLVM does not fold the stores into a memset.
        unsafe { core::ptr::write_volatile(p.add(i), 0) };
    }
    // SAFETY: every byte was written; Event is plain old data, valid zeroed.
    unsafe { slot.assume_init_mut() }
}

/// Copies a record word by word (a plain `*dst = *src` becomes a call to a
/// byte-by-byte `memmove`).
///
/// # Safety
///
/// `dst` must be valid for writing an Event and must not overlap `src`.
#[inline(always)]
unsafe fn copy_event(dst: *mut Event, src: &Event) {
    const WORDS: usize = Event::SIZE / 8;
    let (d, s) = (dst as *mut u64, src as *const Event as *const u64);
    for i in 0..WORDS {
        // SAFETY: both hold Event::SIZE bytes, 8-byte aligned (caller).
        unsafe { core::ptr::write_volatile(d.add(i), core::ptr::read_volatile(s.add(i))) };
    }
}

/// The caller's identity and the time.
#[inline(always)]
fn fill_identity(ev: &mut Event) {
    // SAFETY: helpers without preconditions.
    unsafe {
        ev.ts_ns = bpf_ktime_get_boot_ns();
        ev.cgroup_id = bpf_get_current_cgroup_id();
    }
    set_ids(ev, current_pid_tgid());
    ev.uid = bpf_get_current_uid_gid() as u32;
    // Straight into the record (zeroed: the helper pads the name with NULs
    // and writes zeros when it fails).
    let size = ev.comm.len() as u32;
    // SAFETY: `ev.comm` is a buffer of `size` bytes.
    if unsafe { bpf_get_current_comm(ev.comm.as_mut_ptr().cast(), size) } != 0 {
        ev.flags |= FLAG_NO_COMM;
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
    // Filled in place: no copy of a stack record.
    let ev = blank(&mut entry);
    ev.kind = kind;
    fill_identity(ev);
    Some(entry)
}

/// Sends a record built on the stack; counts a loss when there is no room.
#[inline(always)]
fn send<C: EbpfContext>(ctx: &C, ev: &Event) {
    if EVENTS.output::<Event>(ev, 0).is_err() {
        count_lost(ctx);
    }
}

/// Stores a claim in `CLAIMS`; false (and counted) when the map is full.
#[inline(always)]
fn store_claim(ev: &Event) -> bool {
    if CLAIMS.insert(&ev.cookie, ev, 0).is_ok() {
        return true;
    }
    bump(&COUNTS, reaper_common::COUNT_CLAIMS_FULL);
    false
}

/// Stores an IPv4 address (network order, as the context holds it).
/// The context itself must be read by the caller: the verifier checks those
/// loads where they happen.
#[inline(always)]
fn addr4(ip4: u32) -> [u8; 16] {
    // As words: a byte array zeroed byte-wise became a `memset` call.
    addr6([ip4, 0, 0, 0])
}

/// An IPv6 address given as four network-order words.
#[inline(always)]
fn addr6(ip6: [u32; 4]) -> [u8; 16] {
    // SAFETY: same size, plain bytes.
    unsafe { core::mem::transmute::<[u32; 4], [u8; 16]>(ip6) }
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
    // SAFETY: ctx fields are read with the loads the verifier allows.
    let (port, family, protocol, sock_type, addr, sk) = unsafe {
        let addr = if v6 {
            addr6([
                (*sa).user_ip6[0],
                (*sa).user_ip6[1],
                (*sa).user_ip6[2],
                (*sa).user_ip6[3],
            ])
        } else {
            addr4((*sa).user_ip4)
        };
        (
            u16::from_be((*sa).user_port as u16),
            (*sa).family as u8,
            (*sa).protocol as u8,
            (*sa).type_ as u8,
            addr,
            (*sa).__bindgen_anon_1.sk,
        )
    };
    let exact = exact_tier();
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // A socket whose request fell back to storage earlier (see below) and
    // binds again: that earlier bind failed. Looking costs no allocation.
    let old = sock_state(sk.cast(), false);
    // SAFETY: the storage is this socket's, valid for this program run.
    if !old.is_null() && unsafe { (*old).state } & ST_PENDING != 0 {
        // SAFETY: as above.
        unsafe {
            send_failed(ctx, &*old, ctx.as_ptr());
            (*old).state &= !ST_PENDING;
        }
    }
    if !exact {
        if port == 0 {
            // Nothing to stash (post_bind finds no request: port 0), and no
            // lookup: a request an earlier bind of this socket left in
            // CLAIMS is found by post_bind (its port differs) or the release.
            return;
        }
        // The request waits in CLAIMS, keyed by the socket: post_bind turns
        // it into the claim in place, the release finds a failure. One
        // insert per fixed-port bind, no allocation.
        let mut slot = MaybeUninit::uninit();
        let ev = blank(&mut slot);
        ev.kind = KIND_ATTEMPT;
        fill_identity(ev);
        ev.cookie = cookie;
        // SAFETY: helper on the program's own context.
        ev.netns_cookie = unsafe { bpf_get_netns_cookie(ctx.as_ptr()) };
        ev.family = family;
        ev.protocol = protocol;
        ev.sock_type = sock_type;
        ev.port = port;
        ev.addr = addr;
        if CLAIMS.insert(&cookie, &*ev, BPF_NOEXIST as u64).is_ok() {
            hint(HINT_REQUEST, cookie);
            return;
        }
        if let Some(p) = CLAIMS.get_ptr_mut(&cookie) {
            // SAFETY: the map value, valid for this program run.
            if unsafe { (*p).kind } == KIND_ATTEMPT {
                // The socket's previous fixed-port bind failed.
                // SAFETY: as above; copied before it is replaced.
                let mut failed = unsafe { *p };
                failed.kind = KIND_FAILED;
                send(ctx, &failed);
                // SAFETY: as above.
                unsafe { copy_event(p, ev) };
                hint(HINT_REQUEST, cookie);
                return;
            }
            // A claimed socket binds again (it will fail: EINVAL): its
            // claim stays in CLAIMS, the request goes to socket storage.
        }
        // Or the map is full: the request goes to socket storage.
    }
    // Socket storage (an allocation): the exact tiers, and the cgroup tier
    // when CLAIMS could not take the request.
    let st = if old.is_null() && port != 0 {
        sock_state(sk.cast(), true)
    } else {
        old
    };
    if !st.is_null() {
        // SAFETY: the storage is this socket's, valid for this program run.
        unsafe {
            (*st).ts_ns = bpf_ktime_get_boot_ns();
            (*st).pid_tgid = current_pid_tgid();
            (*st).addr = addr;
            (*st).port = port;
            (*st).family = family;
            (*st).protocol = protocol;
            (*st).sock_type = sock_type;
            (*st).state &= !ST_PENDING;
            if port != 0 && !exact {
                (*st).state |= ST_PENDING;
            }
        }
    }
    // The exact tiers send fixed-port attempts now, to be joined with the
    // outcome; so does any tier when the socket has no storage.
    if port == 0 || (!exact && !st.is_null()) {
        return;
    }
    let Some(mut entry) = start_event(ctx, KIND_ATTEMPT) else {
        return;
    };
    let ev = entry.as_mut_ptr();
    // SAFETY: `ev` points at the reserved, initialised record.
    unsafe {
        (*ev).cookie = cookie;
        (*ev).netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        (*ev).family = family;
        (*ev).protocol = protocol;
        (*ev).sock_type = sock_type;
        (*ev).port = port;
        (*ev).addr = addr;
        if exact {
            // Keyed by the initial namespace's tid, as on_outcome looks it up.
            let _ = PENDING.insert(&(bpf_get_current_pid_tgid() as u32), &1, 0);
        }
        if !st.is_null() {
            (*st).state |= ST_NOTIFIED;
        }
    }
    entry.submit(0);
}

/// A fixed-port bind of this socket that never succeeded, from its request
/// in socket storage (the fallback when CLAIMS was full), with the time of
/// the attempt. `cookie_ctx` is the program's context, for the cookie
/// helpers.
#[inline(always)]
fn send_failed<C: EbpfContext>(ctx: &C, st: &SockState, cookie_ctx: *mut core::ffi::c_void) {
    let mut slot = MaybeUninit::uninit();
    let ev = blank(&mut slot);
    ev.kind = KIND_FAILED;
    fill_identity(ev);
    ev.ts_ns = st.ts_ns;
    set_ids(ev, st.pid_tgid);
    ev.port = st.port;
    ev.family = st.family;
    ev.protocol = st.protocol;
    ev.sock_type = st.sock_type;
    ev.addr = st.addr;
    // SAFETY: helpers on the program's own context.
    unsafe {
        ev.cookie = bpf_get_socket_cookie(cookie_ctx);
        ev.netns_cookie = bpf_get_netns_cookie(cookie_ctx);
    }
    send(ctx, ev);
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

/// The request bind4 left in CLAIMS for this socket, if any: one for this
/// port becomes the claim in place (no second insert, no allocation) and is
/// sent; true then. One for another port was an earlier bind of this socket,
/// which failed: it is sent as such and removed (this bind asked for port
/// 0; only a port-0 bind given the very port the failed request asked for
/// would be taken for its success).
#[inline(always)]
fn take_request(ctx: &SockContext, cookie: u64, port: u16, addr: [u8; 16]) -> bool {
    let Some(p) = CLAIMS.get_ptr_mut(&cookie) else {
        return false;
    };
    // SAFETY: the map value, valid for this program run.
    unsafe {
        if (*p).kind != KIND_ATTEMPT {
            return false;
        }
        if (*p).port == port {
            // The claim keeps the request's time (bind4, this syscall): the
            // port was taken between the two hooks, so a bind that failed
            // on it was attempted after that time, not always after this
            // one (the ledger finds a failure's holder by that order). One
            // clock read less.
            (*p).kind = KIND_BOUND;
            (*p).addr = addr;
            (*p).flags |= FLAG_NOTIFIED;
            send(ctx, &*p);
            hint(HINT_SENT, cookie);
            return true;
        }
        let mut failed = *p;
        failed.kind = KIND_FAILED;
        send(ctx, &failed);
    }
    let _ = CLAIMS.remove(&cookie);
    false
}

#[inline(always)]
fn on_post_bind(ctx: &SockContext, v6: bool) {
    let sk: *mut bpf_sock = ctx.sock;
    // SAFETY: helper on the program's own context; ctx fields with the loads
    // the verifier allows.
    let (cookie, port, addr) = unsafe {
        (
            bpf_get_socket_cookie(ctx.as_ptr()),
            (*sk).src_port as u16,
            if v6 {
                addr6([
                    (*sk).src_ip6[0],
                    (*sk).src_ip6[1],
                    (*sk).src_ip6[2],
                    (*sk).src_ip6[3],
                ])
            } else {
                addr4((*sk).src_ip4)
            },
        )
    };
    // A fixed-port request bind4 left in CLAIMS becomes the claim in place.
    let requested = hinted(HINT_REQUEST, cookie);
    if requested && take_request(ctx, cookie, port, addr) {
        return;
    }
    let mut slot = MaybeUninit::uninit();
    let ev = blank(&mut slot);
    ev.kind = KIND_BOUND;
    fill_identity(ev);
    ev.cookie = cookie;
    ev.port = port;
    ev.addr = addr;
    // SAFETY: helper on the program's own context; ctx fields with the
    // loads the verifier allows.
    unsafe {
        ev.netns_cookie = bpf_get_netns_cookie(ctx.as_ptr());
        ev.family = (*sk).family as u8;
        ev.protocol = (*sk).protocol as u8;
        ev.sock_type = (*sk).type_ as u8;
    }
    // The request, stashed at bind4 by the exact tiers or when CLAIMS was
    // full: none (port 0 asked for), or its port.
    let mut st = sock_state(ctx.as_ptr(), false);
    // SAFETY: this socket's storage, valid for this program run.
    let ephemeral = st.is_null() || unsafe { (*st).port } == 0;
    if ephemeral {
        ev.flags |= FLAG_EPHEMERAL;
    }
    let mut notify = !ephemeral || send_all();
    if notify {
        ev.flags |= FLAG_NOTIFIED;
    } else if summary_hints() {
        // Kernel-side state of a summarised claim: where its hint is.
        // SAFETY: a helper without preconditions.
        ev.ret = unsafe { bpf_get_smp_processor_id() } as i32;
    }
    let stored = if requested {
        store_claim(ev)
    } else {
        match CLAIMS.insert(&cookie, &*ev, BPF_NOEXIST as u64) {
            Ok(()) => true,
            // A request after all (the thread moved to another CPU between
            // bind4 and here), or an earlier failed one of this socket.
            Err(e) if e == -EEXIST => {
                if take_request(ctx, cookie, port, addr) {
                    return;
                }
                store_claim(ev)
            }
            Err(_) => {
                bump(&COUNTS, reaper_common::COUNT_CLAIMS_FULL);
                false
            }
        }
    };
    if !stored {
        ev.flags |= FLAG_UNSTORED;
        ev.ret = 0;
        // Summarised: no one fights over a port the kernel picked. A claim
        // that could not be stored is always sent, so it is not lost twice.
        notify = true;
    } else if notify {
        hint(HINT_SENT, cookie);
    } else if summary_hints() {
        hint(HINT_SUMMARISED, cookie);
    }
    if notify && st.is_null() && ev.flags & FLAG_UNSTORED != 0 {
        // Its release must be sent too, and CLAIMS cannot say so: remember
        // the socket.
        st = sock_state(ctx.as_ptr(), true);
    }
    if !st.is_null() {
        // SAFETY: this socket's storage.
        unsafe {
            (*st).state = ((*st).state & !ST_PENDING) | ST_CLAIMED;
            if notify {
                (*st).state |= ST_NOTIFIED;
            }
        }
    }
    if notify {
        send(ctx, ev);
    } else {
        bump(&COUNTS, reaper_common::COUNT_EPHEMERAL);
        if !count_by_pid() {
            return;
        }
        match EPHEMERAL.get_ptr_mut(ev.tgid) {
            // SAFETY: per-CPU value, no concurrent writer on this CPU.
            Some(n) => unsafe { *n += 1 },
            None => {
                let _ = EPHEMERAL.insert(&ev.tgid, &1, BPF_NOEXIST as u64);
            }
        }
    }
}

#[cgroup_sock(sock_release)]
pub fn reaper_release(ctx: SockContext) -> i32 {
    // SAFETY: helper on the program's own context.
    let cookie = unsafe { bpf_get_socket_cookie(ctx.as_ptr()) };
    // What CLAIMS knows of the socket: a claim (sent or summarised) or a
    // fixed-port request that never succeeded.
    let mut notified = false;
    let mut summarised = false;
    if hinted(HINT_SENT, cookie) {
        // A claim sent at post_bind on this CPU: nothing in it to read.
        notified = CLAIMS.remove(&cookie).is_ok();
    } else if summary_hints() && hinted(HINT_SUMMARISED, cookie) {
        // Summarised at post_bind on this CPU, and no listen sent it since.
        summarised = CLAIMS.remove(&cookie).is_ok();
    } else if let Some(p) = CLAIMS.get_ptr(&cookie) {
        // SAFETY: the map value, valid for this program run.
        let (kind, flags) = unsafe { ((*p).kind, (*p).flags) };
        if kind == KIND_ATTEMPT {
            // SAFETY: as above; copied before the entry goes.
            let mut failed = unsafe { *p };
            failed.kind = KIND_FAILED;
            send(&ctx, &failed);
        } else if flags & FLAG_NOTIFIED != 0 {
            notified = true;
        } else {
            summarised = true;
        }
        let _ = CLAIMS.remove(&cookie);
    }
    // Socket storage: the exact tiers' requests, and what CLAIMS had no
    // room for.
    let st = sock_state(ctx.as_ptr(), false);
    if !st.is_null() {
        // SAFETY: this socket's storage, valid for this program run.
        let state = unsafe { (*st).state };
        if state & ST_PENDING != 0 {
            // SAFETY: as above.
            send_failed(&ctx, unsafe { &*st }, ctx.as_ptr());
        }
        if state & ST_NOTIFIED != 0 {
            notified = true;
        } else if state & ST_CLAIMED != 0 {
            summarised = true;
        }
    }
    if !notified {
        if summarised {
            bump(&COUNTS, reaper_common::COUNT_EPHEMERAL_RELEASES);
        }
        return ALLOW;
    }
    // Who released it, when, and the cookie: the socket's namespace,
    // family and protocol are its claim's, which userspace has.
    if let Some(mut entry) = start_event(&ctx, KIND_RELEASE) {
        // SAFETY: `entry` points at the reserved, initialised record.
        unsafe { (*entry.as_mut_ptr()).cookie = cookie };
        entry.submit(0);
    }
    ALLOW
}

// ---- listens ----------------------------------------------------------------

#[btf_tracepoint(function = "inet_sock_set_state")]
pub fn reaper_listen(ctx: BtfTracePointContext) -> i32 {
    let newstate: i32 = ctx.arg(2);
    if newstate != TCP_LISTEN {
        if switch(&REAPER_CONNECTS) && ctx.arg::<i32>(1) == TCP_SYN_SENT {
            on_connected(&ctx);
        }
        return 0;
    }
    let sk: *const u8 = ctx.arg(0);
    let mut slot = MaybeUninit::uninit();
    let ev = blank(&mut slot);
    ev.kind = KIND_LISTEN;
    fill_identity(ev);
    // SAFETY: `sk` is the tracepoint's struct sock; the helper accepts it.
    ev.cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    // SAFETY: fixed, long-stable offsets inside struct sock_common.
    ev.port = unsafe { bpf_probe_read_kernel(sk.add(SKC_NUM_OFFSET) as *const u16) }.unwrap_or(0);
    // SAFETY: as above.
    ev.family = unsafe { bpf_probe_read_kernel(sk.add(SKC_FAMILY_OFFSET) as *const u16) }
        .unwrap_or(0) as u8;
    ev.protocol = reaper_common::IPPROTO_TCP;
    ev.sock_type = 1;
    // No allocation here either: what CLAIMS says of the socket, and socket
    // storage only for what CLAIMS had no room for.
    let st = sock_state(sk as *mut _, false);
    let state = if st.is_null() {
        0
    } else {
        // SAFETY: this socket's storage, valid for this program run.
        unsafe { (*st).state }
    };
    let mut claimed = state & ST_CLAIMED != 0;
    let mut notified = state & ST_NOTIFIED != 0;
    if let Some(p) = CLAIMS.get_ptr_mut(&ev.cookie) {
        // SAFETY: the map value, valid for this program run.
        unsafe {
            if (*p).kind == KIND_ATTEMPT {
                // Its fixed-port bind failed, and listen() picks a port.
                let mut failed = *p;
                failed.kind = KIND_FAILED;
                send(&ctx, &failed);
                ev.flags |= FLAG_NOTIFIED;
                copy_event(p, ev);
                claimed = true;
                notified = true;
            } else {
                claimed = true;
                if (*p).flags & FLAG_NOTIFIED == 0 && !notified {
                    // A summarised ephemeral claim starts to matter: send
                    // its bind first, and take back the hint that lets its
                    // release go unsent.
                    if summary_hints() {
                        unhint(HINT_SUMMARISED, ev.cookie, (*p).ret as u32);
                    }
                    (*p).flags |= FLAG_NOTIFIED;
                    (*p).ret = 0;
                    send(&ctx, &*p);
                }
                notified = true;
            }
        }
    }
    if !claimed {
        // listen() without bind(): the kernel picked the port (autobind).
        ev.flags |= FLAG_NOTIFIED;
        if !store_claim(ev) {
            ev.flags |= FLAG_UNSTORED;
            // CLAIMS cannot remember it: socket storage does.
            let st = sock_state(sk as *mut _, true);
            if !st.is_null() {
                // SAFETY: this socket's storage.
                unsafe { (*st).state |= ST_CLAIMED | ST_NOTIFIED };
            }
        }
    } else if !notified && !st.is_null() {
        // SAFETY: this socket's storage.
        unsafe { (*st).state |= ST_NOTIFIED };
    }
    send(&ctx, ev);
    0
}

// ---- ports the kernel gave to connect() --------------------------------------

/// A connection left SYN_SENT: its local port is picked now. Sent only when
/// userspace watches that port; every other connection costs this read and
/// one lookup.
#[inline(always)]
fn on_connected(ctx: &BtfTracePointContext) {
    let sk: *const u8 = ctx.arg(0);
    // SAFETY: fixed, long-stable offsets inside struct sock_common.
    let port = unsafe { bpf_probe_read_kernel(sk.add(SKC_NUM_OFFSET) as *const u16) }.unwrap_or(0);
    // SAFETY: only whether the entry exists is used.
    if port == 0 || unsafe { WATCHED.get(&port) }.is_none() {
        return;
    }
    let mut slot = MaybeUninit::uninit();
    let ev = blank(&mut slot);
    ev.kind = KIND_CONNECT;
    // Not the client's identity (softirq may run in any task): none.
    ev.flags = FLAG_NO_TASK;
    // SAFETY: a helper without preconditions.
    ev.ts_ns = unsafe { bpf_ktime_get_boot_ns() };
    // SAFETY: `sk` is the tracepoint's struct sock; the helper accepts it.
    ev.cookie = unsafe { bpf_get_socket_cookie(sk as *mut _) };
    ev.port = port;
    ev.protocol = reaper_common::IPPROTO_TCP;
    ev.sock_type = 1;
    // SAFETY: as above.
    ev.family = unsafe { bpf_probe_read_kernel(sk.add(SKC_FAMILY_OFFSET) as *const u16) }
        .unwrap_or(0) as u8;
    // SAFETY: as above.
    let dport =
        unsafe { bpf_probe_read_kernel(sk.add(SKC_DPORT_OFFSET) as *const u16) }.unwrap_or(0);
    ev.ret = u16::from_be(dport) as i32;
    ev.addr = if ev.family == reaper_common::AF_INET6 {
        // SAFETY: as above.
        unsafe { bpf_probe_read_kernel(sk.add(SKC_V6_DADDR_OFFSET) as *const [u8; 16]) }
            .unwrap_or([0; 16])
    } else {
        // SAFETY: as above.
        addr4(unsafe { bpf_probe_read_kernel(sk.add(SKC_DADDR_OFFSET) as *const u32) }.unwrap_or(0))
    };
    send(ctx, ev);
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

//! The raw system calls that neither std nor nix wraps, each behind a safe
//! function, so the rest of the crate holds no `libc::syscall`:
//!
//! - `pidfd_open`, `pidfd_send_signal`: the handles reap signals through
//!   (reap -> **sys**);
//! - `kcmp`: whether two fds of two processes are one open file (holders'
//!   fd map, when readlink of every fd costs too much);
//! - `capget`, `capset`: the daemon's least privilege (caps);
//! - `bpf`, behind [`BpfHash`]: the claims map read whole (hooks' claims
//!   map, which aya does not batch);
//! - `socket`, `setsockopt_int`, `bind`, `listen`, `setns_net`: the bind
//!   probe (reap), a bind exactly as the next server makes it;
//! - `pidfd_getfd`, `getsockopt_int`: a holder's socket options (bindmodel);
//! - `poll`: waiting on pidfds (reap);
//! - `openat_dir`, `readlinkat`: the fd map's /proc walk without
//!   allocations (holders); `open_read`: a /proc file opened without the
//!   extra `fcntl` musl's `open` makes (proc);
//! - `capbset_drop`: the bounding set (caps);
//! - `clock_ns`, `clock_ticks`: the clocks and USER_HZ (util, proc);
//! - `async_ring_buf`: the eBPF ring buffer registered with tokio (events);
//! - `getsockopt(SO_NETNS_COOKIE)`: which namespace a kernel event's netns
//!   cookie names (holders' netns);
//! - `bpf` for the fd walk's `iter/task_file` program (a map of the wanted
//!   inodes, the load, the link, the iterator: holders' fditer) and `mmap`
//!   of the kernel's BTF ([`Mapping`], holders' btf).
//!
//! Everything std or nix wraps safely (signals by pid, fdatasync, write,
//! ...) is called through them where it is used; no other module holds an
//! `unsafe` block outside its tests.

use std::ffi::CStr;
use std::io;
use std::net::SocketAddr;
use std::os::fd::{AsRawFd, BorrowedFd, FromRawFd, OwnedFd, RawFd};

use nix::errno::Errno;

/// `pidfd_open(2)`: a handle that names `pid` for as long as it is open,
/// even after the pid is reused. ESRCH: no such process.
pub fn pidfd_open(pid: u32) -> io::Result<OwnedFd> {
    // SAFETY: pidfd_open takes two integers and touches no memory of ours.
    let fd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid as libc::pid_t, 0 as libc::c_uint) };
    if fd < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd (CLOEXEC) and nothing else
    // owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd as RawFd) })
}

/// `pidfd_send_signal(2)`: reaches the process of `pidfd` or nobody (ESRCH
/// once it has exited, even if its pid now names another process).
pub fn pidfd_send_signal(pidfd: BorrowedFd<'_>, signal: i32) -> io::Result<()> {
    // SAFETY: a valid fd and a signal number; a NULL info means "as kill(2)
    // would send it", so the kernel reads no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_pidfd_send_signal,
            pidfd.as_raw_fd(),
            signal,
            std::ptr::null::<libc::siginfo_t>(),
            0 as libc::c_uint,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `kcmp(2)` with KCMP_FILE: whether fd `fd1` of `pid1` and fd `fd2` of
/// `pid2` are the same open file.
pub fn kcmp_file(pid1: u32, pid2: u32, fd1: i32, fd2: i32) -> Result<bool, Errno> {
    const KCMP_FILE: libc::c_long = 0;
    // SAFETY: kcmp takes plain integers and touches no memory of ours.
    let r = unsafe {
        libc::syscall(
            libc::SYS_kcmp,
            pid1 as libc::c_long,
            pid2 as libc::c_long,
            KCMP_FILE,
            fd1 as libc::c_long,
            fd2 as libc::c_long,
        )
    };
    if r < 0 {
        Err(Errno::last())
    } else {
        Ok(r == 0)
    }
}

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

/// The v3 header of capget/capset.
#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

/// One half (capabilities 0-31 or 32-63) of a v3 capability set.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct CapData {
    pub effective: u32,
    pub permitted: u32,
    pub inheritable: u32,
}

/// `capget(2)` of the calling thread: both halves of its sets.
pub fn capget() -> io::Result<[CapData; 2]> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: a v3 header and an array of two data structs, as the ABI
    // says; both live until the call returns.
    let r = unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(data)
}

/// `capset(2)` of the calling thread.
pub fn capset(data: &[CapData; 2]) -> io::Result<()> {
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    // SAFETY: a v3 header and an array of two data structs, which the
    // kernel only reads; both live until the call returns.
    let r = unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `bpf(2)` with `attr` as its attribute union for `cmd`; the call's
/// result (>= 0) or the errno.
///
/// # Safety
///
/// `attr` must be laid out as the kernel's `union bpf_attr` member for
/// `cmd`, and every pointer in it must point at a live buffer of the size
/// the map's key and value types need for that command.
unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
    // SAFETY: the caller vouches for attr (see above); its size is passed.
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr as *mut T,
            std::mem::size_of::<T>() as u32,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(r)
}

// ---- bpf(2) for the fd walk's task_file iterator (holders::fditer) ----

/// One BPF instruction as the kernel reads it (`struct bpf_insn`): code,
/// dst | src << 4, off, imm.
#[derive(Clone, Copy, Debug)]
#[repr(C)]
pub struct BpfInsn {
    pub code: u8,
    pub regs: u8,
    pub off: i16,
    pub imm: i32,
}

const BPF_MAP_CREATE: libc::c_long = 0;
const BPF_MAP_UPDATE_ELEM: libc::c_long = 2;
const BPF_PROG_LOAD: libc::c_long = 5;
const BPF_MAP_UPDATE_BATCH: libc::c_long = 26;
const BPF_LINK_CREATE: libc::c_long = 28;
const BPF_ITER_CREATE: libc::c_long = 33;
const BPF_MAP_TYPE_HASH: u32 = 1;
const BPF_PROG_TYPE_TRACING: u32 = 26;
const BPF_TRACE_ITER: u32 = 28;
const BPF_F_NO_PREALLOC: u32 = 1;
const BPF_MAP_TYPE_ARRAY: u32 = 2;
/// prog_flags: the program may sleep (fault in user memory).
const BPF_F_SLEEPABLE: u32 = 1 << 4;

/// `union bpf_attr`, as bytes: each command's fields at the kernel's offsets.
#[repr(C, align(8))]
struct Attr([u8; 144]);

impl Attr {
    fn new() -> Attr {
        Attr([0; 144])
    }
    fn u32(mut self, at: usize, v: u32) -> Attr {
        self.0[at..at + 4].copy_from_slice(&v.to_ne_bytes());
        self
    }
    fn u64(mut self, at: usize, v: u64) -> Attr {
        self.0[at..at + 8].copy_from_slice(&v.to_ne_bytes());
        self
    }
}

/// The fd a bpf(2) command returned.
fn owned(fd: i64) -> OwnedFd {
    // SAFETY: the kernel just returned this fd to us; nothing else owns it.
    unsafe { OwnedFd::from_raw_fd(fd as i32) }
}

/// A BPF hash map holding `keys` (u64 keys, one-byte values), for a
/// program to look up. Err names the command that failed.
pub fn bpf_u64_set(keys: &[u64]) -> Result<OwnedFd, (&'static str, io::Error)> {
    let mut attr = Attr::new()
        .u32(0, BPF_MAP_TYPE_HASH)
        .u32(4, 8)
        .u32(8, 1)
        .u32(12, keys.len().max(1) as u32)
        .u32(16, BPF_F_NO_PREALLOC);
    // SAFETY: BPF_MAP_CREATE reads no pointers.
    let map = owned(unsafe { bpf(BPF_MAP_CREATE, &mut attr) }.map_err(|e| ("BPF_MAP_CREATE", e))?);
    let values = vec![1u8; keys.len()];
    let mut attr = Attr::new()
        .u64(16, keys.as_ptr() as u64)
        .u64(24, values.as_ptr() as u64)
        .u32(32, keys.len() as u32)
        .u32(36, map.as_raw_fd() as u32);
    // SAFETY: keys and values hold `count` keys of 8 bytes and values of 1.
    if unsafe { bpf(BPF_MAP_UPDATE_BATCH, &mut attr) }.is_err() {
        // Before 5.6, one at a time.
        for (k, v) in keys.iter().zip(&values) {
            let mut attr = Attr::new()
                .u32(0, map.as_raw_fd() as u32)
                .u64(8, k as *const u64 as u64)
                .u64(16, v as *const u8 as u64);
            // SAFETY: key is 8 bytes and value 1, as the map was made.
            unsafe { bpf(BPF_MAP_UPDATE_ELEM, &mut attr) }
                .map_err(|e| ("BPF_MAP_UPDATE_ELEM", e))?;
        }
    }
    Ok(map)
}

/// A BPF array of one element of `value_size` bytes: a program's scratch
/// buffer, too large for its 512-byte stack.
pub fn bpf_scratch(value_size: u32) -> io::Result<OwnedFd> {
    let mut attr = Attr::new()
        .u32(0, BPF_MAP_TYPE_ARRAY)
        .u32(4, 4)
        .u32(8, value_size)
        .u32(12, 1);
    // SAFETY: BPF_MAP_CREATE reads no pointers.
    Ok(owned(unsafe { bpf(BPF_MAP_CREATE, &mut attr) }?))
}

/// Loads a tracing program of the iterator kind (`iter/...`, BTF id
/// `attach_btf_id`), sleepable when asked (to read user memory). On a refusal: the error and the last line of the
/// verifier's log (empty when it wrote none).
pub fn bpf_load_iter(
    insns: &[BpfInsn],
    attach_btf_id: u32,
    sleepable: bool,
) -> Result<OwnedFd, (io::Error, String)> {
    let license = c"GPL";
    let attr = |log: &mut [u8]| {
        Attr::new()
            .u32(0, BPF_PROG_TYPE_TRACING)
            .u32(4, insns.len() as u32)
            .u64(8, insns.as_ptr() as u64)
            .u64(16, license.as_ptr() as u64)
            .u32(24, if log.is_empty() { 0 } else { 1 })
            .u32(28, log.len() as u32)
            // A log pointer without a log level is EINVAL: none, then.
            .u64(
                32,
                if log.is_empty() {
                    0
                } else {
                    log.as_mut_ptr() as u64
                },
            )
            .u32(44, if sleepable { BPF_F_SLEEPABLE } else { 0 })
            .u32(68, BPF_TRACE_ITER)
            .u32(108, attach_btf_id)
    };
    // SAFETY: insns, license (NUL-terminated) and the empty log live for the call.
    match unsafe { bpf(BPF_PROG_LOAD, &mut attr(&mut [])) } {
        Ok(fd) => Ok(owned(fd)),
        Err(e) => {
            // Again with the verifier's log, to say why.
            let mut log = vec![0u8; 16 * 1024];
            // SAFETY: as above, and the log buffer is log.len() bytes.
            let _ = unsafe { bpf(BPF_PROG_LOAD, &mut attr(&mut log)) };
            let text = String::from_utf8_lossy(&log);
            let last = text
                .trim_end_matches('\0')
                .lines()
                .rev()
                .find(|l| !l.trim().is_empty())
                .unwrap_or("")
                .to_string();
            Err((e, last))
        }
    }
}

/// BPF_LINK_CREATE for an iterator program (no iterator options).
pub fn bpf_iter_link(prog: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = Attr::new()
        .u32(0, prog.as_raw_fd() as u32)
        .u32(8, BPF_TRACE_ITER);
    // SAFETY: no iterator options: no pointers.
    Ok(owned(unsafe { bpf(BPF_LINK_CREATE, &mut attr) }?))
}

/// BPF_ITER_CREATE: an fd whose reads run the iterator.
pub fn bpf_iter_create(link: BorrowedFd<'_>) -> io::Result<OwnedFd> {
    let mut attr = Attr::new().u32(0, link.as_raw_fd() as u32);
    // SAFETY: no pointers.
    Ok(owned(unsafe { bpf(BPF_ITER_CREATE, &mut attr) }?))
}

/// A read-only private mapping of a file's first `len` bytes, unmapped on
/// drop (the kernel's BTF, read without a copy).
pub struct Mapping {
    p: *const u8,
    len: usize,
}

impl Mapping {
    /// Maps `len` bytes of `file` (len > 0).
    pub fn of(file: &std::fs::File, len: usize) -> io::Result<Mapping> {
        // SAFETY: a fresh read-only private mapping of an open file; the
        // result is checked before use.
        let p = unsafe {
            libc::mmap(
                std::ptr::null_mut(),
                len,
                libc::PROT_READ,
                libc::MAP_PRIVATE,
                file.as_raw_fd(),
                0,
            )
        };
        if p == libc::MAP_FAILED {
            return Err(io::Error::last_os_error());
        }
        Ok(Mapping {
            p: p as *const u8,
            len,
        })
    }

    pub fn as_slice(&self) -> &[u8] {
        // SAFETY: the mapping is `len` readable bytes, alive until drop.
        unsafe { std::slice::from_raw_parts(self.p, self.len) }
    }
}

impl Drop for Mapping {
    fn drop(&mut self) {
        // SAFETY: p/len are the mapping made in `of`, unmapped once.
        unsafe { libc::munmap(self.p as *mut libc::c_void, self.len) };
    }
}

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;

/// A BPF hash map of `u64` keys and `V` values whose sizes were checked
/// against the kernel's once, so the reads below cannot write past a
/// buffer (aya's maps do not batch).
pub struct BpfHash<V> {
    data: aya::maps::MapData,
    max_entries: u32,
    _value: std::marker::PhantomData<V>,
}

impl<V: aya::Pod> BpfHash<V> {
    /// Err (EINVAL) when the map's key is not a u64 or its value not a `V`.
    pub fn new(data: aya::maps::MapData) -> io::Result<BpfHash<V>> {
        let info = data.info().map_err(io::Error::other)?;
        if info.key_size() as usize != std::mem::size_of::<u64>()
            || info.value_size() as usize != std::mem::size_of::<V>()
        {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                format!(
                    "the map's key and value are {} and {} bytes, not {} and {}",
                    info.key_size(),
                    info.value_size(),
                    std::mem::size_of::<u64>(),
                    std::mem::size_of::<V>()
                ),
            ));
        }
        Ok(BpfHash {
            max_entries: info.max_entries(),
            data,
            _value: std::marker::PhantomData,
        })
    }

    pub fn max_entries(&self) -> u32 {
        self.max_entries
    }

    fn fd(&self) -> u32 {
        use std::os::fd::AsFd;
        self.data.fd().as_fd().as_raw_fd() as u32
    }

    /// `BPF_MAP_LOOKUP_BATCH`: up to `keys.len()` entries (as many as
    /// `values` holds) from the batch token `token_in` (None: the start) on;
    /// the next token in `token_out`. How many entries were written, and the
    /// call's result (ENOENT: the map's end was reached).
    pub fn lookup_batch(
        &self,
        token_in: Option<&[u8; 8]>,
        token_out: &mut [u8; 8],
        keys: &mut [u64],
        values: &mut [V],
    ) -> (usize, io::Result<()>) {
        #[repr(C)]
        struct BatchAttr {
            in_batch: u64,
            out_batch: u64,
            keys: u64,
            values: u64,
            count: u32,
            map_fd: u32,
            elem_flags: u64,
            flags: u64,
        }
        let room = keys.len().min(values.len());
        let mut attr = BatchAttr {
            in_batch: token_in.map_or(0, |t| t.as_ptr() as u64),
            out_batch: token_out.as_mut_ptr() as u64,
            keys: keys.as_mut_ptr() as u64,
            values: values.as_mut_ptr() as u64,
            count: room.min(u32::MAX as usize) as u32,
            map_fd: self.fd(),
            elem_flags: 0,
            flags: 0,
        };
        // SAFETY: the attr is BPF_MAP_LOOKUP_BATCH's; keys and values have
        // room for `count` entries of the map's key and value sizes (checked
        // in `new`), the tokens for a hash map's u32; all live for the call.
        let r = unsafe { bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) };
        ((attr.count as usize).min(room), r.map(|_| ()))
    }

    /// `BPF_MAP_GET_NEXT_KEY`: the key after `key` (None: the first key);
    /// ENOENT at the end.
    pub fn next_key(&self, key: Option<&u64>) -> io::Result<u64> {
        let mut next: u64 = 0;
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            _pad: 0,
            key: key.map_or(0, |k| k as *const u64 as u64),
            value_or_next: &mut next as *mut u64 as u64,
            flags: 0,
        };
        // SAFETY: key and next are u64s, the map's key size (checked in
        // `new`), live for the call.
        unsafe { bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) }?;
        Ok(next)
    }

    /// `BPF_MAP_LOOKUP_ELEM`: the value of `key`; ENOENT when it has none.
    pub fn lookup(&self, key: &u64) -> io::Result<V> {
        let mut value = std::mem::MaybeUninit::<V>::zeroed();
        let mut attr = ElemAttr {
            map_fd: self.fd(),
            _pad: 0,
            key: key as *const u64 as u64,
            value_or_next: value.as_mut_ptr() as u64,
            flags: 0,
        };
        // SAFETY: key is a u64 and value has room for a V, the map's key and
        // value sizes (checked in `new`), live for the call.
        unsafe { bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }?;
        // SAFETY: V is Pod: any bytes the kernel wrote (or zeroes) are a V.
        Ok(unsafe { value.assume_init() })
    }
}

/// The attr of BPF_MAP_LOOKUP_ELEM and BPF_MAP_GET_NEXT_KEY.
#[repr(C)]
struct ElemAttr {
    map_fd: u32,
    _pad: u32,
    key: u64,
    value_or_next: u64,
    flags: u64,
}

/// `socket(2)`, close-on-exec, owned at once.
pub fn socket(domain: i32, ty: i32) -> io::Result<OwnedFd> {
    // SAFETY: plain socket(2), no pointers.
    let raw = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: a fresh fd from socket(2), owned by nothing else.
    Ok(unsafe { OwnedFd::from_raw_fd(raw) })
}

/// `setsockopt(2)` of an int option.
pub fn setsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32, value: i32) -> io::Result<()> {
    // SAFETY: a pointer to an int and its size.
    let r = unsafe {
        libc::setsockopt(
            fd.as_raw_fd(),
            level,
            name,
            &value as *const i32 as *const libc::c_void,
            std::mem::size_of::<i32>() as libc::socklen_t,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `bind(2)` to an IPv4 or IPv6 address and port.
pub fn bind(fd: BorrowedFd<'_>, addr: SocketAddr) -> io::Result<()> {
    let r = match addr {
        SocketAddr::V4(a) => {
            let sa = libc::sockaddr_in {
                sin_family: libc::AF_INET as libc::sa_family_t,
                sin_port: a.port().to_be(),
                sin_addr: libc::in_addr {
                    s_addr: u32::from(*a.ip()).to_be(),
                },
                sin_zero: [0; 8],
            };
            // SAFETY: a valid sockaddr_in and its size.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t,
                )
            }
        }
        SocketAddr::V6(a) => {
            let sa = libc::sockaddr_in6 {
                sin6_family: libc::AF_INET6 as libc::sa_family_t,
                sin6_port: a.port().to_be(),
                sin6_flowinfo: 0,
                sin6_addr: libc::in6_addr {
                    s6_addr: a.ip().octets(),
                },
                sin6_scope_id: 0,
            };
            // SAFETY: a valid sockaddr_in6 and its size.
            unsafe {
                libc::bind(
                    fd.as_raw_fd(),
                    &sa as *const _ as *const libc::sockaddr,
                    std::mem::size_of::<libc::sockaddr_in6>() as libc::socklen_t,
                )
            }
        }
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `listen(2)`.
pub fn listen(fd: BorrowedFd<'_>, backlog: i32) -> io::Result<()> {
    // SAFETY: a valid socket fd, no pointers.
    if unsafe { libc::listen(fd.as_raw_fd(), backlog) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `setns(2)` into a network namespace: the calling thread only.
pub fn setns_net(ns: BorrowedFd<'_>) -> io::Result<()> {
    // SAFETY: a valid namespace fd, no pointers; affects this thread only.
    if unsafe { libc::setns(ns.as_raw_fd(), libc::CLONE_NEWNET) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `getsockopt(SO_NETNS_COOKIE)` (Linux 5.14): the cookie of the network
/// namespace the socket was made in, the one the kernel side's
/// `bpf_get_netns_cookie` gives.
pub fn netns_cookie(fd: BorrowedFd<'_>) -> io::Result<u64> {
    let mut cookie: u64 = 0;
    let mut len = std::mem::size_of::<u64>() as libc::socklen_t;
    // SAFETY: a pointer to a u64 and its size, which the kernel fills.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            libc::SOL_SOCKET,
            libc::SO_NETNS_COOKIE,
            &mut cookie as *mut u64 as *mut libc::c_void,
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(cookie)
}

/// `pidfd_getfd(2)`: a copy, in this process, of fd `fd` of the process
/// of `pidfd` (PTRACE_MODE_ATTACH: root, or the same user unrestricted).
pub fn pidfd_getfd(pidfd: BorrowedFd<'_>, fd: i32) -> io::Result<OwnedFd> {
    // SAFETY: integers only; the kernel touches no memory of ours.
    let raw = unsafe { libc::syscall(libc::SYS_pidfd_getfd, pidfd.as_raw_fd(), fd, 0) };
    if raw < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: the kernel just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(raw as RawFd) })
}

/// `getsockopt(2)` of an int option.
pub fn getsockopt_int(fd: BorrowedFd<'_>, level: i32, name: i32) -> io::Result<i32> {
    let mut v: libc::c_int = 0;
    let mut len = std::mem::size_of::<libc::c_int>() as libc::socklen_t;
    // SAFETY: a c_int and its size, both live until the call returns.
    let r = unsafe {
        libc::getsockopt(
            fd.as_raw_fd(),
            level,
            name,
            (&mut v as *mut libc::c_int).cast(),
            &mut len,
        )
    };
    if r < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(v)
}

/// `poll(2)` on `fds` for up to `timeout_ms` (-1: no limit): how many have
/// events (in their `revents`).
pub fn poll(fds: &mut [libc::pollfd], timeout_ms: i32) -> io::Result<usize> {
    // SAFETY: a valid array of pollfd and its length.
    let n = unsafe { libc::poll(fds.as_mut_ptr(), fds.len() as libc::nfds_t, timeout_ms) };
    if n < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(n as usize)
}

/// `openat(2)` of a directory, close-on-exec, owned at once.
pub fn openat_dir(dir: RawFd, path: &str) -> Result<OwnedFd, Errno> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::openat(
        Some(dir),
        path,
        OFlag::O_RDONLY | OFlag::O_DIRECTORY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: openat just returned this fd and nothing else owns it.
    Ok(unsafe { OwnedFd::from_raw_fd(fd) })
}

/// `openat(2)` of a file to read, close-on-exec, owned at once: a walk of
/// /proc opens PID/NAME relative to one /proc fd instead of looking up
/// "/proc" again for every file.
pub fn openat_read(dir: RawFd, path: &str) -> Result<std::fs::File, Errno> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::openat(
        Some(dir),
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: openat just returned this fd and nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// A file opened to read, close-on-exec, by `openat(AT_FDCWD, ...)`: musl's
/// `open` (which std calls) adds an `fcntl(F_SETFD)` to every open, a
/// system call more per /proc file of a holder.
pub fn open_read(path: &std::path::Path) -> io::Result<std::fs::File> {
    use nix::fcntl::OFlag;
    let fd = nix::fcntl::openat(
        None,
        path,
        OFlag::O_RDONLY | OFlag::O_CLOEXEC,
        nix::sys::stat::Mode::empty(),
    )?;
    // SAFETY: openat just returned this fd and nothing else owns it.
    Ok(unsafe { std::fs::File::from_raw_fd(fd) })
}

/// `readlinkat(2)` into `buf`, without allocating: the length of the link
/// (cut at `buf`'s length, as the kernel cuts it).
pub fn readlinkat(dir: RawFd, name: &CStr, buf: &mut [u8]) -> Result<usize, Errno> {
    // SAFETY: `name` is NUL-terminated and `buf` is valid for its length.
    let r = unsafe { libc::readlinkat(dir, name.as_ptr(), buf.as_mut_ptr().cast(), buf.len()) };
    if r < 0 {
        return Err(Errno::last());
    }
    Ok(r as usize)
}

/// `prctl(PR_CAPBSET_DROP)`: `cap` leaves the calling thread's bounding set.
pub fn capbset_drop(cap: u32) -> io::Result<()> {
    // SAFETY: prctl with integer arguments only.
    let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
    if r != 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

/// `clock_gettime(2)` of `clock`, in nanoseconds.
pub fn clock_ns(clock: libc::clockid_t) -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: a valid pointer to a timespec.
    unsafe { libc::clock_gettime(clock, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

/// Clock ticks per second (USER_HZ, `sysconf(_SC_CLK_TCK)`); 100 when it
/// cannot be read.
pub fn clock_ticks() -> u64 {
    // SAFETY: sysconf has no preconditions.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 {
        t as u64
    } else {
        100
    }
}

/// The eBPF ring buffer registered with tokio for readability.
pub fn async_ring_buf(
    ring: aya::maps::RingBuf<aya::maps::MapData>,
) -> io::Result<tokio::io::unix::AsyncFd<aya::maps::RingBuf<aya::maps::MapData>>> {
    // SAFETY: the ring buffer owns its fd and keeps it open and unchanged
    // for as long as the AsyncFd owns the ring buffer.
    unsafe { tokio::io::unix::AsyncFd::register_with_interest(ring, tokio::io::Interest::READABLE) }
        .map_err(|e| e.into_parts().1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::fd::AsFd;

    #[test]
    fn pidfd_open_names_a_process_and_says_esrch_for_none() {
        let me = pidfd_open(std::process::id()).unwrap();
        // Signal 0: the permission and existence check alone.
        pidfd_send_signal(me.as_fd(), 0).unwrap();
        // pid_max is at most 2^22: this pid cannot exist.
        let e = pidfd_open(4_194_305).unwrap_err();
        assert!(matches!(
            e.raw_os_error(),
            Some(libc::ESRCH) | Some(libc::EINVAL)
        ));
    }

    #[test]
    fn capget_then_capset_of_the_same_sets_is_a_no_op() {
        let now = capget().unwrap();
        capset(&now).unwrap();
        assert_eq!(capget().unwrap(), now);
    }
}

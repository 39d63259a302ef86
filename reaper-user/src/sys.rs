//! The raw system calls that neither std nor nix wraps, each behind a safe
//! function, so the rest of the crate holds no `libc::syscall`:
//!
//! - `pidfd_open`, `pidfd_send_signal`: the handles reap signals through
//!   (reap -> **sys**);
//! - `kcmp`: whether two fds of two processes are one open file (holders'
//!   fd map, when readlink of every fd costs too much);
//! - `capget`, `capset`: the daemon's least privilege (caps);
//! - `bpf`: the claims map read whole (hooks' claims map, which aya does not
//!   batch);
//! - `socket`, `setsockopt_int`, `bind`, `listen`, `setns_net`: the bind
//!   probe (reap), a bind exactly as the next server makes it;
//! - `getsockopt(SO_NETNS_COOKIE)`: which namespace a kernel event's netns
//!   cookie names (holders' netns).
//!
//! Everything nix wraps (openat, readlink, signals by pid, ...) is called
//! through nix where it is used.

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
pub unsafe fn bpf<T>(cmd: libc::c_long, attr: &mut T) -> io::Result<i64> {
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

//! The raw system calls that neither std nor nix wraps, each behind a safe
//! function, so the rest of the crate holds no `libc::syscall`:
//!
//! - `pidfd_open`, `pidfd_send_signal`: the handles reap signals through
//!   (reap -> **sys**);
//! - `kcmp`: whether two fds of two processes are one open file (holders'
//!   fd map, when readlink of every fd costs too much);
//! - `capget`, `capset`: the daemon's least privilege (caps).
//!
//! Everything nix wraps (setns, openat, readlink, signals by pid, ...) is
//! called through nix where it is used.

use std::io;
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

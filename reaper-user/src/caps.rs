//! Least privilege: after the hooks are attached, the daemon keeps only the
//! capabilities it still uses and drops the rest, from the effective,
//! permitted, inheritable and bounding sets, so a bug in a later stage cannot
//! load new BPF programs, mount, or change files it has no business with.
//!
//! Kept, and why:
//! - CAP_KILL: signal stale holders owned by other users (through pidfds).
//! - CAP_SYS_PTRACE: read other users' /proc/PID/{fd,exe,environ-free} links.
//! - CAP_DAC_READ_SEARCH: read /proc entries and journals regardless of mode.
//! - CAP_NET_ADMIN: sock_diag details in every network namespace.
//! - CAP_SYS_ADMIN: setns() into other network namespaces to list sockets
//!   there and to test-bind a freed port where its holder lived.
//! - CAP_NET_BIND_SERVICE: the test bind that proves a port < 1024 is free.
//!
//! Dropped, among others: CAP_BPF and CAP_PERFMON (the programs are loaded
//! and attached already; their fds stay valid), CAP_SYS_MODULE,
//! CAP_DAC_OVERRIDE, CAP_CHOWN, CAP_FOWNER, CAP_SETUID, CAP_SETGID,
//! CAP_SYS_RAWIO, CAP_MKNOD, CAP_NET_RAW.

use anyhow::{bail, Result};

pub const CAP_CHOWN: u32 = 0;
pub const CAP_DAC_READ_SEARCH: u32 = 2;
pub const CAP_KILL: u32 = 5;
pub const CAP_NET_BIND_SERVICE: u32 = 10;
pub const CAP_NET_ADMIN: u32 = 12;
pub const CAP_SYS_PTRACE: u32 = 19;
pub const CAP_SYS_ADMIN: u32 = 21;
pub const CAP_PERFMON: u32 = 38;
pub const CAP_BPF: u32 = 39;

/// What the daemon keeps after attaching.
pub const DAEMON_KEEPS: &[u32] = &[
    CAP_KILL,
    CAP_SYS_PTRACE,
    CAP_DAC_READ_SEARCH,
    CAP_NET_ADMIN,
    CAP_SYS_ADMIN,
    CAP_NET_BIND_SERVICE,
];

const LINUX_CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: i32,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

fn mask(keep: &[u32]) -> u64 {
    keep.iter().fold(0u64, |m, c| m | (1u64 << c))
}

/// Drops every capability not in `keep` from all sets of this process
/// (every thread: call it before starting threads, or accept that only the
/// calling thread is reduced — see `drop_all_threads`).
pub fn drop_except(keep: &[u32]) -> Result<()> {
    let keep_mask = mask(keep);
    let last = last_cap();
    // The bounding set first: once a capability leaves it, nothing can add
    // it back, not even an exec of a setuid program.
    for cap in 0..=last {
        if keep_mask & (1u64 << cap) == 0 {
            // SAFETY: prctl with integer arguments.
            let r = unsafe { libc::prctl(libc::PR_CAPBSET_DROP, cap as libc::c_ulong, 0, 0, 0) };
            if r != 0 {
                let e = std::io::Error::last_os_error();
                // EINVAL: the kernel does not know this capability.
                if e.raw_os_error() != Some(libc::EINVAL) {
                    bail!("dropping capability {cap} from the bounding set: {e}");
                }
            }
        }
    }
    let mut hdr = CapHeader {
        version: LINUX_CAPABILITY_VERSION_3,
        pid: 0,
    };
    let mut data = [CapData::default(); 2];
    // SAFETY: capget with a v3 header and two data structs, as the ABI says.
    if unsafe {
        libc::syscall(
            libc::SYS_capget,
            &mut hdr as *mut CapHeader,
            data.as_mut_ptr(),
        )
    } != 0
    {
        bail!("capget: {}", std::io::Error::last_os_error());
    }
    for (i, d) in data.iter_mut().enumerate() {
        let m = (keep_mask >> (32 * i)) as u32;
        d.effective &= m;
        d.permitted &= m;
        d.inheritable = 0;
    }
    // SAFETY: as above.
    if unsafe { libc::syscall(libc::SYS_capset, &mut hdr as *mut CapHeader, data.as_ptr()) } != 0 {
        bail!("capset: {}", std::io::Error::last_os_error());
    }
    Ok(())
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    std::fs::read_to_string("/proc/sys/kernel/cap_last_cap")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(40)
}

/// The effective set of a process, from /proc/PID/status.
pub fn effective_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_cap_line(&status, "CapEff:")
}

/// The bounding set of a process.
pub fn bounding_of(pid: &str) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    parse_cap_line(&status, "CapBnd:")
}

fn parse_cap_line(status: &str, key: &str) -> Option<u64> {
    status
        .lines()
        .find_map(|l| l.strip_prefix(key))
        .and_then(|v| u64::from_str_radix(v.trim(), 16).ok())
}

/// The mask `drop_except(keep)` leaves at most.
pub fn mask_of(keep: &[u32]) -> u64 {
    mask(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_status_lines() {
        let s = "Name:\tx\nCapEff:\t000001ffffffffff\nCapBnd:\t0000000000003000\n";
        assert_eq!(parse_cap_line(s, "CapEff:"), Some(0x1ff_ffff_ffff));
        assert_eq!(parse_cap_line(s, "CapBnd:"), Some(0x3000));
    }

    #[test]
    fn the_daemon_keeps_no_bpf_or_perfmon() {
        let m = mask_of(DAEMON_KEEPS);
        assert_eq!(m & (1 << CAP_BPF), 0);
        assert_eq!(m & (1 << CAP_PERFMON), 0);
        assert_eq!(m & (1 << CAP_CHOWN), 0);
        assert_ne!(m & (1 << CAP_KILL), 0);
    }

    #[test]
    fn dropping_in_a_child_leaves_only_what_is_kept() {
        // In a forked child so the test process keeps its privileges.
        // SAFETY: the child only calls async-signal-safe-enough code and exits.
        let pid = unsafe { libc::fork() };
        if pid == 0 {
            let ok = drop_except(&[CAP_KILL]).is_ok()
                && effective_of("self").is_some_and(|e| e & !(1 << CAP_KILL) == 0)
                && bounding_of("self").is_some_and(|b| b == 1 << CAP_KILL);
            // SAFETY: leaving the forked child without running destructors.
            unsafe { libc::_exit(if ok { 0 } else { 1 }) };
        }
        let mut status = 0;
        // SAFETY: waiting for our own child.
        unsafe { libc::waitpid(pid, &mut status, 0) };
        assert!(libc::WIFEXITED(status));
        assert_eq!(
            libc::WEXITSTATUS(status),
            0,
            "capabilities were not dropped as asked"
        );
    }
}

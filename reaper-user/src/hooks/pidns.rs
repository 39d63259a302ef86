//! kernel hooks: **whose pids**: the pid namespace the kernel side numbers
//! pids in.
//!
//! reaper reads processes from /proc, which numbers them as the pid
//! namespace of its mount does. On the host that is the initial namespace,
//! the one `bpf_get_current_pid_tgid` speaks. In a container without the
//! host's pids (no `hostPID: true`, no `docker run --pid=host`) it is not:
//! the kernel side is then told that namespace's nsfs device and inode and
//! reports pids through `bpf_get_ns_current_pid_tgid` (any program type
//! from Linux 6.10), and an event of a process outside it (the host, a
//! sibling or nested container) is flagged `FLAG_OUTSIDE_PIDNS` with pid 0.

use std::os::unix::fs::MetadataExt;

use anyhow::{bail, Context, Result};

/// The inode of the initial pid namespace (`PROC_PID_INIT_INO`, fixed by
/// the kernel in include/linux/proc_ns.h).
pub const INITIAL_PIDNS_INO: u64 = 0xEFFF_FFFC;

/// The pid namespace /proc speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PidNs {
    /// The nsfs device as the kernel encodes it (`MKDEV`: major << 20 | minor).
    pub dev: u64,
    pub ino: u64,
}

impl PidNs {
    pub fn is_initial(&self) -> bool {
        self.ino == INITIAL_PIDNS_INO
    }

    /// "pid:[4026532561]", as `readlink /proc/self/ns/pid` prints it.
    pub fn name(&self) -> String {
        format!("pid:[{}]", self.ino)
    }
}

/// The pid namespace of the /proc mount reaper reads: its own when /proc
/// was mounted in it (`NSpid` of /proc/self/status has one entry), else the
/// ancestor's that mounted /proc (the namespace of its pid 1, or of pid 2,
/// the kernel's thread creator, which only the initial namespace numbers).
pub fn of_proc() -> Result<PidNs> {
    let status = crate::proc::read_string("self", "status")
        .context("reading /proc/self/status to learn reaper's pid namespace")?;
    let levels = nspid_levels(&status).unwrap_or(1);
    if levels == 1 {
        return stat_ns("self");
    }
    // /proc numbers processes as an ancestor namespace does.
    let mut errors = Vec::new();
    for who in ["1", "2"] {
        match stat_ns(who) {
            Ok(ns) => return Ok(ns),
            Err(e) => errors.push(format!("{e:#}")),
        }
    }
    bail!(
        "reaper runs in a pid namespace nested {} deep under the one its /proc shows, and cannot read which that is ({})",
        levels - 1,
        errors.join("; ")
    )
}

/// The number of pid namespaces the `NSpid:` line of a status file names.
pub fn nspid_levels(status: &str) -> Option<usize> {
    let line = status.lines().find_map(|l| l.strip_prefix("NSpid:"))?;
    Some(line.split_whitespace().count()).filter(|n| *n > 0)
}

/// The pid namespace of /proc/WHO/ns/pid.
fn stat_ns(who: &str) -> Result<PidNs> {
    let m = crate::proc::metadata(who, "ns/pid")
        .with_context(|| format!("stat {}", crate::proc::path(who, "ns/pid").display()))?;
    let dev = m.dev();
    let (major, minor) = (libc::major(dev) as u64, libc::minor(dev) as u64);
    Ok(PidNs {
        dev: (major << 20) | minor,
        ino: m.ino(),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nspid_counts_the_namespaces_from_procs_down() {
        let host = "Name:\tsh\nNSpid:\t4242\nNSsid:\t1\n";
        assert_eq!(nspid_levels(host), Some(1));
        let nested = "Name:\tsh\nNSpid:\t4242\t17\t1\n";
        assert_eq!(nspid_levels(nested), Some(3));
        assert_eq!(nspid_levels("Name:\tsh\n"), None, "before Linux 4.1");
    }

    #[test]
    fn this_process_has_a_pid_namespace() {
        let ns = of_proc().unwrap();
        assert_ne!(ns.ino, 0);
        assert!(ns.name().starts_with("pid:["));
    }
}

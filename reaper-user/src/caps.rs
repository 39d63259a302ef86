//! Least privilege: after the hooks are attached, the daemon keeps only the
//! capabilities it still uses and drops the rest, from the effective,
//! permitted and inheritable sets (and the bounding set when it holds
//! CAP_SETPCAP, which a unit's bounding set usually withholds), so a bug in
//! a later stage cannot load new BPF programs, mount, or change files it has
//! no business with. It logs exactly what it then runs with.
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

fn mask(keep: &[u32]) -> u64 {
    keep.iter().fold(0u64, |m, c| m | (1u64 << c))
}

/// What [`drop_except`] left the process with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Dropped {
    pub effective: u64,
    pub permitted: u64,
    /// The bounding set after the drop (None: the kernel does not say).
    pub bounding: Option<u64>,
    /// Whether the bounding set was reduced: that needs CAP_SETPCAP, which
    /// a unit's CapabilityBoundingSet= (or a container) usually withholds,
    /// and then the bounding set the supervisor chose stays as it was.
    pub bounding_reduced: bool,
}

impl Dropped {
    /// One line for the log: exactly what the daemon runs with.
    pub fn describe(&self) -> String {
        let bounding = match (self.bounding, self.bounding_reduced) {
            (Some(b), true) => format!("bounding {} (reduced)", names(b)),
            (Some(b), false) => format!(
                "bounding {} (left as the supervisor set it: reducing it needs CAP_SETPCAP)",
                names(b)
            ),
            (None, _) => "bounding unknown".to_string(),
        };
        format!(
            "effective {}; permitted {}; inheritable none; ambient none; {bounding}",
            names(self.effective),
            names(self.permitted)
        )
    }
}

/// Capability names of a mask, in kernel order: "KILL, NET_ADMIN" ("none").
pub fn names(mask: u64) -> String {
    const NAMES: &[&str] = &[
        "CHOWN",
        "DAC_OVERRIDE",
        "DAC_READ_SEARCH",
        "FOWNER",
        "FSETID",
        "KILL",
        "SETGID",
        "SETUID",
        "SETPCAP",
        "LINUX_IMMUTABLE",
        "NET_BIND_SERVICE",
        "NET_BROADCAST",
        "NET_ADMIN",
        "NET_RAW",
        "IPC_LOCK",
        "IPC_OWNER",
        "SYS_MODULE",
        "SYS_RAWIO",
        "SYS_CHROOT",
        "SYS_PTRACE",
        "SYS_PACCT",
        "SYS_ADMIN",
        "SYS_BOOT",
        "SYS_NICE",
        "SYS_RESOURCE",
        "SYS_TIME",
        "SYS_TTY_CONFIG",
        "MKNOD",
        "LEASE",
        "AUDIT_WRITE",
        "AUDIT_CONTROL",
        "SETFCAP",
        "MAC_OVERRIDE",
        "MAC_ADMIN",
        "SYSLOG",
        "WAKE_ALARM",
        "BLOCK_SUSPEND",
        "AUDIT_READ",
        "PERFMON",
        "BPF",
        "CHECKPOINT_RESTORE",
    ];
    let list: Vec<String> = (0..64)
        .filter(|c| mask & (1u64 << c) != 0)
        .map(|c| {
            NAMES
                .get(c)
                .map(|n| n.to_string())
                .unwrap_or_else(|| format!("CAP_{c}"))
        })
        .collect();
    if list.is_empty() {
        "none".to_string()
    } else {
        list.join(", ")
    }
}

/// CAP_SETPCAP: needed to drop from the bounding set.
pub const CAP_SETPCAP: u32 = 8;

/// Drops every capability not in `keep` from the effective, permitted and
/// inheritable sets (no privilege needed for that; ambient ones go with
/// them), and from the bounding set only when this process may (it holds
/// CAP_SETPCAP). Calling thread only: call it before starting threads, so
/// every later thread inherits the drop. Returns what is left.
pub fn drop_except(keep: &[u32]) -> Result<Dropped> {
    let keep_mask = mask(keep);
    let last = last_cap();
    let before = crate::sys::capget().map_err(|e| anyhow::anyhow!("capget: {e}"))?;
    let effective_before = u64::from(before[0].effective) | u64::from(before[1].effective) << 32;
    let may_bound = effective_before & (1u64 << CAP_SETPCAP) != 0;
    // The bounding set first (while CAP_SETPCAP is still effective): once a
    // capability leaves it, nothing can add it back, not even an exec of a
    // setuid program.
    let mut bounding_reduced = false;
    if may_bound {
        for cap in 0..=last {
            if keep_mask & (1u64 << cap) == 0 {
                if let Err(e) = crate::sys::capbset_drop(cap) {
                    // EINVAL: the kernel does not know this capability.
                    if e.raw_os_error() != Some(libc::EINVAL) {
                        bail!("dropping capability {cap} from the bounding set: {e}");
                    }
                }
            }
        }
        bounding_reduced = true;
    }
    let mut data = before;
    for (i, d) in data.iter_mut().enumerate() {
        let m = (keep_mask >> (32 * i)) as u32;
        d.effective &= m;
        d.permitted &= m;
        d.inheritable = 0;
    }
    crate::sys::capset(&data).map_err(|e| anyhow::anyhow!("capset: {e}"))?;
    let now = sets_of("thread-self").or_else(|| sets_of("self"));
    let after = crate::sys::capget().map_err(|e| anyhow::anyhow!("capget: {e}"))?;
    Ok(Dropped {
        effective: u64::from(after[0].effective) | u64::from(after[1].effective) << 32,
        permitted: u64::from(after[0].permitted) | u64::from(after[1].permitted) << 32,
        bounding: now.and_then(|s| s.bounding),
        bounding_reduced,
    })
}

/// The highest capability number this kernel knows.
fn last_cap() -> u32 {
    crate::proc::sysctl_or("kernel/cap_last_cap", 40)
}

/// The capability sets of a process or thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapSets {
    pub effective: u64,
    pub permitted: u64,
    pub inheritable: u64,
    /// None on kernels too old to say.
    pub bounding: Option<u64>,
    pub ambient: Option<u64>,
}

/// The sets of `pid` from /proc/PID/status (procfs parses it): `pid` is a
/// number, "self", or "PID/task/TID" for one thread.
pub fn sets_of(pid: &str) -> Option<CapSets> {
    let s = crate::proc::status(pid)?;
    Some(CapSets {
        effective: s.capeff,
        permitted: s.capprm,
        inheritable: s.capinh,
        bounding: s.capbnd,
        ambient: s.capamb,
    })
}

/// The effective set of a process.
pub fn effective_of(pid: &str) -> Option<u64> {
    sets_of(pid).map(|s| s.effective)
}

/// The bounding set of a process.
pub fn bounding_of(pid: &str) -> Option<u64> {
    sets_of(pid)?.bounding
}

/// The mask `drop_except(keep)` leaves at most.
pub fn mask_of(keep: &[u32]) -> u64 {
    mask(keep)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process_and_one_thread_of_it() {
        let me = sets_of("self").expect("/proc/self/status");
        // What capget says of this thread is what status says.
        let raw = crate::sys::capget().unwrap();
        let eff = u64::from(raw[0].effective) | u64::from(raw[1].effective) << 32;
        assert_eq!(me.effective, eff);
        assert!(me.bounding.is_some());
        let tid = nix::unistd::gettid();
        let thread = sets_of(&format!("self/task/{tid}")).expect("a thread's status");
        assert_eq!(thread.effective, eff);
        assert_eq!(effective_of("self"), Some(me.effective));
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
    fn names_read_as_the_kernel_spells_them() {
        assert_eq!(names(0), "none");
        assert_eq!(
            names(mask_of(&[CAP_KILL, CAP_NET_BIND_SERVICE, CAP_BPF])),
            "KILL, NET_BIND_SERVICE, BPF"
        );
    }

    /// Runs `f` on a thread of its own: capability sets (the bounding set
    /// too) belong to a thread, so the test process keeps its privileges.
    fn on_a_thread(f: impl FnOnce() -> bool + Send + 'static) -> bool {
        std::thread::spawn(f).join().expect("the thread ran")
    }

    #[test]
    fn without_setpcap_the_bounding_set_is_left_and_the_rest_dropped() {
        let ok = on_a_thread(|| {
            // Give up CAP_SETPCAP first, as a unit's bounding set does.
            let step = drop_except(&[CAP_KILL, CAP_NET_ADMIN]);
            let bounding_before = bounding_of("thread-self");
            step.is_ok()
                && drop_except(&[CAP_KILL]).is_ok_and(|d| {
                    !d.bounding_reduced
                        && d.effective == 1 << CAP_KILL
                        && d.permitted == 1 << CAP_KILL
                        && d.bounding == bounding_before
                })
        });
        assert!(ok);
        // This thread kept its own.
        assert_ne!(effective_of("thread-self"), Some(1 << CAP_KILL));
    }

    #[test]
    fn dropping_on_a_thread_leaves_only_what_is_kept() {
        let ok = on_a_thread(|| {
            drop_except(&[CAP_KILL]).is_ok_and(|d| d.bounding_reduced)
                && effective_of("thread-self").is_some_and(|e| e & !(1 << CAP_KILL) == 0)
                && bounding_of("thread-self").is_some_and(|b| b == 1 << CAP_KILL)
        });
        assert!(ok, "capabilities were not dropped as asked");
    }
}

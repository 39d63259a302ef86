//! Who a process is, for the journal, read from /proc at once: the process
//! that failed to bind may exit a moment later, and a record that says only
//! "pid 4242" answers nothing.

use crate::journal::ProcessRef;
use crate::proc::Stat as ProcStat;
use crate::reap::Identity;

/// How far up the parent chain a record goes.
const ANCESTORS: usize = 8;

/// The process `pid` as it is now. Uses the holder scanner's reader when it
/// can; otherwise reads what it can itself. `comm` and `uid` come from the
/// kernel event and stand when the process is already gone.
pub fn now(pid: u32, comm: &str, uid: u32) -> ProcessRef {
    if let Some(p) = crate::holders::process(pid) {
        return ProcessRef::from(&p);
    }
    let mut r = ProcessRef {
        pid,
        comm: comm.to_string(),
        uid: Some(uid),
        ..ProcessRef::default()
    };
    let Ok(stat) = ProcStat::read(pid) else {
        return r;
    };
    r.comm = stat.comm;
    r.ppid = Some(stat.ppid);
    if let Ok(id) = Identity::read(pid) {
        r.exe = id.exe;
        r.cmdline = (!id.cmdline.is_empty()).then(|| id.cmdline.join(" "));
    }
    r.cgroup = cgroup_of(pid);
    let mut parent = stat.ppid;
    while parent != 0 && r.ancestors.len() < ANCESTORS {
        match ProcStat::read(parent) {
            Ok(s) => {
                r.ancestors.push(format!("{parent}:{}", s.comm));
                parent = s.ppid;
            }
            Err(_) => break,
        }
    }
    r
}

/// The binder's parent and exe, cheap enough to read for every bind.
pub fn binder(pid: u32) -> crate::control::Binder {
    let mut b = crate::control::Binder::default();
    if let Ok(stat) = ProcStat::read(pid) {
        b.ppid = Some(stat.ppid);
        b.parent_comm = crate::proc::read_string(stat.ppid, "comm")
            .ok()
            .map(|s| s.trim_end().to_string());
        b.exe = crate::proc::exe(pid);
    }
    b
}

/// The cgroup v2 path ("0::/path"), else the first v1 path.
fn cgroup_of(pid: u32) -> Option<String> {
    let text = crate::proc::read_string(pid, "cgroup").ok()?;
    let v2 = text.lines().find_map(|l| l.strip_prefix("0::"));
    v2.or_else(|| text.lines().next().and_then(|l| l.splitn(3, ':').nth(2)))
        .map(str::to_string)
}

#[cfg(test)]
mod tests {
    #[test]
    fn reads_this_process() {
        let me = std::process::id();
        let r = super::now(me, "x", 0);
        assert_eq!(r.pid, me);
        assert!(r.ppid.is_some());
        assert!(r.exe.is_some());
        assert!(!r.ancestors.is_empty());
    }
}

//! What makes a process *that* process: pid + start time (+ exe, cmdline),
//! read straight from /proc at the moment of signalling. A pid alone is a
//! number the kernel hands out again; a pid with its start time is not.

use std::io;

use serde::Serialize;

use crate::holders::Process;
use crate::proc::{self, Stat};

/// The identity a verdict was made on, compared again after the pidfd is open.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Identity {
    pub pid: u32,
    pub start_ticks: u64,
    pub exe: Option<String>,
    pub cmdline: Vec<String>,
}

impl Identity {
    pub fn of(p: &Process) -> Identity {
        Identity {
            pid: p.pid,
            start_ticks: p.start_ticks,
            exe: p.exe.clone(),
            cmdline: p.cmdline.clone(),
        }
    }

    /// Reads the identity of whatever has `pid` now. NotFound when it is gone.
    pub fn read(pid: u32) -> io::Result<Identity> {
        let stat = Stat::read(pid)?;
        let exe = proc::exe(pid);
        let cmdline = proc::cmdline(pid)?;
        Ok(Identity {
            pid,
            start_ticks: stat.start_ticks,
            exe,
            cmdline,
        })
    }

    /// What differs between the judged identity (`self`) and `now`, in words;
    /// empty when it is the same process.
    pub fn differences(&self, now: &Identity) -> Vec<String> {
        let mut d = Vec::new();
        if self.pid != now.pid {
            d.push(format!("pid {} is now pid {}", self.pid, now.pid));
        }
        if self.start_ticks != now.start_ticks {
            d.push(format!(
                "start time changed from tick {} to {} (the pid was reused by another process)",
                self.start_ticks, now.start_ticks
            ));
        }
        // Compared as the kernel names them, whoever read them: a " (deleted)"
        // suffix or a trailing empty argument is the same program, not another.
        if self.exe.as_deref().map(strip_deleted) != now.exe.as_deref().map(strip_deleted) {
            d.push(format!(
                "exe changed from {} to {}",
                self.exe.as_deref().unwrap_or("(unreadable)"),
                now.exe.as_deref().unwrap_or("(unreadable)")
            ));
        }
        if trim_args(&self.cmdline) != trim_args(&now.cmdline) {
            d.push(format!(
                "cmdline changed from '{}' to '{}'",
                self.cmdline.join(" "),
                now.cmdline.join(" ")
            ));
        }
        d
    }
}

fn strip_deleted(exe: &str) -> &str {
    exe.strip_suffix(" (deleted)").unwrap_or(exe)
}

fn trim_args(args: &[String]) -> &[String] {
    let end = args
        .iter()
        .rposition(|a| !a.is_empty())
        .map_or(0, |i| i + 1);
    &args[..end]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stat_parses_a_comm_with_parens_and_spaces() {
        let text = "4242 (we) ird (x)) S 1 4242 4242 0 -1 4194560 100 0 0 0 1 2 0 0 20 0 1 0 987654 1000 10 18446744073709551615\n";
        let st = Stat::parse(text).unwrap();
        assert_eq!(st.pid, 4242);
        assert_eq!(st.comm, "we) ird (x)");
        assert_eq!(st.state, 'S');
        assert_eq!(st.ppid, 1);
        assert_eq!(st.pgrp, 4242);
        assert_eq!(st.flags, 4194560);
        assert_eq!(st.start_ticks, 987654);
        assert!(!st.is_kernel_thread());
    }

    #[test]
    fn own_stat_and_identity_are_readable() {
        let me = std::process::id();
        let a = Identity::read(me).unwrap();
        let b = Identity::read(me).unwrap();
        assert!(a.differences(&b).is_empty());
        assert!(a.exe.is_some());
        assert!(proc::netns_of(me).unwrap() > 0);
    }

    #[test]
    fn differences_are_named() {
        let a = Identity {
            pid: 7,
            start_ticks: 10,
            exe: Some("/usr/local/bin/platform-server".into()),
            cmdline: vec!["platform-server".into(), "--port".into(), "8080".into()],
        };
        let mut b = a.clone();
        b.exe = Some("/usr/bin/sleep".into());
        b.cmdline = vec!["sleep".into(), "1000".into()];
        let d = a.differences(&b);
        assert_eq!(d.len(), 2);
        assert!(d[0].contains("exe changed from /usr/local/bin/platform-server to /usr/bin/sleep"));
        b = a.clone();
        b.exe = Some("/usr/local/bin/platform-server (deleted)".into());
        b.cmdline.push(String::new());
        assert!(a.differences(&b).is_empty(), "same program, other spelling");
        b = a.clone();
        b.start_ticks = 11;
        assert!(a.differences(&b)[0].contains("pid was reused"));
    }

    #[test]
    fn cmdline_split() {
        assert_eq!(proc::parse_cmdline(b"a\0b c\0"), vec!["a", "b c"]);
        assert!(proc::parse_cmdline(b"").is_empty());
        assert_eq!(
            proc::parse_cmdline(b"nginx: worker process          \0\0\0"),
            ["nginx: worker process"]
        );
    }

    #[test]
    fn an_empty_argv_entry_is_no_identity_change() {
        // "\0" is one empty argument (argv [""]), "" no argv at all;
        // NUL padding after the last argument is trimmed, and trailing
        // empty arguments never count as a change.
        let mut a = Identity {
            pid: 1,
            start_ticks: 10,
            exe: Some("/bin/x".into()),
            cmdline: proc::parse_cmdline(b"x\0"),
        };
        let mut b = a.clone();
        b.cmdline = proc::parse_cmdline(b"x\0\0");
        assert_eq!(b.cmdline, ["x"], "trailing NULs are padding");
        assert!(a.differences(&b).is_empty());
        a.cmdline = proc::parse_cmdline(b"\0");
        b.cmdline = proc::parse_cmdline(b"");
        assert_eq!(a.cmdline, [""]);
        assert!(b.cmdline.is_empty());
        assert!(a.differences(&b).is_empty());
    }
}

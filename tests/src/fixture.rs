//! Real processes for the `reaper free` tests: a platform-server that says
//! when it listens, an orphaned one (its shell gone), a network namespace, and
//! handles on processes (pidfds) so "is it still alive?" is exact even after
//! its pid could have been reused.
//!
//! Everything here waits on events (a "ready" line, EOF, a pidfd), never on
//! a sleep.

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use reaper::reap::{wait_any, Pidfd};

pub use crate::{require_root, workspace, Spawned};

pub use crate::free_port;

/// True when a listener can be bound on 127.0.0.1:port right now.
pub fn can_listen(port: u16) -> bool {
    std::net::TcpListener::bind(("127.0.0.1", port)).is_ok()
}

/// A pidfd: names one process for good, readable once it exited (reaper's
/// own, so the tests signal the way reaper does).
#[derive(Debug)]
pub struct ProcHandle {
    pub pid: u32,
    fd: Pidfd,
}

impl ProcHandle {
    pub fn open(pid: u32) -> ProcHandle {
        let fd = Pidfd::open(pid).unwrap_or_else(|e| panic!("pidfd_open({pid}): {e}"));
        ProcHandle { pid, fd }
    }

    /// Still running (not exited, not a zombie).
    pub fn alive(&self) -> bool {
        !self.fd.exited()
    }

    /// Waits up to `ms` for the exit (an event on the pidfd); true if it exited.
    pub fn wait_exit(&self, ms: i32) -> bool {
        let within = Duration::from_millis(ms.max(0) as u64);
        matches!(wait_any(&[&self.fd], within), Ok(v) if !v.is_empty())
    }

    /// SIGKILL through the pidfd (never a stale pid); no error if gone.
    pub fn kill(&self) {
        let _ = self.fd.send(libc::SIGKILL);
    }

    /// The exe it runs now.
    pub fn exe(&self) -> Option<PathBuf> {
        std::fs::read_link(format!("/proc/{}/exe", self.pid)).ok()
    }
}

/// How a fixture program says it is ready, on its first stdout line.
#[derive(Clone, Copy, Debug)]
pub enum Ready {
    /// platform-server: `ready PID [child PID]`.
    Server,
    /// `binder hold`, `fault-holder`: `ready PID [PORT]`.
    PidPort,
    /// `reaper-fixture`: `ready PORT PID [CHILD_PID]`.
    PortPid,
}

/// A child holding a port: the one fixture for every program the tests,
/// the benchmarks and the fuzz seeds start to hold a socket
/// (platform-server, `binder hold`, `fault-holder`, `reaper-fixture`),
/// started directly, under `ip netns exec`, or orphaned by a shell that
/// exits. Its stdout and stderr lines arrive on channels ([`Spawned`], which
/// it derefs to); it and every process it made are killed through their
/// pidfds on drop, so a failing test leaves no holder behind.
pub struct Holder {
    /// What was started: the holder itself, or for an orphan the shell
    /// that started it (gone by then). Its stdout is the holder's.
    pub s: Spawned,
    /// The holder.
    pub handle: ProcHandle,
    /// The port it holds (0 when its ready line does not say: a
    /// platform-server was given it, a receiver has none yet).
    pub port: u16,
    /// The child it forked after the bind, sharing the socket.
    pub fork_child: Option<ProcHandle>,
    /// More processes it made on command (fault-holder's `fork`).
    pub extra: Vec<ProcHandle>,
    /// The comm it was given (platform-server `--comm`), so a test's rules
    /// name only its own holder: every daemon sees every bind on the host.
    pub tag: String,
}

/// How long a fixture may take to say it is ready.
pub const READY: Duration = Duration::from_secs(20);

impl Holder {
    /// Starts `cmd` and waits for its ready line, read as `ready` says.
    pub fn spawn(cmd: &mut Command, ready: Ready) -> Holder {
        let s = Spawned::spawn(cmd);
        Holder::ready(s, ready, &format!("{cmd:?}"))
    }

    fn ready(mut s: Spawned, ready: Ready, what: &str) -> Holder {
        let line = s.wait_line(&format!("{what} to say ready"), READY, |l| {
            l.starts_with("ready") || l.starts_with("err")
        });
        let w: Vec<&str> = line.split_whitespace().collect();
        let num = |i: usize| -> Option<u32> { w.get(i).and_then(|v| v.parse().ok()) };
        let (pid, port, child) = match (ready, w.first()) {
            (Ready::Server, Some(&"ready")) => (num(1), Some(0), num(3)),
            (Ready::PidPort, Some(&"ready")) => (num(1), num(2).or(Some(0)), None),
            (Ready::PortPid, Some(&"ready")) => (num(2), num(1), num(3)),
            _ => (None, None, None),
        };
        let (Some(pid), Some(port)) = (pid, port) else {
            s.drain_err();
            panic!(
                "{what} said {line:?} instead of ready; stderr:\n{}",
                s.err_seen.join("\n")
            );
        };
        Holder {
            s,
            handle: ProcHandle::open(pid),
            port: port as u16,
            fork_child: child.map(ProcHandle::open),
            extra: Vec::new(),
            tag: String::new(),
        }
    }

    /// Starts `program` (a platform-server, or anything printing its
    /// ready line) with `args`.
    pub fn start(program: &Path, args: &[&str]) -> Holder {
        Holder::spawn(Command::new(program).args(args), Ready::Server)
    }

    /// [`Holder::start`] for a prepared command (under `ip netns exec`, `sh -c`).
    pub fn start_cmd(cmd: &mut Command) -> Holder {
        Holder::spawn(cmd, Ready::Server)
    }

    /// The CI situation: a shell starts `program` in the background and
    /// exits, so the holder is reparented (orphaned). Returns once the shell
    /// is gone and the holder listens.
    pub fn start_orphan(program: &Path, args: &[&str]) -> Holder {
        Holder::in_shell(Command::new("sh"), program, args, true)
    }

    /// `program ARGS &` run by `sh` (the command, with its environment):
    /// with `leave` the shell exits at once (the holder is left behind, as
    /// by a job that ended), else it waits for the holder (the job is still
    /// running).
    pub fn in_shell(mut sh: Command, program: &Path, args: &[&str], leave: bool) -> Holder {
        let mut line = format!("'{}'", program.display());
        for a in args {
            line.push_str(&format!(" '{a}'"));
        }
        let tail = if leave { "exit 0" } else { "wait" };
        sh.arg("-c").arg(format!("{line} & {tail}"));
        let mut h = Holder::spawn(&mut sh, Ready::Server);
        if leave {
            let status = h.s.child.wait().unwrap();
            assert!(
                status.success(),
                "the shell that started {line} failed: {status}"
            );
        }
        h
    }

    /// The tests crate's platform-server with `args`.
    pub fn server(args: &[&str]) -> Holder {
        Holder::start(&crate::fixture_bin("platform-server"), args)
    }

    /// An orphaned platform-server on 0.0.0.0:PORT, its comm set to `tag`
    /// (at most 15 bytes), with more platform-server options
    /// (`--ignore-term`, `--fork-child --child-exec PROG`). See [`Holder::rule`].
    pub fn orphan(port: u16, tag: &str, more: &[&str]) -> Holder {
        assert!(tag.len() <= 15, "a comm holds 15 bytes");
        let port = port.to_string();
        let mut args = vec!["--port", &port, "--addr", "0.0.0.0", "--comm", tag];
        args.extend_from_slice(more);
        let mut h = Holder::start_orphan(&crate::fixture_bin("platform-server"), &args);
        h.tag = tag.to_string();
        h
    }

    /// `binder hold ARGS` (tests/src/bin/binder.rs): a socket bound as
    /// asked; the first stdin line closes it.
    pub fn bound(args: &[&str]) -> Holder {
        Holder::bound_with(crate::binder().arg("hold").args(args))
    }

    /// [`Holder::bound`] for a prepared `binder hold` command (e.g. under
    /// `ip netns exec`).
    pub fn bound_with(cmd: &mut Command) -> Holder {
        Holder::spawn(cmd, Ready::PidPort)
    }

    /// `fault-holder listen ADDR PORT OPTS...`, once it listens.
    pub fn fault_listen(addr: &str, port: u16, opts: &[&str]) -> Holder {
        let mut c = Command::new(crate::fixture_bin("fault-holder"));
        c.args(["listen", addr, &port.to_string()]).args(opts);
        Holder::spawn(&mut c, Ready::PidPort)
    }

    /// `fault-holder receive PATH`, once its Unix socket listens.
    pub fn receiver(path: &Path) -> Holder {
        let mut c = Command::new(crate::fixture_bin("fault-holder"));
        c.arg("receive").arg(path);
        Holder::spawn(&mut c, Ready::PidPort)
    }

    /// `reaper-fixture listen|churn ...` (a prepared command: it may run
    /// under `ip netns exec`).
    pub fn fixture(cmd: Command) -> Holder {
        let mut cmd = cmd;
        Holder::spawn(&mut cmd, Ready::PortPid)
    }

    pub fn pid(&self) -> u32 {
        self.handle.pid
    }

    pub fn alive(&self) -> bool {
        self.handle.alive()
    }

    /// Every pid holding the socket: the holder and its forked child.
    pub fn pids(&self) -> std::collections::BTreeSet<u32> {
        std::iter::once(self.pid())
            .chain(self.fork_child.as_ref().map(|c| c.pid))
            .collect()
    }

    /// Sends a command and waits for the reply line starting with `reply`.
    pub fn command(&mut self, cmd: &str, reply: &str) -> String {
        self.s.send(cmd);
        self.s
            .wait_line(&format!("`{reply}` after `{cmd}`"), READY, |l| {
                l.starts_with(reply)
            })
    }

    /// fault-holder's `fork`: returns the child's pid; the child is
    /// killed on drop.
    pub fn fork(&mut self) -> u32 {
        let line = self.command("fork", "forked");
        let pid = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        self.extra.push(ProcHandle::open(pid));
        pid
    }

    /// For a receiver: waits for the passed socket; returns its port.
    pub fn wait_got(&mut self) -> u16 {
        let line = self
            .s
            .wait_line("the passed socket", READY, |l| l.starts_with("got"));
        self.port = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        self.port
    }

    /// Blocks until the holder's stdout closes (exit, or an exec with
    /// --exec-on-usr1).
    pub fn wait_stdout_eof(&mut self) {
        while self.s.line(READY).is_some() {}
    }

    /// A `[[rule]]` that names this orphan (see [`Holder::orphan`]): the
    /// fixture's exe, its comm, orphaned. `action`: None (the daemon's
    /// default, report), or Some.
    pub fn rule(&self, name: &str, action: Option<&str>) -> String {
        let action = action
            .map(|a| format!("action = \"{a}\"\n"))
            .unwrap_or_default();
        format!(
            "[[rule]]\nname = \"{name}\"\n{action}match = {{ exe = \"{}\", comm = \"{}\", orphaned = true }}\n",
            crate::fixture_bin("platform-server").display(),
            self.tag
        )
    }
}

impl std::ops::Deref for Holder {
    type Target = Spawned;
    fn deref(&self) -> &Spawned {
        &self.s
    }
}

impl std::ops::DerefMut for Holder {
    fn deref_mut(&mut self) -> &mut Spawned {
        &mut self.s
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        // Never leave a holder behind, even when an assertion failed.
        for h in self.extra.iter().chain(&self.fork_child) {
            h.kill();
        }
        self.handle.kill();
    }
}

/// `reaper ARGS` with extra environment; its output and status.
pub fn run_reaper(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = crate::reaper();
    cmd.args(args).stdin(Stdio::null());
    for (k, v) in env {
        cmd.env(k, v);
    }
    // The tests read the journal only when they ask for one.
    cmd.env_remove("REAPER_JOURNAL");
    cmd.output().unwrap()
}

/// Network namespaces for tests: the crate's one helper.
pub use crate::Netns;

/// A FIFO for the test-only pause hook of `reaper free`
/// (REAPER_TEST_PAUSE_BEFORE_SIGNAL).
pub fn mkfifo(path: &Path) {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes()).unwrap();
    // SAFETY: valid path string.
    let r = unsafe { libc::mkfifo(c.as_ptr(), 0o600) };
    assert_eq!(
        r,
        0,
        "mkfifo {}: {}",
        path.display(),
        std::io::Error::last_os_error()
    );
}

/// Finds a program on PATH (e.g. sleep for the exec test).
pub fn which(name: &str) -> PathBuf {
    std::env::var_os("PATH")
        .and_then(|paths| {
            std::env::split_paths(&paths)
                .map(|d| d.join(name))
                .find(|p| p.is_file())
        })
        .unwrap_or_else(|| panic!("{name} is not on PATH"))
}

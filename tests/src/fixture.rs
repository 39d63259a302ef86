//! Real processes for the `reaper free` tests: a platform-server that says
//! when it listens, an orphaned one (its shell gone), a network namespace, and
//! handles on processes (pidfds) so "is it still alive?" is exact even after
//! its pid could have been reused.
//!
//! Everything here waits on events (a "ready" line, EOF, a pidfd), never on
//! a sleep.

use std::io::{BufRead, BufReader, Read};
use std::path::{Path, PathBuf};
use std::process::{Child, ChildStdout, Command, Output, Stdio};
use std::time::Duration;

use reaper::reap::{wait_any, Pidfd};

pub use crate::{require_root, workspace};

/// The reaper binary under test (`<workspace>/target/debug/reaper`).
pub fn reaper() -> PathBuf {
    crate::reaper_bin()
}

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

/// A running platform-server (or anything printing the same ready line).
pub struct Server {
    /// The process we spawned (None for an orphan: its shell was our child).
    pub child: Option<Child>,
    pub handle: ProcHandle,
    /// With --fork-child: the child sharing the socket.
    pub fork_child: Option<ProcHandle>,
    pub stdout: BufReader<ChildStdout>,
}

impl Server {
    /// Starts `program` with `args` and waits for its "ready" line.
    pub fn start(program: &Path, args: &[&str]) -> Server {
        Server::start_cmd(Command::new(program).args(args))
    }

    pub fn start_cmd(cmd: &mut Command) -> Server {
        let mut child = cmd
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("cannot start {cmd:?}: {e}"));
        let mut stdout = BufReader::new(child.stdout.take().unwrap());
        let (pid, fork) = read_ready(&mut stdout, &format!("{cmd:?}"));
        Server {
            child: Some(child),
            handle: ProcHandle::open(pid),
            fork_child: fork.map(ProcHandle::open),
            stdout,
        }
    }

    /// The CI situation: a shell starts the server in the background and
    /// exits, so the server is reparented (orphaned). Returns once the shell
    /// is gone and the server listens.
    pub fn start_orphan(program: &Path, args: &[&str]) -> Server {
        let mut line = format!("'{}'", program.display());
        for a in args {
            line.push_str(&format!(" '{a}'"));
        }
        let mut sh = Command::new("sh")
            .arg("-c")
            .arg(format!("{line} & exit 0"))
            .stdout(Stdio::piped())
            .stdin(Stdio::null())
            .spawn()
            .unwrap();
        let mut stdout = BufReader::new(sh.stdout.take().unwrap());
        let (pid, fork) = read_ready(&mut stdout, &line);
        let handle = ProcHandle::open(pid);
        let status = sh.wait().unwrap();
        assert!(status.success(), "the runner shell failed: {status}");
        Server {
            child: None,
            handle,
            fork_child: fork.map(ProcHandle::open),
            stdout,
        }
    }

    pub fn pid(&self) -> u32 {
        self.handle.pid
    }

    /// Blocks until the server's stdout closes (exit, or an exec with
    /// --exec-on-usr1).
    pub fn wait_stdout_eof(&mut self) {
        let mut rest = Vec::new();
        let _ = self.stdout.read_to_end(&mut rest);
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        // Never leave a holder behind, even when an assertion failed.
        if let Some(c) = &self.fork_child {
            c.kill();
        }
        self.handle.kill();
        if let Some(mut c) = self.child.take() {
            let _ = c.wait();
        }
    }
}

fn read_ready(out: &mut BufReader<ChildStdout>, what: &str) -> (u32, Option<u32>) {
    let mut line = String::new();
    out.read_line(&mut line).unwrap();
    let w: Vec<&str> = line.split_whitespace().collect();
    match w.as_slice() {
        ["ready", pid] => (pid.parse().unwrap(), None),
        ["ready", pid, "child", c] => (pid.parse().unwrap(), Some(c.parse().unwrap())),
        _ => panic!("{what} did not say ready (got {line:?}); see its stderr above"),
    }
}

/// `reaper ARGS` with extra environment; its output and status.
pub fn run_reaper(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(reaper());
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

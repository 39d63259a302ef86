//! Helpers for reaper's integration tests (tests/tests/*.rs). They run as
//! root against the real kernel, with real sockets and real processes; a
//! test that cannot run panics with the reason, it never passes silently.
//!
//! Synchronisation is by events: a child says `ready ...` on stdout, reaper
//! says `attached` on stderr; waits are polls with a deadline.

use std::io::{BufRead, BufReader, Write};
use std::path::PathBuf;
use std::process::{Child, ChildStdin, Command, Output, Stdio};
use std::sync::mpsc::{channel, Receiver, RecvTimeoutError};
use std::time::{Duration, Instant};

/// The workspace root.
pub fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The workspace root (where `target/` is).
pub fn workspace_root() -> PathBuf {
    workspace()
}

/// target/debug/reaper, built by `cargo xtask test` (or `cargo build`);
/// REAPER_BIN points elsewhere (e.g. a release build).
pub fn reaper_bin() -> PathBuf {
    let p = std::env::var_os("REAPER_BIN")
        .map(PathBuf::from)
        .unwrap_or_else(|| workspace().join("target/debug/reaper"));
    assert!(
        p.exists(),
        "{} is missing: run `cargo build -p reaper-user` first (cargo xtask test does)",
        p.display()
    );
    p
}

/// The one way the tests run reaper: [`reaper_bin`] as a `Command`, for the
/// test to add its arguments and environment.
pub fn reaper() -> Command {
    Command::new(reaper_bin())
}

/// A finished command's status, stdout and stderr, for failure messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Panics unless root: these tests need the real BPF hooks and namespaces.
pub fn require_root() {
    // SAFETY: geteuid has no preconditions.
    let euid = unsafe { libc::geteuid() };
    assert_eq!(
        euid, 0,
        "this test needs root (BPF, network namespaces, other processes): run `sudo -E cargo xtask test`"
    );
}

/// A child process whose stdout and stderr lines arrive on channels.
pub struct Spawned {
    pub child: Child,
    pub stdin: Option<ChildStdin>,
    out: Receiver<String>,
    err: Receiver<String>,
    /// Every stderr line seen so far (for failure messages).
    pub err_seen: Vec<String>,
    /// The last stdout lines passed over while waiting.
    pub out_seen: Vec<String>,
}

impl Spawned {
    pub fn spawn(cmd: &mut Command) -> Spawned {
        let mut child = cmd
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", cmd.get_program()));
        let (otx, out) = channel();
        let (etx, err) = channel();
        let stdout = child.stdout.take().unwrap();
        let stderr = child.stderr.take().unwrap();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if otx.send(line).is_err() {
                    break;
                }
            }
        });
        std::thread::spawn(move || {
            for line in BufReader::new(stderr).lines().map_while(Result::ok) {
                if etx.send(line).is_err() {
                    break;
                }
            }
        });
        let stdin = child.stdin.take();
        Spawned {
            child,
            stdin,
            out,
            err,
            err_seen: Vec::new(),
            out_seen: Vec::new(),
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// The next stdout line, or None at the deadline or EOF.
    pub fn line(&mut self, within: Duration) -> Option<String> {
        match self.out.recv_timeout(within) {
            Ok(l) => Some(l),
            Err(RecvTimeoutError::Timeout) | Err(RecvTimeoutError::Disconnected) => None,
        }
    }

    /// Waits for a stdout line that satisfies `pred`; panics at the deadline.
    pub fn wait_line<F: Fn(&str) -> bool>(
        &mut self,
        what: &str,
        within: Duration,
        pred: F,
    ) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.out.recv_timeout(left) {
                Ok(l) if pred(&l) => return l,
                Ok(l) => {
                    // Kept for the failure message: what came instead.
                    if self.out_seen.len() >= 20 {
                        self.out_seen.remove(0);
                    }
                    self.out_seen.push(l);
                }
                Err(_) => {
                    self.drain_err();
                    panic!(
                        "timed out after {within:?} waiting for {what}; last stdout lines:\n{}\nstderr:\n{}",
                        self.out_seen.join("\n"),
                        self.err_seen.join("\n")
                    )
                }
            }
        }
    }

    /// Waits for a stderr line containing `needle`; panics at the deadline.
    pub fn wait_err(&mut self, needle: &str, within: Duration) -> String {
        let deadline = Instant::now() + within;
        loop {
            let left = deadline.saturating_duration_since(Instant::now());
            match self.err.recv_timeout(left) {
                Ok(l) => {
                    self.err_seen.push(l.clone());
                    if l.contains(needle) {
                        return l;
                    }
                }
                Err(_) => panic!(
                    "timed out after {within:?} waiting for '{needle}' on stderr; stderr so far:\n{}",
                    self.err_seen.join("\n")
                ),
            }
        }
    }

    pub fn drain_err(&mut self) {
        while let Ok(l) = self.err.try_recv() {
            self.err_seen.push(l);
        }
    }

    /// Sends a line to the child's stdin.
    pub fn send(&mut self, line: &str) {
        let stdin = self.stdin.as_mut().expect("stdin closed");
        writeln!(stdin, "{line}").expect("writing to child stdin");
        stdin.flush().unwrap();
    }

    /// Closes stdin (EOF for the child).
    pub fn close_stdin(&mut self) {
        self.stdin.take();
    }

    /// Waits for exit with a deadline (an event on the child's pidfd);
    /// kills at the deadline.
    pub fn wait_exit(&mut self, within: Duration) -> Option<std::process::ExitStatus> {
        let handle = fixture::ProcHandle::open(self.child.id());
        if handle.wait_exit(within.as_millis().min(i32::MAX as u128) as i32) {
            return self.child.wait().ok();
        }
        let _ = self.child.kill();
        None
    }
}

impl Drop for Spawned {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A binary of this test package (cargo builds them for the integration
/// tests into the same target directory as reaper).
pub fn fixture_bin(name: &str) -> PathBuf {
    let p = workspace().join("target/debug").join(name);
    assert!(
        p.exists(),
        "{} is missing: run the tests through `cargo test -p reaper-tests`",
        p.display()
    );
    p
}

/// The `binder` fixture (tests/src/bin/binder.rs).
pub fn binder() -> Command {
    Command::new(fixture_bin("binder"))
}

/// Holds a socket in a `binder hold` child ([`fixture::Holder::bound`]);
/// returns it with its port.
pub fn hold(args: &[&str]) -> (fixture::Holder, u16) {
    let h = fixture::Holder::bound(args);
    let port = h.port;
    (h, port)
}

/// Like `hold`, for a prepared `binder hold` command (e.g. under `ip netns exec`).
pub fn hold_with(mut c: Command) -> (fixture::Holder, u16) {
    let h = fixture::Holder::bound_with(&mut c);
    let port = h.port;
    (h, port)
}

/// One bind attempt by a fresh `binder try` process: (pid, "ok 8080" | "err 98").
pub fn try_bind(args: &[&str]) -> (u32, String) {
    let mut s = Spawned::spawn(binder().arg("try").args(args));
    let pid = s.pid();
    let line = s.wait_line("binder try result", Duration::from_secs(10), |_| true);
    s.wait_exit(Duration::from_secs(5));
    (pid, line)
}

/// `times` bind attempts on 0.0.0.0:PORT, each on a new socket, by a
/// `binder tries` child, which then stays alive until its stdin closes (so
/// the daemon can read who it is); returns it with the number that failed.
pub fn try_binds(port: u16, times: u32) -> (Spawned, u32) {
    let mut s =
        Spawned::spawn(binder().args(["tries", "0.0.0.0", &port.to_string(), &times.to_string()]));
    let line = s.wait_line("binder tries result", Duration::from_secs(10), |l| {
        l.starts_with("failed")
    });
    let failed = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    (s, failed)
}

/// Polls `cond` with a growing pause (1 ms doubling to 50 ms) until it
/// gives a value; panics with `what` at the deadline. For states that
/// announce themselves with no event (a port binding again, a file's
/// contents); everything that has an event waits on the event.
pub fn poll_until<T>(what: &str, within: Duration, cond: impl FnMut() -> Option<T>) -> T {
    poll_for(within, cond)
        .unwrap_or_else(|| panic!("timed out after {within:?} waiting for {what}"))
}

/// [`poll_until`] that gives None at the deadline instead of panicking,
/// for a test that retries its own action (a failed bind whose event a bind
/// storm of other tests made the kernel drop).
pub fn poll_for<T>(within: Duration, mut cond: impl FnMut() -> Option<T>) -> Option<T> {
    let end = Instant::now() + within;
    let mut pause = Duration::from_millis(1);
    loop {
        if let Some(v) = cond() {
            return Some(v);
        }
        if Instant::now() >= end {
            return None;
        }
        std::thread::sleep(pause.min(end.saturating_duration_since(Instant::now())));
        pause = (pause * 2).min(Duration::from_millis(50));
    }
}

/// A free TCP+UDP port on loopback, for tests that need a fixed number.
pub fn free_port() -> u16 {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    l.local_addr().unwrap().port()
}

/// A network namespace made for one test, deleted on drop.
pub struct Netns {
    pub name: String,
}

impl Netns {
    pub fn new(tag: &str) -> Netns {
        // Tests run as threads of one process: the pid alone would give two
        // tests with the same tag one namespace, which the first to end
        // deletes under the other.
        static NEXT: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
        let n = NEXT.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let name = format!("reaper-t-{tag}-{}-{n}", std::process::id());
        let _ = Command::new("ip")
            .args(["netns", "del", &name])
            .stderr(Stdio::null())
            .status();
        let st = Command::new("ip")
            .args(["netns", "add", &name])
            .status()
            .expect("running `ip netns add` (package iproute2)");
        assert!(st.success(), "ip netns add {name} failed");
        let st = Command::new("ip")
            .args(["netns", "exec", &name, "ip", "link", "set", "lo", "up"])
            .status()
            .unwrap();
        assert!(st.success(), "bringing lo up in {name} failed");
        Netns { name }
    }

    /// The namespace's inode, as reaper reports it.
    pub fn inode(&self) -> u64 {
        use std::os::unix::fs::MetadataExt;
        std::fs::metadata(format!("/run/netns/{}", self.name))
            .or_else(|_| std::fs::metadata(format!("/var/run/netns/{}", self.name)))
            .expect("stat of the netns file")
            .ino()
    }

    /// A command that runs `program` inside the namespace.
    pub fn exec(&self, program: impl AsRef<std::ffi::OsStr>) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name]).arg(program);
        c
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .status();
    }
}

/// The netns inode of this test process.
pub fn own_netns() -> u64 {
    reaper::holders::netns::netns_of_pid(std::process::id()).expect("/proc/self/ns/net is readable")
}

pub mod containers;
pub mod daemon;
pub mod faults;
pub mod fixture;
pub mod procs;
pub mod report_fixtures;
pub mod runner;

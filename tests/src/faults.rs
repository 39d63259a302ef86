//! Helpers for the fault tests (tests/tests/it/faults.rs): a holder that forks,
//! execs or passes its socket on command (the `fault-holder` fixture),
//! `reaper free` held at its test-only pause between verdict and signal,
//! small file systems that are full or read-only, and commands run as
//! another user. Every wait is on an event or a poll with a deadline.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::fixture::{mkfifo, ProcHandle};
use crate::Spawned;

const WAIT: Duration = Duration::from_secs(20);

/// A running `fault-holder` (see tests/src/bin/fault-holder.rs).
pub struct Holder {
    pub s: Spawned,
    pub pid: u32,
    /// Port of its socket (0 for a receiver until it got one).
    pub port: u16,
    /// Processes it made that we must not leave behind (forked children).
    pub extra: Vec<ProcHandle>,
}

impl Holder {
    /// `fault-holder listen ADDR PORT OPTS...`, once it listens.
    pub fn listen(addr: &str, port: u16, opts: &[&str]) -> Holder {
        let mut c = Command::new(crate::fixture_bin("fault-holder"));
        c.args(["listen", addr, &port.to_string()]).args(opts);
        let mut s = Spawned::spawn(&mut c);
        let line = s.wait_line("fault-holder ready", WAIT, |l| l.starts_with("ready"));
        let w: Vec<&str> = line.split_whitespace().collect();
        Holder {
            pid: w[1].parse().unwrap(),
            port: w[2].parse().unwrap(),
            s,
            extra: Vec::new(),
        }
    }

    /// `fault-holder receive PATH`, once its Unix socket listens.
    pub fn receiver(path: &Path) -> Holder {
        let mut c = Command::new(crate::fixture_bin("fault-holder"));
        c.arg("receive").arg(path);
        let mut s = Spawned::spawn(&mut c);
        let line = s.wait_line("receiver ready", WAIT, |l| l.starts_with("ready"));
        Holder {
            pid: line.split_whitespace().nth(1).unwrap().parse().unwrap(),
            port: 0,
            s,
            extra: Vec::new(),
        }
    }

    /// Sends a command and waits for the reply line starting with `reply`.
    pub fn command(&mut self, cmd: &str, reply: &str) -> String {
        self.s.send(cmd);
        self.s
            .wait_line(&format!("`{reply}` after `{cmd}`"), WAIT, |l| {
                l.starts_with(reply)
            })
    }

    /// `fork`: returns the child's pid; the child is killed on drop.
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
            .wait_line("the passed socket", WAIT, |l| l.starts_with("got"));
        self.port = line.split_whitespace().nth(1).unwrap().parse().unwrap();
        self.port
    }

    pub fn handle(&self) -> ProcHandle {
        ProcHandle::open(self.pid)
    }
}

impl Drop for Holder {
    fn drop(&mut self) {
        for h in &self.extra {
            h.kill();
        }
    }
}

/// Polls `cond` until it holds; panics with `what` at the deadline.
pub fn wait_until(what: &str, within: Duration, mut cond: impl FnMut() -> bool) {
    crate::poll_until(what, within, || cond().then_some(()))
}

/// Runs `reaper ARGS` with its test-only pause between verdicts and
/// signals (REAPER_TEST_PAUSE_BEFORE_SIGNAL), runs `meanwhile` while it is
/// paused, then lets it go on; returns its output.
pub fn free_paused(args: &[&str], meanwhile: impl FnOnce()) -> Output {
    let dir = tempfile_dir();
    let fifo = dir.join("pause");
    mkfifo(&fifo);
    let child = crate::reaper()
        .args(args)
        .env("REAPER_TEST_PAUSE_BEFORE_SIGNAL", &fifo)
        .env_remove("REAPER_JOURNAL")
        .env("NO_COLOR", "1")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    // Opening the FIFO for writing returns when reaper opens it for
    // reading: that is, when reaper is at the pause.
    let (tx, rx) = mpsc::channel();
    let f2 = fifo.clone();
    std::thread::spawn(move || {
        let _ = tx.send(std::fs::OpenOptions::new().write(true).open(&f2));
    });
    let writer = match rx.recv_timeout(Duration::from_secs(30)) {
        Ok(w) => w.unwrap(),
        Err(_) => {
            let _ = std::fs::File::open(&fifo); // unblock the opener
            let out = child.wait_with_output().unwrap();
            panic!("reaper never reached the pause:\n{}", show(&out));
        }
    };
    meanwhile();
    drop(writer);
    let out = child.wait_with_output().unwrap();
    let _ = std::fs::remove_dir_all(&dir);
    out
}

/// A fresh private directory under the system temp dir.
pub fn tempfile_dir() -> PathBuf {
    use std::sync::atomic::{AtomicU32, Ordering};
    static N: AtomicU32 = AtomicU32::new(0);
    let d = std::env::temp_dir().join(format!(
        "reaper-faults-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    ));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// Status, stdout and stderr, for assertion messages.
pub fn show(out: &Output) -> String {
    format!(
        "status {:?}\nstdout:\n{}\nstderr:\n{}",
        out.status.code(),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// The one JSON document of a `--json` run.
pub fn json(out: &Output) -> serde_json::Value {
    serde_json::from_str(String::from_utf8_lossy(&out.stdout).trim())
        .unwrap_or_else(|e| panic!("no JSON document ({e}):\n{}", show(out)))
}

/// Pids that received a signal, in a `free --json` document.
pub fn signalled(doc: &serde_json::Value) -> Vec<u64> {
    doc["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect()
}

/// A file system mounted on a fresh directory for one test, lazily
/// unmounted on drop.
pub struct Mount {
    pub dir: PathBuf,
}

fn cpath(p: &Path) -> CString {
    CString::new(p.as_os_str().as_encoded_bytes()).unwrap()
}

fn mount(src: &Path, dst: &Path, fstype: Option<&str>, flags: libc::c_ulong, data: Option<&str>) {
    let src = cpath(src);
    let dst_c = cpath(dst);
    let fstype = fstype.map(|f| CString::new(f).unwrap());
    let data = data.map(|d| CString::new(d).unwrap());
    // SAFETY: valid NUL-terminated strings or NULL, as mount(2) takes them.
    let r = unsafe {
        libc::mount(
            src.as_ptr(),
            dst_c.as_ptr(),
            fstype.as_ref().map_or(std::ptr::null(), |f| f.as_ptr()),
            flags,
            data.as_ref()
                .map_or(std::ptr::null(), |d| d.as_ptr().cast()),
        )
    };
    assert_eq!(
        r,
        0,
        "mount on {}: {}",
        dst.display(),
        std::io::Error::last_os_error()
    );
}

impl Mount {
    /// A tmpfs of `bytes` (rounded up to pages by the kernel).
    pub fn tmpfs(bytes: u64) -> Mount {
        let dir = tempfile_dir();
        mount(
            Path::new("tmpfs"),
            &dir,
            Some("tmpfs"),
            0,
            Some(&format!("size={bytes},mode=0700")),
        );
        Mount { dir }
    }

    /// A read-only bind mount of a fresh directory on itself.
    pub fn read_only() -> Mount {
        let dir = tempfile_dir();
        mount(&dir, &dir, None, libc::MS_BIND, None);
        let m = Mount { dir };
        mount(
            &m.dir,
            &m.dir,
            None,
            libc::MS_BIND | libc::MS_REMOUNT | libc::MS_RDONLY,
            None,
        );
        m
    }

    /// Writes a file until the file system says ENOSPC.
    pub fn fill(&self) {
        use std::io::Write;
        let mut f = std::fs::File::create(self.dir.join("filler")).unwrap();
        let chunk = vec![0u8; 4096];
        loop {
            match f.write(&chunk) {
                Ok(0) => break,
                Ok(_) => {}
                Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => break,
                Err(e) => panic!("filling {}: {e}", self.dir.display()),
            }
        }
        let _ = f.sync_all();
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        let p = cpath(&self.dir);
        // SAFETY: valid path; MNT_DETACH never blocks on busy mounts.
        unsafe { libc::umount2(p.as_ptr(), libc::MNT_DETACH) };
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// The unprivileged user the symlink tests plant files as.
pub const NOBODY: u32 = 65534;

/// Runs a command as uid/gid `uid`; panics unless it succeeds.
pub fn run_as<S: AsRef<std::ffi::OsStr>>(uid: u32, program: &str, args: &[S]) {
    use std::os::unix::process::CommandExt;
    let out = Command::new(program)
        .args(args)
        .uid(uid)
        .gid(uid)
        .output()
        .unwrap_or_else(|e| panic!("running {program} as uid {uid}: {e}"));
    assert!(
        out.status.success(),
        "{program} as uid {uid} failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A directory anyone may write to, sticky like /tmp, in a fresh private
/// directory that others may enter.
pub fn shared_tmp() -> PathBuf {
    use std::os::unix::fs::PermissionsExt;
    let base = tempfile_dir();
    std::fs::set_permissions(&base, std::fs::Permissions::from_mode(0o755)).unwrap();
    let shared = base.join("shared");
    std::fs::create_dir(&shared).unwrap();
    std::fs::set_permissions(&shared, std::fs::Permissions::from_mode(0o1777)).unwrap();
    shared
}

/// True when a TCP listener can bind `addr`:port right now.
pub fn can_listen_on(addr: &str, port: u16) -> bool {
    let ip: std::net::IpAddr = addr.parse().unwrap();
    std::net::TcpListener::bind((ip, port)).is_ok()
}

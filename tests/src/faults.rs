//! Helpers for the fault tests (tests/tests/it/faults.rs): `reaper free`
//! held at its test-only pause between verdict and signal, small file
//! systems that are full or read-only, and commands run as
//! another user. Their holder that forks, execs or passes its socket on
//! command is the crate's [`crate::fixture::Holder::fault_listen`]. Every
//! wait is on an event or a poll with a deadline.

use std::ffi::CString;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use crate::fixture::mkfifo;
pub use crate::show;

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

//! Helpers for the daemon's integration tests: a real `reaper daemon`
//! process with a temporary config, journal, metrics port and control
//! socket (its holders and binders are the crate's: [`crate::fixture::Holder::orphan`],
//! [`crate::try_binds`]).
//!
//! Nothing here sleeps to synchronise: every wait polls a condition with a
//! deadline and fails with what it was waiting for.

use std::io::{BufRead, BufReader, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::Value;

pub use crate::{free_port, reaper_bin};

pub fn is_root() -> bool {
    // SAFETY: no arguments, cannot fail.
    unsafe { libc::geteuid() == 0 }
}

/// Polls `f` until it returns Some, or panics after `deadline` naming `what`.
pub fn wait_for<T>(what: &str, deadline: Duration, f: impl FnMut() -> Option<T>) -> T {
    crate::poll_until(what, deadline, f)
}

/// Whether 0.0.0.0:PORT/tcp can be bound now, as the next CI job would.
pub fn bindable(port: u16) -> bool {
    TcpListener::bind(("0.0.0.0", port)).is_ok()
}

/// A running daemon and its files.
pub struct Daemon {
    pub child: Option<Child>,
    pub dir: tempfile::TempDir,
    pub config: PathBuf,
    pub journal: PathBuf,
    pub socket: PathBuf,
    pub metrics: std::net::SocketAddr,
    pub log: PathBuf,
    /// `reap_grace` in the config (default "2s").
    pub reap_grace: String,
    /// `reap_deadline` in the config (default "10s").
    pub reap_deadline: String,
}

impl Daemon {
    /// Writes a config (the given extra TOML after the test's own keys) and
    /// starts the daemon; returns once the control socket answers.
    pub fn start(extra: &str) -> Daemon {
        Daemon::start_with_grace(extra, "2s", "10s")
    }

    /// [`Daemon::start`] with another `reap_grace` and `reap_deadline`.
    pub fn start_with_grace(extra: &str, reap_grace: &str, reap_deadline: &str) -> Daemon {
        let dir = tempfile::Builder::new()
            .prefix("reaper-daemon-")
            .tempdir()
            .unwrap();
        let metrics: std::net::SocketAddr = format!("127.0.0.1:{}", free_port()).parse().unwrap();
        let d = Daemon {
            child: None,
            config: dir.path().join("reaper.toml"),
            journal: dir.path().join("journal/journal.jsonl"),
            socket: dir.path().join("run/reaper.sock"),
            log: dir.path().join("daemon.log"),
            metrics,
            dir,
            reap_grace: reap_grace.to_string(),
            reap_deadline: reap_deadline.to_string(),
        };
        d.write_config(extra);
        d.restart()
    }

    pub fn write_config(&self, extra: &str) {
        let text = format!(
            "journal = \"{}\"\nmetrics_listen = \"{}\"\ncontrol_socket = \"{}\"\nconflict_window = \"2s\"\nreap_grace = \"{}\"\nreap_deadline = \"{}\"\n{extra}",
            self.journal.display(),
            self.metrics,
            self.socket.display(),
            self.reap_grace,
            self.reap_deadline
        );
        std::fs::write(&self.config, text).unwrap();
    }

    /// Starts (again) on the same files.
    pub fn restart(self) -> Daemon {
        self.launch(crate::reaper())
    }

    /// Stops the daemon and starts it again on the same files under
    /// `setpriv ARGS` (util-linux): the capability sets a hardened unit or
    /// a container would give it.
    pub fn restart_setpriv(mut self, args: &[&str]) -> Daemon {
        self.stop(Duration::from_secs(5));
        let _ = std::fs::remove_file(&self.socket);
        let mut setpriv = Command::new("setpriv");
        setpriv.args(args).arg(crate::reaper_bin());
        self.launch(setpriv)
    }

    /// Runs `cmd daemon --config CONFIG`, its stderr appended to the log,
    /// and waits until the control socket answers.
    fn launch(mut self, mut cmd: Command) -> Daemon {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&self.log)
            .unwrap();
        let child = cmd
            .args(["daemon", "--config"])
            .arg(&self.config)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?} daemon: {e}", cmd.get_program()));
        self.child = Some(child);
        let pid = self.pid();
        wait_for(
            &format!("the daemon (pid {pid}) to answer on its control socket"),
            Duration::from_secs(30),
            || {
                if let Some(status) = self.child.as_mut().unwrap().try_wait().unwrap() {
                    panic!(
                        "the daemon exited with {status} before it was ready; its log:\n{}",
                        self.log_text()
                    );
                }
                self.try_query(r#"{"cmd":"ports"}"#).ok()
            },
        );
        self
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// One request on the control socket.
    pub fn try_query(&self, line: &str) -> std::io::Result<Value> {
        let s = UnixStream::connect(&self.socket)?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        (&s).write_all(format!("{line}\n").as_bytes())?;
        let mut answer = String::new();
        BufReader::new(&s).read_line(&mut answer)?;
        serde_json::from_str(&answer).map_err(std::io::Error::other)
    }

    pub fn query(&self, line: &str) -> Value {
        self.try_query(line).unwrap_or_else(|e| {
            panic!(
                "control socket {}: {e}; log:\n{}",
                self.socket.display(),
                self.log_text()
            )
        })
    }

    /// Polls the daemon's `who` for `port` (`proto`: "tcp", "udp" or None
    /// for both) until one of its claims satisfies `pred`; returns the
    /// whole answer and that claim, or panics at the deadline naming `what`.
    pub fn wait_claim(
        &self,
        what: &str,
        within: Duration,
        port: u16,
        proto: Option<&str>,
        pred: impl Fn(&Value) -> bool,
    ) -> (Value, Value) {
        let ask = match proto {
            Some(p) => format!(r#"{{"cmd":"who","port":{port},"proto":"{p}"}}"#),
            None => format!(r#"{{"cmd":"who","port":{port}}}"#),
        };
        wait_for(what, within, || {
            let r = self.query(&ask);
            let claim = r["claims"].as_array()?.iter().find(|c| pred(c)).cloned()?;
            Some((r, claim))
        })
    }

    /// Every complete record of the journal (torn or damaged lines skipped).
    pub fn records(&self) -> Vec<Value> {
        read_journal(&self.journal)
    }

    /// Waits until a record satisfies `pred`; returns it.
    pub fn wait_record(&self, what: &str, pred: impl Fn(&Value) -> bool) -> Value {
        let found = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            wait_for(what, Duration::from_secs(20), || {
                self.records().into_iter().find(|r| pred(r))
            })
        }));
        found.unwrap_or_else(|e| {
            // The daemon's own words say why (losses, a slow scan).
            let log = self.log_text();
            let tail: Vec<&str> = log.lines().rev().take(30).collect();
            eprintln!("the daemon's log, last lines first:\n{}", tail.join("\n"));
            std::panic::resume_unwind(e)
        })
    }

    /// GET /metrics.
    pub fn scrape(&self) -> String {
        scrape_at(&self.metrics)
    }

    /// The value of one sample line of the metrics, e.g.
    /// `reaper_reapings_total{outcome="freed"}`.
    pub fn metric(&self, sample: &str) -> Option<f64> {
        metric_in(&self.scrape(), sample)
    }

    pub fn signal(&self, sig: i32) {
        // SAFETY: a pid we spawned and still own (not reaped yet).
        assert_eq!(unsafe { libc::kill(self.pid() as i32, sig) }, 0);
    }

    /// SIGTERM and wait for the exit (with a deadline); returns the status code.
    pub fn stop(&mut self, deadline: Duration) -> Option<i32> {
        self.signal(libc::SIGTERM);
        let child = self.child.as_mut().unwrap();
        let status = wait_for("the daemon to exit after SIGTERM", deadline, || {
            child.try_wait().unwrap()
        });
        self.child = None;
        status.code()
    }

    pub fn kill9(&mut self) {
        let mut child = self.child.take().unwrap();
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

impl Drop for Daemon {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn metric_in(text: &str, sample: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(sample).and_then(|v| v.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// Complete records of a journal; a torn last line is skipped, and so is
/// a damaged line (a torn line closed by the next run), as readers must.
pub fn read_journal(path: &Path) -> Vec<Value> {
    read_journal_counting(path).0
}

/// The records and the number of damaged complete lines.
pub fn read_journal_counting(path: &Path) -> (Vec<Value>, usize) {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let complete = match text.rfind('\n') {
        Some(i) => &text[..i],
        None => return (Vec::new(), 0),
    };
    let mut bad = 0;
    let records = complete
        .lines()
        .filter(|l| !l.is_empty())
        .filter_map(|l| match serde_json::from_str(l) {
            Ok(v) => Some(v),
            Err(_) => {
                bad += 1;
                None
            }
        })
        .collect();
    (records, bad)
}

/// Binds, listens and closes on 127.0.0.1:0 in a loop on another thread
/// until dropped, one every `pace` (it shapes the load, it synchronises
/// nothing): claim and release records for a daemon to write.
pub struct Churn {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<u64>>,
}

impl Churn {
    pub fn start(pace: Duration) -> Churn {
        use std::sync::atomic::Ordering;
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let mut n = 0;
            while !flag.load(Ordering::Relaxed) {
                if let Ok(l) = TcpListener::bind("127.0.0.1:0") {
                    drop(l);
                    n += 1;
                }
                // Pacing shapes the load (a bind every `pace`); it
                // waits for nothing.
                std::thread::sleep(pace);
            }
            n
        });
        Churn {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Churn {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// GET /metrics from a daemon listening at `addr` (one in a container too).
pub fn scrape_at(addr: &std::net::SocketAddr) -> String {
    let mut s = TcpStream::connect(addr).expect("connecting to the metrics port");
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    s.write_all(b"GET /metrics HTTP/1.1\r\nHost: localhost\r\n\r\n")
        .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    let (head, body) = text.split_once("\r\n\r\n").expect("an HTTP response");
    assert!(head.starts_with("HTTP/1.1 200"), "{head}");
    body.to_string()
}

/// Runs `promtool check metrics` on a scrape; returns its output on failure.
pub fn promtool_check(text: &str) -> Result<(), String> {
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| format!("promtool is needed (apt-get install -y prometheus): {e}"))?;
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    if out.status.success() {
        Ok(())
    } else {
        Err(format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        ))
    }
}

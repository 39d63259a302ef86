//! Progress on a terminal for work that can take a while (a scan of many
//! processes, a report over a large journal): a counter on stderr, redrawn a
//! few times a second, shown only after the work has taken 300 ms, and never
//! when stderr is not a terminal (nothing for pipes, CI logs or tests).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Processes whose fd tables the holder scan has walked (all scans).
pub static PIDS_WALKED: AtomicU64 = AtomicU64::new(0);
/// Journal records the readers have read (all readers).
pub static RECORDS_READ: AtomicU64 = AtomicU64::new(0);

/// A progress line that lives while this value does.
pub struct Progress {
    stop: Arc<AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl Progress {
    /// Shows `label: N unit` counting `counter` up from its value now.
    pub fn start(label: &'static str, unit: &'static str, counter: &'static AtomicU64) -> Progress {
        let stop = Arc::new(AtomicBool::new(false));
        if !std::io::stderr().is_terminal() {
            return Progress { stop, thread: None };
        }
        let base = counter.load(Ordering::Relaxed);
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            let t0 = Instant::now();
            let mut shown = false;
            while !flag.load(Ordering::Relaxed) {
                std::thread::park_timeout(Duration::from_millis(150));
                if flag.load(Ordering::Relaxed) {
                    break;
                }
                if t0.elapsed() < Duration::from_millis(300) {
                    continue;
                }
                let n = counter.load(Ordering::Relaxed) - base;
                let mut err = std::io::stderr().lock();
                let _ = write!(
                    err,
                    "\r\x1b[K{label}: {n} {unit} ({:.1} s)",
                    t0.elapsed().as_secs_f64()
                );
                let _ = err.flush();
                shown = true;
            }
            if shown {
                let mut err = std::io::stderr().lock();
                let _ = write!(err, "\r\x1b[K");
                let _ = err.flush();
            }
        });
        Progress {
            stop,
            thread: Some(thread),
        }
    }
}

impl Drop for Progress {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            t.thread().unpark();
            let _ = t.join();
        }
    }
}

//! policy -> plan -> **reap** -> journal.
//!
//! Signals a stale holder without ever hitting the wrong process: a pidfd is
//! opened, the identity (start time, exe, cmdline) re-read and compared, and
//! signals go through the pidfd only. Then it waits, with a deadline and no
//! fixed sleeps, until the port can really be bound again.
//!
//! Only processes the policy judged `Reap` reach [`stop`]; it does not judge,
//! it only makes sure that what it signals is what was judged. The decision
//! (who, in what order, why) is [`plan::Plan`]; [`plan::execute`] is the one
//! path from a plan to signals, for `reaper free` and the daemon alike.

use std::io;
use std::path::Path;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use serde::Serialize;

use crate::vocab::{Outcome, Signal};

mod bind;
pub mod container;
mod identity;
mod pidfd;
pub mod plan;
pub mod records;

pub use crate::proc::Stat as ProcStat;
pub use bind::{wait_bindable, BindProbe, BindWait};
pub use identity::Identity;
pub use pidfd::{wait_any, Pidfd};
pub use plan::{execute, Execution, Judged, JudgedContainer, Plan, Role, Tree, Unowned};

/// Test-only hook: when this variable names a path (a FIFO), `reaper free`
/// opens it for reading after the verdicts and before opening any pidfd, and
/// waits for end-of-file. The integration tests use it to change a holder's
/// identity between judgment and signal deterministically. Never set it in
/// production: it stalls the run until someone writes to the FIFO.
pub const TEST_PAUSE_ENV: &str = "REAPER_TEST_PAUSE_BEFORE_SIGNAL";

/// A signal that was sent.
#[derive(Clone, Debug, Serialize)]
pub struct SignalSent {
    pub pid: u32,
    /// The stop signal (SIGTERM unless a rule or `free --signal` chose
    /// another), SIGCONT (right after it, to a stopped target) or SIGKILL.
    pub signal: Signal,
    /// Wall time, RFC 3339.
    pub ts: String,
    /// Milliseconds since the run started.
    pub at_ms: f64,
    /// CLOCK_MONOTONIC in ns, so other programs (the benchmark) can line
    /// their own clocks up with it.
    pub mono_ns: u64,
}

/// What happened to one target.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case", tag = "status")]
pub enum TargetOutcome {
    /// It exited; `by` is the last signal sent before that.
    Exited { by: String, after_ms: u64 },
    /// Its identity differs from the judged one: nothing was sent.
    IdentityChanged { changes: Vec<String> },
    /// It was gone before any signal.
    Gone,
    /// Still running at the deadline (after SIGKILL if the grace had passed).
    StillRunning,
    /// pidfd_open or pidfd_send_signal failed for another reason.
    Failed { error: String },
}

impl TargetOutcome {
    /// How the reaping of this target ended, in the journal's words (the
    /// one mapping `free` and the daemon share); `port_free`: whether the
    /// port could be bound again afterwards.
    pub fn outcome(&self, port_free: bool) -> Outcome {
        match self {
            TargetOutcome::Exited { .. } if port_free => Outcome::Freed,
            TargetOutcome::Exited { .. } => Outcome::StillHeld,
            TargetOutcome::IdentityChanged { .. } => Outcome::IdentityChanged,
            TargetOutcome::Gone => Outcome::Gone,
            TargetOutcome::StillRunning => Outcome::StillHeld,
            TargetOutcome::Failed { .. } => Outcome::Failed,
        }
    }
}

/// One target's story.
#[derive(Clone, Debug, Serialize)]
pub struct TargetReport {
    pub pid: u32,
    pub signals: Vec<SignalSent>,
    pub outcome: TargetOutcome,
    /// When its exit was seen (ms since the run started).
    pub exited_at_ms: Option<f64>,
    #[serde(skip)]
    pub exited_at: Option<Instant>,
}

/// How to stop the targets.
#[derive(Clone, Debug)]
pub struct StopOptions {
    /// The stop signal, then SIGKILL after this.
    pub grace: Duration,
    /// Give up at this instant.
    pub deadline: Instant,
    /// The run's start (for `at_ms`).
    pub start: Instant,
    /// See [`TEST_PAUSE_ENV`].
    pub pause_fifo: Option<std::path::PathBuf>,
}

struct Live {
    idx: usize,
    wave: usize,
    /// Its stop signal (the first one it is sent).
    stop: Signal,
    fd: Pidfd,
}

/// Stops every target: pidfd, identity check, SIGTERM, wait (an event) up to
/// the grace, SIGKILL, wait up to the deadline. Returns one report per
/// target, in order.
pub fn stop(targets: &[Identity], opts: &StopOptions) -> Vec<TargetReport> {
    let waved: Vec<(Identity, usize, Signal)> = targets
        .iter()
        .map(|t| (t.clone(), 0, Signal::Term))
        .collect();
    stop_in_waves(&waved, opts, &mut |_| {})
}

/// [`stop`] in waves, each target with its own stop signal (a target is
/// (identity, wave, stop signal)): every pidfd is opened and every identity
/// re-checked before the first signal; then each wave in turn gets its stop
/// signals (those of it still running) and the grace, during which any
/// target may exit; what outlives the last grace gets SIGKILL. `on_signal`
/// sees each signal sent.
pub fn stop_in_waves(
    targets: &[(Identity, usize, Signal)],
    opts: &StopOptions,
    on_signal: &mut dyn FnMut(&SignalSent),
) -> Vec<TargetReport> {
    let mut reports: Vec<TargetReport> = targets
        .iter()
        .map(|(t, _, _)| TargetReport {
            pid: t.pid,
            signals: Vec::new(),
            outcome: TargetOutcome::StillRunning,
            exited_at_ms: None,
            exited_at: None,
        })
        .collect();
    if let Some(fifo) = &opts.pause_fifo {
        test_pause(fifo);
    }
    let mut live: Vec<Live> = Vec::new();
    for (idx, (t, wave, stop)) in targets.iter().enumerate() {
        match pin(t) {
            Ok(fd) => live.push(Live {
                idx,
                wave: *wave,
                stop: *stop,
                fd,
            }),
            Err(outcome) => reports[idx].outcome = outcome,
        }
    }

    let waves = targets.iter().map(|(_, w, _)| *w).max().unwrap_or(0);
    for wave in 0..=waves {
        if !live.iter().any(|l| l.wave == wave) || Instant::now() >= opts.deadline {
            continue;
        }
        send(
            &mut live,
            &mut reports,
            Some(wave),
            None,
            opts.start,
            on_signal,
        );
        let kill_at = (Instant::now() + opts.grace).min(opts.deadline);
        wait_exits(&mut live, &mut reports, kill_at, opts.start);
    }
    if !live.is_empty() && Instant::now() < opts.deadline {
        send(
            &mut live,
            &mut reports,
            None,
            Some(Signal::Kill),
            opts.start,
            on_signal,
        );
        wait_exits(&mut live, &mut reports, opts.deadline, opts.start);
    }
    for l in &live {
        reports[l.idx].outcome = TargetOutcome::StillRunning;
    }
    reports
}

/// Opens the target's pidfd, then re-reads its identity: the pidfd pins the
/// process, and the /proc read after it proves the pinned process is the
/// judged one (a reused pid has another start time; an exec another exe).
/// Err is the outcome of a target that must not be signalled.
fn pin(t: &Identity) -> Result<Pidfd, TargetOutcome> {
    let fd = match Pidfd::open(t.pid) {
        Ok(fd) => fd,
        Err(e) if e.raw_os_error() == Some(libc::ESRCH) => return Err(TargetOutcome::Gone),
        Err(e) => {
            return Err(TargetOutcome::Failed {
                error: format!("pidfd_open({}) failed: {e}", t.pid),
            })
        }
    };
    match Identity::read(t.pid) {
        Ok(now) => {
            let changes = t.differences(&now);
            if !changes.is_empty() {
                return Err(TargetOutcome::IdentityChanged { changes });
            }
        }
        Err(e) if e.kind() == io::ErrorKind::NotFound || fd.exited() => {
            return Err(TargetOutcome::Gone);
        }
        Err(e) => {
            return Err(TargetOutcome::Failed {
                error: format!(
                    "cannot re-read the identity of pid {} from /proc ({e}); not signalled",
                    t.pid
                ),
            });
        }
    }
    Ok(fd)
}

/// Sends `sig` (each target's stop signal when None) through the pidfds
/// of `wave` (every live target when None); a target that is gone or
/// cannot be signalled leaves `live`.
fn send(
    live: &mut Vec<Live>,
    reports: &mut [TargetReport],
    wave: Option<usize>,
    sig: Option<Signal>,
    start: Instant,
    on_signal: &mut dyn FnMut(&SignalSent),
) {
    live.retain(|l| {
        if wave.is_some_and(|w| w != l.wave) {
            return true;
        }
        let sig = sig.unwrap_or(l.stop);
        // Stamped before the syscall: the process may exit before it returns.
        let record = signal_record(l.fd.pid, sig, start);
        match l.fd.send(sig.number()) {
            Ok(()) => {
                on_signal(&record);
                reports[l.idx].signals.push(record);
                if sig != Signal::Kill {
                    resume_if_stopped(l, reports, start, on_signal);
                }
                true
            }
            Err(e) if e.raw_os_error() == Some(libc::ESRCH) => {
                // Exited between the check and the signal: nothing was hit.
                let r = &mut reports[l.idx];
                if r.signals.is_empty() {
                    r.outcome = TargetOutcome::Gone;
                } else {
                    mark_exited(r, l.stop, start, None);
                }
                false
            }
            Err(e) => {
                reports[l.idx].outcome = TargetOutcome::Failed {
                    error: format!("pidfd_send_signal({sig}) to pid {} failed: {e}", l.fd.pid),
                };
                false
            }
        }
    });
}

/// A stopped process (SIGSTOP, a frozen job's SIGTSTP) keeps its stop
/// signal (SIGTERM, SIGINT, ...) pending and cannot act on it: it would be
/// killed only after the whole grace. As systemd does, it gets SIGCONT
/// right after the stop signal (through the same pidfd, journaled with the
/// signals), so it can exit within the grace. Read after the stop signal,
/// the state is stable: none of them wakes it.
fn resume_if_stopped(
    l: &Live,
    reports: &mut [TargetReport],
    start: Instant,
    on_signal: &mut dyn FnMut(&SignalSent),
) {
    if !stopped(l.fd.pid) {
        return;
    }
    let record = signal_record(l.fd.pid, Signal::Cont, start);
    // A failure here (it exited meanwhile) changes nothing: the wait sees it.
    if l.fd.send(Signal::Cont.number()).is_ok() {
        on_signal(&record);
        reports[l.idx].signals.push(record);
    }
}

/// Whether /proc says the process is stopped by a signal (state `T`).
fn stopped(pid: u32) -> bool {
    crate::proc::read_stat(pid).is_some_and(|s| s.state == 'T')
}

/// Waits on the pidfds until all exit or `until` passes; exited ones leave `live`.
fn wait_exits(live: &mut Vec<Live>, reports: &mut [TargetReport], until: Instant, start: Instant) {
    while !live.is_empty() {
        let left = until.saturating_duration_since(Instant::now());
        let fds: Vec<&Pidfd> = live.iter().map(|l| &l.fd).collect();
        let ready = match wait_any(&fds, left) {
            Ok(r) => r,
            Err(_) => return,
        };
        if ready.is_empty() {
            if Instant::now() >= until {
                return;
            }
            continue;
        }
        // A tree member that exits unsignalled went with the first signal.
        let first = reports
            .iter()
            .filter_map(|r| r.signals.first().map(|s| s.at_ms))
            .reduce(f64::min);
        let mut i = 0;
        live.retain(|l| {
            let done = ready.contains(&i);
            i += 1;
            if done {
                mark_exited(&mut reports[l.idx], l.stop, start, first);
            }
            !done
        });
    }
}

/// `first_any`: the run's first signal (ms), for a target that exits
/// before its own; `stop`: its stop signal (its root's, as a rule gives
/// the tree one).
fn mark_exited(r: &mut TargetReport, stop: Signal, start: Instant, first_any: Option<f64>) {
    let now = Instant::now();
    // A tree member that exits before its own signal went with its root.
    // SIGCONT only resumes a stopped target: the stop signal before it is
    // what ended it.
    let by = r
        .signals
        .iter()
        .rev()
        .find(|s| s.signal != Signal::Cont)
        .map(|s| s.signal.to_string())
        .unwrap_or_else(|| format!("its tree root's {stop}"));
    let first = r
        .signals
        .first()
        .map(|s| s.at_ms)
        .or(first_any)
        .unwrap_or(0.0);
    let at_ms = ms_since(start, now);
    r.outcome = TargetOutcome::Exited {
        by,
        after_ms: (at_ms - first).max(0.0).round() as u64,
    };
    r.exited_at_ms = Some(at_ms);
    r.exited_at = Some(now);
}

fn signal_record(pid: u32, signal: Signal, start: Instant) -> SignalSent {
    SignalSent {
        pid,
        signal,
        ts: crate::util::rfc3339(Utc::now()),
        at_ms: ms_since(start, Instant::now()),
        mono_ns: crate::util::clock_ns(libc::CLOCK_MONOTONIC),
    }
}

/// Milliseconds between two instants, with microsecond precision.
pub fn ms_since(start: Instant, t: Instant) -> f64 {
    (t.saturating_duration_since(start).as_micros() as f64) / 1000.0
}

/// Wall time of an `Instant`, by its distance from now.
pub fn wall_of(t: Instant) -> DateTime<Utc> {
    let now_i = Instant::now();
    let now_w = Utc::now();
    if t <= now_i {
        now_w - chrono::Duration::from_std(now_i - t).unwrap_or_default()
    } else {
        now_w + chrono::Duration::from_std(t - now_i).unwrap_or_default()
    }
}

/// Blocks until the FIFO's writer closes it (see [`TEST_PAUSE_ENV`]).
fn test_pause(fifo: &Path) {
    use std::io::Read;
    tracing::warn!(
        "{TEST_PAUSE_ENV} is set: waiting on {} before signalling (test hook)",
        fifo.display()
    );
    if let Ok(mut f) = std::fs::File::open(fifo) {
        let mut sink = Vec::new();
        let _ = f.read_to_end(&mut sink);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts(grace: Duration) -> StopOptions {
        let start = Instant::now();
        StopOptions {
            grace,
            deadline: start + Duration::from_secs(10),
            start,
            pause_fifo: None,
        }
    }

    #[test]
    fn stops_a_child_with_sigterm_and_records_it() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let id = Identity::read(child.id()).unwrap();
        let r = stop(&[id], &opts(Duration::from_secs(5)));
        assert_eq!(r[0].signals.len(), 1);
        assert_eq!(r[0].signals[0].signal, Signal::Term);
        assert!(
            matches!(&r[0].outcome, TargetOutcome::Exited { by, .. } if by == "SIGTERM"),
            "{:?}",
            r[0]
        );
        child.wait().unwrap();
    }

    #[test]
    fn a_target_gets_its_own_stop_signal_and_a_stopped_one_sigcont_after_it() {
        use std::os::unix::process::ExitStatusExt;
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut stopped_child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(stopped_child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::Signal::SIGSTOP).unwrap();
        let stopped = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WUNTRACED));
        assert!(
            matches!(stopped, Ok(nix::sys::wait::WaitStatus::Stopped(p, _)) if p == pid),
            "{stopped:?}"
        );
        let ids = [
            (Identity::read(child.id()).unwrap(), 0, Signal::Int),
            (Identity::read(stopped_child.id()).unwrap(), 0, Signal::Quit),
        ];
        let r = stop_in_waves(&ids, &opts(Duration::from_secs(8)), &mut |_| {});
        let names =
            |i: usize| -> Vec<&str> { r[i].signals.iter().map(|s| s.signal.as_str()).collect() };
        assert_eq!(names(0), ["SIGINT"], "{:?}", r[0]);
        assert_eq!(names(1), ["SIGQUIT", "SIGCONT"], "{:?}", r[1]);
        assert!(matches!(&r[0].outcome, TargetOutcome::Exited { by, .. } if by == "SIGINT"));
        assert!(matches!(&r[1].outcome, TargetOutcome::Exited { by, .. } if by == "SIGQUIT"));
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGINT));
        assert_eq!(stopped_child.wait().unwrap().signal(), Some(libc::SIGQUIT));
    }

    #[test]
    fn a_stopped_holder_gets_sigcont_after_sigterm_and_exits_within_the_grace() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let pid = nix::unistd::Pid::from_raw(child.id() as i32);
        nix::sys::signal::kill(pid, nix::sys::signal::SIGSTOP).unwrap();
        // WUNTRACED: returns once the child has stopped (an event, not a sleep).
        let status = nix::sys::wait::waitpid(pid, Some(nix::sys::wait::WaitPidFlag::WUNTRACED));
        assert!(
            matches!(status, Ok(nix::sys::wait::WaitStatus::Stopped(..))),
            "{status:?}"
        );
        assert!(stopped(child.id()));
        let id = Identity::read(child.id()).unwrap();
        let grace = Duration::from_secs(8);
        let r = stop(&[id], &opts(grace));
        let names: Vec<_> = r[0].signals.iter().map(|s| s.signal.as_str()).collect();
        assert_eq!(names, ["SIGTERM", "SIGCONT"], "{:?}", r[0]);
        match &r[0].outcome {
            TargetOutcome::Exited { by, after_ms } => {
                assert_eq!(by, "SIGTERM");
                // Without SIGCONT it would be killed only after the grace.
                assert!(
                    *after_ms < grace.as_millis() as u64,
                    "exited {after_ms} ms after SIGTERM"
                );
            }
            other => panic!("{other:?}"),
        }
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(child.wait().unwrap().signal(), Some(libc::SIGTERM));
    }

    #[test]
    fn sigkill_after_the_grace_when_sigterm_is_ignored() {
        // `trap '' TERM` makes the shell ignore SIGTERM; it says "ready" only
        // after the trap is set, so the test waits on that line, not a sleep.
        use std::io::BufRead;
        let mut child = std::process::Command::new("sh")
            .args(["-c", "trap '' TERM; echo ready; while :; do sleep 1; done"])
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap();
        let mut line = String::new();
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert_eq!(line.trim(), "ready");
        let pid = child.id();
        let id = Identity::read(pid).unwrap();
        let r = stop(&[id], &opts(Duration::from_millis(100)));
        let names: Vec<_> = r[0].signals.iter().map(|s| s.signal.as_str()).collect();
        assert_eq!(names, ["SIGTERM", "SIGKILL"]);
        assert!(matches!(&r[0].outcome, TargetOutcome::Exited { by, .. } if by == "SIGKILL"));
        child.wait().unwrap();
    }

    #[test]
    fn waves_signal_the_root_first_and_spare_a_member_that_exits_with_it() {
        let spawn = || {
            std::process::Command::new("sleep")
                .arg("30")
                .spawn()
                .unwrap()
        };
        let grace = Duration::from_millis(200);
        // Both outlive the root's SIGTERM: the member gets its own after the grace.
        let (mut root, mut member) = (spawn(), spawn());
        let ids = [
            (Identity::read(root.id()).unwrap(), 0, Signal::Term),
            (Identity::read(member.id()).unwrap(), 1, Signal::Term),
        ];
        let r = stop_in_waves(&ids, &opts(grace), &mut |_| {});
        assert_eq!(r[0].signals.len(), 1);
        assert_eq!(r[1].signals.len(), 1);
        let gap = r[1].signals[0].at_ms - r[0].signals[0].at_ms;
        // at_ms is rounded to microseconds and subtracted as floats: allow
        // a millisecond below the grace (a member signalled with the root
        // would show a gap near 0).
        assert!(
            gap >= 199.0,
            "the member was signalled {gap} ms after the root"
        );
        root.wait().unwrap();
        member.wait().unwrap();

        // The member exits during the root's grace (as nginx workers do
        // when their master stops): it is never signalled.
        let (mut root, member) = (spawn(), std::cell::RefCell::new(spawn()));
        let ids = [
            (Identity::read(root.id()).unwrap(), 0, Signal::Term),
            (
                Identity::read(member.borrow().id()).unwrap(),
                1,
                Signal::Term,
            ),
        ];
        let mut seen = Vec::new();
        let r = stop_in_waves(&ids, &opts(Duration::from_secs(5)), &mut |s| {
            seen.push(s.pid);
            member.borrow_mut().kill().unwrap();
        });
        assert_eq!(seen, [root.id()]);
        assert!(r[1].signals.is_empty());
        assert!(
            matches!(&r[1].outcome, TargetOutcome::Exited { by, .. } if by == "its tree root's SIGTERM"),
            "{:?}",
            r[1]
        );
        root.wait().unwrap();
        member.borrow_mut().wait().unwrap();
    }

    #[test]
    fn a_changed_identity_is_never_signalled() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let mut id = Identity::read(child.id()).unwrap();
        id.start_ticks += 1;
        let r = stop(&[id], &opts(Duration::from_secs(1)));
        assert!(r[0].signals.is_empty());
        assert!(
            matches!(&r[0].outcome, TargetOutcome::IdentityChanged { changes } if changes[0].contains("start time"))
        );
        // Still alive: a zero-timeout check on its own pidfd.
        assert!(!Pidfd::open(child.id()).unwrap().exited());
        child.kill().unwrap();
        child.wait().unwrap();
    }
}

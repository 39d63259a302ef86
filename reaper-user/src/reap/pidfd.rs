//! Process file descriptors: a handle on one process that stays bound to it
//! even if its pid is reused, so a signal sent through it can only reach the
//! process it was opened on; and it becomes readable when that process
//! exits, so waiting for an exit is an event rather than a sleep.

use std::io;
use std::os::fd::{AsFd, AsRawFd, OwnedFd};
use std::time::{Duration, Instant};

/// An open pidfd.
#[derive(Debug)]
pub struct Pidfd {
    fd: OwnedFd,
    pub pid: u32,
}

impl Pidfd {
    /// `pidfd_open(2)`. ESRCH: no such process (it is gone).
    pub fn open(pid: u32) -> io::Result<Pidfd> {
        Ok(Pidfd {
            fd: crate::sys::pidfd_open(pid)?,
            pid,
        })
    }

    /// `pidfd_send_signal(2)`: reaches this process or nobody (ESRCH once it
    /// has exited, even if its pid now names another process).
    pub fn send(&self, signal: i32) -> io::Result<()> {
        crate::sys::pidfd_send_signal(self.fd.as_fd(), signal)
    }

    /// Whether the process has exited (the pidfd is readable), without waiting.
    pub fn exited(&self) -> bool {
        matches!(wait_any(&[self], Duration::ZERO), Ok(v) if !v.is_empty())
    }
}

/// Waits until at least one of `fds` is readable (its process exited) or
/// `timeout` passes. Returns the indexes of the exited ones (empty on timeout).
pub fn wait_any(fds: &[&Pidfd], timeout: Duration) -> io::Result<Vec<usize>> {
    let mut pfds: Vec<libc::pollfd> = fds
        .iter()
        .map(|p| libc::pollfd {
            fd: p.fd.as_raw_fd(),
            events: libc::POLLIN,
            revents: 0,
        })
        .collect();
    let end = Instant::now() + timeout;
    loop {
        let left = end.saturating_duration_since(Instant::now());
        // Round up so a 0.5 ms remainder does not become a busy 0 ms poll.
        let ms = left.as_micros().div_ceil(1000).min(i32::MAX as u128) as i32;
        match crate::sys::poll(&mut pfds, ms) {
            Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e),
            Ok(_) => {}
        }
        return Ok(pfds
            .iter()
            .enumerate()
            .filter(|(_, p)| p.revents & (libc::POLLIN | libc::POLLHUP | libc::POLLERR) != 0)
            .map(|(i, _)| i)
            .collect());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pidfd_sees_a_child_exit_as_an_event() {
        let mut child = std::process::Command::new("sleep")
            .arg("30")
            .spawn()
            .unwrap();
        let fd = Pidfd::open(child.id()).unwrap();
        assert!(!fd.exited());
        assert!(wait_any(&[&fd], Duration::from_millis(5))
            .unwrap()
            .is_empty());
        fd.send(libc::SIGTERM).unwrap();
        let t = Instant::now();
        assert_eq!(wait_any(&[&fd], Duration::from_secs(10)).unwrap(), vec![0]);
        assert!(t.elapsed() < Duration::from_secs(10));
        let status = child.wait().unwrap();
        use std::os::unix::process::ExitStatusExt;
        assert_eq!(status.signal(), Some(libc::SIGTERM));
        // Reaped: the pidfd still names the dead process, never a new one.
        assert_eq!(
            fd.send(libc::SIGTERM).unwrap_err().raw_os_error(),
            Some(libc::ESRCH)
        );
    }

    #[test]
    fn pidfd_open_on_a_missing_pid_says_esrch() {
        // pid_max is at most 2^22: this pid cannot exist.
        let e = Pidfd::open(4_194_305).unwrap_err();
        assert!(matches!(
            e.raw_os_error(),
            Some(libc::ESRCH) | Some(libc::EINVAL)
        ));
    }
}

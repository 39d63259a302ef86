//! Small shared pieces: clocks, names of protocols and errnos, parsing of
//! ports and durations from the command line, the accept loops' back-off.

use std::time::Duration;

use anyhow::Result;
use chrono::{DateTime, Utc};

/// Parses a port given on the command line: 1..=65535, with an error that
/// says what is wrong and what is allowed.
pub fn parse_port(s: &str) -> std::result::Result<u16, String> {
    let n: u64 = s
        .trim()
        .parse()
        .map_err(|_| format!("'{s}' is not a port number: give a number from 1 to 65535"))?;
    match n {
        0 => Err("port 0 is not a port anyone can hold (it asks the kernel for any free port): give a number from 1 to 65535".into()),
        1..=65535 => Ok(n as u16),
        _ => Err(format!("port {n} is out of range: give a number from 1 to 65535")),
    }
}

/// A duration as reaper words it everywhere (reports, verdict reasons,
/// `who`, `watch`, `free`): "412 ms", "4.2 s", "3m 05s", "2h 14m", "1d 3h".
pub fn human_ms(ms: u64) -> String {
    let s = ms / 1000;
    match ms {
        0..=999 => format!("{ms} ms"),
        1000..=59_999 => format!("{}.{} s", s, (ms % 1000) / 100),
        60_000..=3_599_999 => format!("{}m {:02}s", s / 60, s % 60),
        3_600_000..=86_399_999 => format!("{}h {:02}m", s / 3600, (s % 3600) / 60),
        _ => format!("{}d {}h", s / 86_400, (s % 86_400) / 3600),
    }
}

/// [`human_ms`] of a [`Duration`].
pub fn human_duration(d: Duration) -> String {
    human_ms(u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// Parses a duration like `500ms`, `2s`, `1m30s` (humantime), or a bare
/// number of seconds.
pub fn parse_duration(s: &str) -> std::result::Result<Duration, String> {
    let t = s.trim();
    if let Ok(secs) = t.parse::<f64>() {
        if secs.is_finite() && secs >= 0.0 {
            return Ok(Duration::from_secs_f64(secs));
        }
    }
    humantime::parse_duration(t)
        .map_err(|e| format!("'{s}' is not a duration ({e}): write e.g. 500ms, 2s, 1m30s"))
}

/// Name of an errno value (positive), as scripts expect: "EADDRINUSE".
pub fn errno_name(errno: i32) -> String {
    let name = match errno {
        libc::EADDRINUSE => "EADDRINUSE",
        libc::EACCES => "EACCES",
        libc::EPERM => "EPERM",
        libc::EADDRNOTAVAIL => "EADDRNOTAVAIL",
        libc::EINVAL => "EINVAL",
        libc::EAFNOSUPPORT => "EAFNOSUPPORT",
        libc::EBADF => "EBADF",
        libc::ENOTSOCK => "ENOTSOCK",
        libc::EFAULT => "EFAULT",
        libc::ENOMEM => "ENOMEM",
        libc::ENOBUFS => "ENOBUFS",
        libc::EOPNOTSUPP => "EOPNOTSUPP",
        libc::ENOENT => "ENOENT",
        libc::ESRCH => "ESRCH",
        libc::E2BIG => "E2BIG",
        libc::ENOSPC => "ENOSPC",
        _ => return format!("E{errno}"),
    };
    name.to_string()
}

/// Converts CLOCK_BOOTTIME nanoseconds (what the BPF side stamps) to wall
/// time, using the offset between the two clocks measured now.
#[derive(Clone, Copy, Debug)]
pub struct BootClock {
    /// realtime - boottime, in nanoseconds.
    offset_ns: i128,
}

impl BootClock {
    pub fn now() -> BootClock {
        let boot = clock_ns(libc::CLOCK_BOOTTIME);
        let real = clock_ns(libc::CLOCK_REALTIME);
        BootClock {
            offset_ns: real as i128 - boot as i128,
        }
    }
    pub fn to_wall(&self, boot_ns: u64) -> DateTime<Utc> {
        let ns = boot_ns as i128 + self.offset_ns;
        DateTime::from_timestamp_nanos(ns as i64)
    }
}

pub use crate::sys::clock_ns;

/// RFC 3339 with milliseconds, UTC: the one time format reaper prints.
pub fn rfc3339(t: DateTime<Utc>) -> String {
    t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// A comm from a NUL-padded kernel buffer.
pub fn comm_from_bytes(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// True when the effective uid is 0.
pub fn is_root() -> bool {
    nix::unistd::geteuid().is_root()
}

/// Fails with a message that says how to run as root.
pub fn require_root(what: &str) -> Result<()> {
    if !is_root() {
        anyhow::bail!(
            "{what} needs root (CAP_BPF, CAP_PERFMON, CAP_NET_ADMIN): run it with sudo, or use `--no-bpf` for the /proc scan"
        );
    }
    Ok(())
}

/// How the accept loops (control socket, metrics) wait after a failed
/// accept. A listener whose backlog holds a connection stays readable, so
/// when accept fails for want of a resource (EMFILE, ENFILE, ENOBUFS,
/// ENOMEM) retrying at once spins a core and floods the log until something
/// else frees a descriptor. The wait starts at 10 ms and doubles to 1 s;
/// an accepted connection resets it. A failure that belongs to one
/// connection (it was aborted or refused before accept returned) is retried
/// at once: the next one in the backlog may be fine.
#[derive(Debug)]
pub struct AcceptBackoff {
    next: Duration,
}

impl AcceptBackoff {
    pub const FIRST: Duration = Duration::from_millis(10);
    pub const MAX: Duration = Duration::from_secs(1);

    pub fn new() -> AcceptBackoff {
        AcceptBackoff { next: Self::FIRST }
    }

    /// After a failed accept: how long to wait before the next one (None:
    /// retry now). Anything not known to be one connection's own failure
    /// waits, so an unforeseen lasting error cannot spin either.
    pub fn after(&mut self, e: &std::io::Error) -> Option<Duration> {
        let one_connection = matches!(
            e.raw_os_error(),
            Some(
                libc::ECONNABORTED
                    | libc::ECONNRESET
                    | libc::EPROTO
                    | libc::EPERM
                    | libc::EINTR
                    | libc::EAGAIN
            )
        );
        if one_connection {
            return None;
        }
        let wait = self.next;
        self.next = (self.next * 2).min(Self::MAX);
        Some(wait)
    }

    /// After an accepted connection.
    pub fn reset(&mut self) {
        self.next = Self::FIRST;
    }
}

impl Default for AcceptBackoff {
    fn default() -> AcceptBackoff {
        AcceptBackoff::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_checked() {
        assert_eq!(parse_port("8080"), Ok(8080));
        assert!(parse_port("0").unwrap_err().contains("port 0"));
        assert!(parse_port("65536").unwrap_err().contains("out of range"));
        assert!(parse_port("http")
            .unwrap_err()
            .contains("not a port number"));
    }

    #[test]
    fn durations_read_well() {
        assert_eq!(human_ms(412), "412 ms");
        assert_eq!(human_ms(4_250), "4.2 s");
        assert_eq!(human_ms(185_000), "3m 05s");
        assert_eq!(human_ms(2 * 3_600_000 + 14 * 60_000), "2h 14m");
        assert_eq!(human_ms(27 * 3_600_000), "1d 3h");
        assert_eq!(human_duration(Duration::from_secs(30)), "30.0 s");
        assert_eq!(human_duration(Duration::MAX), human_ms(u64::MAX));
    }

    #[test]
    fn durations_accept_units_and_bare_seconds() {
        assert_eq!(parse_duration("500ms"), Ok(Duration::from_millis(500)));
        assert_eq!(parse_duration("2"), Ok(Duration::from_secs(2)));
        assert_eq!(parse_duration("1m30s"), Ok(Duration::from_secs(90)));
        assert!(parse_duration("soon").is_err());
    }

    #[test]
    fn errno_names() {
        assert_eq!(errno_name(98), "EADDRINUSE");
        assert_eq!(errno_name(13), "EACCES");
    }

    #[test]
    fn accept_backoff_grows_on_exhaustion_and_resets() {
        let emfile = std::io::Error::from_raw_os_error(libc::EMFILE);
        let mut b = AcceptBackoff::new();
        let waits: Vec<_> = (0..9).map(|_| b.after(&emfile).unwrap()).collect();
        let ms: Vec<u128> = waits.iter().map(|d| d.as_millis()).collect();
        assert_eq!(ms, [10, 20, 40, 80, 160, 320, 640, 1000, 1000]);
        for errno in [libc::ENFILE, libc::ENOBUFS, libc::ENOMEM] {
            assert!(b.after(&std::io::Error::from_raw_os_error(errno)).is_some());
        }
        b.reset();
        assert_eq!(b.after(&emfile), Some(AcceptBackoff::FIRST));
        let aborted = std::io::Error::from_raw_os_error(libc::ECONNABORTED);
        assert_eq!(b.after(&aborted), None);
    }
}

//! "Is the port free?" answered the only honest way: bind it as the next
//! user would (same family and address, SO_REUSEADDR for TCP, then listen),
//! in the namespace the port lives in, and close again at once.

use std::io;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr, SocketAddr};
use std::os::fd::{AsFd, OwnedFd};
use std::time::{Duration, Instant};

use crate::sys;
use crate::vocab::Proto;

/// One test bind to try.
#[derive(Debug)]
pub struct BindProbe {
    pub proto: Proto,
    pub addr: IpAddr,
    pub port: u16,
    /// For IPv6: leave IPV6_V6ONLY off, as a dual-stack `[::]` server would.
    pub dual_stack: bool,
    /// The network namespace to bind in (an fd on /proc/PID/ns/net, opened
    /// while the holder was alive); None: reaper's own namespace.
    pub netns: Option<OwnedFd>,
}

impl BindProbe {
    pub fn new(proto: Proto, addr: IpAddr, port: u16, dual_stack: bool) -> BindProbe {
        BindProbe {
            proto,
            addr,
            port,
            dual_stack,
            netns: None,
        }
    }

    /// The wildcard probes used when there is no holder to copy: 0.0.0.0 and
    /// a dual-stack [::] (the v6 one fails if either family is taken).
    pub fn wildcards(proto: Proto, port: u16) -> Vec<BindProbe> {
        let mut v = vec![BindProbe::new(
            proto,
            IpAddr::V4(Ipv4Addr::UNSPECIFIED),
            port,
            false,
        )];
        if ipv6_available() {
            v.push(BindProbe::new(
                proto,
                IpAddr::V6(Ipv6Addr::UNSPECIFIED),
                port,
                true,
            ));
        }
        v
    }

    /// "127.0.0.1:8080/tcp", "[::]:8080/tcp dual-stack".
    pub fn describe(&self) -> String {
        let a = match self.addr {
            IpAddr::V4(a) => format!("{a}:{}", self.port),
            IpAddr::V6(a) => format!("[{a}]:{}", self.port),
        };
        let ds = if self.dual_stack && self.addr.is_ipv6() {
            " dual-stack"
        } else {
            ""
        };
        format!("{a}/{}{ds}", self.proto)
    }

    /// One attempt, in the current thread's namespace. Ok: bindable.
    pub fn try_once(&self) -> io::Result<()> {
        let (domain, ty) = match (self.addr, self.proto) {
            (IpAddr::V4(_), Proto::Tcp) => (libc::AF_INET, libc::SOCK_STREAM),
            (IpAddr::V4(_), Proto::Udp) => (libc::AF_INET, libc::SOCK_DGRAM),
            (IpAddr::V6(_), Proto::Tcp) => (libc::AF_INET6, libc::SOCK_STREAM),
            (IpAddr::V6(_), Proto::Udp) => (libc::AF_INET6, libc::SOCK_DGRAM),
        };
        let sock = sys::socket(domain, ty)?;
        let fd = sock.as_fd();
        if self.proto == Proto::Tcp {
            // What nearly every TCP server sets (Rust's std, Go, nginx, ...):
            // without it a TIME_WAIT left by the old holder blocks the bind.
            sys::setsockopt_int(fd, libc::SOL_SOCKET, libc::SO_REUSEADDR, 1)?;
        }
        if self.addr.is_ipv6() {
            sys::setsockopt_int(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                if self.dual_stack { 0 } else { 1 },
            )?;
        }
        sys::bind(fd, SocketAddr::new(self.addr, self.port))?;
        // A bind can succeed next to a non-listening socket that listen(2)
        // then conflicts with; the next user will listen, so do we.
        if self.proto == Proto::Tcp {
            sys::listen(fd, 1)?;
        }
        Ok(())
    }
}

fn ipv6_available() -> bool {
    // Closed right away (dropped).
    sys::socket(libc::AF_INET6, libc::SOCK_DGRAM).is_ok()
}

/// The result of waiting for a port.
#[derive(Debug)]
pub struct BindWait {
    /// When every probe first succeeded; None: not before the deadline.
    pub free_at: Option<Instant>,
    pub attempts: u32,
    /// The last failure, with the probe it was on.
    pub last_error: Option<String>,
}

/// Tries every probe until all succeed in the same round or `deadline`
/// passes, backing off 1 ms, 2 ms, 4 ms ... capped at 50 ms between rounds.
/// Probes with a foreign `netns` run in a thread that entered it, so the
/// caller's own namespace never changes.
pub fn wait_bindable(probes: &[BindProbe], deadline: Instant) -> BindWait {
    // Group by namespace: our own first, then each foreign one in a thread.
    let (own, foreign): (Vec<&BindProbe>, Vec<&BindProbe>) =
        probes.iter().partition(|p| p.netns.is_none());
    let mut result = poll_group(&own, deadline);
    for p in foreign {
        let r = std::thread::scope(|s| {
            s.spawn(|| {
                let ns = p.netns.as_ref().expect("foreign probe has a netns");
                if let Err(e) = sys::setns_net(ns.as_fd()) {
                    return BindWait {
                        free_at: None,
                        attempts: 0,
                        last_error: Some(format!(
                            "cannot enter the holder's network namespace to test {} ({})",
                            p.describe(),
                            e
                        )),
                    };
                }
                poll_group(&[p], deadline)
            })
            .join()
            .unwrap_or(BindWait {
                free_at: None,
                attempts: 0,
                last_error: Some("the namespace probe thread panicked".into()),
            })
        });
        result.attempts += r.attempts;
        match (result.free_at, r.free_at) {
            (Some(a), Some(b)) => result.free_at = Some(a.max(b)),
            _ => {
                result.free_at = None;
                result.last_error = r.last_error.or(result.last_error);
            }
        }
    }
    result
}

fn poll_group(probes: &[&BindProbe], deadline: Instant) -> BindWait {
    let mut backoff = Duration::from_millis(1);
    let mut attempts = 0;
    loop {
        attempts += 1;
        let failure = probes.iter().find_map(|p| {
            p.try_once()
                .err()
                .map(|e| format!("{}: {}", p.describe(), errno_words(&e)))
        });
        match failure {
            None => {
                return BindWait {
                    free_at: Some(Instant::now()),
                    attempts,
                    last_error: None,
                }
            }
            Some(err) => {
                let now = Instant::now();
                if now >= deadline {
                    return BindWait {
                        free_at: None,
                        attempts,
                        last_error: Some(err),
                    };
                }
                std::thread::sleep(backoff.min(deadline - now));
                backoff = (backoff * 2).min(Duration::from_millis(50));
            }
        }
    }
}

fn errno_words(e: &io::Error) -> String {
    match e.raw_os_error() {
        Some(n) => format!("{} ({e})", crate::util::errno_name(n)),
        None => e.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::TcpListener;

    #[test]
    fn a_listening_port_is_not_bindable_and_becomes_so_when_closed() {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let probe = BindProbe::new(Proto::Tcp, "127.0.0.1".parse().unwrap(), port, false);
        assert_eq!(
            probe.try_once().unwrap_err().raw_os_error(),
            Some(libc::EADDRINUSE)
        );
        let w = wait_bindable(
            std::slice::from_ref(&probe),
            Instant::now() + Duration::from_millis(20),
        );
        assert!(w.free_at.is_none());
        assert!(w.attempts >= 2, "backs off and retries: {w:?}");
        assert!(w.last_error.unwrap().contains("EADDRINUSE"));
        drop(l);
        let w = wait_bindable(&[probe], Instant::now() + Duration::from_secs(5));
        assert!(w.free_at.is_some());
    }

    #[test]
    fn dual_stack_probe_sees_an_ipv4_holder() {
        if !ipv6_available() {
            return;
        }
        let l = TcpListener::bind("0.0.0.0:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let v6 = BindProbe::new(Proto::Tcp, IpAddr::V6(Ipv6Addr::UNSPECIFIED), port, true);
        assert!(v6.try_once().is_err());
        let v6only = BindProbe::new(Proto::Tcp, IpAddr::V6(Ipv6Addr::UNSPECIFIED), port, false);
        assert!(v6only.try_once().is_ok());
    }
}

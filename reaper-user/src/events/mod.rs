//! kernel hooks -> **ring buffer** -> ledger.
//!
//! Reads raw records from the BPF ring buffer (tokio `AsyncFd`) in batches,
//! into a reused buffer (no allocation per record), decodes them, and turns
//! them into [`Observation`]s for the ledger. In the cgroup tier the kernel
//! side already joined each bind with its request: one `BOUND` record per
//! success (flagged when the port was ephemeral), one `FAILED` record for a
//! fixed-port bind that never succeeded. The exact-errno tiers still send an
//! attempt and its outcome, joined here by thread id: a success (the
//! `post_bind` hook fired, with the real port), an exact failure, or an
//! inferred one (the thread moved on, the socket was released, or the
//! attempt settled without a success).

use std::collections::HashMap;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use anyhow::Result;
use aya::maps::{MapData, RingBuf};
use reaper_common::{
    Event, FLAG_EPHEMERAL, KIND_ATTEMPT, KIND_BOUND, KIND_CONNECT, KIND_FAILED, KIND_LISTEN,
    KIND_OUTCOME, KIND_RELEASE,
};
use tokio::io::unix::AsyncFd;

use crate::vocab::{Family, Proto};

/// How long after an attempt (by the kernel's clock) reaper waits for its
/// success before it calls the attempt failed. `post_bind` fires within
/// microseconds of the attempt in the same syscall.
pub const SETTLE_NS: u64 = 50_000_000;

/// How long the reader lets records gather after a wake-up. Latency of
/// `watch` grows by at most this; the ring buffer (256 KiB by default)
/// holds ~2,700 records, far more than a 5 ms burst at the highest rate
/// measured here.
pub const BATCH_WINDOW: std::time::Duration = std::time::Duration::from_millis(5);

/// An observation of the kernel side, after joining attempts to outcomes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Observation {
    /// A bind attempt and its result.
    Bind(BindResult),
    /// A TCP socket started listening.
    Listen(Event),
    /// A socket reaper saw bound or listening was released.
    Release(Event),
    /// A `connect()` was given a local port userspace watches (no task
    /// identity: see `reaper_common::KIND_CONNECT`).
    Connect(Event),
}

/// One bind attempt and what became of it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BindResult {
    /// The attempt (requested address and port).
    pub attempt: Event,
    /// The success record, with the port actually bound.
    pub bound: Option<Event>,
    /// Positive errno of a failure, when the kernel said (exact tiers).
    pub errno: Option<i32>,
    /// Whether `errno` came from the kernel.
    pub errno_exact: bool,
}

impl BindResult {
    pub fn ok(&self) -> bool {
        self.bound.is_some()
    }
    /// The port actually bound, or the requested one for a failure.
    pub fn port(&self) -> u16 {
        self.bound.map(|b| b.port).unwrap_or(self.attempt.port)
    }
    /// The bound address, or the requested one for a failure.
    pub fn addr(&self) -> IpAddr {
        let ev = self.bound.as_ref().unwrap_or(&self.attempt);
        event_addr(ev)
    }
}

/// The address in an event, by its family.
pub fn event_addr(ev: &Event) -> IpAddr {
    if ev.family == reaper_common::AF_INET6 {
        IpAddr::V6(Ipv6Addr::from(ev.addr))
    } else {
        IpAddr::V4(Ipv4Addr::new(
            ev.addr[0], ev.addr[1], ev.addr[2], ev.addr[3],
        ))
    }
}

pub fn event_proto(ev: &Event) -> Option<Proto> {
    Proto::from_ipproto(ev.protocol)
}

pub fn event_family(ev: &Event) -> Option<Family> {
    Family::from_af(ev.family)
}

/// Joins attempts to outcomes. Pure logic over decoded events, so it is
/// tested without a kernel.
#[derive(Default)]
pub struct Matcher {
    /// Unresolved attempts by thread id.
    pending: HashMap<u32, Event>,
    /// Whether an exact-errno tier is attached (outcomes will come).
    exact: bool,
}

impl Matcher {
    pub fn new(exact: bool) -> Matcher {
        Matcher {
            pending: HashMap::new(),
            exact,
        }
    }

    /// Feeds one event; pushes what it resolves to `out`, in order.
    pub fn feed(&mut self, ev: Event, out: &mut Vec<Observation>) {
        match ev.kind {
            KIND_ATTEMPT => {
                // Only inet stream/dgram sockets of TCP and UDP are claims.
                if event_proto(&ev).is_none() {
                    return;
                }
                // The thread started another bind: its previous one failed.
                if let Some(prev) = self.pending.insert(ev.tid, ev) {
                    out.push(failed(prev, None));
                }
            }
            KIND_BOUND => {
                if event_proto(&ev).is_none() {
                    return;
                }
                let attempt = match self.pending.get(&ev.tid) {
                    Some(a) if a.cookie == ev.cookie => self.pending.remove(&ev.tid).unwrap(),
                    // The cgroup tier joined the request kernel-side: only
                    // whether it asked for port 0 differs from the success.
                    _ if ev.flags & FLAG_EPHEMERAL != 0 => requested(ev, 0),
                    // A success without its attempt (the attempt was lost, or
                    // reaper started mid-bind): the success stands alone.
                    _ => ev,
                };
                out.push(Observation::Bind(BindResult {
                    attempt,
                    bound: Some(ev),
                    errno: None,
                    errno_exact: true,
                }));
            }
            // ret == 0: the success was reported by post_bind already.
            KIND_OUTCOME if ev.ret < 0 => {
                if let Some(a) = self.pending.remove(&ev.tid) {
                    out.push(failed(a, Some(-ev.ret)));
                }
            }
            KIND_FAILED => {
                if event_proto(&ev).is_none() {
                    return;
                }
                self.pending.retain(|_, a| a.cookie != ev.cookie);
                out.push(failed(requested(ev, ev.port), None));
            }
            KIND_LISTEN => out.push(Observation::Listen(ev)),
            KIND_CONNECT => out.push(Observation::Connect(ev)),
            KIND_RELEASE => {
                // A socket released while its bind was pending: that bind failed.
                let tids: Vec<u32> = self
                    .pending
                    .iter()
                    .filter(|(_, a)| a.cookie == ev.cookie)
                    .map(|(t, _)| *t)
                    .collect();
                for t in tids {
                    let a = self.pending.remove(&t).unwrap();
                    out.push(failed(a, None));
                }
                out.push(Observation::Release(ev));
            }
            _ => {}
        }
    }

    /// Resolves attempts that settled without a success. `now_ns` is
    /// CLOCK_BOOTTIME; call it after the ring buffer was drained.
    pub fn settle(&mut self, now_ns: u64, out: &mut Vec<Observation>) {
        let wait = if self.exact { SETTLE_NS * 4 } else { SETTLE_NS };
        let mut done: Vec<Event> = self
            .pending
            .values()
            .filter(|a| now_ns.saturating_sub(a.ts_ns) >= wait)
            .copied()
            .collect();
        done.sort_by_key(|a| a.ts_ns);
        for a in done {
            self.pending.remove(&a.tid);
            out.push(failed(a, None));
        }
    }

    /// Resolves everything still pending (at shutdown).
    pub fn flush(&mut self, out: &mut Vec<Observation>) {
        self.settle(u64::MAX, out);
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// The attempt a kernel-joined record stands for.
fn requested(mut ev: Event, port: u16) -> Event {
    ev.kind = KIND_ATTEMPT;
    ev.port = port;
    ev
}

fn failed(attempt: Event, errno: Option<i32>) -> Observation {
    Observation::Bind(BindResult {
        attempt,
        bound: None,
        errno_exact: errno.is_some(),
        errno,
    })
}

/// At most this many records are drained per batch: what a storm left in
/// the ring buffer is taken in slices, so the memory of one batch (records,
/// observations, journal lines) stays bounded however large the ring is.
pub const BATCH_MAX: usize = 4096;

/// The ring buffer, readable from tokio.
pub struct EventStream {
    fd: AsyncFd<RingBuf<MapData>>,
    /// The last drain stopped at [`BATCH_MAX`]: records are waiting, and the
    /// kernel does not wake a consumer that has not caught up.
    more: bool,
}

impl EventStream {
    pub fn new(ring: RingBuf<MapData>) -> Result<EventStream> {
        let fd = crate::sys::async_ring_buf(ring)
            .map_err(|e| anyhow::anyhow!("registering the ring buffer with tokio: {e}"))?;
        Ok(EventStream { fd, more: false })
    }

    /// Waits until the ring buffer has data, or `timeout` passes, then drains
    /// it into `out`. Returns the number of records that were too short to
    /// decode (an ABI mismatch; counted, never silent).
    pub async fn next_batch(
        &mut self,
        out: &mut Vec<Event>,
        timeout: std::time::Duration,
    ) -> Result<u64> {
        if self.more {
            // Records are waiting: take the next slice at once.
            tokio::task::yield_now().await;
        } else if let Ok(guard) = tokio::time::timeout(timeout, self.fd.readable_mut()).await {
            let mut guard = guard?;
            guard.clear_ready();
            // Let a burst gather before draining: while records wait unread,
            // the kernel does not wake this thread for each new one, so a
            // busy host pays one wake-up per batch instead of one per record.
            tokio::time::sleep(BATCH_WINDOW).await;
        }
        let (bad, more) = drain(self.fd.get_mut(), out, BATCH_MAX);
        self.more = more;
        Ok(bad)
    }

    /// Drains everything that is there without waiting.
    pub fn drain_now(&mut self, out: &mut Vec<Event>) -> u64 {
        self.more = false;
        drain(self.fd.get_mut(), out, usize::MAX).0
    }
}

/// Decodes up to `max` records into `out` (a buffer the caller reuses: no
/// allocation per record); returns the undecodable ones and whether `max`
/// was reached.
fn drain(ring: &mut RingBuf<MapData>, out: &mut Vec<Event>, max: usize) -> (u64, bool) {
    let mut bad = 0;
    let mut n = 0;
    while n < max {
        let Some(item) = ring.next() else {
            return (bad, false);
        };
        match Event::from_bytes(&item) {
            Some(ev) => out.push(ev),
            None => bad += 1,
        }
        n += 1;
    }
    (bad, true)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ev(kind: u8, tid: u32, cookie: u64, port: u16, ts: u64) -> Event {
        let mut e = Event::zeroed();
        e.kind = kind;
        e.tid = tid;
        e.tgid = tid;
        e.cookie = cookie;
        e.port = port;
        e.ts_ns = ts;
        e.family = reaper_common::AF_INET;
        e.protocol = reaper_common::IPPROTO_TCP;
        e
    }

    fn binds(out: &[Observation]) -> Vec<(u16, bool, Option<i32>, bool)> {
        out.iter()
            .filter_map(|o| match o {
                Observation::Bind(b) => Some((b.port(), b.ok(), b.errno, b.errno_exact)),
                _ => None,
            })
            .collect()
    }

    #[test]
    fn success_carries_the_real_port() {
        let mut m = Matcher::new(false);
        let mut out = vec![];
        m.feed(ev(KIND_ATTEMPT, 7, 1, 0, 10), &mut out);
        assert!(out.is_empty());
        m.feed(ev(KIND_BOUND, 7, 1, 41234, 11), &mut out);
        assert_eq!(binds(&out), vec![(41234, true, None, true)]);
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn an_attempt_without_success_settles_as_an_inferred_failure() {
        let mut m = Matcher::new(false);
        let mut out = vec![];
        m.feed(ev(KIND_ATTEMPT, 7, 1, 8080, 1_000), &mut out);
        m.settle(1_000 + SETTLE_NS - 1, &mut out);
        assert!(out.is_empty(), "not settled yet");
        m.settle(1_000 + SETTLE_NS, &mut out);
        assert_eq!(binds(&out), vec![(8080, false, None, false)]);
    }

    #[test]
    fn release_or_a_new_attempt_ends_a_pending_one() {
        let mut m = Matcher::new(false);
        let mut out = vec![];
        m.feed(ev(KIND_ATTEMPT, 7, 1, 8080, 1), &mut out);
        m.feed(ev(KIND_RELEASE, 7, 1, 0, 2), &mut out);
        assert_eq!(binds(&out), vec![(8080, false, None, false)]);
        assert!(matches!(out[1], Observation::Release(_)));
        out.clear();
        m.feed(ev(KIND_ATTEMPT, 8, 2, 9000, 3), &mut out);
        m.feed(ev(KIND_ATTEMPT, 8, 2, 9001, 4), &mut out);
        m.feed(ev(KIND_BOUND, 8, 2, 9001, 5), &mut out);
        assert_eq!(
            binds(&out),
            vec![(9000, false, None, false), (9001, true, None, true)]
        );
    }

    #[test]
    fn exact_outcomes_give_the_errno() {
        let mut m = Matcher::new(true);
        let mut out = vec![];
        m.feed(ev(KIND_ATTEMPT, 7, 1, 8080, 1), &mut out);
        let mut o = ev(KIND_OUTCOME, 7, 0, 0, 2);
        o.ret = -98;
        m.feed(o, &mut out);
        assert_eq!(binds(&out), vec![(8080, false, Some(98), true)]);
    }

    #[test]
    fn kernel_joined_records_make_one_observation_each() {
        let mut m = Matcher::new(false);
        let mut out = vec![];
        let mut b = ev(KIND_BOUND, 7, 1, 41234, 10);
        b.flags |= FLAG_EPHEMERAL;
        m.feed(b, &mut out);
        m.feed(ev(KIND_FAILED, 8, 2, 8080, 11), &mut out);
        assert_eq!(
            binds(&out),
            vec![(41234, true, None, true), (8080, false, None, false)]
        );
        match &out[0] {
            Observation::Bind(r) => assert_eq!(r.attempt.port, 0, "asked for port 0"),
            o => panic!("{o:?}"),
        }
        assert_eq!(m.pending(), 0);
    }

    #[test]
    fn non_tcp_udp_attempts_are_ignored() {
        let mut m = Matcher::new(false);
        let mut out = vec![];
        let mut e = ev(KIND_ATTEMPT, 7, 1, 8080, 1);
        e.protocol = 132; // SCTP
        m.feed(e, &mut out);
        assert_eq!(m.pending(), 0);
    }
}

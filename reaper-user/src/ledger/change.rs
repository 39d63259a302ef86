//! What an observation changed in the ledger, before any text is made of
//! it. A storm of short claims costs the daemon a claim made and a claim
//! ended, with no timestamp or address formatted: the daemon turns a
//! [`Change`] into a counter or a record, `reaper watch` into a [`Fact`]
//! (through [`Ledger::apply`]), both from the one ledger update here.

use reaper_common::Event;

use super::{ClaimKey, Fact, Ledger, RELEASED_KEPT};
use crate::events::{event_proto, BindResult, Observation};
use crate::vocab::{Family, Proto};

/// A claim made: the ledger holds it under `ev.cookie`.
#[derive(Clone, Copy, Debug)]
pub struct Bound {
    /// The success record, with the port actually bound.
    pub ev: Event,
    /// Where; `key.netns` is 0 when `netns` is unknown.
    pub key: ClaimKey,
    /// The network namespace's inode, when it was found.
    pub netns: Option<u64>,
    /// The port asked for, when it differs (0: the kernel chose).
    pub requested_port: Option<u16>,
}

/// A claim ended.
#[derive(Clone, Copy, Debug)]
pub struct Released {
    /// The release record.
    pub ev: Event,
    /// The claim's place and family.
    pub key: ClaimKey,
    pub family: Family,
    pub held_ms: u64,
}

/// What [`Ledger::apply_change`] did.
#[derive(Debug)]
pub enum Change {
    Bound(Bound),
    Released(Released),
    /// A listen or a failed bind: rare, and every one is recorded in full.
    Fact(Box<Fact>),
}

impl Ledger {
    /// Applies one observation; returns what it changed (None: nothing, as
    /// for the release of a socket that never held a port).
    pub fn apply_change(&mut self, obs: &Observation) -> Option<Change> {
        match obs {
            Observation::Bind(b) => Some(match b.bound {
                Some(ev) => Change::Bound(self.bound(b, ev)),
                None => Change::Fact(Box::new(self.apply_failed(b))),
            }),
            Observation::Listen(ev) => Some(Change::Fact(Box::new(self.apply_listen(ev)))),
            Observation::Release(ev) => self.release(ev).map(Change::Released),
            // Not a claim: the daemon records it on its own.
            Observation::Connect(_) => None,
        }
    }

    /// The fact of a change (`reaper watch --json`'s line).
    pub fn fact_of(&self, change: Change) -> Fact {
        match change {
            Change::Bound(b) => {
                let mut f = self.base_fact("bind", &b.ev, b.netns);
                f.requested_port = b.requested_port;
                f
            }
            Change::Released(r) => {
                let mut f = self.base_fact("release", &r.ev, Some(r.key.netns));
                f.proto = Some(r.key.proto);
                f.family = Some(r.family);
                f.addr = Some(r.key.addr.to_string());
                f.port = Some(r.key.port);
                f.held_ms = Some(r.held_ms);
                f
            }
            Change::Fact(f) => *f,
        }
    }

    /// A successful bind: the claim, in the ledger.
    fn bound(&mut self, b: &BindResult, ev: Event) -> Bound {
        let netns = self.netns.resolve(ev.netns_cookie, ev.tgid);
        let key = ClaimKey {
            netns: netns.unwrap_or(0),
            proto: event_proto(&ev).unwrap_or(Proto::Tcp),
            addr: b.addr(),
            port: b.port(),
        };
        let requested_port = (b.attempt.kind == reaper_common::KIND_ATTEMPT
            && b.attempt.port != ev.port)
            .then_some(b.attempt.port);
        let claim = self.claim(&ev, key, false, requested_port);
        if ev.flags & reaper_common::FLAG_UNSTORED != 0 {
            self.unstored.insert(ev.cookie);
        }
        self.claims.insert(ev.cookie, claim);
        Bound {
            ev,
            key,
            netns,
            requested_port,
        }
    }

    /// The release of a claim the ledger knows. A socket that never held a
    /// port (its bind failed) or one bound before reaper started changes
    /// nothing.
    fn release(&mut self, ev: &Event) -> Option<Released> {
        if !self.unstored.is_empty() {
            self.unstored.remove(&ev.cookie);
        }
        let c = self.claims.remove(&ev.cookie)?;
        let at = self.clock.to_wall(ev.ts_ns);
        // The release record leaves the socket's namespace to its claim.
        let mut ev = *ev;
        ev.netns_cookie = c.netns_cookie;
        let released = Released {
            ev,
            key: c.key,
            family: c.family,
            held_ms: (at - c.bound_at).num_milliseconds().max(0) as u64,
        };
        self.released.push_back((c, at));
        while self.released.len() > RELEASED_KEPT {
            self.released.pop_front();
        }
        Some(released)
    }
}

//! kernel hooks -> **claims map** -> ledger.
//!
//! The kernel side keeps every claim alive in the `CLAIMS` hash map (socket
//! cookie -> the record of its bind or listen; the release hook removes it).
//! This module reads it whole, in batches of a few thousand entries per
//! syscall (`BPF_MAP_LOOKUP_BATCH`, or key by key on kernels without it),
//! so the daemon can repair its ledger after a ring-buffer loss, and learn
//! the ephemeral claims the kernel summarised, without scanning /proc.

use std::io;

use aya::maps::MapData;
use reaper_common::Event;

use crate::sys::BpfHash;

/// Entries asked for per batch syscall.
const BATCH: usize = 4096;

/// The kernel-side claims map.
pub struct ClaimsMap {
    map: BpfHash<Event>,
    /// Whether the kernel answered BPF_MAP_LOOKUP_BATCH (None: not tried).
    batch_ok: Option<bool>,
    keys: Vec<u64>,
    values: Vec<Event>,
}

impl ClaimsMap {
    /// Err when the map's key or value is not the claim's (rebuild).
    pub fn new(data: MapData) -> io::Result<ClaimsMap> {
        Ok(ClaimsMap {
            map: BpfHash::new(data)?,
            batch_ok: None,
            keys: Vec::new(),
            values: Vec::new(),
        })
    }

    /// How many claims the map holds at most.
    pub fn capacity(&self) -> u32 {
        self.map.max_entries()
    }

    /// Every claim in the map now, into `out` (cleared first). A claim made
    /// or released during the read may or may not be in it. A fixed-port
    /// bind's request waiting for its outcome (kind `KIND_ATTEMPT`) is not a
    /// claim: it is left out.
    pub fn read_all(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        self.read_entries(out)?;
        out.retain(|e| e.kind != reaper_common::KIND_ATTEMPT);
        Ok(())
    }

    fn read_entries(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        out.clear();
        if self.batch_ok != Some(false) {
            match self.read_batched(out) {
                Ok(()) => {
                    self.batch_ok = Some(true);
                    return Ok(());
                }
                Err(e) if self.batch_ok.is_none() && unsupported(&e) => {
                    tracing::debug!("BPF_MAP_LOOKUP_BATCH not available ({e}): reading the claims map key by key");
                    self.batch_ok = Some(false);
                    out.clear();
                }
                Err(e) => return Err(e),
            }
        }
        self.read_keywise(out)
    }

    fn read_batched(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        self.keys.resize(BATCH, 0);
        self.values.resize(BATCH, Event::zeroed());
        // The hash map's batch token is its bucket index (a u32); room for 8.
        let mut token_in = [0u8; 8];
        let mut token_out = [0u8; 8];
        let mut first = true;
        loop {
            let (n, r) = self.map.lookup_batch(
                (!first).then_some(&token_in),
                &mut token_out,
                &mut self.keys,
                &mut self.values,
            );
            out.extend_from_slice(&self.values[..n]);
            match r {
                Ok(()) => {}
                // The end of the map.
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            }
            token_in = token_out;
            first = false;
        }
    }

    fn read_keywise(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        let mut key: Option<u64> = None;
        // A key deleted between two calls restarts the walk at the first
        // key: bound the walk so churn cannot keep it going.
        let limit = 2 * self.capacity() as usize + 16;
        for _ in 0..limit {
            let next = match self.map.next_key(key.as_ref()) {
                Ok(next) => next,
                Err(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Err(e) => return Err(e),
            };
            key = Some(next);
            // A claim released between the two calls is simply gone.
            if let Ok(value) = self.map.lookup(&next) {
                out.push(value);
            }
        }
        out.sort_by_key(|e| e.cookie);
        out.dedup_by_key(|e| e.cookie);
        Ok(())
    }
}

fn unsupported(e: &io::Error) -> bool {
    matches!(
        e.raw_os_error(),
        Some(libc::EINVAL) | Some(libc::ENOTSUP) | Some(524)
    )
}

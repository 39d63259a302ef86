//! kernel hooks -> **claims map** -> ledger.
//!
//! The kernel side keeps every claim alive in the `CLAIMS` hash map (socket
//! cookie -> the record of its bind or listen; the release hook removes it).
//! This module reads it whole, in batches of a few thousand entries per
//! syscall (`BPF_MAP_LOOKUP_BATCH`, or key by key on kernels without it),
//! so the daemon can repair its ledger after a ring-buffer loss, and learn
//! the ephemeral claims the kernel summarised, without scanning /proc.

use std::io;
use std::os::fd::{AsFd, AsRawFd};

use aya::maps::MapData;
use reaper_common::Event;

const BPF_MAP_LOOKUP_ELEM: libc::c_long = 1;
const BPF_MAP_GET_NEXT_KEY: libc::c_long = 4;
const BPF_MAP_LOOKUP_BATCH: libc::c_long = 24;
/// Entries asked for per batch syscall.
const BATCH: usize = 4096;

/// The kernel-side claims map.
pub struct ClaimsMap {
    data: MapData,
    capacity: u32,
    /// Whether the kernel answered BPF_MAP_LOOKUP_BATCH (None: not tried).
    batch_ok: Option<bool>,
    keys: Vec<u64>,
    values: Vec<Event>,
}

impl ClaimsMap {
    pub fn new(data: MapData) -> ClaimsMap {
        let capacity = data.info().map(|i| i.max_entries()).unwrap_or(0);
        ClaimsMap {
            data,
            capacity,
            batch_ok: None,
            keys: Vec::new(),
            values: Vec::new(),
        }
    }

    /// How many claims the map holds at most.
    pub fn capacity(&self) -> u32 {
        self.capacity
    }

    /// Every claim in the map now, into `out` (cleared first). A claim made
    /// or released during the read may or may not be in it.
    pub fn read_all(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
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

    fn fd(&self) -> u32 {
        self.data.fd().as_fd().as_raw_fd() as u32
    }

    fn read_batched(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        self.keys.resize(BATCH, 0);
        self.values.resize(BATCH, Event::zeroed());
        // The hash map's batch token is its bucket index (a u32); room for 8.
        let mut token_in = [0u8; 8];
        let mut token_out = [0u8; 8];
        let mut first = true;
        loop {
            #[repr(C)]
            struct BatchAttr {
                in_batch: u64,
                out_batch: u64,
                keys: u64,
                values: u64,
                count: u32,
                map_fd: u32,
                elem_flags: u64,
                flags: u64,
            }
            let mut attr = BatchAttr {
                in_batch: if first { 0 } else { token_in.as_ptr() as u64 },
                out_batch: token_out.as_mut_ptr() as u64,
                keys: self.keys.as_mut_ptr() as u64,
                values: self.values.as_mut_ptr() as u64,
                count: BATCH as u32,
                map_fd: self.fd(),
                elem_flags: 0,
                flags: 0,
            };
            // SAFETY: the attr points at buffers of BATCH keys and values of
            // the map's key and value sizes, alive for the call.
            let err = unsafe { crate::sys::bpf(BPF_MAP_LOOKUP_BATCH, &mut attr) }.err();
            let n = (attr.count as usize).min(BATCH);
            out.extend_from_slice(&self.values[..n]);
            match err {
                None => {}
                // The end of the map.
                Some(e) if e.raw_os_error() == Some(libc::ENOENT) => return Ok(()),
                Some(e) => return Err(e),
            }
            token_in = token_out;
            first = false;
        }
    }

    fn read_keywise(&mut self, out: &mut Vec<Event>) -> io::Result<()> {
        #[repr(C)]
        struct ElemAttr {
            map_fd: u32,
            _pad: u32,
            key: u64,
            value_or_next: u64,
            flags: u64,
        }
        let fd = self.fd();
        let mut key: u64 = 0;
        let mut next: u64 = 0;
        let mut first = true;
        // A key deleted between two calls restarts the walk at the first
        // key: bound the walk so churn cannot keep it going.
        let limit = 2 * self.capacity as usize + 16;
        for _ in 0..limit {
            let mut attr = ElemAttr {
                map_fd: fd,
                _pad: 0,
                key: if first { 0 } else { &key as *const u64 as u64 },
                value_or_next: &mut next as *mut u64 as u64,
                flags: 0,
            };
            // SAFETY: key and next are u64, the map's key size.
            if let Err(e) = unsafe { crate::sys::bpf(BPF_MAP_GET_NEXT_KEY, &mut attr) } {
                if e.raw_os_error() == Some(libc::ENOENT) {
                    return Ok(());
                }
                return Err(e);
            }
            first = false;
            key = next;
            let mut value = Event::zeroed();
            let mut attr = ElemAttr {
                map_fd: fd,
                _pad: 0,
                key: &key as *const u64 as u64,
                value_or_next: &mut value as *mut Event as u64,
                flags: 0,
            };
            // SAFETY: value is an Event, the map's value type.
            // A claim released between the two calls is simply gone.
            if unsafe { crate::sys::bpf(BPF_MAP_LOOKUP_ELEM, &mut attr) }.is_ok() {
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

//! reaper: who holds this port, since when, from which process tree and
//! network namespace, who failed to bind it, and is the holder stale?
//!
//! The flow, one module per box (read them in this order):
//!
//! ```text
//! hooks     kernel hooks (aya: load, probe tiers, attach)
//!   |
//! events    ring buffer -> decoded bind events
//!   |
//! ledger    claims per (netns, proto, addr, port), failed attempts
//!   |
//! holders   who holds a socket now: sock_diag + /proc (also the no-BPF path)
//!   |
//! conflict  a failed bind joined with the current holders
//!   |
//! policy    rules -> a verdict with reasons
//!   |
//! reap      pidfd-safe signalling, wait until the port binds again
//!   |
//! journal   JSON lines, versioned records
//!   |
//! report / metrics / control   forensics, Prometheus, the daemon's socket
//! ```
//!
//! Under all of them, `vocab` holds the words they share (protocol, family,
//! socket state, decision, action, outcome, source, signal, why a socket has
//! no process) and uses nothing of reaper's.
//!
//! The binary (`main.rs`) owns the command line: `cli` holds the clap
//! definitions, `commands` one function per subcommand over this library's
//! types; `main.rs` only parses and dispatches. The library exports what the
//! binary, the integration tests, the benchmarks and the fuzz targets use.

pub mod bindmodel;
pub mod caps;
mod conflict;
pub mod control;
pub mod daemon;
pub mod error;
pub mod events;
pub mod holders;
pub mod hooks;
pub mod job;
pub mod journal;
pub mod ledger;
pub mod metrics;
pub mod output;
pub mod policy;
pub mod proc;
pub mod progress;
pub mod reap;
pub mod report;
pub mod sys;
pub mod text;
pub(crate) mod users;
pub mod util;
pub mod vocab;

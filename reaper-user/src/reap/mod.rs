//! policy -> **reap** -> journal.
//!
//! Signals a stale holder without ever hitting the wrong process: a pidfd is
//! opened, the identity (start time, exe, cmdline) re-read and compared, and
//! signals go through the pidfd only. Then it waits, with a deadline and no
//! fixed sleeps, until the port can really be bound again.

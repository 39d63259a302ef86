//! Exit statuses and the errors that carry them.
//!
//! Every command returns `anyhow::Result<Exit>`. An error that should end with
//! a particular status wraps a [`Fail`]; anything else is an operational
//! failure (status 5). `main` prints one line: what failed, on what, and what
//! to do.

use std::fmt;

/// The exit statuses scripts rely on. Documented in the README and `--help`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exit {
    /// Success; for `who`: the port is held; for `free`: the port is free.
    Ok = 0,
    /// `who`: the port is not held by anyone.
    NotHeld = 1,
    /// Bad input: usage, a bad port, a bad config or policy file.
    BadInput = 2,
    /// `free`: still held after the deadline.
    StillHeld = 3,
    /// `free`: held by something the policy refuses to kill.
    Refused = 4,
    /// Could not do the job: needs root, BPF refused, I/O failure.
    Failed = 5,
    /// `free`: the port work succeeded (status 0 otherwise), but the
    /// journal record of it could not be written (disk full, read-only).
    Unrecorded = 6,
}

impl Exit {
    pub fn code(self) -> i32 {
        self as i32
    }
}

/// An error that ends the program with a chosen status.
#[derive(Debug)]
pub struct Fail {
    pub exit: Exit,
    pub message: String,
}

impl fmt::Display for Fail {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Fail {}

/// Bad input: ends with status 2.
pub fn bad_input(message: impl Into<String>) -> anyhow::Error {
    Fail {
        exit: Exit::BadInput,
        message: message.into(),
    }
    .into()
}

/// The status an error should end the program with.
pub fn exit_for(err: &anyhow::Error) -> Exit {
    err.chain()
        .find_map(|e| e.downcast_ref::<Fail>())
        .map(|f| f.exit)
        .unwrap_or(Exit::Failed)
}

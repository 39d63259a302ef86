//! Exit statuses and the errors that carry them.
//!
//! The library's edges return an [`Error`] whose kind says what went wrong:
//! bad input (a flag, a port, a file), a hook the kernel refused, hooks that
//! could not be attached, a holders scan that failed, or any other failure
//! (with its context chain). The exit status follows from the kind
//! ([`Error::exit`]); `main` prints one line: what failed, on what, and what
//! to do.

use std::error::Error as StdError;

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

/// What went wrong, by kind. The words are for people; the kind decides the
/// exit status.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Bad input: a flag, a port, a config, policy or journal path. The
    /// message names the problem and the fix.
    #[error("{0}")]
    BadInput(String),
    /// The kernel refused one of reaper's hooks (load or attach).
    #[error("the kernel refused {hook}: {reason} (see `reaper doctor`; `--hooks cgroup` is the most widely allowed tier, `--no-bpf` scans /proc instead)")]
    HookRefused { hook: String, reason: String },
    /// The hooks could not be loaded or attached for another reason (no
    /// cgroup v2, a map missing from the object, ...).
    #[error(transparent)]
    Attach(anyhow::Error),
    /// A holders scan (sock_diag, /proc) failed.
    #[error(transparent)]
    Scan(anyhow::Error),
    /// Anything else that kept reaper from doing the job, with its context.
    #[error(transparent)]
    Failed(#[from] anyhow::Error),
}

impl Error {
    /// The status this error ends the program with.
    pub fn exit(&self) -> Exit {
        match self {
            Error::BadInput(_) => Exit::BadInput,
            Error::HookRefused { .. } | Error::Attach(_) | Error::Scan(_) | Error::Failed(_) => {
                Exit::Failed
            }
        }
    }

    /// This error and its causes, outermost first.
    pub fn causes(&self) -> Vec<&(dyn StdError + 'static)> {
        match self {
            Error::Attach(e) | Error::Scan(e) | Error::Failed(e) => e.chain().collect(),
            other => {
                let mut causes: Vec<&(dyn StdError + 'static)> = Vec::new();
                let mut next: Option<&(dyn StdError + 'static)> = Some(other);
                while let Some(e) = next {
                    causes.push(e);
                    next = e.source();
                }
                causes
            }
        }
    }
}

/// An I/O failure (a write to a closed pipe included) is a failure.
impl From<std::io::Error> for Error {
    fn from(e: std::io::Error) -> Error {
        Error::Failed(e.into())
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Error {
        Error::Failed(e.into())
    }
}

/// Bad input: ends with status 2.
pub fn bad_input(message: impl Into<String>) -> Error {
    Error::BadInput(message.into())
}

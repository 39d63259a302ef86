//! The words every layer shares: protocol, family, socket state, decision,
//! action, outcome, source, signal, why a socket has no process, and the CI
//! job a process runs in.
//!
//! The bottom of the flow: every module may use these, and this module uses
//! nothing of reaper's. Each word serializes to exactly the string the JSON
//! and the journal carry (docs/schema.md, docs/journal.md).

use std::fmt;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// A word of the journal's schema whose values this version knows, and
/// which a newer writer may extend: read as the variant, or as `Other`
/// holding the word as written (written back unchanged), so a report of a
/// newer journal still shows it.
macro_rules! open_word {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $var:ident = $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, serde::Serialize, serde::Deserialize)]
        #[serde(from = "String", into = "String")]
        pub enum $name {
            $($(#[$vmeta])* $var,)+
            /// A word this version does not know, kept as written.
            Other(String),
        }

        impl $name {
            pub fn as_str(&self) -> &str {
                match self {
                    $($name::$var => $word,)+
                    $name::Other(s) => s,
                }
            }
        }

        impl From<String> for $name {
            fn from(s: String) -> $name {
                match s.as_str() {
                    $($word => $name::$var,)+
                    _ => $name::Other(s),
                }
            }
        }

        impl From<&str> for $name {
            fn from(s: &str) -> $name {
                $name::from(s.to_string())
            }
        }

        impl From<$name> for String {
            fn from(w: $name) -> String {
                match w {
                    $name::Other(s) => s,
                    known => known.as_str().to_string(),
                }
            }
        }

        impl std::fmt::Display for $name {
            fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str(self.as_str())
            }
        }
    };
}
pub(crate) use open_word;

/// A closed word: a `Copy` enum written as one fixed string each, with
/// `as_str`, `Display`, and serde through that string.
macro_rules! closed_word {
    ($(#[$meta:meta])* $name:ident { $($(#[$vmeta:meta])* $var:ident = $word:literal,)+ }) => {
        $(#[$meta])*
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum $name {
            $($(#[$vmeta])* $var,)+
        }

        impl $name {
            pub fn as_str(self) -> &'static str {
                match self {
                    $($name::$var => $word,)+
                }
            }

            /// The variant written `s`, if any.
            pub fn from_word(s: &str) -> Option<$name> {
                match s {
                    $($word => Some($name::$var),)+
                    _ => None,
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl Serialize for $name {
            fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_str(self.as_str())
            }
        }
    };
}

/// Transport protocol of a socket.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Proto {
    Tcp,
    Udp,
}

impl Proto {
    pub fn from_ipproto(p: u8) -> Option<Proto> {
        match p {
            6 => Some(Proto::Tcp),
            17 => Some(Proto::Udp),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            _ => Err(format!("unknown protocol '{s}': use tcp or udp")),
        }
    }
}

/// Address family.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Family {
    Ipv4,
    Ipv6,
}

impl Family {
    pub fn from_af(af: u8) -> Option<Family> {
        match af {
            2 => Some(Family::Ipv4),
            10 => Some(Family::Ipv6),
            _ => None,
        }
    }
    pub fn as_str(self) -> &'static str {
        match self {
            Family::Ipv4 => "ipv4",
            Family::Ipv6 => "ipv6",
        }
    }
}

closed_word! {
    /// A socket's state in `ss` words (LISTEN, ESTAB, TIME-WAIT, UNCONN, ...).
    SocketState {
        Established = "ESTAB",
        SynSent = "SYN-SENT",
        SynRecv = "SYN-RECV",
        FinWait1 = "FIN-WAIT-1",
        FinWait2 = "FIN-WAIT-2",
        TimeWait = "TIME-WAIT",
        /// A UDP socket with no peer.
        Unconn = "UNCONN",
        /// Bound but neither listening nor connected: it holds the port.
        BoundInactive = "BOUND-INACTIVE",
        CloseWait = "CLOSE-WAIT",
        LastAck = "LAST-ACK",
        Listen = "LISTEN",
        Closing = "CLOSING",
        NewSynRecv = "NEW-SYN-RECV",
        /// A TCP claim the daemon's ledger knows as bound, not (yet) listening.
        Bound = "BOUND",
        Unknown = "UNKNOWN",
    }
}

impl SocketState {
    /// A state as the kernel numbers it (include/net/tcp_states.h); UDP
    /// sockets report TCP_CLOSE (7) when unconnected.
    pub fn from_kernel(proto: Proto, state: u8) -> SocketState {
        match state {
            1 => SocketState::Established,
            2 => SocketState::SynSent,
            3 => SocketState::SynRecv,
            4 => SocketState::FinWait1,
            5 => SocketState::FinWait2,
            6 => SocketState::TimeWait,
            7 if proto == Proto::Udp => SocketState::Unconn,
            // A TCP socket in CLOSE that a dump returns at all is one from the
            // bind hash: bound, never listened or connected. The kernel (6.18)
            // reports it as TCP_CLOSE even when asked for TCP_BOUND_INACTIVE.
            7 => SocketState::BoundInactive,
            8 => SocketState::CloseWait,
            9 => SocketState::LastAck,
            10 => SocketState::Listen,
            11 => SocketState::Closing,
            12 => SocketState::NewSynRecv,
            13 => SocketState::BoundInactive,
            _ => SocketState::Unknown,
        }
    }

    /// Listening TCP or unconnected UDP: what serves new connections.
    pub fn is_listening(self) -> bool {
        matches!(self, SocketState::Listen | SocketState::Unconn)
    }
}

impl<'de> Deserialize<'de> for SocketState {
    /// A state this version does not know reads as `Unknown`.
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        Ok(SocketState::from_word(&s).unwrap_or(SocketState::Unknown))
    }
}

closed_word! {
    /// What the policy says about one holder.
    Decision {
        /// Stale: may be signalled.
        Reap = "reap",
        /// No rule asks for it (or the matching rule only reports): leave it.
        Keep = "keep",
        /// A protection holds: never signalled, whatever the rules say.
        Protect = "protect",
    }
}

closed_word! {
    /// What a matching rule asks for.
    Action {
        /// Signal the holder (SIGTERM, then SIGKILL after the grace).
        Reap = "reap",
        /// Only record and report the holder (the daemon's "tell me" mode).
        Report = "report",
    }
}

/// Reads a closed word, with an error naming the words allowed.
fn closed_from<'de, D: Deserializer<'de>, T>(
    d: D,
    read: fn(&str) -> Option<T>,
    allowed: &'static [&'static str],
) -> Result<T, D::Error> {
    let s = String::deserialize(d)?;
    read(&s).ok_or_else(|| serde::de::Error::unknown_variant(&s, allowed))
}

impl<'de> Deserialize<'de> for Decision {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        closed_from(d, Decision::from_word, &["reap", "keep", "protect"])
    }
}

impl<'de> Deserialize<'de> for Action {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        closed_from(d, Action::from_word, &["reap", "report"])
    }
}

open_word! {
    /// How a reaping ended.
    Outcome {
        /// The holder exited and the port could be bound again.
        Freed = "freed",
        /// The holder exited (or was signalled) but the port stayed held.
        StillHeld = "still_held",
        /// Nothing was signalled: a holder was not judged `reap`.
        Refused = "refused",
        /// The pid names another process than the one judged: not signalled.
        IdentityChanged = "identity_changed",
        /// Only TIME_WAIT held the port: nothing to signal.
        TimeWait = "time_wait",
        /// `--dry-run`: what would have been signalled.
        DryRun = "dry_run",
        /// The holder was gone before a signal was needed.
        Gone = "gone",
        /// pidfd_open or pidfd_send_signal failed for another reason.
        Failed = "failed",
        /// Written before the first signal; the outcome follows.
        InProgress = "in_progress",
        /// The daemon stopped in the middle of the reaping.
        Interrupted = "interrupted",
    }
}

open_word! {
    /// Where a fact came from: a kernel hook tier, or a scan of /proc.
    Source {
        Cgroup = "cgroup",
        Syscalls = "syscalls",
        Fexit = "fexit",
        /// A scan (sock_diag + /proc), no hooks.
        Proc = "proc",
    }
}

closed_word! {
    /// A signal reaper sends (through a pidfd), by its name.
    Signal {
        Term = "SIGTERM",
        Kill = "SIGKILL",
        /// Sent right after SIGTERM to a stopped target, so it can exit.
        Cont = "SIGCONT",
        Int = "SIGINT",
        Quit = "SIGQUIT",
        Hup = "SIGHUP",
        Usr1 = "SIGUSR1",
        Usr2 = "SIGUSR2",
    }
}

impl Signal {
    /// Every signal reaper knows, in the order above.
    pub const ALL: [Signal; 8] = [
        Signal::Term,
        Signal::Kill,
        Signal::Cont,
        Signal::Int,
        Signal::Quit,
        Signal::Hup,
        Signal::Usr1,
        Signal::Usr2,
    ];

    /// Its number, for pidfd_send_signal(2).
    pub fn number(self) -> i32 {
        match self {
            Signal::Term => libc::SIGTERM,
            Signal::Kill => libc::SIGKILL,
            Signal::Cont => libc::SIGCONT,
            Signal::Int => libc::SIGINT,
            Signal::Quit => libc::SIGQUIT,
            Signal::Hup => libc::SIGHUP,
            Signal::Usr1 => libc::SIGUSR1,
            Signal::Usr2 => libc::SIGUSR2,
        }
    }
}

impl Signal {
    /// The signals a rule or `free --signal` may choose to stop a holder
    /// with (the first one sent): every signal but SIGCONT, which stops
    /// nothing.
    pub const STOP: [Signal; 7] = [
        Signal::Term,
        Signal::Int,
        Signal::Quit,
        Signal::Hup,
        Signal::Usr1,
        Signal::Usr2,
        Signal::Kill,
    ];

    /// The signal with this number, among those reaper knows.
    pub fn from_number(n: i64) -> Option<Signal> {
        Signal::ALL.into_iter().find(|s| i64::from(s.number()) == n)
    }

    /// A stop signal as a user writes it ("SIGINT", "INT", "int", "2"):
    /// SIGCONT and unknown names are refused, with the choices.
    pub fn parse_stop(s: &str) -> Result<Signal, String> {
        match s.parse::<Signal>() {
            Ok(sig) if sig != Signal::Cont => Ok(sig),
            _ => Err(format!(
                "'{s}' is not a signal reaper stops a holder with: use one of {}",
                Signal::stop_choices()
            )),
        }
    }

    /// "SIGTERM (15, the default), SIGINT (2), ...": the stop signals in words.
    pub fn stop_choices() -> String {
        Signal::STOP
            .iter()
            .map(|s| match s {
                Signal::Term => format!("{s} ({}, the default)", s.number()),
                _ => format!("{s} ({})", s.number()),
            })
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl std::str::FromStr for Signal {
    type Err = String;
    /// "SIGTERM", "TERM", "term" or its number ("15").
    fn from_str(s: &str) -> Result<Signal, String> {
        let up = s.trim().to_ascii_uppercase();
        if let Ok(n) = up.parse::<i64>() {
            return Signal::from_number(n).ok_or_else(|| {
                format!(
                    "unknown signal number {n}: use one of {}",
                    Signal::ALL
                        .iter()
                        .map(|s| format!("{} ({s})", s.number()))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            });
        }
        let name = if up.starts_with("SIG") {
            up
        } else {
            format!("SIG{up}")
        };
        Signal::from_word(&name).ok_or_else(|| {
            let known: Vec<&str> = Signal::ALL.iter().map(|s| s.as_str()).collect();
            format!("unknown signal '{s}': use one of {}", known.join(", "))
        })
    }
}

impl<'de> Deserialize<'de> for Signal {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

closed_word! {
    /// Why a socket nobody holds is still there.
    UnownedReason {
        /// The kernel keeps the closed connection for its timer.
        TimeWait = "time-wait",
        /// No file refers to it any more (closed while data or a FIN was in
        /// flight: FIN-WAIT, LAST-ACK, CLOSING); the kernel finishes it alone.
        Orphaned = "orphaned",
        /// It has an inode, and some processes could not be read: the holder
        /// is probably among them.
        Unreadable = "unreadable",
        /// It has an inode and every process was read: held by the kernel
        /// itself, by a file in flight over a unix socket, or closed during
        /// the scan.
        NoProcess = "no-process",
        /// The daemon's ledger: the process that claimed it has exited.
        Exited = "exited",
    }
}

impl<'de> Deserialize<'de> for UnownedReason {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        closed_from(
            d,
            UnownedReason::from_word,
            &[
                "time-wait",
                "orphaned",
                "unreadable",
                "no-process",
                "exited",
            ],
        )
    }
}

/// A CI job, as its environment names it.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Job {
    /// `github`, `gitlab`, `jenkins`, `buildkite`.
    pub provider: String,
    /// The job's id for that provider (GitHub: the runner's tracking id).
    pub id: String,
    /// The run/pipeline/build it belongs to, when the environment says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub run: Option<String>,
    /// The job's name, when the environment says.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub name: Option<String>,
    /// No process of the job is attached to a live runner any more (None:
    /// not looked at).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ended: Option<bool>,
}

/// The job a claim is charged to, read by the daemon when the claim was
/// made, and how it knew.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Charge {
    pub job: Job,
    /// "environment" (the binder's own), "ancestor PID (COMM)" (the nearest
    /// ancestor naming a job, as it was at claim time), or "run and job
    /// name" (the binder's environment names only those, and one running
    /// job had them).
    pub via: String,
}

impl Job {
    /// The job's identity: provider and id.
    pub fn key(&self) -> (&str, &str) {
        (&self.provider, &self.id)
    }

    /// A GitHub job named by its run and job name only (the environment's
    /// tracking id was cleared): a matrix sibling may carry the same names.
    pub fn by_run_and_name_only(&self) -> bool {
        match (&self.run, &self.name) {
            (Some(r), Some(n)) => {
                self.provider == "github"
                    && self.id.len() == r.len() + 1 + n.len()
                    && self.id.starts_with(r.as_str())
                    && self.id.ends_with(n.as_str())
                    && self.id.as_bytes()[r.len()] == b'/'
            }
            _ => false,
        }
    }

    /// "github job github_9f2c… (ended)" in plain words.
    pub fn words(&self) -> String {
        let mut w = format!("{} job {}", self.provider, self.id);
        if let Some(n) = &self.name {
            w.push_str(&format!(" ({n})"));
        }
        match self.ended {
            Some(true) => w.push_str(", ended"),
            Some(false) => w.push_str(", running"),
            None => {}
        }
        w
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn words_serialize_as_the_json_has_them() {
        let j = |v: serde_json::Value| v.as_str().unwrap().to_string();
        assert_eq!(j(serde_json::json!(SocketState::TimeWait)), "TIME-WAIT");
        assert_eq!(j(serde_json::json!(SocketState::Listen)), "LISTEN");
        assert_eq!(j(serde_json::json!(Decision::Protect)), "protect");
        assert_eq!(j(serde_json::json!(Action::Report)), "report");
        assert_eq!(j(serde_json::json!(Signal::Kill)), "SIGKILL");
        assert_eq!(j(serde_json::json!(UnownedReason::NoProcess)), "no-process");
        assert_eq!(j(serde_json::json!(Outcome::StillHeld)), "still_held");
        for st in ["ESTAB", "BOUND-INACTIVE", "UNCONN", "NEW-SYN-RECV"] {
            let s: SocketState = serde_json::from_value(serde_json::json!(st)).unwrap();
            assert_eq!(s.as_str(), st);
        }
        let odd: SocketState = serde_json::from_str(r#""WEIRD""#).unwrap();
        assert_eq!(odd, SocketState::Unknown);
        assert!(serde_json::from_str::<Decision>(r#""maybe""#).is_err());
    }

    #[test]
    fn signals_parse_with_or_without_sig_and_carry_their_number() {
        assert_eq!("SIGTERM".parse::<Signal>(), Ok(Signal::Term));
        assert_eq!("hup".parse::<Signal>(), Ok(Signal::Hup));
        assert_eq!(Signal::Usr1.number(), libc::SIGUSR1);
        let e = "SIGFOO".parse::<Signal>().unwrap_err();
        assert!(e.contains("SIGQUIT"), "{e}");
        for s in Signal::ALL {
            assert_eq!(s.as_str().parse::<Signal>(), Ok(s));
            assert_eq!(s.number().to_string().parse::<Signal>(), Ok(s));
        }
        assert_eq!("2".parse::<Signal>(), Ok(Signal::Int));
        assert_eq!(" int ".parse::<Signal>(), Ok(Signal::Int));
        assert!("99".parse::<Signal>().unwrap_err().contains("15 (SIGTERM)"));
    }

    #[test]
    fn a_stop_signal_is_any_known_signal_but_sigcont() {
        assert_eq!(Signal::parse_stop("SIGQUIT"), Ok(Signal::Quit));
        assert_eq!(Signal::parse_stop("9"), Ok(Signal::Kill));
        for bad in ["SIGCONT", "18", "SIGFOO", "", "-2"] {
            let e = Signal::parse_stop(bad).unwrap_err();
            assert!(e.contains("SIGINT (2)"), "{bad}: {e}");
            assert!(e.contains("SIGTERM (15, the default)"), "{e}");
        }
    }

    #[test]
    fn kernel_states_read_as_ss_names() {
        assert_eq!(SocketState::from_kernel(Proto::Udp, 7), SocketState::Unconn);
        assert_eq!(
            SocketState::from_kernel(Proto::Tcp, 7),
            SocketState::BoundInactive
        );
        assert_eq!(
            SocketState::from_kernel(Proto::Tcp, 10),
            SocketState::Listen
        );
        assert_eq!(
            SocketState::from_kernel(Proto::Tcp, 99),
            SocketState::Unknown
        );
    }
}

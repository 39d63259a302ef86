//! ledger -> **control**: the daemon's Unix socket, answering `who`, `ports`
//! and recent conflicts for root peers only.
//!
//! Line-delimited JSON: one request object a line, one response object a
//! line, on one connection as many as the client likes. The socket is 0600
//! in a 0700 directory, and each peer's credentials (SO_PEERCRED) are checked
//! again: a non-root peer gets one error line and the connection is closed,
//! because the ledger names every process and command line on the host.
//!
//! [`query`] is the client `reaper who` and `reaper ports` use: `Ok(None)`
//! when no daemon answers, so they fall back to scanning.

use std::collections::{HashMap, VecDeque};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::fs::{DirBuilderExt, FileTypeExt, MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::net::UnixListener;

use crate::journal::Record;
use crate::ledger::{Claim, Ledger};
use crate::util::rfc3339;
use crate::vocab::{Proto, SocketState, Source, UnownedReason};

/// A request: `{"cmd":"who","port":8080,"proto":"tcp"}`, `{"cmd":"ports"}`,
/// `{"cmd":"conflicts","limit":50}`.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase", deny_unknown_fields)]
pub enum Request {
    /// Claims on one port, with their bind history.
    Who {
        port: u16,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proto: Option<Proto>,
        #[serde(default, skip_serializing_if = "Option::is_none")]
        netns: Option<u64>,
    },
    /// Every claim.
    Ports {
        #[serde(default, skip_serializing_if = "Option::is_none")]
        proto: Option<Proto>,
        /// Only listening TCP and bound UDP sockets.
        #[serde(default)]
        listening: bool,
    },
    /// The most recent conflicts, newest last.
    Conflicts {
        #[serde(default = "default_limit")]
        limit: usize,
    },
    /// A `reaper job start`/`job end` run, for the daemon's journal and
    /// metrics (the hook asked the daemon; the daemon writes its record).
    Job {
        record: Box<crate::journal::JobRecord>,
    },
}

fn default_limit() -> usize {
    50
}

/// A failed attempt on a claimed port.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct Attempt {
    pub ts: String,
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub netns: u64,
    pub errno: Option<String>,
    pub errno_exact: bool,
}

/// The binder's parent, read when the bind was seen.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Binder {
    pub ppid: Option<u32>,
    pub parent_comm: Option<String>,
    pub exe: Option<String>,
}

/// A claim as the control socket shows it.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ClaimView {
    pub netns: u64,
    pub proto: Proto,
    pub addr: String,
    pub port: u16,
    pub pid: u32,
    pub comm: String,
    pub uid: u32,
    pub cookie: u64,
    pub bound_at: String,
    pub listening_at: Option<String>,
    /// The tier that saw the bind, or "proc" for claims found by a scan
    /// (those predate the daemon, or were seen in degraded mode).
    pub source: Source,
    #[serde(flatten)]
    pub binder: Binder,
    /// The CI job the daemon charged the claim to when it was made, and
    /// how it knew ("environment", "ancestor PID (COMM)", ...).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job: Option<crate::vocab::Job>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub job_via: Option<String>,
    /// Recent failed binds of the same port and namespace, oldest first.
    pub failed_attempts: Vec<Attempt>,
}

/// The answer to one request.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Response {
    pub ok: bool,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// The attached tier, or "proc" in degraded mode.
    pub tier: String,
    pub degraded: bool,
    /// When the daemon started: claims older than this were found by a scan.
    pub since: String,
    #[serde(default)]
    pub claims: Vec<ClaimView>,
    #[serde(default)]
    pub conflicts: Vec<Record>,
    /// Where the daemon writes its journal (what `reaper report` reads).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub journal: Option<String>,
    /// The config's `[job] ports` (what `job start` checks without `--port`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub job_ports: Vec<u16>,
    /// `who`: each claim's process as the daemon read it from /proc when it
    /// answered (the details `reaper who` shows), so the client reads none
    /// itself. A pid that could not be read is absent (the client tries
    /// it); a daemon from before this field sends none.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub processes: Vec<crate::holders::Process>,
}

impl Response {
    /// Reads the process of each claim, once a pid, into `processes`.
    pub fn read_processes(&mut self) {
        let mut reader = crate::holders::process::Reader::new();
        let mut pids: Vec<u32> = self.claims.iter().map(|c| c.pid).collect();
        pids.sort_unstable();
        pids.dedup();
        self.processes = pids.into_iter().filter_map(|p| reader.process(p)).collect();
    }
}

/// What the daemon shares with the control socket. The loop holds the lock
/// only to apply a batch; a request holds it only to copy its answer.
pub struct Shared {
    pub ledger: Ledger,
    /// Per socket cookie: the binder's parent and exe, read at bind time
    /// (the binder may be gone when someone asks).
    pub binders: foldhash::HashMap<u64, std::sync::Arc<Binder>>,
    /// Recent conflict records, newest last.
    pub conflicts: VecDeque<Record>,
    pub tier: String,
    pub degraded: bool,
    pub since: String,
    /// The journal path, for clients that want the record.
    pub journal: Option<String>,
    /// Job hooks' runs waiting for the daemon's loop to journal them.
    pub job_records: Vec<crate::journal::JobRecord>,
    /// The config's `[job] ports`.
    pub job_ports: Vec<u16>,
}

/// Where the daemon listens, and where clients look, unless configured.
pub const DEFAULT_CONTROL_SOCKET: &str = "/run/reaper/reaper.sock";

/// How many job runs may wait for the daemon's loop.
const JOB_RECORDS_QUEUED: usize = 1000;

/// How many conflict records the control socket remembers.
pub const CONFLICTS_KEPT: usize = 1000;
/// How many failed attempts a claim view carries.
const ATTEMPTS_SHOWN: usize = 20;

impl Shared {
    pub fn new(ledger: Ledger, tier: &str, degraded: bool) -> Shared {
        Shared {
            ledger,
            binders: Default::default(),
            conflicts: VecDeque::new(),
            tier: tier.to_string(),
            degraded,
            since: rfc3339(chrono::Utc::now()),
            journal: None,
            job_records: Vec::new(),
            job_ports: Vec::new(),
        }
    }

    pub fn push_conflict(&mut self, r: Record) {
        self.conflicts.push_back(r);
        while self.conflicts.len() > CONFLICTS_KEPT {
            self.conflicts.pop_front();
        }
    }

    fn view(&self, c: &Claim) -> ClaimView {
        let mut failed: Vec<Attempt> = self
            .ledger
            .failures_on(c.key.port)
            .into_iter()
            .filter(|f| f.key.netns == c.key.netns && f.key.proto == c.key.proto)
            .map(|f| Attempt {
                ts: rfc3339(f.ts),
                pid: f.pid,
                comm: f.comm.clone(),
                uid: f.uid,
                netns: f.key.netns,
                errno: f.errno.map(crate::util::errno_name),
                errno_exact: f.errno_exact,
            })
            .collect();
        if failed.len() > ATTEMPTS_SHOWN {
            failed.drain(..failed.len() - ATTEMPTS_SHOWN);
        }
        ClaimView {
            netns: c.key.netns,
            proto: c.key.proto,
            addr: c.key.addr.to_string(),
            port: c.key.port,
            pid: c.pid,
            comm: c.comm.clone(),
            uid: c.uid,
            cookie: c.cookie,
            bound_at: rfc3339(c.bound_at),
            listening_at: c.listening_at.map(rfc3339),
            source: c.source.clone(),
            binder: self
                .binders
                .get(&c.cookie)
                .map(|b| Binder::clone(b))
                .unwrap_or_default(),
            job: c.job.as_ref().map(|j| j.job.clone()),
            job_via: c.job.as_ref().map(|j| j.via.clone()),
            failed_attempts: failed,
        }
    }

    /// Answers one request from the ledger (a job run is queued for the
    /// journal).
    pub fn answer(&mut self, req: &Request) -> Response {
        let mut r = Response {
            ok: true,
            error: None,
            tier: self.tier.clone(),
            degraded: self.degraded,
            since: self.since.clone(),
            claims: Vec::new(),
            conflicts: Vec::new(),
            journal: self.journal.clone(),
            job_ports: self.job_ports.clone(),
            processes: Vec::new(),
        };
        match req {
            Request::Who { port, proto, netns } => {
                r.claims = self
                    .ledger
                    .claims_on(*port, *proto, *netns)
                    .into_iter()
                    .map(|c| self.view(c))
                    .collect();
            }
            Request::Ports { proto, listening } => {
                let mut claims: Vec<&Claim> = self
                    .ledger
                    .claims()
                    .filter(|c| proto.is_none_or(|p| p == c.key.proto))
                    .filter(|c| !listening || c.key.proto == Proto::Udp || c.listening_at.is_some())
                    .collect();
                claims.sort_by_key(|c| (c.key.port, c.key.proto, c.key.netns, c.bound_at));
                r.claims = claims.into_iter().map(|c| self.view(c)).collect();
            }
            Request::Conflicts { limit } => {
                let skip = self.conflicts.len().saturating_sub(*limit);
                r.conflicts = self.conflicts.iter().skip(skip).cloned().collect();
            }
            Request::Job { record } => {
                if self.job_records.len() >= JOB_RECORDS_QUEUED {
                    return refusal(format!(
                        "the daemon has {JOB_RECORDS_QUEUED} job runs waiting for its journal: this one was not recorded"
                    ));
                }
                self.job_records.push((**record).clone());
            }
        }
        r
    }
}

fn refusal(error: String) -> Response {
    Response {
        ok: false,
        error: Some(error),
        ..Response::default()
    }
}

/// Creates the socket: its directory 0700 when missing, a stale socket
/// file from a crashed daemon removed, the socket 0600. Refuses to start
/// when another daemon answers there.
pub fn bind(path: &Path) -> Result<UnixListener> {
    if let Some(dir) = path.parent() {
        if !dir.exists() {
            std::fs::DirBuilder::new()
                .recursive(true)
                .mode(0o700)
                .create(dir)
                .with_context(|| {
                    format!("creating the control socket's directory {}", dir.display())
                })?;
        } else if let Ok(m) = std::fs::metadata(dir) {
            if m.mode() & 0o077 != 0 && dir != Path::new("/run") && dir != Path::new("/tmp") {
                tracing::warn!(
                    "the control socket's directory {} is mode {:o}: others can reach the socket file (it is 0600 and peers are checked, but 0700 is what the unit sets up)",
                    dir.display(),
                    m.mode() & 0o777
                );
            }
        }
    }
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            anyhow::bail!(
                "{} exists and is not a socket: refusing to replace it (remove it, or set `control_socket` elsewhere)",
                path.display()
            );
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            anyhow::bail!(
                "another reaper daemon answers on {}: stop it first, or give this one another `control_socket`",
                path.display()
            );
        }
        // Left by a daemon that did not stop cleanly.
        std::fs::remove_file(path)
            .with_context(|| format!("removing the stale control socket {}", path.display()))?;
    }
    let listener = UnixListener::bind(path)
        .with_context(|| format!("binding the control socket {}", path.display()))?;
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
        .with_context(|| format!("making the control socket {} mode 0600", path.display()))?;
    Ok(listener)
}

/// Serves requests until the task is dropped.
pub async fn serve(listener: UnixListener, shared: Arc<Mutex<Shared>>) {
    let mut backoff = crate::util::AcceptBackoff::new();
    loop {
        let conn = match listener.accept().await {
            Ok((c, _)) => {
                backoff.reset();
                c
            }
            Err(e) => {
                match backoff.after(&e) {
                    Some(wait) => {
                        tracing::warn!("control socket: accept failed: {e}; next try in {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                    None => tracing::debug!("control socket: accept failed: {e}"),
                }
                continue;
            }
        };
        let shared = shared.clone();
        tokio::spawn(async move {
            if let Err(e) = connection(conn, shared).await {
                tracing::debug!("control socket: a connection ended with an error: {e}");
            }
        });
    }
}

async fn connection(
    conn: tokio::net::UnixStream,
    shared: Arc<Mutex<Shared>>,
) -> std::io::Result<()> {
    let cred = conn.peer_cred()?;
    let (rd, mut wr) = conn.into_split();
    let mut lines = tokio::io::BufReader::new(rd).lines();
    if cred.uid() != 0 {
        // Take the request first (briefly), so a client that writes before
        // it reads gets the refusal instead of a broken pipe.
        let _ = tokio::time::timeout(Duration::from_millis(500), lines.next_line()).await;
        tracing::warn!(
            "control socket: refused a peer with uid {} (pid {:?}): only root may read the ledger",
            cred.uid(),
            cred.pid()
        );
        let mut line = serde_json::to_vec(&refusal(format!(
            "refused: the daemon's ledger answers root only (your uid is {}); run the command with sudo",
            cred.uid()
        )))?;
        line.push(b'\n');
        wr.write_all(&line).await?;
        return wr.shutdown().await;
    }
    while let Some(text) = lines.next_line().await? {
        if text.trim().is_empty() {
            continue;
        }
        let resp = match serde_json::from_str::<Request>(&text) {
            Ok(req) => {
                let mut resp = shared.lock().unwrap().answer(&req);
                // Read with the lock released: the loop applies batches.
                if matches!(req, Request::Who { .. }) {
                    resp.read_processes();
                }
                resp
            }
            Err(e) => refusal(format!(
                "bad request ({e}): send one JSON object a line, e.g. {{\"cmd\":\"who\",\"port\":8080,\"proto\":\"tcp\"}}, {{\"cmd\":\"ports\"}}, {{\"cmd\":\"conflicts\",\"limit\":50}}, {{\"cmd\":\"job\",\"record\":{{...}}}}"
            )),
        };
        let mut line = serde_json::to_vec(&resp)?;
        line.push(b'\n');
        wr.write_all(&line).await?;
    }
    Ok(())
}

/// The default socket path, overridable with REAPER_CONTROL_SOCKET (for
/// `reaper who`/`ports` against a daemon with another `control_socket`).
pub fn default_path() -> PathBuf {
    std::env::var_os("REAPER_CONTROL_SOCKET")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(DEFAULT_CONTROL_SOCKET))
}

/// Asks the daemon. `Ok(None)` when no daemon answers there (no socket,
/// nobody listening, or not allowed to connect): the caller scans instead.
/// A daemon that answers with an error is `Ok(Some(r))` with `r.ok == false`.
pub fn query(path: &Path, request: &Request) -> Result<Option<Response>> {
    use std::io::ErrorKind::*;
    let stream = match std::os::unix::net::UnixStream::connect(path) {
        Ok(s) => s,
        Err(e) if matches!(e.kind(), NotFound | ConnectionRefused | PermissionDenied) => {
            return Ok(None)
        }
        Err(e) => {
            return Err(e)
                .with_context(|| format!("connecting to the daemon at {}", path.display()))
        }
    };
    let timeout = Some(Duration::from_secs(5));
    stream.set_read_timeout(timeout)?;
    stream.set_write_timeout(timeout)?;
    let mut line = serde_json::to_vec(request)?;
    line.push(b'\n');
    (&stream)
        .write_all(&line)
        .with_context(|| format!("sending a request to the daemon at {}", path.display()))?;
    let mut answer = String::new();
    BufReader::new(&stream)
        .read_line(&mut answer)
        .with_context(|| {
            format!(
                "reading the daemon's answer on {} (is it stuck? see its log)",
                path.display()
            )
        })?;
    if answer.is_empty() {
        anyhow::bail!(
            "the daemon at {} closed the connection without answering",
            path.display()
        );
    }
    let resp = serde_json::from_str(&answer).with_context(|| {
        format!(
            "the daemon at {} answered something that is not a response",
            path.display()
        )
    })?;
    Ok(Some(resp))
}

/// The daemon's answer in the shape of a scan, so `reaper who`/`ports`
/// render it like their own: one holding per claim, the holder's details
/// as the daemon read them when it answered, or read from /proc now when it
/// sent none for the pid (it is root asking, as for a scan). The socket's
/// state is what the ledger saw: LISTEN, UNCONN (UDP) or BOUND. The tier is
/// in `gaps.socket_source` as "daemon:TIER".
pub fn scan_of(resp: &Response) -> crate::holders::Scan {
    use crate::holders::{Holding, Process, Scan, ScanGaps, Socket};
    let mut details: HashMap<u32, Option<Process>> = resp
        .processes
        .iter()
        .map(|p| (p.pid, Some(p.clone())))
        .collect();
    let mut holdings = Vec::new();
    let mut netns_seen = Vec::new();
    for c in &resp.claims {
        let addr: std::net::IpAddr = c
            .addr
            .parse()
            .unwrap_or(std::net::IpAddr::V4(std::net::Ipv4Addr::UNSPECIFIED));
        let socket = Socket {
            netns: c.netns,
            proto: c.proto,
            family: if addr.is_ipv6() {
                crate::vocab::Family::Ipv6
            } else {
                crate::vocab::Family::Ipv4
            },
            addr,
            port: c.port,
            peer: None,
            state: match (c.proto, &c.listening_at) {
                (Proto::Udp, _) => SocketState::Unconn,
                (Proto::Tcp, Some(_)) => SocketState::Listen,
                (Proto::Tcp, None) => SocketState::Bound,
            },
            inode: 0,
            cookie: c.cookie,
            uid: c.uid,
            dual_stack: false,
            timer_ms: None,
        };
        let mut process = details
            .entry(c.pid)
            .or_insert_with(|| crate::holders::process(c.pid))
            .clone();
        if let (Some(p), Some(j)) = (process.as_mut(), &c.job) {
            // The job charged at claim time, unless its environment names
            // one by its id now.
            if p.job.as_ref().is_none_or(|own| own.by_run_and_name_only()) {
                p.job = Some(j.clone());
            }
        }
        if !netns_seen.contains(&c.netns) {
            netns_seen.push(c.netns);
        }
        holdings.push(Holding {
            socket,
            unowned_reason: process.is_none().then_some(UnownedReason::Exited),
            processes: process.into_iter().collect(),
            container: None,
        });
    }
    netns_seen.sort_unstable();
    Scan {
        holdings,
        gaps: ScanGaps {
            socket_source: format!("daemon:{}", resp.tier),
            ..ScanGaps::default()
        },
        netns_seen,
        duration_ms: 0.0,
        ..Scan::default()
    }
}

/// "bound 12:01:02 by pid 4242 (parent 4200 bash); 3 failed binds since,
/// the last by pid 5151 (python3) EADDRINUSE": the history a scan cannot tell.
pub fn history_lines(resp: &Response) -> String {
    use crate::text::term;
    let mut out = String::new();
    for c in &resp.claims {
        let parent = match (c.binder.ppid, &c.binder.parent_comm) {
            (Some(p), Some(n)) => format!(" (parent {p} {})", term(n)),
            (Some(p), None) => format!(" (parent {p})"),
            _ => String::new(),
        };
        let how = if c.source == Source::Proc {
            "held before the daemon saw a bind (found by a scan), since".to_string()
        } else {
            "bound".to_string()
        };
        out.push_str(&format!(
            "  {}:{}/{} netns {}: {how} {} by pid {} ({}){parent}",
            c.addr,
            c.port,
            c.proto,
            c.netns,
            c.bound_at,
            c.pid,
            term(&c.comm)
        ));
        if let Some(l) = &c.listening_at {
            out.push_str(&format!(", listening since {l}"));
        }
        out.push('\n');
        if let Some(j) = &c.job {
            out.push_str(&format!(
                "    charged to {} when it was made (from {})\n",
                term(&j.words()),
                term(c.job_via.as_deref().unwrap_or("?"))
            ));
        }
        if let Some(last) = c.failed_attempts.last() {
            out.push_str(&format!(
                "    {} failed bind{} of it, the last at {} by pid {} ({}) {}\n",
                c.failed_attempts.len(),
                if c.failed_attempts.len() == 1 {
                    ""
                } else {
                    "s"
                },
                last.ts,
                last.pid,
                term(&last.comm),
                last.errno.as_deref().unwrap_or("cause unknown")
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_parse_as_documented() {
        let r: Request =
            serde_json::from_str(r#"{"cmd":"who","port":8080,"proto":"tcp"}"#).unwrap();
        assert_eq!(
            r,
            Request::Who {
                port: 8080,
                proto: Some(Proto::Tcp),
                netns: None
            }
        );
        let r: Request = serde_json::from_str(r#"{"cmd":"conflicts"}"#).unwrap();
        assert_eq!(r, Request::Conflicts { limit: 50 });
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"kill","pid":1}"#).is_err());
        assert!(serde_json::from_str::<Request>(r#"{"cmd":"who","port":8080,"x":1}"#).is_err());
    }

    fn claim(pid: u32) -> ClaimView {
        ClaimView {
            netns: 1,
            proto: Proto::Tcp,
            addr: "0.0.0.0".into(),
            port: 8080,
            pid,
            comm: "x".into(),
            uid: 0,
            cookie: 7,
            bound_at: "2026-01-01T00:00:00.000Z".into(),
            listening_at: None,
            source: Source::Proc,
            binder: Binder::default(),
            job: None,
            job_via: None,
            failed_attempts: Vec::new(),
        }
    }

    #[test]
    fn the_daemon_reads_each_claims_process_once_and_the_client_uses_it() {
        let me = std::process::id();
        let mut resp = Response {
            ok: true,
            claims: vec![claim(me), claim(me), claim(u32::MAX)],
            ..Response::default()
        };
        resp.read_processes();
        // One per pid; a pid that is not there is left to the client.
        assert_eq!(resp.processes.len(), 1);
        same(&resp.processes[0], &crate::holders::process(me).unwrap());
        // Through the wire and back, as `reaper who` gets it.
        let line = serde_json::to_string(&resp).unwrap();
        let back: Response = serde_json::from_str(&line).unwrap();
        assert_eq!(back.processes, resp.processes);
        // The client shows what the daemon sent, not a read of its own.
        let mut sent = back.clone();
        sent.processes[0].cmdline = vec!["as the daemon read it".into()];
        let scan = scan_of(&sent);
        assert_eq!(scan.holdings.len(), 3);
        assert_eq!(
            scan.holdings[0].processes[0].cmdline,
            ["as the daemon read it"]
        );
        assert!(scan.holdings[2].processes.is_empty());
        // A daemon that sends none: the client reads /proc itself.
        let mut old = back;
        old.processes.clear();
        assert!(!line.is_empty() && !serde_json::to_string(&old).unwrap().contains("processes"));
        let scan = scan_of(&old);
        same(
            &scan.holdings[0].processes[0],
            &crate::holders::process(me).unwrap(),
        );
    }

    /// Equal but for `started_at`, which is computed from two clocks read
    /// at each read and may fall either side of a millisecond: within one.
    fn same(a: &crate::holders::Process, b: &crate::holders::Process) {
        let at = |p: &crate::holders::Process| {
            chrono::DateTime::parse_from_rfc3339(&p.started_at)
                .unwrap()
                .timestamp_millis()
        };
        assert!((at(a) - at(b)).abs() <= 1, "{a:?}\n{b:?}");
        let mut b = b.clone();
        b.started_at = a.started_at.clone();
        assert_eq!(a, &b);
    }

    #[test]
    fn no_daemon_is_none() {
        let dir = tempfile::tempdir().unwrap();
        assert!(query(
            &dir.path().join("nope.sock"),
            &Request::Ports {
                proto: None,
                listening: false
            }
        )
        .unwrap()
        .is_none());
    }
}

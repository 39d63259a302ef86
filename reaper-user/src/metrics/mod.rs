//! journal -> **metrics**: the daemon's Prometheus text exposition.
//!
//! Counters and gauges the daemon's loop updates (atomics, so the HTTP task
//! never waits for the loop), rendered in the text format 0.0.4 on
//! `GET /metrics` by a small HTTP/1.1 server on tokio. One request per
//! connection; anything else than `GET /metrics` is a 404.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::{Context, Result};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpListener;

use crate::vocab::Outcome;

/// Upper bounds of the scan-duration histogram, in seconds: a targeted scan
/// takes milliseconds, a full one on a busy runner up to a second or more.
const SCAN_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0,
];

#[derive(Default)]
struct Histogram {
    buckets: Vec<u64>,
    sum: f64,
    count: u64,
}

/// Every figure the daemon exposes.
#[derive(Default)]
pub struct Metrics {
    pub binds: AtomicU64,
    pub listens: AtomicU64,
    pub releases: AtomicU64,
    /// Claims journaled as churn (in a `churn` summary, not line by line).
    pub churn_folded: AtomicU64,
    pub conflicts: AtomicU64,
    pub ringbuf_lost: AtomicU64,
    /// Claims the kernel-side claims map had no room for.
    pub claims_unstored: AtomicU64,
    /// The kernel-side claims map's size.
    pub claims_capacity: AtomicU64,
    /// Ephemeral binds the kernel side counted instead of sending.
    pub ephemeral_summarised: AtomicU64,
    /// Ledger repairs from the kernel-side claims map.
    pub repairs: AtomicU64,
    pub journal_errors: AtomicU64,
    pub ledger_claims: AtomicU64,
    pub degraded: AtomicU64,
    pub reloads: AtomicU64,
    /// Ports `job end` hooks freed.
    pub job_end_freed: AtomicU64,
    /// Leftovers job hooks found stale, by the leaking job's provider.
    job_leftovers: Mutex<BTreeMap<String, u64>>,
    bind_failures: Mutex<BTreeMap<String, u64>>,
    reapings: Mutex<BTreeMap<String, u64>>,
    tier: Mutex<String>,
    scans: Mutex<BTreeMap<String, Histogram>>,
}

/// The outcomes a daemon's reaping ends with, exported at 0 from the start:
/// `increase()` of a series that first appears at 1 is 0, so an alert on
/// the first failed reaping after a start would never fire.
const REAPING_OUTCOMES: &[Outcome] = &[
    Outcome::Freed,
    Outcome::StillHeld,
    Outcome::Refused,
    Outcome::IdentityChanged,
    Outcome::TimeWait,
    Outcome::Gone,
    Outcome::Failed,
    Outcome::Interrupted,
];

/// The errnos bind(2) fails with, by the names reaper reports (plus
/// UNKNOWN), exported at 0 from the start for the same reason.
fn bind_errnos() -> impl Iterator<Item = String> {
    [
        libc::EADDRINUSE,
        libc::EACCES,
        libc::EPERM,
        libc::EADDRNOTAVAIL,
        libc::EINVAL,
        libc::EAFNOSUPPORT,
        libc::EBADF,
        libc::ENOTSOCK,
        libc::EFAULT,
        libc::ENOMEM,
        libc::ENOBUFS,
        libc::EOPNOTSUPP,
    ]
    .into_iter()
    .map(crate::util::errno_name)
    .chain(["UNKNOWN".to_string()])
}

/// The CI providers `reaper job` knows, exported at 0 from the start.
const JOB_PROVIDERS: &[&str] = &["buildkite", "github", "gitlab", "jenkins"];

impl Metrics {
    /// A job hook's run, as it reported it to the daemon: its stale
    /// leftovers by the provider of the job that left them, and (job end)
    /// the ports it freed. Dry runs count nothing.
    pub fn job_run(&self, r: &crate::journal::JobRecord) {
        if r.dry_run {
            return;
        }
        let mut by = self.job_leftovers.lock().unwrap();
        for l in r
            .leftovers
            .iter()
            .filter(|l| l.decision == crate::vocab::Decision::Reap)
        {
            let provider = l.job.as_ref().unwrap_or(&r.job).provider.clone();
            *by.entry(provider).or_default() += 1;
        }
        if r.phase == "end" {
            let freed = r.ports.iter().filter(|p| p.outcome == "freed").count();
            self.job_end_freed.fetch_add(freed as u64, Relaxed);
        }
    }

    pub fn new(tier: &str) -> Arc<Metrics> {
        let m = Metrics::default();
        *m.tier.lock().unwrap() = tier.to_string();
        m.reapings
            .lock()
            .unwrap()
            .extend(REAPING_OUTCOMES.iter().map(|o| (o.as_str().to_string(), 0)));
        m.bind_failures
            .lock()
            .unwrap()
            .extend(bind_errnos().map(|e| (e, 0)));
        m.job_leftovers
            .lock()
            .unwrap()
            .extend(JOB_PROVIDERS.iter().map(|p| (p.to_string(), 0)));
        Arc::new(m)
    }

    pub fn set_tier(&self, tier: &str) {
        *self.tier.lock().unwrap() = tier.to_string();
    }

    pub fn bind_failure(&self, errno: &str) {
        *self
            .bind_failures
            .lock()
            .unwrap()
            .entry(errno.to_string())
            .or_default() += 1;
    }

    pub fn reaping(&self, outcome: &str) {
        *self
            .reapings
            .lock()
            .unwrap()
            .entry(outcome.to_string())
            .or_default() += 1;
    }

    /// Records how long a scan took; `kind` is "seed", "poll", "reconcile"
    /// or "conflict".
    pub fn scan(&self, kind: &str, took: Duration) {
        let mut scans = self.scans.lock().unwrap();
        let h = scans.entry(kind.to_string()).or_insert_with(|| Histogram {
            buckets: vec![0; SCAN_BUCKETS.len()],
            ..Histogram::default()
        });
        let s = took.as_secs_f64();
        for (i, le) in SCAN_BUCKETS.iter().enumerate() {
            if s <= *le {
                h.buckets[i] += 1;
            }
        }
        h.sum += s;
        h.count += 1;
    }

    /// The text exposition format, version 0.0.4.
    pub fn render(&self) -> String {
        let mut out = String::new();
        self.render_counters(&mut out);
        self.render_by_label(&mut out);
        self.render_gauges(&mut out);
        self.render_scans(&mut out);
        out
    }

    /// The plain counters.
    fn render_counters(&self, out: &mut String) {
        sample(
            "counter",
            out,
            "reaper_binds_total",
            "Successful binds seen.",
            self.binds.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_listens_total",
            "TCP sockets seen entering LISTEN.",
            self.listens.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_releases_total",
            "Claims seen released.",
            self.releases.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_journal_churn_claims_total",
            "Claims released within the churn window, journaled in churn summaries instead of a claim and a release line each.",
            self.churn_folded.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_conflicts_total",
            "Conflicts (bursts of failed binds of one netns/proto/port) opened.",
            self.conflicts.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_ringbuf_lost_events_total",
            "Events the kernel side could not hand over because the ring buffer was full.",
            self.ringbuf_lost.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_claims_unstored_total",
            "Claims the kernel-side claims map had no room for (it was full: see reaper_claims_map_capacity); they are known from their events only.",
            self.claims_unstored.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_ephemeral_binds_summarised_total",
            "Binds to port 0 the kernel side counted per process instead of sending each.",
            self.ephemeral_summarised.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_ledger_repairs_total",
            "Times the ledger was repaired from the kernel-side claims map (after losses, or to learn summarised claims).",
            self.repairs.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_journal_errors_total",
            "Journal records that could not be written.",
            self.journal_errors.load(Relaxed),
        );
        sample(
            "counter",
            out,
            "reaper_config_reloads_total",
            "Configs applied by SIGHUP.",
            self.reloads.load(Relaxed),
        );
    }

    /// The counters by errno and by outcome.
    fn render_by_label(&self, out: &mut String) {
        let _ = writeln!(out, "# HELP reaper_bind_failures_total Failed binds seen, by errno (UNKNOWN: the cause could not be found).");
        let _ = writeln!(out, "# TYPE reaper_bind_failures_total counter");
        for (errno, v) in self.bind_failures.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "reaper_bind_failures_total{{errno=\"{}\"}} {v}",
                escape(errno)
            );
        }
        let _ = writeln!(out, "# HELP reaper_job_leftovers_total Holders job start/end hooks found left by a job (stale), by the provider of the job that left them.");
        let _ = writeln!(out, "# TYPE reaper_job_leftovers_total counter");
        for (provider, v) in self.job_leftovers.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "reaper_job_leftovers_total{{provider=\"{}\"}} {v}",
                escape(provider)
            );
        }
        sample(
            "counter",
            out,
            "reaper_job_end_freed_total",
            "Ports job end hooks freed.",
            self.job_end_freed.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP reaper_reapings_total Holders the daemon tried to stop, by outcome."
        );
        let _ = writeln!(out, "# TYPE reaper_reapings_total counter");
        for (outcome, v) in self.reapings.lock().unwrap().iter() {
            let _ = writeln!(
                out,
                "reaper_reapings_total{{outcome=\"{}\"}} {v}",
                escape(outcome)
            );
        }
    }

    /// The gauges, the hook tier among them.
    fn render_gauges(&self, out: &mut String) {
        sample(
            "gauge",
            out,
            "reaper_ledger_claims",
            "Claims in the ledger now.",
            self.ledger_claims.load(Relaxed),
        );
        sample(
            "gauge",
            out,
            "reaper_claims_map_capacity",
            "Entries of the kernel-side claims map (claims_max; 0 without BPF).",
            self.claims_capacity.load(Relaxed),
        );
        sample(
            "gauge",
            out,
            "reaper_degraded",
            "1 when no BPF tier is attached and the daemon polls /proc instead.",
            self.degraded.load(Relaxed),
        );
        let _ = writeln!(
            out,
            "# HELP reaper_tier The attached hook tier (proc: degraded mode)."
        );
        let _ = writeln!(out, "# TYPE reaper_tier gauge");
        let _ = writeln!(
            out,
            "reaper_tier{{tier=\"{}\"}} 1",
            escape(&self.tier.lock().unwrap())
        );
    }

    /// The scan durations, one histogram per kind.
    fn render_scans(&self, out: &mut String) {
        let _ = writeln!(
            out,
            "# HELP reaper_scan_duration_seconds Duration of socket/process scans, by kind."
        );
        let _ = writeln!(out, "# TYPE reaper_scan_duration_seconds histogram");
        for (kind, h) in self.scans.lock().unwrap().iter() {
            let kind = escape(kind);
            for (i, le) in SCAN_BUCKETS.iter().enumerate() {
                let _ = writeln!(
                    out,
                    "reaper_scan_duration_seconds_bucket{{kind=\"{kind}\",le=\"{le}\"}} {}",
                    h.buckets[i]
                );
            }
            let _ = writeln!(
                out,
                "reaper_scan_duration_seconds_bucket{{kind=\"{kind}\",le=\"+Inf\"}} {}",
                h.count
            );
            let _ = writeln!(
                out,
                "reaper_scan_duration_seconds_sum{{kind=\"{kind}\"}} {}",
                h.sum
            );
            let _ = writeln!(
                out,
                "reaper_scan_duration_seconds_count{{kind=\"{kind}\"}} {}",
                h.count
            );
        }
    }
}

/// One unlabelled sample with its HELP and TYPE lines.
fn sample(kind: &str, out: &mut String, name: &str, help: &str, v: u64) {
    let _ = writeln!(
        out,
        "# HELP {name} {help}\n# TYPE {name} {kind}\n{name} {v}"
    );
}

/// Label values escape backslash, quote and newline.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\")
        .replace('"', "\\\"")
        .replace('\n', "\\n")
}

/// Binds the metrics address (so a bad address fails at start, with the
/// address in the error).
pub async fn bind(addr: SocketAddr) -> Result<TcpListener> {
    TcpListener::bind(addr).await.with_context(|| {
        format!("listening for /metrics on {addr} (is another reaper daemon running? change `metrics_listen` or set it to \"\")")
    })
}

/// Serves `/metrics` until the task is dropped.
pub async fn serve(listener: TcpListener, metrics: Arc<Metrics>) {
    let mut backoff = crate::util::AcceptBackoff::new();
    loop {
        let (mut conn, _) = match listener.accept().await {
            Ok(c) => {
                backoff.reset();
                c
            }
            Err(e) => {
                match backoff.after(&e) {
                    Some(wait) => {
                        tracing::warn!("metrics: accept failed: {e}; next try in {wait:?}");
                        tokio::time::sleep(wait).await;
                    }
                    None => tracing::debug!("metrics: accept failed: {e}"),
                }
                continue;
            }
        };
        let metrics = metrics.clone();
        tokio::spawn(async move {
            let answer = tokio::time::timeout(Duration::from_secs(5), async {
                let mut buf = Vec::with_capacity(1024);
                let mut chunk = [0u8; 1024];
                // Read the request head; the body (there is none for GET) is ignored.
                while !buf.windows(4).any(|w| w == b"\r\n\r\n") && buf.len() < 8192 {
                    let n = conn.read(&mut chunk).await?;
                    if n == 0 {
                        break;
                    }
                    buf.extend_from_slice(&chunk[..n]);
                }
                let head = String::from_utf8_lossy(&buf);
                let first = head.lines().next().unwrap_or("");
                let mut parts = first.split_whitespace();
                let (method, path) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
                let path = path.split('?').next().unwrap_or("");
                let (status, ctype, body) = match (method, path) {
                    ("GET", "/metrics") => ("200 OK", "text/plain; version=0.0.4; charset=utf-8", metrics.render()),
                    ("GET", "/") => ("200 OK", "text/plain; charset=utf-8", "reaper daemon: see /metrics\n".to_string()),
                    ("GET", _) => ("404 Not Found", "text/plain; charset=utf-8", "not found: try /metrics\n".to_string()),
                    _ => ("405 Method Not Allowed", "text/plain; charset=utf-8", "only GET\n".to_string()),
                };
                let resp = format!(
                    "HTTP/1.1 {status}\r\nContent-Type: {ctype}\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                conn.write_all(resp.as_bytes()).await?;
                conn.shutdown().await
            })
            .await;
            if let Ok(Err(e)) = answer {
                tracing::debug!("metrics: a scrape failed: {e}");
            }
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_every_family_with_help_and_type() {
        let m = Metrics::new("cgroup");
        m.binds.fetch_add(3, Relaxed);
        m.bind_failure("EADDRINUSE");
        m.reaping("freed");
        m.scan("seed", Duration::from_millis(30));
        let t = m.render();
        for name in [
            "reaper_binds_total 3",
            "reaper_bind_failures_total{errno=\"EADDRINUSE\"} 1",
            "reaper_reapings_total{outcome=\"freed\"} 1",
            "reaper_tier{tier=\"cgroup\"} 1",
            "reaper_degraded 0",
            "reaper_scan_duration_seconds_bucket{kind=\"seed\",le=\"0.05\"} 1",
            "reaper_scan_duration_seconds_bucket{kind=\"seed\",le=\"0.025\"} 0",
            "reaper_scan_duration_seconds_count{kind=\"seed\"} 1",
        ] {
            assert!(t.contains(name), "missing {name} in\n{t}");
        }
        assert_eq!(escape("a\"b\\c"), "a\\\"b\\\\c");
    }

    #[test]
    fn known_labels_are_exported_at_zero_before_their_first_event() {
        let t = Metrics::new("cgroup").render();
        for line in [
            "reaper_reapings_total{outcome=\"freed\"} 0",
            "reaper_reapings_total{outcome=\"still_held\"} 0",
            "reaper_reapings_total{outcome=\"failed\"} 0",
            "reaper_reapings_total{outcome=\"interrupted\"} 0",
            "reaper_bind_failures_total{errno=\"EADDRINUSE\"} 0",
            "reaper_bind_failures_total{errno=\"EACCES\"} 0",
            "reaper_bind_failures_total{errno=\"UNKNOWN\"} 0",
        ] {
            assert!(t.lines().any(|l| l == line), "missing {line} in\n{t}");
        }
        // Not a final outcome: never counted, so not exported.
        assert!(!t.contains("in_progress"), "{t}");
    }
}

//! daemon: **sink**: the journal the daemon writes: records queued for the
//! churn window (churn is folded into summaries there, see `churn.rs`) and
//! written in one write(2) at the end of a turn of the loop; what a journal
//! error does (`on_journal_error`).

use std::path::Path;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use chrono::Utc;

use crate::journal::writer::{JournalWriter, WriterOptions};
use crate::journal::{Body, Record};
use crate::metrics::Metrics;
use crate::util::rfc3339;
use crate::vocab::Source;

use super::churn::{wall, Churn, Due, PendingClaim};
use super::config::{Config, OnJournalError};
use super::recovery;
use super::Daemon;

/// The journal and the records queued for it.
pub(super) struct Sink {
    pub(super) journal: Option<JournalWriter>,
    /// The tier name, or "proc" in degraded mode: every record's `source`.
    pub(super) source: Source,
    host: String,
    /// Encoded records waiting for [`Daemon::flush`].
    pending: Vec<u8>,
    pending_records: usize,
    /// Records wait here for the churn window before they are written.
    pub(super) churn: Churn,
    /// Reused by [`Daemon::flush`].
    due: Vec<Due>,
    /// Set when a journal error must stop the daemon.
    pub(super) fatal: Option<anyhow::Error>,
}

impl Sink {
    pub(super) fn new(journal: Option<JournalWriter>, source: Source) -> Sink {
        Sink {
            journal,
            source,
            host: crate::journal::hostname(),
            pending: Vec::new(),
            pending_records: 0,
            churn: Churn::new(Duration::ZERO),
            due: Vec::new(),
            fatal: None,
        }
    }
}

/// The journal's last record (to know whether the last run stopped
/// cleanly); a torn last line is closed so that appends start clean.
pub(super) fn last_record(journal: &Path) -> Option<recovery::LastRecord> {
    let (last, torn) = recovery::last_record(journal).unwrap_or_else(|e| {
        tracing::warn!("cannot read the end of the journal: {e:#}");
        (None, false)
    });
    if torn {
        tracing::warn!(
            "the journal {} ends in a torn line (the last run died mid-write); it is kept and skipped by readers",
            journal.display()
        );
        if let Err(e) = recovery::close_torn_line(journal) {
            tracing::warn!("{e:#}");
        }
    }
    last
}

/// The journal for appending; when it cannot be opened, `on_journal_error`
/// decides between running without it and not starting.
pub(super) fn open_journal(config: &Config, metrics: &Metrics) -> Result<Option<JournalWriter>> {
    match JournalWriter::open(&config.journal, writer_options(config)) {
        Ok(j) => Ok(Some(j)),
        Err(e) if config.on_journal_error == OnJournalError::KeepRunning => {
            metrics.journal_errors.fetch_add(1, Relaxed);
            tracing::error!(
                "cannot open the journal {}: {e}; running without it (on_journal_error = \"keep-running\")",
                config.journal.display()
            );
            Ok(None)
        }
        Err(e) => Err(e).with_context(|| {
            format!(
                "opening the journal {} (on_journal_error = \"exit\")",
                config.journal.display()
            )
        }),
    }
}

pub(super) fn writer_options(c: &Config) -> WriterOptions {
    WriterOptions {
        max_bytes: (c.journal_max_bytes > 0).then_some(c.journal_max_bytes),
        keep: c.journal_keep,
        sync: c.fsync,
    }
}

impl Daemon {
    /// Queues a record; returns it (for the control socket). Records wait
    /// in the churn queue (`journal_churn_window`, see [`Churn`]) and are
    /// then written by [`Daemon::flush`] at the end of a turn of the loop,
    /// all due lines in one write(2): still whole lines at the end of the
    /// file (O_APPEND), one syscall per batch instead of one per bind under
    /// a storm. A crash loses at most the records of the last window.
    pub(super) fn journal(&mut self, body: Body) -> Record {
        let record = self.record(body);
        if self.sink.journal.is_some() {
            self.sink.churn.push(record.clone(), Instant::now());
        }
        record
    }

    /// Queues a claim that may turn out to be churn: its record is made
    /// only if it is written.
    pub(super) fn journal_claim(&mut self, claim: PendingClaim, now: Instant) {
        if self.sink.journal.is_some() {
            self.sink.churn.push_claim(claim, now);
        }
    }

    /// A record of now.
    fn record(&self, body: Body) -> Record {
        self.record_at(rfc3339(Utc::now()), body)
    }

    fn record_at(&self, ts: String, body: Body) -> Record {
        Record {
            v: crate::journal::SCHEMA_VERSION,
            ts,
            host: self.sink.host.clone(),
            source: self.sink.source.clone(),
            body,
        }
    }

    /// Writes the records whose churn window has passed (and queues the
    /// churn summaries that are due).
    pub(super) fn flush(&mut self) {
        let now = Instant::now();
        for body in self.sink.churn.summaries_due(now, false) {
            self.journal(body);
        }
        let mut due = std::mem::take(&mut self.sink.due);
        self.sink.churn.drain_due(now, &mut due);
        self.write_records(&mut due);
        self.sink.due = due;
    }

    /// Writes every record queued, now: the start's, a reaping's intent
    /// (before its first signal), a stop's.
    pub(super) fn flush_all(&mut self) {
        let mut due = std::mem::take(&mut self.sink.due);
        self.sink.churn.drain_all(&mut due);
        self.write_records(&mut due);
        self.sink.due = due;
    }

    /// Queues every churn summary (at a stop).
    pub(super) fn journal_all_churn(&mut self) {
        for body in self.sink.churn.summaries_due(Instant::now(), true) {
            self.journal(body);
        }
    }

    /// Encodes `records` (emptied; a claim's record made now) and writes
    /// them in one write(2).
    fn write_records(&mut self, records: &mut Vec<Due>) {
        for due in records.drain(..) {
            let record = match due {
                Due::Record(r) => *r,
                Due::Claim(c) => self.record_at(wall(c.ts_ns), c.body()),
            };
            match serde_json::to_writer(&mut self.sink.pending, &record) {
                Ok(()) => {
                    self.sink.pending.push(b'\n');
                    self.sink.pending_records += 1;
                }
                Err(e) => {
                    self.metrics.journal_errors.fetch_add(1, Relaxed);
                    tracing::error!("journal: a record could not be encoded ({e}); it is lost");
                }
            }
        }
        if self.sink.pending.is_empty() {
            return;
        }
        let n = std::mem::take(&mut self.sink.pending_records);
        let batch = std::mem::take(&mut self.sink.pending);
        let Some(j) = self.sink.journal.as_mut() else {
            return;
        };
        if let Err(e) = j.append_line(&batch) {
            self.metrics.journal_errors.fetch_add(n as u64, Relaxed);
            match self.config.on_journal_error {
                OnJournalError::KeepRunning => tracing::error!(
                    "journal: {e} ({n} records lost; running on, on_journal_error = \"keep-running\")"
                ),
                OnJournalError::Exit => {
                    tracing::error!("journal: {e}; stopping (on_journal_error = \"exit\")");
                    if self.sink.fatal.is_none() {
                        self.sink.fatal = Some(
                            anyhow::Error::new(e)
                                .context("writing the journal (on_journal_error = \"exit\")"),
                        );
                    }
                }
            }
        }
        // Reuse the allocation.
        self.sink.pending = batch;
        self.sink.pending.clear();
    }
}

//! daemon: **jobs**: the runs of `reaper job start`/`job end` hooks that
//! asked this daemon, journaled (`kind: "job"`) and counted
//! (`reaper_job_leftovers_total`, `reaper_job_end_freed_total`) by the
//! loop, so that `reaper report` on the daemon's journal sees which hook
//! freed what. The claims' jobs themselves are read at bind time
//! ([`crate::holders::charge`], in `ingest`).

use crate::journal::Body;

use super::Daemon;

impl Daemon {
    /// Journals and counts the job runs the control socket queued.
    pub(super) fn job_records(&mut self) {
        let records = {
            let mut shared = self.shared.lock().unwrap();
            if shared.job_records.is_empty() {
                return;
            }
            std::mem::take(&mut shared.job_records)
        };
        for r in records {
            self.metrics.job_run(&r);
            self.journal(Body::Job(Box::new(r)));
        }
    }
}

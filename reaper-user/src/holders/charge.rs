//! holders: job -> **charge**: the CI job a claim is charged to, read when
//! the claim is made (the daemon, at each bind), so that what the binder
//! does later cannot hide it.
//!
//! A server that clears its variables, `setsid()`s, double-forks or
//! outlives its parent carries nothing a later scan can tie to its job;
//! at bind time its own environment or its parents still do:
//! - its own environment, when it names a job by its id;
//! - else its nearest ancestor's that does, as the parent chain is at
//!   claim time (a step's shell, the worker);
//! - else, when its environment still names a GitHub run and job name
//!   (only the tracking id was cleared), the one running job with those
//!   names, when exactly one runs (a matrix sibling makes it ambiguous:
//!   the names are kept as they are).
//!
//! One [`Charger`] remembers its answers by (pid, start time): a process
//! binding in a loop is read once.

use std::collections::HashMap;
use std::time::{Duration, Instant};

use super::job::{self, Table};
use crate::vocab::{Charge, Job};

/// How many processes a charger remembers before it forgets them all.
const REMEMBERED: usize = 16 * 1024;
/// How far up a parent chain it looks (pid reuse could make a cycle).
const MAX_DEPTH: usize = 64;
/// How long one walk of the process table answers "which jobs run now".
const TABLE_TTL: Duration = Duration::from_secs(1);
/// How long a walk that did not find the job is trusted: a job that
/// started since is not in it.
const MISS_TTL: Duration = Duration::from_millis(50);

/// The daemon's reader of claims' jobs.
#[derive(Default)]
pub struct Charger {
    charges: HashMap<(u32, u64), Option<Charge>>,
    table: Option<(Instant, Table)>,
}

impl Charger {
    pub fn new() -> Charger {
        Charger::default()
    }

    /// The job of a claim `pid` just made; None when neither it nor its
    /// parents name one (or it is gone already).
    pub fn charge(&mut self, pid: u32) -> Option<Charge> {
        let st = crate::proc::read_stat(pid)?;
        let key = (pid, st.start_ticks);
        if let Some(c) = self.charges.get(&key) {
            return c.clone();
        }
        let c = self.read(pid, st.ppid);
        if self.charges.len() >= REMEMBERED {
            self.charges.clear();
        }
        self.charges.insert(key, c.clone());
        c
    }

    fn read(&mut self, pid: u32, ppid: u32) -> Option<Charge> {
        let own = job::of_pid(pid);
        if let Some(j) = own.as_ref().filter(|j| !j.by_run_and_name_only()) {
            return Some(Charge {
                job: j.clone(),
                via: "environment".into(),
            });
        }
        if let Some(c) = ancestor(ppid) {
            return Some(c);
        }
        let named = own?;
        let via = match self.only_running(&named) {
            Some(j) => {
                return Some(Charge {
                    job: j,
                    via: format!(
                        "run {} and job name {}: the one such job running",
                        named.run.as_deref().unwrap_or_default(),
                        named.name.as_deref().unwrap_or_default()
                    ),
                })
            }
            None => "environment (run and job name only: no single running job has them)",
        };
        Some(Charge {
            job: named,
            via: via.into(),
        })
    }

    /// The one running job (named by its id) with `named`'s provider, run
    /// and name.
    fn only_running(&mut self, named: &Job) -> Option<Job> {
        let age = self.table.as_ref().map(|(at, _)| at.elapsed());
        if let (Some(age), Some((_, t))) = (age, &self.table) {
            if age < TABLE_TTL {
                if let Some(j) = only_running(t, named) {
                    return Some(j);
                }
                // A job that started after that walk is not in it.
                if age < MISS_TTL {
                    return None;
                }
            }
        }
        let t = Table::read();
        let found = only_running(&t, named);
        self.table = Some((Instant::now(), t));
        found
    }
}

/// The nearest ancestor from `ppid` up whose environment names a job by
/// its id.
fn ancestor(mut next: u32) -> Option<Charge> {
    for _ in 0..MAX_DEPTH {
        if next <= 1 {
            return None;
        }
        let st = crate::proc::read_stat(next)?;
        if let Some(j) = job::of_pid(next).filter(|j| !j.by_run_and_name_only()) {
            return Some(Charge {
                job: j,
                via: format!("ancestor pid {next} ({})", st.comm),
            });
        }
        next = st.ppid;
    }
    None
}

/// In a table: the one job attached to a live runner that has `named`'s
/// provider, run and name and an id of its own.
pub fn only_running(t: &Table, named: &Job) -> Option<Job> {
    let mut found: Vec<&Job> = t
        .procs
        .values()
        .filter(|e| e.state != 'Z')
        .filter_map(|e| e.job.as_ref())
        .filter(|j| {
            !j.by_run_and_name_only()
                && j.provider == named.provider
                && j.run == named.run
                && j.name == named.name
        })
        .collect();
    found.sort_by(|a, b| a.key().cmp(&b.key()));
    found.dedup_by(|a, b| a.key() == b.key());
    found.retain(|j| t.attached(j.key()));
    match found.as_slice() {
        [one] => Some((*one).clone()),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::holders::job::Entry;

    fn job(id: &str, run: &str) -> Job {
        Job {
            provider: "github".into(),
            id: id.into(),
            run: Some(run.into()),
            name: Some("build".into()),
            ended: None,
        }
    }

    #[test]
    fn run_and_name_resolve_to_the_one_running_job_with_them() {
        fn add(t: &mut Table, pid: u32, ppid: u32, j: Option<Job>) {
            t.procs.insert(
                pid,
                Entry {
                    comm: "x".into(),
                    ppid,
                    start_ticks: pid as u64,
                    state: 'S',
                    job: j,
                },
            );
        }
        let mut t = Table::default();
        add(&mut t, 1, 0, None);
        add(&mut t, 10, 1, None); // the runner
        add(&mut t, 20, 10, Some(job("a", "81"))); // job a's worker
        add(&mut t, 30, 10, Some(job("b", "82"))); // job b's worker
        add(&mut t, 40, 1, Some(job("81/build", "81"))); // a's server, id cleared
        let named = job("81/build", "81");
        assert!(named.by_run_and_name_only());
        assert!(!job("a", "81").by_run_and_name_only());
        assert_eq!(only_running(&t, &named).map(|j| j.id), Some("a".into()));
        // A matrix sibling of the same run and name: ambiguous.
        add(&mut t, 50, 10, Some(job("c", "81")));
        assert_eq!(only_running(&t, &named), None);
    }

    #[test]
    fn this_process_is_charged_to_the_job_its_environment_names() {
        // The test runner's own environment names no job, or names one:
        // either way the charge agrees with it.
        let own = job::own().filter(|j| !j.by_run_and_name_only());
        let c = Charger::new().charge(std::process::id());
        if let Some(j) = own {
            assert_eq!(c.map(|c| c.job), Some(j));
        }
    }
}

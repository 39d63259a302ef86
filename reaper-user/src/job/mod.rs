//! holders + policy -> **job** -> plan -> reap -> journal.
//!
//! reaper as a CI job's janitor: `reaper job start` (before the first
//! step: the ports the job needs must bind) and `reaper job end` (after
//! the last: what the job left holding a port is stopped). Both judge
//! through one [`Plan`](crate::reap::Plan) per port and act through
//! [`execute`](crate::reap::execute), like `free` and the daemon.
//!
//! - [`ports`]: the `--port P,Q,R-S` list.
//! - [`members`]: which holders belong to which job (their environment,
//!   their ancestry, a container's start within the job).
//! - [`daemon`]: the daemon's claims, each charged to its job when made.
//! - [`flow`]: the start and end flows and what they report.
//! - [`render`]: the human and Markdown summaries.

use crate::holders::job::{self, Job};

pub mod daemon;
pub mod flow;
mod members;
pub mod ports;
pub mod render;

/// Which job a `reaper job` command acts for: `--job ID --provider P`, or
/// the environment it runs in. Err: the words for a bad-input error.
pub fn find(id: Option<&str>, provider: Option<&str>) -> Result<Job, String> {
    match (id, provider) {
        (Some(id), Some(p)) => {
            let provider = p.to_ascii_lowercase();
            if !PROVIDERS.contains(&provider.as_str()) {
                return Err(format!(
                    "--provider '{p}' is not known: use one of {}",
                    PROVIDERS.join(", ")
                ));
            }
            if id.trim().is_empty() {
                return Err("--job is empty: give the job's id".into());
            }
            // The rest (run, name) from the environment when it names the same job.
            let from_env = job::own().filter(|j| j.provider == provider && j.id == id);
            Ok(from_env.unwrap_or(Job {
                provider,
                id: id.to_string(),
                run: None,
                name: None,
                ended: None,
            }))
        }
        (Some(_), None) => Err("--job needs --provider (github, gitlab, jenkins, buildkite)".into()),
        (None, Some(_)) => Err("--provider needs --job ID".into()),
        (None, None) => job::own().ok_or_else(|| {
            format!(
                "no CI job found in the environment: looked for {}. Run this from the runner's job hook, or give --job ID --provider P",
                job::VARIABLES.join(", ")
            )
        }),
    }
}

/// The providers `--provider` takes.
pub const PROVIDERS: &[&str] = &["github", "gitlab", "jenkins", "buildkite"];

/// "github job 9f2c (run 81, build)" for messages.
pub fn job_words(j: &Job) -> String {
    let mut w = format!("{} job {}", j.provider, j.id);
    let extra: Vec<String> = [
        j.run.as_ref().map(|r| format!("run {r}")),
        j.name.as_ref().map(|n| format!("name {n}")),
    ]
    .into_iter()
    .flatten()
    .collect();
    if !extra.is_empty() {
        w.push_str(&format!(" ({})", extra.join(", ")));
    }
    w
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn explicit_job_and_provider() {
        let j = find(Some("4242"), Some("GitLab")).unwrap();
        assert_eq!(j.key(), ("gitlab", "4242"));
        assert!(find(Some("1"), Some("travis"))
            .unwrap_err()
            .contains("'travis' is not known"));
        assert!(find(Some("1"), None).unwrap_err().contains("--provider"));
        assert!(find(None, Some("github")).unwrap_err().contains("--job"));
        assert!(find(Some(" "), Some("github"))
            .unwrap_err()
            .contains("empty"));
    }
}

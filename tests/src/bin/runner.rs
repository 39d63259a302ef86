//! A CI runner in miniature, for the `reaper job` tests (tests/tests/it/job/):
//! a long-lived runner process, one worker per job carrying that job's
//! variables the way GitHub's runner sets them, and steps that the worker
//! runs one after the other as its children.
//!
//! runner
//!     reads lines on stdin: `worker NAME FIFO KEY=VALUE...` starts a worker
//!     (this program again) with those variables and none of the CI
//!     variables the runner itself may carry, and prints `worker NAME PID`.
//!     Exits on EOF.
//! runner worker FIFO
//!     reads steps from FIFO, one a line, and runs each with `sh -c`,
//!     waiting for it; the job ends (the worker exits) when the FIFO's
//!     writer closes it.

use std::io::{BufRead, BufReader, Write};
use std::process::{Command, Stdio};

/// The variables a CI job's environment may carry (removed from workers).
const CI_VARS: &[&str] = &[
    "RUNNER_TRACKING_ID",
    "GITHUB_RUN_ID",
    "GITHUB_JOB",
    "GITHUB_ACTIONS",
    "GITHUB_STEP_SUMMARY",
    "CI_JOB_ID",
    "BUILD_TAG",
    "JENKINS_NODE_COOKIE",
    "JENKINS_URL",
    "BUILDKITE_JOB_ID",
];

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        None => runner(),
        Some("worker") => worker(&args[1]),
        Some(other) => {
            eprintln!("runner: unknown mode {other}");
            std::process::exit(2);
        }
    }
}

fn runner() {
    let stdin = std::io::stdin();
    let mut out = std::io::stdout();
    let mut workers = Vec::new();
    for line in stdin.lock().lines() {
        let Ok(line) = line else { break };
        let words: Vec<&str> = line.split_whitespace().collect();
        let ["worker", name, fifo, vars @ ..] = words.as_slice() else {
            eprintln!("runner: cannot read {line:?}");
            continue;
        };
        let mut cmd = Command::new("/proc/self/exe");
        cmd.args(["worker", fifo]).stdin(Stdio::null());
        for v in CI_VARS {
            cmd.env_remove(v);
        }
        for kv in vars {
            if let Some((k, v)) = kv.split_once('=') {
                cmd.env(k, v);
            }
        }
        let child = cmd.spawn().expect("spawning a worker");
        writeln!(out, "worker {name} {}", child.id()).unwrap();
        out.flush().unwrap();
        workers.push(child);
    }
    for mut w in workers {
        let _ = w.kill();
        let _ = w.wait();
    }
}

fn worker(fifo: &str) {
    let f = std::fs::File::open(fifo).expect("opening the worker's FIFO");
    for line in BufReader::new(f).lines() {
        let Ok(step) = line else { break };
        let _ = Command::new("sh")
            .arg("-c")
            .arg(&step)
            .stdin(Stdio::null())
            .status();
    }
}

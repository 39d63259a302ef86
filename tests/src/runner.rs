//! The runner-shaped harness of the `reaper job` tests (tests/tests/it/job/),
//! over the `runner` fixture (tests/src/bin/runner.rs): a long-lived
//! runner, one worker per job with GitHub's variables, steps run by the
//! worker (servers that double-fork and `setsid` away, `docker run -p`,
//! the job's hooks), each step's output in a file the test polls.

use std::io::Write;
use std::path::PathBuf;
use std::process::Command;
use std::time::Duration;

use crate::{fixture_bin, poll_until, Spawned};

/// The variables that name a job to reaper, one or more per runner: a
/// process started without them belongs to no job.
pub const JOB_VARS: &[&str] = &[
    "RUNNER_TRACKING_ID",
    "GITHUB_RUN_ID",
    "GITHUB_JOB",
    "CI_JOB_ID",
    "BUILD_TAG",
    "JENKINS_NODE_COOKIE",
    "BUILDKITE_JOB_ID",
];

/// The runner process; workers are its children.
pub struct Runner {
    proc: Spawned,
    pub dir: tempfile::TempDir,
    /// Every server a step started, killed on drop.
    servers: Vec<u32>,
    /// One runner at a time in this test binary: a container is tied to a
    /// job by when it started, and another test's job running then makes
    /// it ambiguous (as two jobs on one host would).
    _one: std::sync::MutexGuard<'static, ()>,
}

static ONE_RUNNER: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// One job: its worker, its variables, the FIFO its steps go through.
pub struct Worker {
    pub name: String,
    pub pid: u32,
    /// RUNNER_TRACKING_ID, GITHUB_RUN_ID, GITHUB_JOB.
    pub tracking_id: String,
    pub run_id: String,
    pub job: String,
    fifo: Option<std::fs::File>,
    dir: PathBuf,
    seq: u32,
}

/// What a hook step's reaper run returned.
#[derive(Debug)]
pub struct Hook {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Hook {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "the hook printed no JSON ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

impl Runner {
    /// A runner whose hooks find no daemon (the scan path), whatever runs
    /// on the host.
    pub fn start() -> Runner {
        let dir = tempfile::tempdir().unwrap();
        let none = dir.path().join("no-daemon.sock");
        Runner::start_in(dir, &none)
    }

    /// A runner whose hooks ask the daemon on this control socket.
    pub fn with_daemon(socket: &std::path::Path) -> Runner {
        Runner::start_in(tempfile::tempdir().unwrap(), socket)
    }

    fn start_in(dir: tempfile::TempDir, socket: &std::path::Path) -> Runner {
        let one = ONE_RUNNER.lock().unwrap_or_else(|e| e.into_inner());
        let mut cmd = Command::new(fixture_bin("runner"));
        cmd.env("REAPER_CONTROL_SOCKET", socket);
        for v in JOB_VARS {
            cmd.env_remove(v);
        }
        Runner {
            proc: Spawned::spawn(&mut cmd),
            dir,
            servers: Vec::new(),
            _one: one,
        }
    }

    pub fn pid(&self) -> u32 {
        self.proc.pid()
    }

    /// Starts a job: a worker with GitHub's variables for it.
    pub fn job(&mut self, name: &str, run_id: &str) -> Worker {
        let tracking_id = format!("github_{name}_{}", std::process::id());
        let dir = self.dir.path().join(name);
        std::fs::create_dir_all(&dir).unwrap();
        let fifo = dir.join("steps");
        let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
        // SAFETY: a valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        self.proc.send(&format!(
            "worker {name} {} RUNNER_TRACKING_ID={tracking_id} GITHUB_RUN_ID={run_id} GITHUB_JOB=build GITHUB_ACTIONS=true",
            fifo.display()
        ));
        let line = self.proc.wait_line(
            "the runner to start a worker",
            Duration::from_secs(10),
            |l| l.starts_with(&format!("worker {name} ")),
        );
        let pid = line.split_whitespace().nth(2).unwrap().parse().unwrap();
        let fifo = std::fs::OpenOptions::new().write(true).open(&fifo).unwrap();
        Worker {
            name: name.into(),
            pid,
            tracking_id,
            run_id: run_id.into(),
            job: "build".into(),
            fifo: Some(fifo),
            dir,
            seq: 0,
        }
    }

    /// Remembers a server to kill on drop.
    pub fn track(&mut self, pid: u32) {
        self.servers.push(pid);
    }
}

impl Drop for Runner {
    fn drop(&mut self) {
        for &pid in &self.servers {
            // SAFETY: kill on a pid a step of this test started.
            unsafe { libc::kill(pid as i32, libc::SIGKILL) };
        }
    }
}

impl Worker {
    fn next(&mut self, what: &str) -> PathBuf {
        self.seq += 1;
        self.dir.join(format!("{}-{what}", self.seq))
    }

    /// Sends one step; the worker runs it after the previous ones.
    pub fn step(&mut self, line: &str) {
        let f = self.fifo.as_mut().expect("the job has ended");
        writeln!(f, "{line}").unwrap();
        f.flush().unwrap();
    }

    /// A step that starts platform-server on `port` with a double fork and
    /// `setsid` (its parent exits: it hangs from init), after clearing
    /// RUNNER_TRACKING_ID when `clear`. Returns the server's pid.
    pub fn server(&mut self, port: u16, clear: bool) -> u32 {
        let env = if clear {
            "env -u RUNNER_TRACKING_ID "
        } else {
            ""
        };
        self.server_with(port, env, "")
    }

    /// [`Worker::server`] with a command before the server's (`env -i `)
    /// and more options for it (`--ignore-term`).
    pub fn server_with(&mut self, port: u16, env: &str, opts: &str) -> u32 {
        let out = self.next("server");
        self.step(&format!(
            "( {env}setsid '{}' --port {port} {opts} > '{}' 2>&1 & )",
            fixture_bin("platform-server").display(),
            out.display()
        ));
        self.wait_ready(&out)
    }

    /// A step that starts a server with no job variables at all (`env -i`)
    /// from the step's shell, which stays (polling, 60 s at most) until
    /// the file `go` exists: while it does, the server's parent is the
    /// job's; after, the server hangs from init and names no job. Returns
    /// the server's pid once it listens.
    pub fn jobless_server_of_a_step(&mut self, port: u16, go: &std::path::Path) -> u32 {
        let out = self.next("server");
        self.step(&format!(
            "env -i setsid '{}' --port {port} > '{}' 2>&1 & n=0; until [ -e '{}' ] || [ $n -ge 1200 ]; do sleep 0.05; n=$((n+1)); done",
            fixture_bin("platform-server").display(),
            out.display(),
            go.display()
        ));
        self.wait_ready(&out)
    }

    fn wait_ready(&mut self, out: &std::path::Path) -> u32 {
        let text = poll_until(
            "a step's server to say ready",
            Duration::from_secs(20),
            || {
                std::fs::read_to_string(out)
                    .ok()
                    .filter(|t| t.starts_with("ready ") && t.ends_with('\n'))
            },
        );
        text.split_whitespace().nth(1).unwrap().parse().unwrap()
    }

    /// A step that runs reaper (a job hook) and waits for it.
    pub fn hook(&mut self, args: &[&str]) -> Hook {
        self.hook_with(&[], args)
    }

    /// [`Worker::hook`] with more variables in the hook's environment.
    pub fn hook_with(&mut self, env: &[(&str, &str)], args: &[&str]) -> Hook {
        let base = self.next("hook");
        let env: String = env.iter().map(|(k, v)| format!("{k}='{v}' ")).collect();
        let (out, err, rc) = (
            base.with_extension("out"),
            base.with_extension("err"),
            base.with_extension("rc"),
        );
        let words: Vec<String> = args.iter().map(|a| format!("'{a}'")).collect();
        self.step(&format!(
            "{env}NO_COLOR=1 '{}' {} > '{}' 2> '{}'; echo $? > '{}.tmp' && mv '{}.tmp' '{}'",
            crate::reaper_bin().display(),
            words.join(" "),
            out.display(),
            err.display(),
            rc.display(),
            rc.display(),
            rc.display()
        ));
        let code = poll_until("the hook to finish", Duration::from_secs(60), || {
            std::fs::read_to_string(&rc)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()
        });
        Hook {
            code,
            stdout: std::fs::read_to_string(out).unwrap_or_default(),
            stderr: std::fs::read_to_string(err).unwrap_or_default(),
        }
    }

    /// A step that runs a shell command and waits for it; its stdout.
    pub fn run(&mut self, cmd: &str) -> String {
        let base = self.next("run");
        let (out, rc) = (base.with_extension("out"), base.with_extension("rc"));
        self.step(&format!(
            "{cmd} > '{}' 2>&1; echo $? > '{}.tmp' && mv '{}.tmp' '{}'",
            out.display(),
            rc.display(),
            rc.display(),
            rc.display()
        ));
        let code = poll_until("a step to finish", Duration::from_secs(60), || {
            std::fs::read_to_string(&rc)
                .ok()?
                .trim()
                .parse::<i32>()
                .ok()
        });
        let text = std::fs::read_to_string(out).unwrap_or_default();
        assert_eq!(code, 0, "step `{cmd}` failed: {text}");
        text
    }

    /// The job ends without its hook: the worker exits.
    pub fn end_without_hook(&mut self) {
        drop(self.fifo.take());
        let pid = self.pid;
        poll_until("the worker to exit", Duration::from_secs(10), || {
            (!crate::containers::alive(pid)).then_some(())
        });
    }
}

//! The right signal for each program, on real programs: Debian's
//! PostgreSQL with a client connected (SIGTERM is its "smart shutdown",
//! which waits for every client; SIGINT its fast shutdown), stopped by
//! `reaper free` with a rule's `signal` or `--signal`; and a container
//! whose image sets STOPSIGNAL, stopped through the engine (Docker Engine
//! running, as for tests/tests/it/containers.rs).
//!
//! Needs root and Debian's postgresql package (its `postgres` user and
//! /usr/lib/postgresql/*/bin; `cargo xtask setup --test` installs it). The
//! postmaster runs as `postgres` on a free port in a temporary data
//! directory, and says when it is ready, and which shutdown it got, on its
//! log (stderr): the tests read that, not the clock.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::Duration;

use reaper_tests::containers::{require_docker, Container, Image};
use reaper_tests::fixture::{can_listen, free_port, require_root, run_reaper, ProcHandle};
use reaper_tests::{poll_until, show, Spawned};
use serde_json::Value;

/// The server binaries of the newest PostgreSQL Debian installed.
fn pg_bin() -> PathBuf {
    let mut dirs: Vec<PathBuf> = std::fs::read_dir("/usr/lib/postgresql")
        .map(|d| d.flatten().map(|e| e.path().join("bin")).collect())
        .unwrap_or_default();
    dirs.retain(|d| d.join("postgres").is_file() && d.join("initdb").is_file());
    dirs.sort_by_key(|d| {
        d.parent()
            .and_then(|v| v.file_name()?.to_str()?.parse::<u32>().ok())
            .unwrap_or(0)
    });
    dirs.pop().unwrap_or_else(|| {
        panic!("this test needs PostgreSQL from Debian (/usr/lib/postgresql/*/bin/postgres): install the postgresql package (`cargo xtask setup --test`)")
    })
}

/// uid and gid of the `postgres` user the package made.
fn postgres_ids() -> (u32, u32) {
    let id = |flag: &str| -> u32 {
        let out = Command::new("id")
            .args([flag, "postgres"])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "this test needs the postgres user of Debian's postgresql package: {}",
            show(&out)
        );
        String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
    };
    (id("-u"), id("-g"))
}

/// `setpriv` to run a PostgreSQL program as `postgres`.
fn as_postgres(program: &Path) -> Command {
    let mut c = Command::new("setpriv");
    c.args([
        "--reuid=postgres",
        "--regid=postgres",
        "--clear-groups",
        "--",
    ])
    .arg(program);
    c
}

/// A postmaster on 127.0.0.1:port with a fresh data directory, and its log.
struct Postgres {
    server: Spawned,
    pidfd: ProcHandle,
    port: u16,
    dir: tempfile::TempDir,
}

impl Postgres {
    fn start() -> Postgres {
        require_root();
        let bin = pg_bin();
        let (uid, gid) = postgres_ids();
        let dir = tempfile::tempdir().unwrap();
        std::os::unix::fs::chown(dir.path(), Some(uid), Some(gid)).unwrap();
        let data = dir.path().join("data");
        let out = as_postgres(&bin.join("initdb"))
            .arg("-D")
            .arg(&data)
            .args(["-A", "trust", "-U", "postgres", "--no-sync"])
            .output()
            .unwrap();
        assert!(out.status.success(), "initdb: {}", show(&out));
        let port = free_port();
        let mut server = Spawned::spawn(
            as_postgres(&bin.join("postgres"))
                .arg("-D")
                .arg(&data)
                .args(["-p", &port.to_string(), "-k"])
                .arg(dir.path())
                .args(["-c", "listen_addresses=127.0.0.1", "-c", "fsync=off"]),
        );
        server.wait_err(
            "database system is ready to accept connections",
            Duration::from_secs(60),
        );
        let pidfd = ProcHandle::open(server.pid());
        Postgres {
            server,
            pidfd,
            port,
            dir,
        }
    }

    /// A psql session over TCP that stays connected (until dropped); returns
    /// once the server answered a query in it.
    fn client(&self) -> Spawned {
        let mut psql = Spawned::spawn(
            Command::new(pg_bin().join("psql"))
                .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
                .args(["-U", "postgres", "-d", "postgres", "-X", "-q", "-A", "-t"]),
        );
        psql.send("select 'connected';");
        psql.wait_line("psql's answer", Duration::from_secs(20), |l| {
            l == "connected"
        });
        psql
    }

    /// A policy file in the test's directory.
    fn policy(&self, text: &str) -> PathBuf {
        let p = self.dir.path().join("policy.toml");
        std::fs::write(&p, text).unwrap();
        p
    }

    fn journal(&self) -> PathBuf {
        self.dir.path().join("journal.jsonl")
    }

    /// Waits for the postmaster's log line naming the shutdown it received.
    fn log_says(&mut self, needle: &str) -> String {
        self.server.wait_err(needle, Duration::from_secs(20))
    }
}

impl Drop for Postgres {
    fn drop(&mut self) {
        // Immediate shutdown (SIGQUIT) so its children and shared memory go
        // with it; Spawned's drop kills whatever is left.
        if self.pidfd.alive() {
            let _ = reaper::reap::Pidfd::open(self.pidfd.pid).map(|fd| fd.send(libc::SIGQUIT));
            self.pidfd.wait_exit(10_000);
        }
    }
}

fn json(out: &Output) -> Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| panic!("not JSON ({e}):\n{}", show(out)))
}

fn journal_records(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_else(|e| panic!("journal {}: {e}", path.display()))
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect()
}

fn signal_names(v: &Value) -> Vec<String> {
    v.as_array()
        .unwrap_or_else(|| panic!("not a list of signals: {v}"))
        .iter()
        .map(|s| s["signal"].as_str().unwrap().to_string())
        .collect()
}

const PG_RULE: &str = "[[rule]]\nname = \"postgres\"\nmatch = { exe = \"postgres\" }\n";

#[test]
fn a_postgres_rule_with_sigint_stops_it_fast_with_a_client_connected_and_journals_sigint() {
    let mut pg = Postgres::start();
    let _client = pg.client();
    let port = pg.port.to_string();
    let policy = pg.policy(&format!("{PG_RULE}signal = \"SIGINT\"\n"));
    let policy = policy.to_str().unwrap();

    // The dry run says which signal it would send, and sends none.
    let out = run_reaper(
        &["free", &port, "--policy", policy, "--dry-run", "--json"],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(doc["holders"][0]["signal"], "SIGINT", "{doc:#}");
    let want = format!("would send SIGINT to pid {}", pg.pidfd.pid);
    assert!(doc["message"].as_str().unwrap().contains(&want), "{doc:#}");
    assert!(pg.pidfd.alive(), "the dry run signalled the postmaster");

    let journal = pg.journal();
    let out = run_reaper(
        &[
            "free",
            &port,
            "--policy",
            policy,
            "--grace",
            "20s",
            "--json",
            "--journal",
            journal.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(doc["outcome"], "freed", "{doc:#}");
    let target = &doc["targets"][0];
    assert_eq!(target["pid"], pg.pidfd.pid);
    assert_eq!(signal_names(&target["signals"]), ["SIGINT"], "{doc:#}");
    assert_eq!(target["outcome"]["by"], "SIGINT", "{doc:#}");
    // PostgreSQL itself says it was asked for a fast shutdown.
    pg.log_says("received fast shutdown request");
    assert!(!pg.pidfd.alive());
    assert!(can_listen(pg.port), "port {port} does not bind again");
    eprintln!(
        "postgres with a client, SIGINT: port free after {} ms, the postmaster exited {} ms after SIGINT",
        doc["elapsed_ms"], target["outcome"]["after_ms"]
    );

    // The journal: the intent names the signal before it is sent, the
    // outcome the signal sent, and no SIGKILL.
    let records = journal_records(&journal);
    let reapings: Vec<&Value> = records.iter().filter(|r| r["kind"] == "reaping").collect();
    assert_eq!(reapings.len(), 2, "{records:#?}");
    assert_eq!(reapings[0]["outcome"], "in_progress");
    assert_eq!(reapings[0]["stop_signal"], "SIGINT");
    assert_eq!(reapings[1]["outcome"], "freed");
    assert_eq!(reapings[1]["stop_signal"], "SIGINT");
    assert_eq!(signal_names(&reapings[1]["signals"]), ["SIGINT"]);
}

#[test]
fn sigterm_the_default_is_postgres_smart_shutdown_it_waits_for_the_client_until_sigkill() {
    let mut pg = Postgres::start();
    let _client = pg.client();
    let port = pg.port.to_string();
    let policy = pg.policy(PG_RULE);
    let journal = pg.journal();
    // A short grace keeps the test fast: the smart shutdown would wait for
    // the client however long the grace.
    let out = run_reaper(
        &[
            "free",
            &port,
            "--policy",
            policy.to_str().unwrap(),
            "--grace",
            "1s",
            "--json",
            "--journal",
            journal.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(doc["holders"][0]["signal"], "SIGTERM", "{doc:#}");
    let target = &doc["targets"][0];
    assert_eq!(
        signal_names(&target["signals"]),
        ["SIGTERM", "SIGKILL"],
        "{doc:#}"
    );
    assert_eq!(target["outcome"]["by"], "SIGKILL", "{doc:#}");
    pg.log_says("received smart shutdown request");
    assert!(can_listen(pg.port));
    eprintln!(
        "postgres with a client, SIGTERM: port free after {} ms, killed {} ms after SIGTERM (grace 1 s)",
        doc["elapsed_ms"], target["outcome"]["after_ms"]
    );
    let records = journal_records(&journal);
    let done = records
        .iter()
        .find(|r| r["kind"] == "reaping" && r["outcome"] == "freed")
        .unwrap_or_else(|| panic!("{records:#?}"));
    assert_eq!(done["stop_signal"], "SIGTERM");
    assert_eq!(signal_names(&done["signals"]), ["SIGTERM", "SIGKILL"]);
}

#[test]
fn free_signal_overrides_the_rules_bad_signals_are_refused_and_a_protection_holds() {
    let mut pg = Postgres::start();
    let _client = pg.client();
    let port = pg.port.to_string();

    // A bad --signal or a rule's bad signal: exit 2, the choices named,
    // nothing signalled.
    let out = run_reaper(
        &["free", &port, "--exe", "postgres", "--signal", "SIGFOO"],
        &[],
    );
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("SIGINT (2)"), "{err}");
    let bad = pg.policy(&format!("{PG_RULE}signal = \"SIGCONT\"\n"));
    let out = run_reaper(&["free", &port, "--policy", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("rule 'postgres': signal 'SIGCONT'"), "{err}");
    assert!(err.contains("SIGTERM (15, the default)"), "{err}");

    // A protection holds whatever signal a rule names: the example
    // policy's "databases" protection keeps postgres even from a rule
    // that reaps it.
    let protected = pg.policy(&format!(
        "[[protect]]\nname = \"databases\"\nmatch = {{ exe = \"postgres\" }}\n{PG_RULE}signal = \"SIGINT\"\n"
    ));
    let out = run_reaper(
        &[
            "free",
            &port,
            "--policy",
            protected.to_str().unwrap(),
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(
        doc["holders"][0]["verdict"]["decision"], "protect",
        "{doc:#}"
    );
    assert!(pg.pidfd.alive(), "a protected postmaster was signalled");

    // --signal 2 (a number) for a flag rule with no signal of its own.
    let out = run_reaper(
        &[
            "free", &port, "--exe", "postgres", "--signal", "2", "--grace", "20s", "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(
        signal_names(&doc["targets"][0]["signals"]),
        ["SIGINT"],
        "{doc:#}"
    );
    pg.log_says("received fast shutdown request");
    poll_until("the port to bind again", Duration::from_secs(5), || {
        can_listen(pg.port).then_some(())
    });
}

// ---- Containers: the engine stops them with their own stop signal ----

#[test]
fn a_container_is_stopped_with_its_images_stopsignal_unless_a_rule_names_one_and_the_journal_says_which(
) {
    require_docker();
    // The listener exits with 128 + the signal it got: the engine's exit
    // code says what reached it.
    let image = Image::build_with("STOPSIGNAL SIGQUIT");
    let dir = tempfile::tempdir().unwrap();
    let journal = dir.path().join("journal.jsonl");
    let journal = journal.to_str().unwrap();

    let (c, port) = Container::published(&image, &[]);
    let p = port.to_string();
    let out = run_reaper(&["free", &p, "--match", "listener", "--dry-run"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        text.contains("with its own stop signal (its image's STOPSIGNAL, else SIGTERM)"),
        "{text}"
    );
    assert_eq!(c.state(), "running", "the dry run stopped it");

    let out = run_reaper(
        &[
            "free",
            &p,
            "--match",
            "listener",
            "--grace",
            "20s",
            "--json",
            "--journal",
            journal,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    let stop = &doc["container_stops"][0];
    assert_eq!(stop["signal"], "SIGQUIT", "{doc:#}");
    assert_eq!(stop["signal_from"], "container", "{doc:#}");
    assert_eq!(
        c.exit_code(),
        128 + libc::SIGQUIT,
        "the engine sent another signal"
    );
    assert!(can_listen(port));

    // A rule's signal (here --signal) is the engine's stop signal instead.
    let (c2, port2) = Container::published(&image, &[]);
    let p2 = port2.to_string();
    let out = run_reaper(
        &[
            "free",
            &p2,
            "--match",
            "listener",
            "--signal",
            "INT",
            "--grace",
            "20s",
            "--json",
            "--journal",
            journal,
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(doc["containers"][0]["signal"], "SIGINT", "{doc:#}");
    let stop = &doc["container_stops"][0];
    assert_eq!(stop["signal"], "SIGINT", "{doc:#}");
    assert_eq!(stop["signal_from"], "rule", "{doc:#}");
    assert_eq!(c2.exit_code(), 128 + libc::SIGINT);
    assert!(can_listen(port2));

    // The journal: each container's reaping names the signal the engine sent.
    let records = journal_records(Path::new(journal));
    let freed: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "reaping" && r["outcome"] == "freed")
        .collect();
    assert_eq!(freed.len(), 2, "{records:#?}");
    assert_eq!(freed[0]["stop_signal"], "SIGQUIT");
    assert_eq!(freed[0]["container"]["stop"]["signal"], "SIGQUIT");
    assert_eq!(freed[1]["stop_signal"], "SIGINT");
    assert_eq!(freed[1]["container"]["stop"]["signal_from"], "rule");
    // The intent before the second stop already named the rule's signal.
    let intents: Vec<&Value> = records
        .iter()
        .filter(|r| r["kind"] == "reaping" && r["outcome"] == "in_progress")
        .collect();
    assert_eq!(intents.len(), 2, "{records:#?}");
    assert!(intents[0].get("stop_signal").is_none(), "{:#}", intents[0]);
    assert_eq!(intents[1]["stop_signal"], "SIGINT");
}

//! `reaper free` against real processes on the real kernel (root).
//!
//! Build first: `cargo build && sudo -E cargo test -p reaper-tests --test it free::`
//! (the tests run `<workspace>/target/debug/reaper`).

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use reaper_tests::faults::free_paused;
use reaper_tests::fixture::{self, can_listen, free_port, require_root, run_reaper, Holder, Netns};
use reaper_tests::show;
use serde_json::Value;

const SERVER: &str = env!("CARGO_BIN_EXE_platform-server");

fn server() -> &'static Path {
    Path::new(SERVER)
}

fn json(out: &Output) -> Value {
    let text = String::from_utf8_lossy(&out.stdout);
    serde_json::from_str(text.trim()).unwrap_or_else(|e| {
        panic!(
            "reaper did not print one JSON document ({e}):\nstdout: {text}\nstderr: {}",
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

fn signals(doc: &Value) -> Vec<String> {
    doc["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["signal"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn orphaned_server_is_freed_and_the_port_binds_at_once() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let srv = Holder::start_orphan(server(), &["--port", &p]);
    assert!(!can_listen(port));
    let tmp = tempfile::tempdir().unwrap();
    let journal = tmp.path().join("j/journal.jsonl");
    let out = run_reaper(
        &[
            "free",
            &p,
            "--match",
            "platform-server",
            "--json",
            "--journal",
            journal.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    // Immediately, no retry: reaper said free, so it must be.
    assert!(
        can_listen(port),
        "reaper exited 0 but the port does not bind"
    );
    assert!(srv.handle.wait_exit(5000), "the server did not exit");

    let doc = json(&out);
    assert_eq!(doc["outcome"], "freed");
    assert_eq!(signals(&doc), ["SIGTERM"]);
    let h = &doc["holders"][0];
    assert_eq!(h["process"]["pid"], srv.pid());
    assert_eq!(h["verdict"]["decision"], "reap");
    let reasons = h["verdict"]["reasons"].to_string();
    assert!(
        reasons.contains("comm 'platform-server' is 15 bytes and may be truncated; matched exe basename platform-server"),
        "{reasons}"
    );
    assert!(
        doc["message"]
            .as_str()
            .unwrap()
            .contains("holder exited on SIGTERM"),
        "{doc}"
    );

    // The journal has the intent (before the signal), then the outcome.
    let text = std::fs::read_to_string(&journal).unwrap();
    let recs: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(recs.len(), 2, "{text}");
    assert_eq!(recs[0]["kind"], "reaping");
    assert_eq!(recs[0]["outcome"], "in_progress");
    assert_eq!(recs[0]["target"]["pid"], srv.pid());
    assert!(recs[0]["signals"].as_array().unwrap().is_empty());
    let rec = &recs[1];
    assert_eq!(rec["kind"], "reaping");
    assert_eq!(rec["outcome"], "freed");
    assert_eq!(rec["target"]["pid"], srv.pid());
    assert_eq!(rec["signals"][0]["signal"], "SIGTERM");
    assert_eq!(rec["port"], port);
}

#[test]
fn a_decoy_with_the_same_comm_is_left_alive() {
    require_root();
    // A hard link of the fixture under another name: another exe path and
    // argv[0]; it then disguises its comm as "platform-server".
    let dir = tempfile::tempdir_in(env!("CARGO_TARGET_TMPDIR")).unwrap();
    let decoy_bin = dir.path().join("other-server");
    std::fs::hard_link(SERVER, &decoy_bin).unwrap();
    let port = free_port();
    let p = port.to_string();
    let decoy = Holder::start(&decoy_bin, &["--port", &p, "--comm", "platform-server"]);
    let comm = std::fs::read_to_string(format!("/proc/{}/comm", decoy.pid())).unwrap();
    assert_eq!(
        comm.trim(),
        "platform-server",
        "the disguise must be in place"
    );

    let out = run_reaper(
        &["free", &p, "--match", "platform-server", "--grace", "1s"],
        &[],
    );
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let text = show(&out);
    assert!(text.contains("KEEP"), "{text}");
    assert!(
        text.contains("comm 'platform-server' is 15 bytes and may be truncated"),
        "{text}"
    );
    assert!(text.contains("nothing was signalled"), "{text}");

    let out = run_reaper(&["free", &p, "--exe", SERVER, "--json"], &[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(doc["outcome"], "refused");
    assert!(signals(&doc).is_empty());
    assert!(doc["holders"][0]["verdict"]["reasons"][0]
        .as_str()
        .unwrap()
        .contains(&format!("exe is {}, not {SERVER}", decoy_bin.display())));

    assert!(decoy.handle.alive(), "the decoy was killed");
    assert!(!can_listen(port));
}

#[test]
fn a_holder_ignoring_sigterm_gets_sigkill_after_the_grace() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let srv = Holder::start(server(), &["--port", &p, "--ignore-term"]);
    let out = run_reaper(
        &[
            "free",
            &p,
            "--match",
            "platform-server",
            "--grace",
            "300ms",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(signals(&doc), ["SIGTERM", "SIGKILL"]);
    let sig = doc["signals"].as_array().unwrap();
    let gap = sig[1]["at_ms"].as_f64().unwrap() - sig[0]["at_ms"].as_f64().unwrap();
    assert!(
        gap >= 300.0,
        "SIGKILL came {gap} ms after SIGTERM, before the grace"
    );
    assert_eq!(doc["targets"][0]["outcome"]["by"], "SIGKILL");
    assert!(srv.handle.wait_exit(5000));
    assert!(can_listen(port));
}

fn signalled_pids(doc: &Value) -> Vec<u64> {
    doc["signals"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| s["pid"].as_u64().unwrap())
        .collect()
}

#[test]
fn a_forked_child_of_the_same_program_is_judged_on_its_own() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let srv = Holder::start(server(), &["--port", &p, "--fork-child"]);
    let child = srv.fork_child.as_ref().expect("fork child");
    // No --tree: the child matches --match by itself. The parent is
    // signalled first; the child (which ignores its parent's death) gets
    // its own SIGTERM once the grace is over.
    let out = run_reaper(
        &[
            "free",
            &p,
            "--match",
            "platform-server",
            "--grace",
            "300ms",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(
        signalled_pids(&doc),
        [srv.pid() as u64, child.pid as u64],
        "the tree root first: {doc}"
    );
    assert_eq!(doc["holders"][0]["role"]["kind"], "holder");
    assert_eq!(doc["holders"][1]["role"]["kind"], "shares");
    assert_eq!(doc["holders"][1]["verdict"]["decision"], "reap");
    assert!(srv.handle.wait_exit(5000) && child.wait_exit(5000));
    assert!(can_listen(port));
}

#[test]
fn a_child_of_another_program_sharing_the_socket_needs_tree() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let srv = Holder::start(
        server(),
        &["--port", &p, "--fork-child", "--child-exec", "/bin/sleep"],
    );
    let child = srv.fork_child.as_ref().expect("fork child");

    // Without --tree: refused before any signal, both alive, port held.
    let out = run_reaper(&["free", &p, "--match", "platform-server", "--json"], &[]);
    assert_eq!(out.status.code(), Some(4), "{}", show(&out));
    let doc = json(&out);
    assert!(signals(&doc).is_empty());
    let msg = doc["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "socket 127.0.0.1:{port}/tcp also held by pid {}, a child of pid {}; use --tree",
            child.pid,
            srv.pid()
        )),
        "{msg}"
    );
    // The dry run prints the same plan: refused.
    let dry = run_reaper(
        &["free", &p, "--match", "platform-server", "--dry-run"],
        &[],
    );
    assert_eq!(dry.status.code(), Some(4), "{}", show(&dry));
    assert!(srv.handle.alive() && child.alive());
    assert!(!can_listen(port));

    // With --tree: both stopped, the root first, port free.
    let out = run_reaper(
        &[
            "free",
            &p,
            "--match",
            "platform-server",
            "--tree",
            "--grace",
            "300ms",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(
        signalled_pids(&doc),
        [srv.pid() as u64, child.pid as u64],
        "{doc}"
    );
    assert!(srv.handle.wait_exit(5000) && child.wait_exit(5000));
    assert!(can_listen(port));
}

/// nginx from Debian with its config in a temp dir: a master and two
/// workers sharing the listening socket, all /usr/sbin/nginx. The workers
/// are the master's `extra` (they outlive a SIGKILLed master: the holder
/// kills them on drop).
struct Nginx {
    master: Holder,
    _dir: tempfile::TempDir,
}

fn start_nginx(port: u16) -> Nginx {
    let nginx = Path::new("/usr/sbin/nginx");
    assert!(
        nginx.exists(),
        "this test needs nginx: apt-get install -y nginx-light (cargo xtask setup --test installs it)"
    );
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().display();
    let conf = dir.path().join("nginx.conf");
    std::fs::write(
        &conf,
        format!(
            "worker_processes 2;\ndaemon off;\npid {d}/nginx.pid;\nerror_log {d}/error.log;\n\
             events {{ worker_connections 64; }}\n\
             http {{ access_log off; client_body_temp_path {d}/body; proxy_temp_path {d}/proxy; fastcgi_temp_path {d}/fastcgi;\n\
             server {{ listen 127.0.0.1:{port}; location / {{ return 200 \"ok\"; }} }} }}\n"
        ),
    )
    .unwrap();
    // nginx prints nothing when ready: a shell prints the ready line
    // (pid of the exec'd nginx) first, then becomes nginx.
    let mut master = Holder::start_cmd(Command::new("sh").arg("-c").arg(format!(
        "echo ready $$; exec {} -c {} -p {d} -e {d}/error.log",
        nginx.display(),
        conf.display()
    )));
    let pid = master.pid();
    let workers = reaper_tests::poll_until(
        "nginx's two workers to listen",
        Duration::from_secs(10),
        || {
            let kids = std::fs::read_to_string(format!("/proc/{pid}/task/{pid}/children")).ok()?;
            let kids: Vec<u32> = kids
                .split_whitespace()
                .filter_map(|k| k.parse().ok())
                .collect();
            (kids.len() == 2 && !can_listen(port)).then_some(kids)
        },
    );
    master.extra = workers.into_iter().map(fixture::ProcHandle::open).collect();
    Nginx { master, _dir: dir }
}

#[test]
fn an_nginx_master_and_its_workers_are_freed_by_match_without_tree() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let ng = start_nginx(port);
    let out = run_reaper(&["free", &p, "--match", "nginx", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    let holders = doc["holders"].as_array().unwrap();
    assert_eq!(holders.len(), 3, "{doc}");
    assert_eq!(
        holders[0]["process"]["pid"],
        ng.master.pid(),
        "the master first"
    );
    for h in &holders[1..] {
        let pid = h["process"]["pid"].as_u64().unwrap() as u32;
        assert!(ng.master.extra.iter().any(|w| w.pid == pid), "{h}");
        assert_eq!(h["role"]["of"], ng.master.pid());
        // The padding nginx leaves after its new title is trimmed.
        assert_eq!(
            h["process"]["cmdline"],
            serde_json::json!(["nginx: worker process"]),
            "{h}"
        );
    }
    // The master stops its workers: one SIGTERM, to the master.
    assert_eq!(signalled_pids(&doc)[0], ng.master.pid() as u64, "{doc}");
    assert!(ng.master.handle.wait_exit(5000));
    assert!(ng.master.extra.iter().all(|w| w.wait_exit(5000)));
    assert!(can_listen(port));
}

#[test]
fn a_process_that_exec_ed_something_else_in_the_same_pid_is_not_signalled() {
    require_root();
    let sleep = fixture::which("sleep");
    let port = free_port();
    let p = port.to_string();
    let mut srv = Holder::start(
        server(),
        &["--port", &p, "--exec-on-usr1", sleep.to_str().unwrap()],
    );
    let pid = srv.pid();
    let out = free_paused(
        &["free", &p, "--match", "platform-server", "--json"],
        || {
            assert!(srv.handle.alive());
            // SAFETY: signalling our own child, which is alive (its pidfd says so).
            unsafe { libc::kill(pid as i32, libc::SIGUSR1) };
            // stdout closes exactly at the exec.
            srv.wait_stdout_eof();
            // The kernel drops the close-on-exec socket during the exec, but
            // the last reference goes away in deferred work that may run
            // after the pipe's EOF is seen: wait (with a deadline) until the
            // port really binds, or reaper would rightly find it held.
            reaper_tests::poll_until(
                "the exec to release the port",
                Duration::from_secs(10),
                || can_listen(port).then_some(()),
            );
        },
    );
    // Same pid, same start time, another program: reaper must not touch it.
    assert_eq!(
        srv.handle.exe().unwrap(),
        std::fs::canonicalize(&sleep).unwrap()
    );
    assert!(
        srv.handle.alive(),
        "the exec'd process was killed:\n{}",
        show(&out)
    );
    let doc = json(&out);
    assert!(signals(&doc).is_empty(), "{doc}");
    let t = &doc["targets"][0];
    assert_eq!(t["outcome"]["status"], "identity_changed");
    assert!(
        t["outcome"]["changes"]
            .to_string()
            .contains("exe changed from"),
        "{t}"
    );
    // The exec dropped the (close-on-exec) socket, so the port is free: exit
    // 0, and the message says the target was not signalled.
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert!(doc["message"]
        .as_str()
        .unwrap()
        .contains("was not signalled: its identity changed"));
}

#[test]
fn a_holder_that_died_before_the_signal_is_not_signalled() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let mut srv = Holder::start(server(), &["--port", &p]);
    let out = free_paused(
        &["free", &p, "--match", "platform-server", "--json"],
        || {
            srv.handle.kill();
            srv.s.child.wait().unwrap(); // reaped: the pid is gone
        },
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert!(signals(&doc).is_empty(), "{doc}");
    assert_eq!(doc["targets"][0]["outcome"]["status"], "gone");
}

#[test]
fn the_same_port_in_another_netns_is_not_touched() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let ns = Netns::new("free");
    let remote = Holder::start_cmd(ns.exec(server()).args(["--port", &p]));
    let local = Holder::start(server(), &["--port", &p]);

    let out = run_reaper(&["free", &p, "--match", "platform-server", "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(doc["holders"].as_array().unwrap().len(), 1, "{doc}");
    assert_eq!(doc["holders"][0]["process"]["pid"], local.pid());
    assert!(local.handle.wait_exit(5000));
    assert!(
        remote.handle.alive(),
        "the holder in the other namespace was killed"
    );
    assert!(can_listen(port));
    drop(remote);
}

/// A TIME_WAIT socket on `port` (the server side closed first), created by
/// a listener with or without SO_REUSEADDR. No process holds it afterwards.
fn make_time_wait(reuse: bool) -> u16 {
    use std::io::Read;
    use std::os::fd::FromRawFd;
    // SAFETY: raw socket calls on our own fds; each fd is owned by a std type.
    let listener = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        assert!(fd >= 0);
        let one: i32 = reuse as i32;
        libc::setsockopt(
            fd,
            libc::SOL_SOCKET,
            libc::SO_REUSEADDR,
            &one as *const i32 as *const _,
            4,
        );
        let sa = libc::sockaddr_in {
            sin_family: libc::AF_INET as u16,
            sin_port: 0,
            sin_addr: libc::in_addr {
                s_addr: u32::from(std::net::Ipv4Addr::LOCALHOST).to_be(),
            },
            sin_zero: [0; 8],
        };
        assert_eq!(
            libc::bind(
                fd,
                &sa as *const _ as *const _,
                std::mem::size_of_val(&sa) as u32
            ),
            0
        );
        assert_eq!(libc::listen(fd, 4), 0);
        std::net::TcpListener::from_raw_fd(fd)
    };
    let port = listener.local_addr().unwrap().port();
    let mut client = std::net::TcpStream::connect(("127.0.0.1", port)).unwrap();
    let (server_side, _) = listener.accept().unwrap();
    drop(server_side); // the server closes first: its end goes to TIME_WAIT
    let mut buf = [0u8; 1];
    assert_eq!(client.read(&mut buf).unwrap(), 0); // saw the FIN
    drop(client);
    drop(listener);
    let ss = Command::new("ss")
        .args(["-Htan", "state", "time-wait", &format!("sport = :{port}")])
        .output()
        .unwrap();
    assert!(
        !ss.stdout.is_empty(),
        "no TIME_WAIT on port {port} to test with"
    );
    port
}

#[test]
fn time_wait_only_kills_nothing_and_says_so() {
    require_root();
    let port = make_time_wait(true);
    let out = run_reaper(
        &[
            "free",
            &port.to_string(),
            "--match",
            "platform-server",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    assert!(doc["holders"].as_array().unwrap().is_empty());
    assert!(signals(&doc).is_empty());
    assert_eq!(doc["unowned"][0]["state"], "TIME-WAIT");
    let msg = doc["message"].as_str().unwrap();
    assert!(
        msg.contains("TIME_WAIT") && msg.contains("does not block a SO_REUSEADDR bind"),
        "{msg}"
    );
}

#[test]
fn a_blocking_time_wait_is_waited_for_not_killed() {
    require_root();
    // Without SO_REUSEADDR on the old socket its TIME_WAIT blocks even a
    // SO_REUSEADDR bind: only the kernel's timer ends it.
    let port = make_time_wait(false);
    let out = run_reaper(
        &[
            "free",
            &port.to_string(),
            "--match",
            "platform-server",
            "--deadline",
            "300ms",
        ],
        &[],
    );
    let text = show(&out);
    assert_eq!(out.status.code(), Some(3), "{text}");
    assert!(text.contains("blocked only by TIME_WAIT"), "{text}");
    assert!(text.contains("nothing was killed"), "{text}");
}

#[test]
fn no_rule_is_bad_input_and_kills_nothing() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let srv = Holder::start(server(), &["--port", &p]);
    let out = run_reaper(&["free", &p], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out)
        .contains("refusing to kill without a rule: give --match/--exe/--cmdline or --policy"));
    let dir = tempfile::tempdir().unwrap();
    let bad = dir.path().join("policy.toml");
    std::fs::write(
        &bad,
        "[[rule]]\nname = 'x'\nmatch = { exe = 'platform-server', min_age = 'soon' }\n",
    )
    .unwrap();
    let out = run_reaper(&["free", &p, "--policy", bad.to_str().unwrap()], &[]);
    assert_eq!(out.status.code(), Some(2), "{}", show(&out));
    assert!(show(&out).contains(&format!(
        "policy file {}, line 3: min_age 'soon' is not a duration",
        bad.display()
    )));
    assert!(srv.handle.alive());
}

#[test]
fn dry_run_signals_nothing() {
    require_root();
    let port = free_port();
    let p = port.to_string();
    let srv = Holder::start(server(), &["--port", &p]);
    let policy = fixture::workspace().join("deploy/policy.toml");
    let out = run_reaper(
        &[
            "free",
            &p,
            "--exe",
            "platform-server",
            "--policy",
            policy.to_str().unwrap(),
            "--dry-run",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let text = show(&out);
    assert!(
        text.contains(&format!("would send SIGTERM to pid {}", srv.pid())),
        "{text}"
    );
    assert!(srv.handle.alive());
    assert!(!can_listen(port));
}

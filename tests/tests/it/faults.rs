//! Faults: holders that change between reaper's scan and its signal, sockets
//! that are shared in the ways the kernel allows (reuseport groups, both
//! families, SCM_RIGHTS), and a journal that cannot be written or was
//! planted by another user. Real processes, the real kernel; root.
//!
//! Build first: `cargo build && sudo -E cargo test -p reaper-tests --test it faults::`.

use std::collections::BTreeSet;
use std::time::Duration;

use reaper_tests::faults::{
    can_listen_on, free_paused, json, run_as, shared_tmp, show, signalled, tempfile_dir,
    wait_until, Mount, NOBODY,
};
use reaper_tests::fixture::{run_reaper, Holder, ProcHandle};
use reaper_tests::procs::holder_pids;
use reaper_tests::require_root;

fn pids(v: &[u32]) -> BTreeSet<u32> {
    v.iter().copied().collect()
}

fn who(port: u16) -> serde_json::Value {
    let out = run_reaper(&["who", &port.to_string(), "--json"], &[]);
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    json(&out)
}

// ---- holders that change between the verdict and the signal -------------

/// A child forked after the verdict inherits the socket. It was never
/// judged, so it must not be signalled (no --tree: it is not even known),
/// and the result must say the port is still held, and by whom.
#[test]
fn a_child_forked_after_the_verdict_is_not_killed_and_the_port_is_still_held() {
    require_root();
    let mut h = Holder::fault_listen("127.0.0.1", 0, &[]);
    let p = h.port.to_string();
    let parent = ProcHandle::open(h.pid());
    let mut child = 0;
    let out = free_paused(
        &[
            "free",
            &p,
            "--match",
            "fault-holder",
            "--json",
            "--grace",
            "200ms",
            "--deadline",
            "1500ms",
        ],
        || child = h.fork(),
    );
    let child_h = ProcHandle::open(child);
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let doc = json(&out);
    assert_eq!(
        signalled(&doc),
        vec![h.pid() as u64],
        "only the judged holder is signalled"
    );
    assert!(parent.wait_exit(5000), "the judged holder did not exit");
    assert!(
        child_h.alive(),
        "the unjudged child was killed:\n{}",
        show(&out)
    );
    assert_eq!(doc["outcome"], "still_held");
    let msg = doc["message"].as_str().unwrap();
    assert!(
        msg.contains("still held")
            && msg.contains(&format!("holders now: pid {child} fault-holder")),
        "{msg}"
    );
    assert!(
        !can_listen_on("127.0.0.1", h.port),
        "the child still holds it"
    );
}

/// The judged process execs another program that keeps the socket (its
/// close-on-exec flag cleared): same pid, same start time, another exe and
/// argv. Not signalled, still alive, and the run says the port is held.
#[test]
fn an_exec_that_keeps_the_socket_is_not_signalled_and_the_port_is_still_held() {
    require_root();
    let sleep = reaper_tests::fixture::which("sleep");
    let sleep_real = std::fs::canonicalize(&sleep).unwrap();
    let mut h = Holder::fault_listen("127.0.0.1", 0, &[]);
    let p = h.port.to_string();
    let handle = ProcHandle::open(h.pid());
    let out = free_paused(
        &[
            "free",
            &p,
            "--match",
            "fault-holder",
            "--json",
            "--deadline",
            "1s",
        ],
        || {
            h.s.send(&format!("exec {} 1000", sleep.display()));
            wait_until("the exec", Duration::from_secs(10), || {
                handle.exe().as_deref() == Some(sleep_real.as_path())
            });
        },
    );
    assert!(
        handle.alive(),
        "the exec'd process was killed:\n{}",
        show(&out)
    );
    assert_eq!(out.status.code(), Some(3), "{}", show(&out));
    let doc = json(&out);
    assert!(signalled(&doc).is_empty(), "{doc}");
    assert_eq!(doc["targets"][0]["outcome"]["status"], "identity_changed");
    let msg = doc["message"].as_str().unwrap();
    assert!(
        msg.contains(&format!(
            "pid {} was not signalled: its identity changed",
            h.pid()
        )) && msg.contains("exe changed from"),
        "{msg}"
    );
    assert!(!can_listen_on("127.0.0.1", h.port));
    handle.kill();
}

// ---- sockets shared the ways the kernel allows ---------------------------

/// Two processes in one SO_REUSEPORT group: two sockets on one port, both
/// holders listed (and agreeing with ss); free judges and stops both.
#[test]
fn a_reuseport_group_lists_every_member_and_free_stops_them_all() {
    require_root();
    let a = Holder::fault_listen("127.0.0.1", 0, &["reuseport"]);
    let b = Holder::fault_listen("127.0.0.1", a.port, &["reuseport"]);
    assert_eq!(a.port, b.port);
    let answer = who(a.port);
    assert_eq!(
        holder_pids(&answer, None),
        pids(&[a.pid(), b.pid()]),
        "{answer}"
    );
    assert_eq!(answer["holdings"].as_array().unwrap().len(), 2, "{answer}");
    let ss = reaper_tests::procs::ss_on(a.port, &["-tulpnH"], None);
    let theirs: BTreeSet<u32> = ss.iter().flat_map(|s| s.pids.iter().copied()).collect();
    assert_eq!(theirs, pids(&[a.pid(), b.pid()]), "ss disagrees");

    let (ha, hb) = (ProcHandle::open(a.pid()), ProcHandle::open(b.pid()));
    let out = run_reaper(
        &[
            "free",
            &a.port.to_string(),
            "--match",
            "fault-holder",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let mut got = signalled(&json(&out));
    got.sort();
    let mut want = vec![a.pid() as u64, b.pid() as u64];
    want.sort();
    assert_eq!(got, want);
    assert!(ha.wait_exit(5000) && hb.wait_exit(5000));
    assert!(can_listen_on("127.0.0.1", a.port));
}

/// One process on 0.0.0.0:P, another on [::]:P with IPV6_V6ONLY: both
/// listed with their families; free stops both and both families bind.
#[test]
fn v4_and_v6_holders_of_one_port_are_both_listed_and_freed() {
    require_root();
    let v4 = Holder::fault_listen("0.0.0.0", 0, &[]);
    let v6 = Holder::fault_listen("::", v4.port, &["v6only"]);
    let answer = who(v4.port);
    assert_eq!(
        holder_pids(&answer, None),
        pids(&[v4.pid(), v6.pid()]),
        "{answer}"
    );
    let families: BTreeSet<String> = answer["holdings"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["socket"]["family"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(families, ["ipv4".to_string(), "ipv6".to_string()].into());

    let (h4, h6) = (ProcHandle::open(v4.pid()), ProcHandle::open(v6.pid()));
    let out = run_reaper(
        &[
            "free",
            &v4.port.to_string(),
            "--match",
            "fault-holder",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    assert_eq!(signalled(&json(&out)).len(), 2);
    assert!(h4.wait_exit(5000) && h6.wait_exit(5000));
    assert!(can_listen_on("0.0.0.0", v4.port) && can_listen_on("::", v4.port));
}

/// A socket passed over a Unix socket (SCM_RIGHTS): while both hold it,
/// both are listed; once the sender closes its copy, `who` names the
/// receiver alone and `free` judges and stops the receiver, and the sender,
/// which no longer holds anything, is left alone.
#[test]
fn a_socket_passed_over_scm_rights_is_charged_to_whoever_holds_it() {
    require_root();
    let dir = tempfile_dir();
    let path = dir.join("pass.sock");
    let mut rx = Holder::receiver(&path);
    let mut tx = Holder::fault_listen("127.0.0.1", 0, &[]);
    let port = tx.port;
    tx.command(&format!("send {}", path.display()), "sent");
    assert_eq!(rx.wait_got(), port);

    let answer = who(port);
    assert_eq!(
        holder_pids(&answer, None),
        pids(&[tx.pid(), rx.pid()]),
        "{answer}"
    );

    tx.command("close", "closed");
    let answer = who(port);
    assert_eq!(holder_pids(&answer, None), pids(&[rx.pid()]), "{answer}");

    let (htx, hrx) = (ProcHandle::open(tx.pid()), ProcHandle::open(rx.pid()));
    let out = run_reaper(
        &[
            "free",
            &port.to_string(),
            "--match",
            "fault-holder",
            "--json",
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(0), "{}", show(&out));
    let doc = json(&out);
    let judged: Vec<u64> = doc["holders"]
        .as_array()
        .unwrap()
        .iter()
        .map(|h| h["process"]["pid"].as_u64().unwrap())
        .collect();
    assert_eq!(judged, vec![rx.pid() as u64], "{doc}");
    assert_eq!(signalled(&doc), vec![rx.pid() as u64]);
    assert!(hrx.wait_exit(5000));
    assert!(
        htx.alive(),
        "the sender no longer held the port but was killed"
    );
    assert!(can_listen_on("127.0.0.1", port));
    let _ = std::fs::remove_dir_all(dir);
}

// ---- the journal ---------------------------------------------------------

/// A journal reaper cannot write is found out before anything is signalled:
/// status 5, the path and what to do in the message, the holder alive.
#[test]
fn an_unwritable_journal_directory_stops_the_run_before_any_signal() {
    require_root();
    let ro = Mount::read_only();
    let journal = ro.dir.join("journal.jsonl");
    let h = Holder::fault_listen("127.0.0.1", 0, &[]);
    let out = run_reaper(
        &[
            "free",
            &h.port.to_string(),
            "--match",
            "fault-holder",
            "--journal",
            journal.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&journal.display().to_string()), "{err}");
    assert!(err.contains("Read-only file system"), "{err}");
    assert!(err.contains("nothing was signalled"), "{err}");
    assert!(err.contains("leave out --journal"), "{err}");
    assert!(h.alive());
    assert!(!can_listen_on("127.0.0.1", h.port));
}

/// The disk fills after the intent is on the record and before the outcome
/// is: the port work is done and cannot be undone, so the run says the port
/// is free and that the record is missing, and ends with status 6. A disk
/// already full when the intent is due stops the run before any signal.
#[test]
fn a_full_disk_after_the_work_says_the_port_is_free_and_the_record_missing() {
    require_root();
    let fs = Mount::tmpfs(64 * 1024);
    let journal = fs.dir.join("journal.jsonl");
    std::fs::File::create(&journal).unwrap(); // ours (root), empty
    let h = Holder::fault_listen("127.0.0.1", 0, &[]);
    let handle = ProcHandle::open(h.pid());
    let port = h.port.to_string();
    let args = [
        "free",
        &port,
        "--match",
        "fault-holder",
        "--json",
        "--journal",
        journal.to_str().unwrap(),
    ];
    // The pause is after the intent and before the first signal.
    let out = free_paused(&args, || {
        let text = std::fs::read_to_string(&journal).unwrap();
        assert!(text.contains(r#""outcome":"in_progress""#), "{text}");
        fs.fill();
        // The intent's page has room left: fill it with empty lines
        // (readers skip them) so the outcome's append finds none.
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .append(true)
            .open(&journal)
            .unwrap();
        while f.write_all(b"\n").is_ok() {}
    });
    assert_eq!(out.status.code(), Some(6), "{}", show(&out));
    assert!(handle.wait_exit(5000), "the holder was not stopped");
    assert!(can_listen_on("127.0.0.1", h.port));
    let doc = json(&out);
    assert_eq!(doc["outcome"], "freed");
    assert_eq!(doc["exit"], 6);
    assert_eq!(doc["journal"]["written"], false);
    assert!(doc["journal"]["error"]
        .as_str()
        .unwrap()
        .contains("No space left on device"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("free after")
            && err.contains("the journal record of this run was NOT written")
            && err.contains(&journal.display().to_string()),
        "{err}"
    );

    // Full before the intent: nothing is signalled.
    let h = Holder::fault_listen("127.0.0.1", 0, &[]);
    let port = h.port.to_string();
    let out = run_reaper(
        &[
            "free",
            &port,
            "--match",
            "fault-holder",
            "--journal",
            journal.to_str().unwrap(),
        ],
        &[],
    );
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("intent") && err.contains("nothing was signalled"),
        "{err}"
    );
    assert!(h.alive());
    assert!(!can_listen_on("127.0.0.1", h.port));
}

/// Links and files another user plants where the journal goes are refused
/// before any signal, and nothing is written through them.
#[test]
fn a_journal_planted_by_another_user_is_refused() {
    require_root();
    let shared = shared_tmp();
    let victim = tempfile_dir().join("victim");
    let h = Holder::fault_listen("127.0.0.1", 0, &[]);
    let p = h.port.to_string();
    let free = |journal: &std::path::Path| {
        run_reaper(
            &[
                "free",
                &p,
                "--match",
                "fault-holder",
                "--journal",
                journal.to_str().unwrap(),
            ],
            &[],
        )
    };

    // 1. The journal path itself is a symlink.
    let link = shared.join("journal.jsonl");
    run_as(
        NOBODY,
        "ln",
        &["-s".as_ref(), victim.as_os_str(), link.as_os_str()],
    );
    let out = free(&link);
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("is a symlink, which reaper refuses to follow"),
        "{err}"
    );
    assert!(err.contains(&link.display().to_string()), "{err}");
    assert!(!victim.exists(), "reaper wrote through the link");

    // 2. A directory on the way is a symlink owned by that user.
    let dirlink = shared.join("logs");
    let victim_dir = victim.parent().unwrap();
    run_as(
        NOBODY,
        "ln",
        &["-s".as_ref(), victim_dir.as_os_str(), dirlink.as_os_str()],
    );
    let out = free(&dirlink.join("journal.jsonl"));
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!("is a symlink owned by uid {NOBODY}")),
        "{err}"
    );
    assert!(!victim_dir.join("journal.jsonl").exists());

    // 3. A regular file that user created, ready to read or alter records.
    let theirs = shared.join("theirs.jsonl");
    run_as(NOBODY, "touch", &[theirs.as_os_str()]);
    let out = free(&theirs);
    assert_eq!(out.status.code(), Some(5), "{}", show(&out));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains(&format!("owned by uid {NOBODY}")), "{err}");
    assert_eq!(std::fs::metadata(&theirs).unwrap().len(), 0);

    assert!(h.alive(), "a refused run signalled the holder");
}

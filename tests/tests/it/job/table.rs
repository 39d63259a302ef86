//! The process table the hooks read: the kernel's task iterator against
//! the walk of /proc, on the runner-shaped harness's real processes.

use super::*;
use reaper::holders::job::Table;

/// The process table a hook reads (parents, start times, each process's
/// job from its environment) comes from the kernel's task iterator where
/// it runs, else from a walk of /proc: the two must agree on real
/// processes with real job variables, an environment too large for the
/// iterator's record included (it is read from /proc), and `job end`
/// must answer the same by either path and say which one answered.
#[test]
fn the_task_iterator_and_the_proc_walk_read_the_same_processes_and_jobs() {
    require_root();
    let mut runner = Runner::start();
    let mut a = runner.job("iter", "9501");
    let pa = free_port();
    let server = a.server(pa, false);
    runner.track(server);
    let cleared = a.server(free_port(), true);
    runner.track(cleared);
    // A GitLab job's process whose environment (48 KiB) is larger than a
    // record of the iterator, its job variable last.
    let big = reaper_tests::Spawned::spawn(
        std::process::Command::new("sleep")
            .arg("600")
            .env_clear()
            .env("PAD", "x".repeat(48 * 1024))
            .env("CI_JOB_ID", "77001")
            .env("CI_PIPELINE_ID", "501"),
    );
    // The walk between two reads of the iterator: a process that became
    // a zombie or lost its parent meanwhile (both happen once, and only
    // one way) reads differently in the two iterator reads and is left
    // out.
    let iter = Table::read();
    let walk = Table::read_proc();
    let after = Table::read();
    assert_eq!(
        iter.source, "bpf_iter",
        "the task iterator did not run here: {:?}",
        iter.source_error
    );
    assert_eq!(walk.source, "proc");

    agree(&iter, &walk, &after);
    let job_of = |t: &Table, pid: u32| t.procs.get(&pid).and_then(|e| e.job.clone());
    for (pid, id) in [
        (a.pid, Some(a.tracking_id.as_str())),
        (server, Some(a.tracking_id.as_str())),
        (big.pid(), Some("77001")),
        (runner.pid(), None),
    ] {
        for t in [&iter, &walk] {
            assert_eq!(
                job_of(t, pid).map(|j| j.id),
                id.map(str::to_string),
                "pid {pid} by {}",
                t.source
            );
        }
    }
    // The cleared-variable server names its run and job name only.
    let j = job_of(&iter, cleared).expect("the cleared server's run and name");
    assert_eq!(
        (j.run.as_deref(), j.id.as_str()),
        (Some("9501"), "9501/build")
    );
    assert!(iter.attached(("github", &a.tracking_id)));

    same_job_end(&mut a, pa);
    assert!(alive(server), "a dry run signalled");
}

/// The iterator's table and the walk's agree on every process both saw
/// (some come and go between the reads).
fn agree(iter: &Table, walk: &Table, after: &Table) {
    let mut both = 0;
    for (pid, w) in &walk.procs {
        let (Some(i), Some(i2)) = (iter.procs.get(pid), after.procs.get(pid)) else {
            continue;
        };
        if i.start_ticks != w.start_ticks
            || i2.start_ticks != w.start_ticks
            || i.ppid != i2.ppid
            || (i.state == 'Z') != (i2.state == 'Z')
        {
            continue; // reused, exiting or reparented between the reads
        }
        both += 1;
        assert_eq!(i.ppid, w.ppid, "pid {pid}'s parent");
        assert_eq!(i.job, w.job, "pid {pid}'s job");
        assert_eq!(i.state == 'Z', w.state == 'Z', "pid {pid}: zombie or not");
        if w.job.is_some() || w.ppid != 2 {
            // A kernel worker's stat name is longer than its comm.
            assert_eq!(i.comm, w.comm, "pid {pid}'s comm");
        }
    }
    assert!(
        both * 10 >= walk.procs.len() * 9,
        "only {both} of {} in both",
        walk.procs.len()
    );
}

/// `job end` by either path: the same answer, each saying its path.
fn same_job_end(a: &mut Worker, pa: u16) {
    let by_iter = a.hook(&["job", "end", "--dry-run", "--json"]);
    let by_walk = a.hook_with(
        &[("REAPER_FD_SOURCE", "proc")],
        &["job", "end", "--dry-run", "--json"],
    );
    assert_eq!(
        (by_iter.code, by_walk.code),
        (0, 0),
        "{by_iter:?} {by_walk:?}"
    );
    let (mut di, mut dw) = (by_iter.json(), by_walk.json());
    assert_eq!(di["process_source"], "bpf_iter", "{di:#}");
    assert_eq!(dw["process_source"], "proc", "{dw:#}");
    assert_eq!(
        dw["process_source_error"], "REAPER_FD_SOURCE=proc",
        "{dw:#}"
    );
    assert_eq!(ports_of(&di), vec![pa], "{di:#}");
    for d in [&mut di, &mut dw] {
        for k in ["process_source", "process_source_error", "elapsed_ms"] {
            d.as_object_mut().unwrap().remove(k);
        }
    }
    assert_eq!(di, dw, "the two paths answered differently");
    let human = a.hook(&["job", "end", "--dry-run"]);
    assert!(
        human
            .stdout
            .contains("processes: read by the kernel's task iterator"),
        "{human:?}"
    );
}

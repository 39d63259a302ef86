//! Hook tax: what attaching reaper costs everything else on the host.
//!
//! Two loops, run in this process while each condition is in force:
//! - a non-bind syscall (getppid), ns per call: the tax every program pays;
//! - socket + bind(127.0.0.1:0, UDP) + close, us per iteration: the tax binds
//!   pay, as wall time and as the binding thread's own CPU time (wall time
//!   also counts waiting for a CPU the consumer is using).
//!
//! Conditions, interleaved round by round (A B C D A B C D ...), because
//! absolute times drift on shared machines:
//! detached; `reaper watch` (cgroup tier, the default); `reaper watch --hooks
//! syscalls`; `bpftrace` on `syscalls:sys_exit_bind` (what a user would reach for).
//!
//! `--quick`: fewer rounds and iterations.

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use reaper_bench::emit;

/// A condition that is in force while its child runs.
struct Attached {
    child: Option<Child>,
}

impl Drop for Attached {
    fn drop(&mut self) {
        if let Some(c) = self.child.as_mut() {
            // SIGINT: reaper detaches cleanly.
            // SAFETY: signalling our own child.
            unsafe { libc::kill(c.id() as i32, libc::SIGINT) };
            let deadline = Instant::now() + Duration::from_secs(5);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    return;
                }
                std::thread::sleep(Duration::from_millis(10));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// Starts a child and waits until `ready` appears on the chosen stream.
fn start(mut cmd: Command, ready: &str, on_stdout: bool) -> Attached {
    if on_stdout {
        cmd.stdout(Stdio::piped()).stderr(Stdio::null());
    } else {
        cmd.stdout(Stdio::null()).stderr(Stdio::piped());
    }
    let mut child = cmd.spawn().expect("starting the condition's process");
    let stream: Box<dyn std::io::Read + Send> = if on_stdout {
        Box::new(child.stdout.take().unwrap())
    } else {
        Box::new(child.stderr.take().unwrap())
    };
    let mut lines = BufReader::new(stream).lines();
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        match lines.next() {
            Some(Ok(l)) if l.contains(ready) => break,
            Some(_) if Instant::now() < deadline => continue,
            _ => panic!("the condition did not become ready ('{ready}' never came)"),
        }
    }
    // Keep draining so the child never blocks on a full pipe.
    std::thread::spawn(move || for _ in lines {});
    Attached { child: Some(child) }
}

fn condition(name: &str) -> Attached {
    match name {
        "detached" => Attached { child: None },
        "reaper cgroup" => {
            let mut c = reaper_tests::reaper();
            c.args(["watch", "--json"]);
            start(c, "attached", false)
        }
        "reaper syscalls" => {
            let mut c = reaper_tests::reaper();
            c.args(["watch", "--json", "--hooks", "syscalls"]);
            start(c, "attached", false)
        }
        "bpftrace exit_bind" => {
            let mut c = Command::new("bpftrace");
            c.args([
                "-e",
                "tracepoint:syscalls:sys_exit_bind { @[comm] = count(); }",
            ]);
            start(c, "Attaching", true)
        }
        _ => unreachable!(),
    }
}

fn getppid_ns(n: u32) -> f64 {
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: no preconditions.
        std::hint::black_box(unsafe { libc::getppid() });
    }
    t.elapsed().as_nanos() as f64 / n as f64
}

/// CPU time (user + system) this thread has used, in seconds: what the
/// binding thread itself pays, without the wait for a busy CPU.
fn thread_cpu() -> f64 {
    // SAFETY: getrusage into a zeroed struct.
    unsafe {
        let mut ru: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_THREAD, &mut ru);
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(ru.ru_utime) + tv(ru.ru_stime)
    }
}

/// (wall us per bind, cpu us per bind)
fn bind_us(n: u32) -> (f64, f64) {
    let c0 = thread_cpu();
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: plain socket calls with a correctly sized sockaddr_in.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_addr.s_addr = u32::from_ne_bytes([127, 0, 0, 1]);
            libc::bind(
                fd,
                &sa as *const _ as *const _,
                std::mem::size_of_val(&sa) as u32,
            );
            libc::close(fd);
        }
    }
    let wall = t.elapsed().as_secs_f64() * 1e6 / n as f64;
    (wall, (thread_cpu() - c0) * 1e6 / n as f64)
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, calls, binds) = if quick {
        (3, 200_000, 5_000)
    } else {
        (7, 1_000_000, 20_000)
    };
    let mut conds = vec!["detached", "reaper cgroup", "reaper syscalls"];
    let have_bpftrace = Command::new("bpftrace").arg("--version").output().is_ok();
    if have_bpftrace {
        conds.push("bpftrace exit_bind");
    } else {
        eprintln!("hooks: bpftrace is not installed; its column is left out (cargo xtask setup --test installs it)");
    }
    let mut sys: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    let mut bnd: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    let mut bcpu: Vec<Vec<f64>> = vec![Vec::new(); conds.len()];
    for round in 0..rounds {
        for (i, c) in conds.iter().enumerate() {
            let _on = condition(c);
            // Warm up, then measure.
            getppid_ns(calls / 10);
            sys[i].push(getppid_ns(calls));
            bind_us(binds / 10);
            let (wall, cpu) = bind_us(binds);
            bnd[i].push(wall);
            bcpu[i].push(cpu);
        }
        eprintln!("hooks: round {}/{rounds} done", round + 1);
    }
    let base_sys = reaper_bench::stats(&sys[0]).0;
    let base_bnd = reaper_bench::stats(&bnd[0]).0;
    let base_cpu = reaper_bench::stats(&bcpu[0]).0;
    for (i, c) in conds.iter().enumerate() {
        let (ms, _, _) = reaper_bench::stats(&sys[i]);
        let (mb, _, _) = reaper_bench::stats(&bnd[i]);
        let note_s = (i > 0).then(|| format!("{:+.1}% vs detached", (ms / base_sys - 1.0) * 100.0));
        let note_b = (i > 0).then(|| format!("{:+.2} us/bind vs detached", mb - base_bnd));
        emit(
            "hook-tax",
            &format!("getppid, {c}"),
            "ns/call",
            &sys[i],
            note_s,
        );
        emit(
            "hook-tax",
            &format!("socket+bind+close, {c}"),
            "us/iter",
            &bnd[i],
            note_b,
        );
        let (mc, _, _) = reaper_bench::stats(&bcpu[i]);
        let note_c = (i > 0).then(|| format!("{:+.2} us/bind vs detached", mc - base_cpu));
        emit(
            "hook-tax",
            &format!("socket+bind+close CPU of the binder, {c}"),
            "us/iter",
            &bcpu[i],
            note_c,
        );
    }
}

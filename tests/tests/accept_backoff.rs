//! The accept loops back off when the process is out of descriptors. A
//! listener with a connection in its backlog stays readable, so an accept
//! that fails with EMFILE and is retried at once spins a core. Here the
//! metrics loop (the control socket's uses the same `AcceptBackoff`) runs
//! with every descriptor taken and two connections waiting: it must use
//! little CPU, and serve them once descriptors are free again.
//!
//! Alone in its test binary: it lowers RLIMIT_NOFILE and fills the
//! descriptor table of the whole process.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::time::Duration;

fn cpu_time() -> Duration {
    // SAFETY: rusage is plain integers, valid all zero.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: getrusage fills the struct we own.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) }, 0);
    let tv = |t: libc::timeval| Duration::new(t.tv_sec as u64, t.tv_usec as u32 * 1000);
    tv(ru.ru_utime) + tv(ru.ru_stime)
}

#[test]
fn metrics_accept_does_not_spin_when_out_of_descriptors() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .unwrap();
    let std_listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    std_listener.set_nonblocking(true).unwrap();
    let addr = std_listener.local_addr().unwrap();
    let listener = rt
        .block_on(async { tokio::net::TcpListener::from_std(std_listener) })
        .unwrap();
    // Connections the kernel completes into the backlog, waiting for accept.
    let mut clients: Vec<TcpStream> = (0..2).map(|_| TcpStream::connect(addr).unwrap()).collect();

    // Take every descriptor: a low soft limit keeps the filling short.
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain rlimit calls on a struct we own.
    assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) }, 0);
    let saved = lim.rlim_cur;
    lim.rlim_cur = lim.rlim_cur.min(512);
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    let mut filler = Vec::new();
    let errno = loop {
        match std::fs::File::open("/dev/null") {
            Ok(f) => filler.push(f),
            Err(e) => break e.raw_os_error(),
        }
    };
    assert_eq!(
        errno,
        Some(libc::EMFILE),
        "filling the descriptor table ended with another error"
    );

    let metrics = reaper::metrics::Metrics::new("cgroup");
    rt.spawn(reaper::metrics::serve(listener, metrics));
    // A measurement window, not a wait for an event: how much CPU the loop
    // burns while every accept fails. A spinning loop takes about a whole
    // second of it; the back-off a handful of wake-ups (10, 20, 40 ... ms).
    let before = cpu_time();
    std::thread::sleep(Duration::from_secs(1));
    let burnt = cpu_time() - before;

    drop(filler);
    lim.rlim_cur = saved;
    // SAFETY: as above.
    assert_eq!(unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &lim) }, 0);
    assert!(
        burnt < Duration::from_millis(100),
        "the accept loop burnt {burnt:?} of CPU in 1 s while out of descriptors: it spins"
    );

    // Descriptors are back: the waiting connections are served (the loop's
    // next try is at most 1 s away).
    for c in &mut clients {
        c.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        c.write_all(b"GET /metrics HTTP/1.0\r\n\r\n").unwrap();
        let mut answer = String::new();
        c.read_to_string(&mut answer)
            .expect("a waiting scrape is answered once descriptors are free");
        assert!(answer.starts_with("HTTP/1.1 200 OK"), "{answer}");
        assert!(answer.contains("reaper_"), "{answer}");
    }
}

//! Connect tax: what reaper's hooks cost a client's `connect()`.
//!
//! The kernel side watches the ports the kernel gives to `connect()`s
//! (tp_btf `inet_sock_set_state` leaving SYN_SENT, one lookup in a small
//! map for a port nobody watches), on top of the listen and release hooks
//! every connection already passes. The loop: socket + connect to a
//! loopback listener + accept + close both (the client with SO_LINGER 0,
//! so no TIME_WAIT piles up in the ephemeral range), us per iteration.
//!
//! Conditions, interleaved round by round because absolute times drift on
//! shared machines: detached; `reaper watch` (the default cgroup tier);
//! `reaper watch` with connections left alone (REAPER_CONNECT_WATCH=off:
//! the same hooks without the SYN_SENT branch). The figure held to its
//! target is what watching connections adds: each round's attached /
//! attached-without-connects ratio, <= x1.02 (issue 19). The whole hooks'
//! tax on the loop (attached / detached: the listen tracepoint and the
//! release hook every socket passes) is printed beside it.
//!
//! `--quick`: fewer rounds and iterations.

use std::io::{BufRead, BufReader};
use std::net::TcpListener;
use std::os::fd::AsRawFd;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use reaper_bench::emit;

/// The ratio the issue holds the attached loop to.
const TARGET: f64 = 1.02;

/// `reaper watch`, attached until dropped.
struct Watch(Child);

impl Watch {
    fn start(connects: bool) -> Watch {
        let mut cmd = reaper_tests::reaper();
        if !connects {
            cmd.env("REAPER_CONNECT_WATCH", "off");
        }
        let mut child = cmd
            .args(["watch", "--json"])
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("starting reaper watch");
        let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            match lines.next() {
                Some(Ok(l)) if l.contains("attached") => break,
                Some(_) if Instant::now() < deadline => continue,
                _ => panic!("reaper watch did not attach"),
            }
        }
        std::thread::spawn(move || for _ in lines {});
        Watch(child)
    }
}

impl Drop for Watch {
    fn drop(&mut self) {
        // SAFETY: signalling our own child; SIGINT detaches cleanly.
        unsafe { libc::kill(self.0.id() as i32, libc::SIGINT) };
        let _ = self.0.wait();
    }
}

/// us per socket + connect + accept + close pair.
fn connect_us(listener: &TcpListener, n: u32) -> f64 {
    let addr = listener.local_addr().unwrap();
    let std::net::SocketAddr::V4(v4) = addr else {
        unreachable!()
    };
    // SAFETY: a zeroed sockaddr_in, filled below.
    let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
    sa.sin_family = libc::AF_INET as u16;
    sa.sin_port = v4.port().to_be();
    sa.sin_addr.s_addr = u32::from_ne_bytes(v4.ip().octets());
    let linger = libc::linger {
        l_onoff: 1,
        l_linger: 0,
    };
    let lfd = listener.as_raw_fd();
    let t = Instant::now();
    for _ in 0..n {
        // SAFETY: plain socket calls with correctly sized arguments.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            let r = libc::connect(
                fd,
                &sa as *const _ as *const _,
                std::mem::size_of_val(&sa) as u32,
            );
            assert_eq!(r, 0, "connect: {}", std::io::Error::last_os_error());
            let a = libc::accept4(
                lfd,
                std::ptr::null_mut(),
                std::ptr::null_mut(),
                libc::SOCK_CLOEXEC,
            );
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_LINGER,
                &linger as *const _ as *const _,
                std::mem::size_of_val(&linger) as u32,
            );
            libc::close(fd);
            libc::close(a);
        }
    }
    t.elapsed().as_secs_f64() * 1e6 / n as f64
}

fn main() {
    let quick = std::env::args().any(|a| a == "--quick");
    let (rounds, n) = if quick { (3, 3_000) } else { (9, 10_000) };
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    // detached, attached without the connect branch, attached.
    const CONDS: [&str; 3] = [
        "detached",
        "reaper cgroup, connects left alone",
        "reaper cgroup",
    ];
    let mut us: [Vec<f64>; 3] = Default::default();
    let mut whole = Vec::new();
    let mut ratios = Vec::new();
    for round in 0..rounds {
        // Rotate which goes first, so a drift within a round cancels.
        let mut got = [0.0; 3];
        for k in 0..3 {
            let c = (round + k) % 3;
            let _watch = (c > 0).then(|| Watch::start(c == 2));
            connect_us(&listener, n / 10);
            got[c] = connect_us(&listener, n);
        }
        for c in 0..3 {
            us[c].push(got[c]);
        }
        whole.push(got[2] / got[0]);
        ratios.push(got[2] / got[1]);
        eprintln!(
            "connect: round {}/{rounds}: detached {:.2} us, without connects {:.2} us, attached {:.2} us (connects x{:.3})",
            round + 1,
            got[0],
            got[1],
            got[2],
            got[2] / got[1]
        );
    }
    for (c, name) in CONDS.iter().enumerate() {
        emit(
            "connect",
            &format!("socket+connect+accept+close, {name}"),
            "us/iter",
            &us[c],
            None,
        );
    }
    let (all, _, _) = reaper_bench::stats(&whole);
    emit(
        "connect",
        "connect loop: all of reaper's hooks / detached",
        "ratio",
        &whole,
        Some(format!("x{all:.3}: the listen tracepoint and the release hook every socket passes, plus the connect branch")),
    );
    let (median, _, _) = reaper_bench::stats(&ratios);
    emit(
        "connect",
        "connect loop: watching connects / not",
        "ratio",
        &ratios,
        Some(format!(
            "x{median:.3}, target <= x{TARGET:.2}: {}",
            if median <= TARGET { "met" } else { "NOT met" }
        )),
    );
}

//! A process that holds sockets for reaper's integration tests, and says
//! when it is ready on stdout (one line), so tests never sleep to wait.
//!
//! ```text
//! reaper-fixture listen KIND PORT [--fork]
//!     KIND: tcp4 | tcp6 | tcp6-dual | udp4 | udp6 | udp6-dual
//!     binds the wildcard address of KIND on PORT (0: any), listens (tcp),
//!     prints `ready PORT PID [CHILD_PID]` and holds the socket until stdin
//!     closes. --fork: a child made after the bind holds the same socket.
//! reaper-fixture churn PORT
//!     prints `ready PORT PID`, then until stdin closes keeps forking short-
//!     lived children that bind and listen on PORT and exit within ms.
//! ```
//!
//! Children die with the fixture (PR_SET_PDEATHSIG) and see the same stdin.

use std::io::{Read, Write};
use std::sync::atomic::{AtomicBool, Ordering};

fn die(what: &str) -> ! {
    eprintln!(
        "reaper-fixture: {what}: {}",
        std::io::Error::last_os_error()
    );
    std::process::exit(2);
}

/// Binds a wildcard socket; returns (fd, port).
fn bind(kind: &str, port: u16) -> (i32, u16) {
    let (family, ty, v6only) = match kind {
        "tcp4" => (libc::AF_INET, libc::SOCK_STREAM, None),
        "tcp6" => (libc::AF_INET6, libc::SOCK_STREAM, Some(1)),
        "tcp6-dual" => (libc::AF_INET6, libc::SOCK_STREAM, Some(0)),
        "udp4" => (libc::AF_INET, libc::SOCK_DGRAM, None),
        "udp6" => (libc::AF_INET6, libc::SOCK_DGRAM, Some(1)),
        "udp6-dual" => (libc::AF_INET6, libc::SOCK_DGRAM, Some(0)),
        _ => {
            eprintln!("reaper-fixture: unknown socket kind '{kind}'");
            std::process::exit(2)
        }
    };
    // SAFETY: plain socket syscalls over stack structs of the right sizes.
    unsafe {
        let fd = libc::socket(family, ty, 0);
        if fd < 0 {
            die("socket");
        }
        if let Some(v) = v6only {
            let v: libc::c_int = v;
            if libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                (&v as *const libc::c_int).cast(),
                4,
            ) != 0
            {
                die("setsockopt IPV6_V6ONLY");
            }
        }
        let r = if family == libc::AF_INET {
            let mut sa: libc::sockaddr_in = std::mem::zeroed();
            sa.sin_family = libc::AF_INET as _;
            sa.sin_port = port.to_be();
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of_val(&sa) as _,
            )
        } else {
            let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
            sa.sin6_family = libc::AF_INET6 as _;
            sa.sin6_port = port.to_be();
            libc::bind(
                fd,
                (&sa as *const libc::sockaddr_in6).cast(),
                std::mem::size_of_val(&sa) as _,
            )
        };
        if r != 0 {
            die(&format!("bind {kind} port {port}"));
        }
        if ty == libc::SOCK_STREAM && libc::listen(fd, 16) != 0 {
            die("listen");
        }
        let mut ss: libc::sockaddr_in6 = std::mem::zeroed();
        let mut len = std::mem::size_of_val(&ss) as libc::socklen_t;
        if libc::getsockname(fd, (&mut ss as *mut libc::sockaddr_in6).cast(), &mut len) != 0 {
            die("getsockname");
        }
        // sin_port and sin6_port sit at the same offset.
        (fd, u16::from_be(ss.sin6_port))
    }
}

fn wait_stdin_eof() {
    let _ = std::io::stdin().lock().read_to_end(&mut Vec::new());
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let me = std::process::id();
    match args.first().map(String::as_str) {
        Some("listen") if args.len() >= 3 => {
            let port: u16 = args[2].parse().unwrap_or_else(|_| die("PORT"));
            let (_fd, port) = bind(&args[1], port);
            let mut line = format!("ready {port} {me}");
            if args.get(3).map(String::as_str) == Some("--fork") {
                // SAFETY: single-threaded here; the child only blocks on stdin.
                let child = unsafe { libc::fork() };
                if child < 0 {
                    die("fork");
                }
                if child == 0 {
                    // SAFETY: prctl with integer arguments.
                    unsafe { libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) };
                    wait_stdin_eof();
                    // SAFETY: _exit ends this forked child without running
                    // the parent's atexit handlers or flushing its buffers.
                    unsafe { libc::_exit(0) };
                }
                line.push_str(&format!(" {child}"));
            }
            println!("{line}");
            let _ = std::io::stdout().flush();
            wait_stdin_eof();
        }
        Some("churn") if args.len() >= 2 => {
            let port: u16 = args[1].parse().unwrap_or_else(|_| die("PORT"));
            static STOP: AtomicBool = AtomicBool::new(false);
            std::thread::spawn(|| {
                wait_stdin_eof();
                STOP.store(true, Ordering::SeqCst);
            });
            println!("ready {port} {me}");
            let _ = std::io::stdout().flush();
            let mut n = 0u64;
            while !STOP.load(Ordering::SeqCst) {
                // SAFETY: the child makes only async-signal-safe calls
                // (socket, setsockopt, bind, listen, nanosleep, _exit).
                let child = unsafe { libc::fork() };
                if child == 0 {
                    // SAFETY: as the fork above says; `one`, `sa` and `ts`
                    // live on this stack for the calls that read them.
                    unsafe {
                        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                        let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM, 0);
                        let one: libc::c_int = 1;
                        libc::setsockopt(
                            fd,
                            libc::SOL_SOCKET,
                            libc::SO_REUSEADDR,
                            (&one as *const libc::c_int).cast(),
                            4,
                        );
                        let mut sa: libc::sockaddr_in = std::mem::zeroed();
                        sa.sin_family = libc::AF_INET as _;
                        sa.sin_port = port.to_be();
                        libc::bind(
                            fd,
                            (&sa as *const libc::sockaddr_in).cast(),
                            std::mem::size_of_val(&sa) as _,
                        );
                        libc::listen(fd, 1);
                        // Not synchronisation: each holder lives 0-4 ms so
                        // that scans meet processes exiting mid-walk.
                        let ts = libc::timespec {
                            tv_sec: 0,
                            tv_nsec: ((n % 5) * 1_000_000) as _,
                        };
                        libc::nanosleep(&ts, std::ptr::null_mut());
                        libc::_exit(0);
                    }
                }
                n += 1;
                // Reap what has exited; every 8 forks, wait for all of them,
                // so that a handful are alive at any time.
                // SAFETY: waitpid with a NULL status pointer writes nothing.
                if n.is_multiple_of(8) {
                    // SAFETY: as above.
                    while unsafe { libc::waitpid(-1, std::ptr::null_mut(), 0) } > 0 {}
                } else {
                    // SAFETY: as above.
                    unsafe { libc::waitpid(-1, std::ptr::null_mut(), libc::WNOHANG) };
                }
            }
        }
        _ => {
            eprintln!("usage: reaper-fixture listen KIND PORT [--fork] | churn PORT");
            std::process::exit(2);
        }
    }
}

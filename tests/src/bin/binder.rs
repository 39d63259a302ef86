//! A test fixture that binds sockets the way real programs do, and says what
//! it got on stdout so tests wait on its words, never on sleeps.
//!
//! binder hold  ADDR PORT [udp] [listen] [reuseaddr] [v6only]
//!     binds, prints `ready <pid> <port>`, closes the socket on the first
//!     stdin line (prints `closed`), exits on EOF.
//! binder try   ADDR PORT [udp] [close-elsewhere]
//!     one bind attempt: prints `ok <port>` or `err <errno>`; exits 0. With
//!     `close-elsewhere` the bind is made on a thread of its own and the
//!     main thread closes the socket after it.
//! binder tries ADDR PORT TIMES
//!     TIMES bind attempts, each on a new socket closed at once; prints
//!     `failed <n>`, then stays until stdin closes (so who tried can be read).
//! binder storm THREADS COUNT
//!     each thread binds 127.0.0.1:0 and closes, COUNT times; prints `done <n>`.

use std::io::{BufRead, Write};
use std::net::IpAddr;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let flag = |f: &str| args.iter().any(|a| a == f);
    match args.first().map(String::as_str) {
        Some("hold") => {
            let fd = match bind(
                &args[1],
                args[2].parse().unwrap(),
                flag("udp"),
                flag("reuseaddr"),
                flag("v6only"),
            ) {
                Ok(fd) => fd,
                Err(e) => {
                    println!("err {e}");
                    std::process::exit(1);
                }
            };
            if flag("listen") {
                // SAFETY: fd is a bound socket.
                assert_eq!(unsafe { libc::listen(fd, 16) }, 0, "listen failed");
            }
            println!("ready {} {}", std::process::id(), local_port(fd));
            std::io::stdout().flush().unwrap();
            let stdin = std::io::stdin();
            let mut lines = stdin.lock().lines();
            if lines.next().is_some() {
                // SAFETY: closing our own fd once.
                unsafe { libc::close(fd) };
                println!("closed");
                std::io::stdout().flush().unwrap();
                let _ = lines.next();
            }
        }
        Some("try") if flag("close-elsewhere") => {
            let (addr, port, udp) = (args[1].clone(), args[2].parse().unwrap(), flag("udp"));
            let (fd, r) = std::thread::spawn(move || bind_open(&addr, port, udp, false, false))
                .join()
                .unwrap();
            match r {
                Ok(()) => println!("ok {}", local_port(fd)),
                Err(e) => println!("err {e}"),
            }
            if fd >= 0 {
                // SAFETY: closing our own fd once.
                unsafe { libc::close(fd) };
            }
        }
        Some("try") => match bind(
            &args[1],
            args[2].parse().unwrap(),
            flag("udp"),
            false,
            false,
        ) {
            Ok(fd) => {
                println!("ok {}", local_port(fd));
                // SAFETY: closing our own fd once.
                unsafe { libc::close(fd) };
            }
            Err(e) => println!("err {e}"),
        },
        Some("tries") => {
            let times: u32 = args[3].parse().unwrap();
            let failed = (0..times)
                .filter(
                    |_| match bind(&args[1], args[2].parse().unwrap(), false, false, false) {
                        Ok(fd) => {
                            // SAFETY: closing our own fd once.
                            unsafe { libc::close(fd) };
                            false
                        }
                        Err(_) => true,
                    },
                )
                .count();
            println!("failed {failed}");
            std::io::stdout().flush().unwrap();
            for _ in std::io::stdin().lock().lines() {}
        }
        Some("storm") => {
            let threads: usize = args[1].parse().unwrap();
            let count: usize = args[2].parse().unwrap();
            let handles: Vec<_> = (0..threads)
                .map(|_| {
                    std::thread::spawn(move || {
                        let mut n = 0;
                        for _ in 0..count {
                            if let Ok(fd) = bind("127.0.0.1", 0, true, false, false) {
                                // SAFETY: closing our own fd once.
                                unsafe { libc::close(fd) };
                                n += 1;
                            }
                        }
                        n
                    })
                })
                .collect();
            let n: usize = handles.into_iter().map(|h| h.join().unwrap()).sum();
            println!("done {n}");
        }
        _ => {
            eprintln!("usage: binder hold|try|tries|storm ...");
            std::process::exit(2);
        }
    }
}

/// Binds a new socket; returns the fd or the errno.
fn bind(addr: &str, port: u16, udp: bool, reuseaddr: bool, v6only: bool) -> Result<i32, i32> {
    let (fd, r) = bind_open(addr, port, udp, reuseaddr, v6only);
    match r {
        Ok(()) => Ok(fd),
        Err(e) => {
            if fd >= 0 {
                // SAFETY: closing our own fd once.
                unsafe { libc::close(fd) };
            }
            Err(e)
        }
    }
}

/// Binds a new socket and leaves it open whatever the outcome: the fd (-1
/// when no socket was made) and the bind's result.
fn bind_open(
    addr: &str,
    port: u16,
    udp: bool,
    reuseaddr: bool,
    v6only: bool,
) -> (i32, Result<(), i32>) {
    let ip: IpAddr = addr.parse().expect("bad address");
    let (family, ty) = (
        if ip.is_ipv6() {
            libc::AF_INET6
        } else {
            libc::AF_INET
        },
        if udp {
            libc::SOCK_DGRAM
        } else {
            libc::SOCK_STREAM
        },
    );
    // SAFETY: plain socket calls on stack-allocated, correctly sized structs.
    unsafe {
        let fd = libc::socket(family, ty | libc::SOCK_CLOEXEC, 0);
        if fd < 0 {
            return (fd, Err(errno()));
        }
        let one: libc::c_int = 1;
        if reuseaddr {
            libc::setsockopt(
                fd,
                libc::SOL_SOCKET,
                libc::SO_REUSEADDR,
                &one as *const _ as *const _,
                4,
            );
        }
        if ip.is_ipv6() {
            let v: libc::c_int = v6only as libc::c_int;
            libc::setsockopt(
                fd,
                libc::IPPROTO_IPV6,
                libc::IPV6_V6ONLY,
                &v as *const _ as *const _,
                4,
            );
        }
        let r = match ip {
            IpAddr::V4(v4) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = port.to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(v4.octets());
                libc::bind(
                    fd,
                    &sa as *const _ as *const _,
                    std::mem::size_of_val(&sa) as u32,
                )
            }
            IpAddr::V6(v6) => {
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_port = port.to_be();
                sa.sin6_addr.s6_addr = v6.octets();
                libc::bind(
                    fd,
                    &sa as *const _ as *const _,
                    std::mem::size_of_val(&sa) as u32,
                )
            }
        };
        if r != 0 {
            return (fd, Err(errno()));
        }
        (fd, Ok(()))
    }
}

fn local_port(fd: i32) -> u16 {
    // SAFETY: getsockname into a storage big enough for any address.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of_val(&ss) as u32;
        libc::getsockname(fd, &mut ss as *mut _ as *mut _, &mut len);
        let sin = &*(&ss as *const _ as *const libc::sockaddr_in);
        u16::from_be(sin.sin_port)
    }
}

fn errno() -> i32 {
    std::io::Error::last_os_error().raw_os_error().unwrap_or(0)
}

//! A socket holder that changes under reaper's feet on command, for the
//! fault tests (tests/tests/it/faults.rs). It says what it did on stdout, one
//! line per step, so a test waits on its words, never on a sleep.
//!
//! ```text
//! fault-holder listen ADDR PORT [reuseport] [v6only|dual]
//!     binds and listens on ADDR:PORT (0: any), prints `ready PID PORT`,
//!     then obeys stdin, one command a line, until EOF:
//!       fork              a child inherits the socket and waits (no
//!                         parent-death signal: it outlives us); `forked CHILD`
//!       send PATH         passes the socket over the Unix socket PATH
//!                         (SCM_RIGHTS); `sent`
//!       close             closes its copy of the socket; `closed`
//!       exec PROG ARG...  execs PROG in the same pid, the socket kept open
//!                         across the exec; stdout closes exactly at the exec
//! fault-holder receive PATH
//!     listens on the Unix socket PATH, prints `ready PID`, takes one socket
//!     passed over it, prints `got PORT`, holds it until stdin closes.
//! ```

use std::ffi::CString;
use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};
use std::os::unix::net::{UnixListener, UnixStream};

fn die(what: &str) -> ! {
    eprintln!("fault-holder: {what}: {}", std::io::Error::last_os_error());
    std::process::exit(2);
}

fn say(line: &str) {
    let mut out = std::io::stdout();
    let _ = writeln!(out, "{line}");
    let _ = out.flush();
}

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("listen") if args.len() >= 3 => listen(&args[1], &args[2], &args[3..]),
        Some("receive") if args.len() == 2 => receive(&args[1]),
        _ => {
            eprintln!(
                "usage: fault-holder listen ADDR PORT [reuseport] [v6only|dual] | receive PATH"
            );
            std::process::exit(2);
        }
    }
}

fn listen(addr: &str, port: &str, opts: &[String]) {
    let ip: IpAddr = addr.parse().unwrap_or_else(|_| die("not an address"));
    let port: u16 = port.parse().unwrap_or_else(|_| die("not a port"));
    let has = |o: &str| opts.iter().any(|x| x == o);
    let fd = bind_listen(ip, port, has("reuseport"), has("dual"));
    say(&format!("ready {} {}", std::process::id(), local_port(&fd)));
    let mut sock = Some(fd);
    for line in std::io::stdin().lock().lines().map_while(Result::ok) {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            ["fork"] => {
                // SAFETY: the child only waits; fork from this single-threaded program.
                let pid = unsafe { libc::fork() };
                if pid < 0 {
                    die("fork");
                }
                if pid == 0 {
                    loop {
                        // SAFETY: pause only waits for a signal.
                        unsafe { libc::pause() };
                    }
                }
                say(&format!("forked {pid}"));
            }
            ["send", path] => {
                let fd = sock.as_ref().unwrap_or_else(|| die("send: socket closed"));
                let conn = UnixStream::connect(path).unwrap_or_else(|_| die("connect"));
                send_fd(&conn, fd);
                say("sent");
            }
            ["close"] => {
                sock = None;
                say("closed");
            }
            ["exec", prog, rest @ ..] => {
                let fd = sock.as_ref().unwrap_or_else(|| die("exec: socket closed"));
                exec_keeping(fd, prog, rest);
            }
            _ => die(&format!("unknown command {line:?}")),
        }
    }
}

fn receive(path: &str) {
    let l = UnixListener::bind(path).unwrap_or_else(|_| die("bind unix"));
    say(&format!("ready {}", std::process::id()));
    let (conn, _) = l.accept().unwrap_or_else(|_| die("accept"));
    let fd = recv_fd(&conn);
    say(&format!("got {}", local_port(&fd)));
    // Hold it until stdin closes.
    for _ in std::io::stdin().lock().lines() {}
    drop(fd);
}

fn bind_listen(ip: IpAddr, port: u16, reuseport: bool, dual: bool) -> OwnedFd {
    let family = if ip.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    // SAFETY: plain socket syscalls over stack structs of the right sizes;
    // the fd is owned by the OwnedFd from here on.
    unsafe {
        let raw = libc::socket(family, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
        if raw < 0 {
            die("socket");
        }
        let fd = OwnedFd::from_raw_fd(raw);
        let one: libc::c_int = 1;
        if reuseport
            && libc::setsockopt(
                raw,
                libc::SOL_SOCKET,
                libc::SO_REUSEPORT,
                (&one as *const libc::c_int).cast(),
                4,
            ) != 0
        {
            die("SO_REUSEPORT");
        }
        let r = match ip {
            IpAddr::V4(a) => {
                let mut sa: libc::sockaddr_in = std::mem::zeroed();
                sa.sin_family = libc::AF_INET as u16;
                sa.sin_port = port.to_be();
                sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
                libc::bind(raw, (&sa as *const libc::sockaddr_in).cast(), 16)
            }
            IpAddr::V6(a) => {
                let v6only: libc::c_int = (!dual).into();
                if libc::setsockopt(
                    raw,
                    libc::IPPROTO_IPV6,
                    libc::IPV6_V6ONLY,
                    (&v6only as *const libc::c_int).cast(),
                    4,
                ) != 0
                {
                    die("IPV6_V6ONLY");
                }
                let mut sa: libc::sockaddr_in6 = std::mem::zeroed();
                sa.sin6_family = libc::AF_INET6 as u16;
                sa.sin6_port = port.to_be();
                sa.sin6_addr.s6_addr = a.octets();
                libc::bind(raw, (&sa as *const libc::sockaddr_in6).cast(), 28)
            }
        };
        if r != 0 {
            die("bind");
        }
        if libc::listen(raw, 16) != 0 {
            die("listen");
        }
        fd
    }
}

fn local_port(fd: &OwnedFd) -> u16 {
    // SAFETY: getsockname into storage big enough for any address; both
    // sockaddr_in and sockaddr_in6 keep the port at the same offset.
    unsafe {
        let mut ss: libc::sockaddr_storage = std::mem::zeroed();
        let mut len = std::mem::size_of_val(&ss) as u32;
        if libc::getsockname(
            fd.as_raw_fd(),
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        ) != 0
        {
            die("getsockname");
        }
        u16::from_be((*(&ss as *const libc::sockaddr_storage).cast::<libc::sockaddr_in>()).sin_port)
    }
}

/// One byte of data carrying one fd as SCM_RIGHTS.
fn send_fd(conn: &UnixStream, fd: &OwnedFd) {
    // SAFETY: msghdr and cmsg built per cmsg(3) in a buffer of CMSG_SPACE.
    unsafe {
        let mut byte = [b'x'];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let space = libc::CMSG_SPACE(4) as usize;
        let mut cbuf = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        let c = libc::CMSG_FIRSTHDR(&msg);
        (*c).cmsg_level = libc::SOL_SOCKET;
        (*c).cmsg_type = libc::SCM_RIGHTS;
        (*c).cmsg_len = libc::CMSG_LEN(4) as usize;
        std::ptr::write_unaligned(libc::CMSG_DATA(c).cast::<i32>(), fd.as_raw_fd());
        if libc::sendmsg(conn.as_raw_fd(), &msg, 0) != 1 {
            die("sendmsg");
        }
    }
}

fn recv_fd(conn: &UnixStream) -> OwnedFd {
    // SAFETY: as in send_fd; the received fd is new and ours.
    unsafe {
        let mut byte = [0u8];
        let mut iov = libc::iovec {
            iov_base: byte.as_mut_ptr().cast(),
            iov_len: 1,
        };
        let space = libc::CMSG_SPACE(4) as usize;
        let mut cbuf = vec![0u8; space];
        let mut msg: libc::msghdr = std::mem::zeroed();
        msg.msg_iov = &mut iov;
        msg.msg_iovlen = 1;
        msg.msg_control = cbuf.as_mut_ptr().cast();
        msg.msg_controllen = space;
        if libc::recvmsg(conn.as_raw_fd(), &mut msg, libc::MSG_CMSG_CLOEXEC) != 1 {
            die("recvmsg");
        }
        let c = libc::CMSG_FIRSTHDR(&msg);
        if c.is_null() || (*c).cmsg_type != libc::SCM_RIGHTS {
            die("no fd in the message");
        }
        OwnedFd::from_raw_fd(std::ptr::read_unaligned(libc::CMSG_DATA(c).cast::<i32>()))
    }
}

/// execv with the socket's close-on-exec cleared; stdout moves to a
/// close-on-exec copy and /dev/null takes fd 1, so our reader sees EOF at
/// the exec itself.
fn exec_keeping(fd: &OwnedFd, prog: &str, rest: &[&str]) -> ! {
    let p = CString::new(prog).unwrap();
    let mut argv: Vec<CString> = vec![p.clone()];
    argv.extend(rest.iter().map(|a| CString::new(*a).unwrap()));
    let mut ptrs: Vec<*const libc::c_char> = argv.iter().map(|a| a.as_ptr()).collect();
    ptrs.push(std::ptr::null());
    // SAFETY: fd juggling on our own descriptors, then execv with a
    // NULL-terminated argv of live CStrings.
    unsafe {
        libc::fcntl(fd.as_raw_fd(), libc::F_SETFD, 0);
        let _keep = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        libc::dup2(null, 1);
        libc::execv(p.as_ptr(), ptrs.as_ptr());
    }
    die(&format!("exec {prog}"))
}

//! A test fixture for the bind-conflict matrix (tests/tests/it/why.rs): run
//! inside a private network namespace, it makes sockets in the states the
//! test asks for, keeps them, and makes the real binds the test asks about,
//! answering each command with one line on stdout.
//!
//! Commands, one a line on stdin (flags are 0 or 1):
//!   hold ID STATE PROTO ADDR PORT V6ONLY REUSEADDR REUSEPORT UID
//!       STATE: listen, bound, estab (TCP, the port picked by connect()),
//!       timewait (TCP, bound then connected, closed first), udp-bound,
//!       udp-conn (bound, then connected).
//!       -> `held ID` or `fail ID ERRNO WHAT`
//!   bind ID PROTO ADDR PORT V6ONLY REUSEADDR REUSEPORT UID
//!       one bind as UID (the socket is created and bound with that
//!       effective uid), closed at once -> `result ID 0|ERRNO`
//! It is single-threaded, so changing its effective uid is safe.

use std::io::{BufRead, Write};
use std::net::IpAddr;
use std::time::{Duration, Instant};

/// Listeners the connections go to; the matrix's ports avoid these.
const PEER4: u16 = 10001;
const PEER6: u16 = 10002;
const PEER4_TW: u16 = 10003;
const PEER6_TW: u16 = 10004;

fn main() {
    let peers = [
        listener("0.0.0.0", PEER4, false),
        listener("::", PEER6, true),
        listener("0.0.0.0", PEER4_TW, false),
        listener("::", PEER6_TW, true),
    ];
    let mut kept: Vec<i32> = Vec::new();
    let stdin = std::io::stdin();
    let mut out = std::io::stdout().lock();
    for line in stdin.lock().lines() {
        let line = line.unwrap();
        let w: Vec<&str> = line.split_whitespace().collect();
        let reply = match w.first().copied() {
            Some("hold") => hold(&w, &peers, &mut kept),
            Some("bind") => {
                let s = spec(&w[2..]);
                let r = as_uid(s.uid, || {
                    let fd = make(&s)?;
                    let r = bind(fd, s.addr, s.port);
                    close(fd);
                    r
                });
                format!("result {} {}", w[1], r.err().unwrap_or(0))
            }
            _ => format!("error unknown command: {line}"),
        };
        writeln!(out, "{reply}").unwrap();
        out.flush().unwrap();
    }
}

struct Spec {
    udp: bool,
    addr: IpAddr,
    port: u16,
    v6only: bool,
    reuseaddr: bool,
    reuseport: bool,
    uid: u32,
}

fn spec(w: &[&str]) -> Spec {
    let b = |s: &str| s == "1";
    Spec {
        udp: w[0] == "udp",
        addr: w[1].parse().expect("an address"),
        port: w[2].parse().expect("a port"),
        v6only: b(w[3]),
        reuseaddr: b(w[4]),
        reuseport: b(w[5]),
        uid: w[6].parse().expect("a uid"),
    }
}

fn hold(w: &[&str], peers: &[i32; 4], kept: &mut Vec<i32>) -> String {
    let (id, state) = (w[1], w[2]);
    let s = spec(&w[3..]);
    let made = as_uid(s.uid, || make(&s));
    let fd = match made {
        Ok(fd) => fd,
        Err(e) => return format!("fail {id} {e} socket"),
    };
    let peer = |tw: bool| -> (IpAddr, u16) {
        let v6 = matches!(s.addr, IpAddr::V6(a) if a.to_ipv4_mapped().is_none());
        match (v6, tw) {
            (false, false) => (mapped_if(s.addr, "127.0.0.1"), PEER4),
            (false, true) => (mapped_if(s.addr, "127.0.0.1"), PEER4_TW),
            (true, false) => ("::1".parse().unwrap(), PEER6),
            (true, true) => ("::1".parse().unwrap(), PEER6_TW),
        }
    };
    let step = |r: Result<(), i32>, what: &str| r.map_err(|e| format!("fail {id} {e} {what}"));
    let done = (|| -> Result<(), String> {
        match state {
            "listen" => {
                step(bind(fd, s.addr, s.port), "bind")?;
                // SAFETY: listen on our socket.
                step(check(unsafe { libc::listen(fd, 16) }), "listen")
            }
            "bound" | "udp-bound" => step(bind(fd, s.addr, s.port), "bind"),
            "estab" => {
                // A one-port range: connect() must take exactly this port.
                set_range(s.port, s.port);
                let (a, p) = peer(false);
                let r = connect(fd, a, p);
                set_range(32768, 60999);
                step(r, "connect")?;
                match local_port(fd) {
                    p if p == s.port => Ok(()),
                    p => Err(format!("fail {id} 0 connect-picked-{p}")),
                }
            }
            "timewait" => {
                step(bind(fd, s.addr, s.port), "bind")?;
                let (a, p) = peer(true);
                step(connect(fd, a, p), "connect")?;
                let lst = if p == PEER4_TW { peers[2] } else { peers[3] };
                // SAFETY: accept on our listener; the connection is queued.
                let srv = unsafe { libc::accept(lst, std::ptr::null_mut(), std::ptr::null_mut()) };
                step(check(srv), "accept")?;
                // The side that closes first ends in TIME_WAIT.
                close(fd);
                wait_state(s.port, s.addr.is_ipv6(), "FIN_WAIT2");
                close(srv);
                if wait_state(s.port, s.addr.is_ipv6(), "TIME_WAIT") {
                    Ok(())
                } else {
                    Err(format!("fail {id} 0 no-time-wait"))
                }
            }
            "udp-conn" => {
                step(bind(fd, s.addr, s.port), "bind")?;
                let (a, _) = peer(false);
                step(connect(fd, a, 9), "connect")
            }
            other => Err(format!("fail {id} 0 unknown-state-{other}")),
        }
    })();
    match done {
        Ok(()) => {
            if state != "timewait" {
                kept.push(fd);
            }
            format!("held {id}")
        }
        Err(e) => e,
    }
}

/// 127.0.0.1 as the socket's family wants it (v4-mapped for IPv6).
fn mapped_if(own: IpAddr, v4: &str) -> IpAddr {
    let a: std::net::Ipv4Addr = v4.parse().unwrap();
    match own {
        IpAddr::V4(_) => IpAddr::V4(a),
        IpAddr::V6(_) => IpAddr::V6(a.to_ipv6_mapped()),
    }
}

fn listener(addr: &str, port: u16, v6only: bool) -> i32 {
    let s = Spec {
        udp: false,
        addr: addr.parse().unwrap(),
        port,
        v6only,
        reuseaddr: false,
        reuseport: false,
        uid: 0,
    };
    let fd = make(&s).expect("a peer socket");
    bind(fd, s.addr, port).expect("binding a peer listener");
    // SAFETY: listen on our socket; every connection of the matrix fits.
    check(unsafe { libc::listen(fd, 4096) }).expect("listen");
    fd
}

/// Runs `f` with effective uid `uid` (creating a socket stamps it with
/// that uid; binding checks that uid's capabilities), then back to root.
fn as_uid<T>(uid: u32, f: impl FnOnce() -> Result<T, i32>) -> Result<T, i32> {
    if uid == 0 {
        return f();
    }
    // SAFETY: single-threaded; -1 keeps the real and saved ids (root), so
    // the effective uid can come back.
    check(unsafe { libc::setresuid(u32::MAX, uid, u32::MAX) }).expect("seteuid");
    let r = f();
    // SAFETY: as above; back to root restores the effective capabilities.
    check(unsafe { libc::setresuid(u32::MAX, 0, u32::MAX) }).expect("seteuid back");
    r
}

fn make(s: &Spec) -> Result<i32, i32> {
    let domain = if s.addr.is_ipv6() {
        libc::AF_INET6
    } else {
        libc::AF_INET
    };
    let ty = if s.udp {
        libc::SOCK_DGRAM
    } else {
        libc::SOCK_STREAM
    };
    // SAFETY: plain socket creation.
    let fd = unsafe { libc::socket(domain, ty | libc::SOCK_CLOEXEC, 0) };
    check(fd)?;
    let set = |level: i32, name: i32, v: bool| -> Result<(), i32> {
        let v: libc::c_int = v.into();
        // SAFETY: setsockopt with a c_int.
        check(unsafe {
            libc::setsockopt(
                fd,
                level,
                name,
                (&v as *const libc::c_int).cast(),
                std::mem::size_of::<libc::c_int>() as libc::socklen_t,
            )
        })
    };
    set(libc::SOL_SOCKET, libc::SO_REUSEADDR, s.reuseaddr)?;
    set(libc::SOL_SOCKET, libc::SO_REUSEPORT, s.reuseport)?;
    if domain == libc::AF_INET6 {
        set(libc::IPPROTO_IPV6, libc::IPV6_V6ONLY, s.v6only)?;
    }
    Ok(fd)
}

fn check(r: i32) -> Result<(), i32> {
    if r < 0 {
        Err(std::io::Error::last_os_error().raw_os_error().unwrap_or(0))
    } else {
        Ok(())
    }
}

fn close(fd: i32) {
    // SAFETY: closing our own fd once.
    unsafe { libc::close(fd) };
}

fn with_sockaddr<T>(addr: IpAddr, port: u16, f: impl FnOnce(*const libc::sockaddr, u32) -> T) -> T {
    match addr {
        IpAddr::V4(a) => {
            // SAFETY: an all-zero sockaddr_in is valid.
            let mut sa: libc::sockaddr_in = unsafe { std::mem::zeroed() };
            sa.sin_family = libc::AF_INET as u16;
            sa.sin_port = port.to_be();
            sa.sin_addr.s_addr = u32::from_ne_bytes(a.octets());
            f(
                (&sa as *const libc::sockaddr_in).cast(),
                std::mem::size_of_val(&sa) as u32,
            )
        }
        IpAddr::V6(a) => {
            // SAFETY: an all-zero sockaddr_in6 is valid.
            let mut sa: libc::sockaddr_in6 = unsafe { std::mem::zeroed() };
            sa.sin6_family = libc::AF_INET6 as u16;
            sa.sin6_port = port.to_be();
            sa.sin6_addr.s6_addr = a.octets();
            f(
                (&sa as *const libc::sockaddr_in6).cast(),
                std::mem::size_of_val(&sa) as u32,
            )
        }
    }
}

fn bind(fd: i32, addr: IpAddr, port: u16) -> Result<(), i32> {
    with_sockaddr(addr, port, |sa, len| {
        // SAFETY: bind with a sockaddr of the length given.
        check(unsafe { libc::bind(fd, sa, len) })
    })
}

fn connect(fd: i32, addr: IpAddr, port: u16) -> Result<(), i32> {
    with_sockaddr(addr, port, |sa, len| {
        // SAFETY: a blocking connect with a sockaddr of the length given.
        check(unsafe { libc::connect(fd, sa, len) })
    })
}

fn local_port(fd: i32) -> u16 {
    // SAFETY: an all-zero sockaddr_storage is valid.
    let mut ss: libc::sockaddr_storage = unsafe { std::mem::zeroed() };
    let mut len = std::mem::size_of_val(&ss) as u32;
    // SAFETY: getsockname into a sockaddr_storage of the length given.
    unsafe {
        libc::getsockname(
            fd,
            (&mut ss as *mut libc::sockaddr_storage).cast(),
            &mut len,
        )
    };
    // Both sockaddr_in and sockaddr_in6 keep the port at offset 2.
    let p = &ss as *const libc::sockaddr_storage as *const u8;
    // SAFETY: reading two bytes inside the storage.
    unsafe { u16::from_be_bytes([*p.add(2), *p.add(3)]) }
}

fn set_range(lo: u16, hi: u16) {
    std::fs::write(
        "/proc/sys/net/ipv4/ip_local_port_range",
        format!("{lo} {hi}"),
    )
    .expect("setting this namespace's ip_local_port_range");
}

/// Polls /proc/net/tcp{,6} (this namespace's) until a socket on local
/// `port` is in `state`, for up to two seconds.
fn wait_state(port: u16, v6: bool, state: &str) -> bool {
    let code = match state {
        "FIN_WAIT2" => "05",
        _ => "06",
    };
    let file = if v6 {
        "/proc/net/tcp6"
    } else {
        "/proc/net/tcp"
    };
    let want = format!(":{port:04X} ");
    let deadline = Instant::now() + Duration::from_secs(2);
    while Instant::now() < deadline {
        let text = std::fs::read_to_string(file).unwrap_or_default();
        let hit = text.lines().skip(1).any(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            f.len() > 3 && format!("{} ", f[1]).ends_with(&want) && f[3] == code
        });
        if hit {
            return true;
        }
        std::thread::sleep(Duration::from_millis(1));
    }
    false
}

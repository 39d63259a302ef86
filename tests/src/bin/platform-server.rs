//! A stand-in for the CI job's `platform-server`: listens on a port and
//! holds it until killed. Its name is 15 bytes, so its comm is exactly at the
//! kernel's limit, the case where a comm may be a truncation.
//!
//! Options (for the tests in tests/tests/it/free.rs and the benchmark):
//!   --port N             port to listen on (required)
//!   --addr A             address (default 127.0.0.1; `::` for dual-stack v6)
//!   --udp                bind a UDP socket instead of listening on TCP
//!   --ignore-term        ignore SIGTERM (only SIGKILL stops it)
//!   --fork-child         after listening, fork a child that shares the socket
//!   --child-exec PROG    with --fork-child: the child execs `PROG 1000`
//!                        keeping the socket (another program sharing it);
//!                        "ready" is written once the exec is done
//!   --comm NAME          set the comm (prctl PR_SET_NAME): a decoy's disguise
//!   --exec-on-usr1 PROG  on SIGUSR1, exec `PROG 1000` in the same pid
//!                        (stdout is closed at that exec, so a reader sees EOF
//!                        exactly when the new program has replaced this one)
//!   --ready-fd N         write the ready line to fd N instead of stdout
//!
//! Once listening it writes one line, "ready <pid>" (plus " child <pid>"
//! with --fork-child), so a test waits on an event, not a sleep.

use std::io::Write;
use std::net::{IpAddr, SocketAddr, TcpListener, UdpSocket};
use std::os::fd::{AsRawFd, FromRawFd};

fn main() {
    let mut args = std::env::args().skip(1);
    let mut port: Option<u16> = None;
    let mut addr: IpAddr = "127.0.0.1".parse().unwrap();
    let (mut udp, mut ignore_term, mut fork_child) = (false, false, false);
    let mut comm: Option<String> = None;
    let mut exec_prog: Option<String> = None;
    let mut child_exec: Option<String> = None;
    let mut ready_fd: i32 = 1;
    while let Some(a) = args.next() {
        let mut val = || {
            args.next()
                .unwrap_or_else(|| die(&format!("{a} needs a value")))
        };
        match a.as_str() {
            "--port" => port = Some(val().parse().unwrap_or_else(|_| die("--port: not a port"))),
            "--addr" => {
                addr = val()
                    .parse()
                    .unwrap_or_else(|_| die("--addr: not an address"))
            }
            "--udp" => udp = true,
            "--ignore-term" => ignore_term = true,
            "--fork-child" => fork_child = true,
            "--comm" => comm = Some(val()),
            "--exec-on-usr1" => exec_prog = Some(val()),
            "--child-exec" => child_exec = Some(val()),
            "--ready-fd" => {
                ready_fd = val()
                    .parse()
                    .unwrap_or_else(|_| die("--ready-fd: not an fd"))
            }
            other => die(&format!("unknown option {other}")),
        }
    }
    let port = port.unwrap_or_else(|| die("--port is required"));
    if ignore_term {
        // SAFETY: setting a disposition to SIG_IGN is async-signal-safe and has no handler.
        unsafe { libc::signal(libc::SIGTERM, libc::SIG_IGN) };
    }
    if let Some(name) = &comm {
        let c = std::ffi::CString::new(name.as_str()).unwrap();
        // SAFETY: valid NUL-terminated string; the kernel copies at most 15 bytes.
        unsafe { libc::prctl(libc::PR_SET_NAME, c.as_ptr() as libc::c_ulong, 0, 0, 0) };
    }
    // SIGUSR1 is taken with sigwait in the main loop, so exec happens in
    // ordinary code, not in a signal handler.
    // SAFETY: a sigset_t is plain data, valid all zero (emptied next).
    let mut set: libc::sigset_t = unsafe { std::mem::zeroed() };
    // SAFETY: plain sigset manipulation on a local set.
    unsafe {
        libc::sigemptyset(&mut set);
        libc::sigaddset(&mut set, libc::SIGUSR1);
        libc::pthread_sigmask(libc::SIG_BLOCK, &set, std::ptr::null_mut());
    }

    let sa = SocketAddr::new(addr, port);
    // Kept alive for the life of the process (std sockets are CLOEXEC, so
    // an exec drops them).
    let (_held, sock_fd): (Box<dyn std::any::Any>, i32) = if udp {
        let s = UdpSocket::bind(sa).unwrap_or_else(|e| die(&format!("bind {sa}/udp: {e}")));
        let fd = s.as_raw_fd();
        (Box::new(s), fd)
    } else {
        let s = TcpListener::bind(sa).unwrap_or_else(|e| die(&format!("listen {sa}/tcp: {e}")));
        let fd = s.as_raw_fd();
        (Box::new(s), fd)
    };

    let mut line = format!("ready {}", std::process::id());
    if fork_child {
        // A close-on-exec pipe: EOF on it means the child's exec is done.
        let mut done = [0i32; 2];
        // SAFETY: a valid array for the two fds.
        if unsafe { libc::pipe2(done.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
            die("pipe2 failed");
        }
        // SAFETY: single-threaded here; the child only pauses or execs.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            die("fork failed");
        }
        if pid == 0 {
            if let Some(prog) = &child_exec {
                exec_sharing(prog, sock_fd);
            }
            // SAFETY: our own pipe fds: closing them tells the parent we run.
            unsafe {
                libc::close(done[0]);
                libc::close(done[1]);
            }
            loop {
                // SAFETY: pause just waits for a signal.
                unsafe { libc::pause() };
            }
        }
        // SAFETY: our own pipe fds; read returns 0 at EOF (the exec).
        unsafe {
            libc::close(done[1]);
            let mut b = [0u8; 1];
            while libc::read(done[0], b.as_mut_ptr().cast(), 1) > 0 {}
            libc::close(done[0]);
        }
        line.push_str(&format!(" child {pid}"));
    }
    {
        // SAFETY: the fd is the caller's to give us; ManuallyDrop keeps it open.
        let mut out = std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(ready_fd) });
        let _ = writeln!(out, "{line}");
        let _ = out.flush();
    }
    loop {
        let mut sig = 0;
        // SAFETY: valid set and out pointer.
        unsafe { libc::sigwait(&set, &mut sig) };
        if sig == libc::SIGUSR1 {
            if let Some(prog) = &exec_prog {
                exec_keeping_pid(prog);
            }
        }
    }
}

/// The forked child becomes `prog 1000`, keeping the listening socket
/// (its close-on-exec flag cleared): another program sharing it.
fn exec_sharing(prog: &str, fd: i32) -> ! {
    let p = std::ffi::CString::new(prog).unwrap();
    let arg = std::ffi::CString::new("1000").unwrap();
    // SAFETY: our own fd's flags, then execv with a valid argv.
    unsafe {
        libc::fcntl(fd, libc::F_SETFD, 0);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        libc::dup2(null, 1);
        let argv = [p.as_ptr(), arg.as_ptr(), std::ptr::null()];
        libc::execv(p.as_ptr(), argv.as_ptr());
    }
    die(&format!(
        "child exec {prog} failed: {}",
        std::io::Error::last_os_error()
    ))
}

/// Replaces this program with `prog 1000`, same pid. stdout is moved to a
/// close-on-exec descriptor so the reader of our stdout sees EOF when the
/// exec has happened.
fn exec_keeping_pid(prog: &str) -> ! {
    let p = std::ffi::CString::new(prog).unwrap();
    let arg = std::ffi::CString::new("1000").unwrap();
    // SAFETY: fd juggling on our own descriptors, then execv with valid argv.
    unsafe {
        let keep = libc::fcntl(1, libc::F_DUPFD_CLOEXEC, 3);
        let null = libc::open(c"/dev/null".as_ptr(), libc::O_WRONLY);
        libc::dup2(null, 1);
        let argv = [p.as_ptr(), arg.as_ptr(), std::ptr::null()];
        libc::execv(p.as_ptr(), argv.as_ptr());
        // Only reached when execv failed; `keep` then just leaks.
        let _ = keep;
    }
    die(&format!(
        "exec {prog} failed: {}",
        std::io::Error::last_os_error()
    ))
}

fn die(msg: &str) -> ! {
    eprintln!("platform-server: {msg}");
    std::process::exit(2)
}

//! Idle processes for the benchmarks that need a busy host (who, job):
//! N children, each holding F open files, blocked on a pipe whose only
//! write end is the benchmark's (EOF when it exits, however it exits),
//! with PR_SET_PDEATHSIG, killed and reaped on drop.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use anyhow::{bail, Context, Result};

/// The idle processes; killed and reaped on drop, panics included.
pub struct Idlers {
    pub pids: Vec<libc::pid_t>,
    release: Option<OwnedFd>,
}

impl Drop for Idlers {
    fn drop(&mut self) {
        // EOF on their pipe ends them; SIGKILL covers one stuck elsewhere.
        self.release.take();
        for &pid in &self.pids {
            // SAFETY: plain syscalls on pids we forked and have not reaped.
            unsafe {
                libc::kill(pid, libc::SIGKILL);
                libc::waitpid(pid, std::ptr::null_mut(), 0);
            }
        }
    }
}

fn pipe() -> Result<(OwnedFd, OwnedFd)> {
    let mut fds = [0; 2];
    // SAFETY: fds is a valid array of two ints.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        bail!("pipe2: {}", std::io::Error::last_os_error());
    }
    // SAFETY: both fds were just created and are owned by nobody else.
    Ok(unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) })
}

/// Forks `n` children that each open /dev/null `fds` times, say so on the
/// ready pipe, and block reading the release pipe.
pub fn start_idlers(n: usize, fds: usize) -> Result<Idlers> {
    let (release_r, release_w) = pipe()?;
    let (ready_r, ready_w) = pipe()?;
    let mut idlers = Idlers {
        pids: Vec::with_capacity(n),
        release: Some(release_w),
    };
    let devnull = c"/dev/null";
    let (rr, rw, readyw) = (
        release_r.as_raw_fd(),
        idlers.release.as_ref().unwrap().as_raw_fd(),
        ready_w.as_raw_fd(),
    );
    for _ in 0..n {
        // SAFETY: this process is single-threaded here, and the child only
        // makes async-signal-safe calls before _exit.
        let pid = unsafe { libc::fork() };
        if pid < 0 {
            bail!(
                "fork failed after {} processes: {}",
                idlers.pids.len(),
                std::io::Error::last_os_error()
            );
        }
        if pid == 0 {
            // SAFETY: the forked child: only async-signal-safe calls on its
            // own fds and a buffer on its stack, then _exit.
            unsafe {
                libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
                libc::close(rw);
                for _ in 0..fds {
                    libc::open(devnull.as_ptr(), libc::O_RDONLY);
                }
                libc::write(readyw, b"r".as_ptr().cast(), 1);
                libc::close(readyw);
                let mut b = 0u8;
                libc::read(rr, (&mut b as *mut u8).cast(), 1);
                libc::_exit(0);
            }
        }
        idlers.pids.push(pid);
    }
    drop(ready_w);
    drop(release_r);
    // Wait until every child has its files open.
    let mut got = 0;
    let mut buf = [0u8; 4096];
    while got < n {
        // SAFETY: reading into a valid buffer.
        let r = unsafe { libc::read(ready_r.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
        if r <= 0 {
            bail!("only {got} of {n} idle processes became ready");
        }
        got += r as usize;
    }
    Ok(idlers)
}

/// What a benchmark on a busy host takes: `--quick`, `--procs N` (idle
/// processes, default 2,000), `--fds F` (files each, default 50),
/// `--rounds R`, and the benchmark's own `flags` (kept when given).
pub struct HostOpts {
    pub procs: usize,
    pub fds: usize,
    pub rounds: usize,
    pub flags: Vec<String>,
}

impl HostOpts {
    /// Reads the command line; `rounds` is the default number of rounds.
    pub fn parse(rounds: usize, flags: &[&str]) -> Result<HostOpts> {
        let mut o = HostOpts {
            procs: 2000,
            fds: 50,
            rounds,
            flags: Vec::new(),
        };
        let mut args = std::env::args().skip(1);
        while let Some(a) = args.next() {
            let mut num = |name: &str| -> Result<usize> {
                args.next()
                    .and_then(|v| v.parse().ok())
                    .with_context(|| format!("{name} needs a number"))
            };
            match a.as_str() {
                "--quick" => {
                    o.procs = 200;
                    o.rounds = 3;
                }
                "--procs" => o.procs = num("--procs")?,
                "--fds" => o.fds = num("--fds")?,
                "--rounds" => o.rounds = num("--rounds")?.max(1),
                "--bench" => {} // what `cargo bench` passes
                f if flags.contains(&f) => o.flags.push(a),
                other => {
                    bail!("unknown argument '{other}': use --quick, --procs N, --fds F, --rounds R")
                }
            }
        }
        Ok(o)
    }

    pub fn has(&self, flag: &str) -> bool {
        self.flags.iter().any(|f| f == flag)
    }

    /// Root (`why` says what needs it), then the idle processes, said on
    /// stderr with the time they took.
    pub fn busy_host(&self, why: &str) -> Result<Idlers> {
        // SAFETY: geteuid has no preconditions.
        if unsafe { libc::geteuid() } != 0 {
            bail!("this benchmark needs root ({why}): run it with sudo");
        }
        let t = std::time::Instant::now();
        let idlers = start_idlers(self.procs, self.fds)?;
        eprintln!(
            "started {} idle processes with {} files each in {:.1}s",
            idlers.pids.len(),
            self.fds,
            t.elapsed().as_secs_f64()
        );
        Ok(idlers)
    }
}

//! holders: process details -> **the process table with environments, from
//! a BPF task iterator** -> job.
//!
//! A runner hook must know every process's parent, start time and job, and
//! the job is in its environment: read from /proc that is two files per
//! process (stat and environ), and the kernel's work per file (the open,
//! formatting stat, the lookup) is most of a hook's time on a busy host. An
//! `iter/task` program does it in one read: for each thread-group leader it
//! writes its pid, parent, start time, flags, state, comm and the bytes of
//! its environment (`mm->env_start..env_end`, copied with
//! `bpf_copy_from_user_task`, which is why the program is loaded
//! sleepable: the pages may have to be faulted in).
//!
//! An environment larger than one record can carry, or one the copy could
//! not read, is marked so, and the caller reads that process's
//! /proc/PID/environ: the answer is the same as the /proc walk's, only
//! cheaper. The program is assembled here like [`super::fditer`]'s, with
//! offsets from the kernel's BTF; any refusal sends the caller to /proc.

use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::OnceLock;

use super::bpfasm::{
    read_kernel, read_kernel_at, Asm, ADD64_K, AND64_K, CALL, COPY_FROM_USER_TASK, EXIT, FP, JEQ_K,
    JGT_K, JNE_K, JNE_X, LDX_DW, LDX_W, LD_IMM64, MAP_LOOKUP_ELEM, MOV64_K, MOV64_X, PSEUDO_MAP_FD,
    SEQ_WRITE, STX_DW, STX_W, ST_W, SUB64_X,
};
use super::btf;
use super::fditer::{self, Fail};
use crate::sys::{self, BpfInsn as Insn};

/// Where the fields the program reads sit in this kernel.
#[derive(Clone, Copy, Debug)]
struct Layout {
    attach_btf_id: u32,
    pid: i16,
    tgid: i16,
    real_parent: i16,
    start_boottime: i16,
    flags: i16,
    state: i16,
    exit_state: i16,
    comm: i16,
    mm: i16,
    env_start: i16,
    env_end: i16,
}

fn layout() -> Result<Layout, String> {
    static LAYOUT: OnceLock<Result<Layout, String>> = OnceLock::new();
    LAYOUT
        .get_or_init(|| {
            let btf = btf::kernel();
            let at = |s: &str, m: &str, size: u32| -> Result<i16, String> {
                let f = btf
                    .field(s, m)?
                    .ok_or_else(|| format!("struct {s} has no field {m} in this kernel's BTF"))?;
                if f.size != size {
                    return Err(format!("{s}.{m} is {} bytes, not {size}", f.size));
                }
                i16::try_from(f.offset).map_err(|_| format!("{s}.{m} is out of reach"))
            };
            let found = (|| {
                Ok(Layout {
                    attach_btf_id: btf
                        .func_id("bpf_iter_task")?
                        .ok_or("this kernel has no task iterator")?,
                    pid: at("task_struct", "pid", 4)?,
                    tgid: at("task_struct", "tgid", 4)?,
                    real_parent: at("task_struct", "real_parent", 8)?,
                    start_boottime: at("task_struct", "start_boottime", 8)?,
                    flags: at("task_struct", "flags", 4)?,
                    state: at("task_struct", "__state", 4)?,
                    exit_state: at("task_struct", "exit_state", 4)?,
                    comm: at("task_struct", "comm", 16)?,
                    mm: at("task_struct", "mm", 8)?,
                    env_start: at("mm_struct", "env_start", 8)?,
                    env_end: at("mm_struct", "env_end", 8)?,
                })
            })();
            btf.save();
            found
        })
        .clone()
}

/// What a record says of the environment that follows its header.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Environ<'a> {
    /// Its bytes, whole.
    Bytes(&'a [u8]),
    /// None to read: a kernel thread, or a process without memory (a
    /// zombie, one exiting).
    None,
    /// Too large for a record, or the copy failed: read /proc/PID/environ.
    Unread,
}

/// One process (thread-group leader) as the iterator saw it.
#[derive(Clone, Copy, Debug)]
pub struct Task<'a> {
    pub pid: u32,
    pub ppid: u32,
    /// Clock ticks since boot, as /proc/PID/stat's field 22.
    pub start_ticks: u64,
    pub flags: u32,
    /// As /proc/PID/stat's field 3 ('Z' for a zombie).
    pub state: char,
    /// The raw 16 bytes of comm, up to its NUL.
    pub comm: &'a [u8],
    pub environ: Environ<'a>,
}

/// The records in `b` that are whole, each handed to `f`; how many bytes
/// they took (a record cut by the end of a read is finished by the next).
fn records(b: &[u8], tick_ns: u64, f: &mut impl FnMut(Task<'_>)) -> usize {
    let mut at = 0;
    while let Some(r) = b.get(at..at + HDR) {
        let len = u32_at(r, 28) as usize;
        let Some(env) = b.get(at + HDR..at + HDR + len) else {
            break;
        };
        let comm = &r[40..56];
        f(Task {
            pid: u32_at(r, 0),
            ppid: u32_at(r, 4),
            start_ticks: u64::from_ne_bytes(r[8..16].try_into().unwrap()) / tick_ns,
            flags: u32_at(r, 16),
            state: state_char(u32_at(r, 20), u32_at(r, 24)),
            comm: &comm[..comm.iter().position(|&b| b == 0).unwrap_or(16)],
            environ: match u32_at(r, 32) {
                STATUS_OK => Environ::Bytes(env),
                STATUS_NONE => Environ::None,
                _ => Environ::Unread,
            },
        });
        at += HDR + len;
    }
    at
}

/// Reads the iterator through one buffer, records handed to `f` as they
/// come: the output (an environment per process, megabytes on a busy
/// host) is never held whole.
fn stream(mut iter: std::fs::File, f: &mut impl FnMut(Task<'_>)) -> Result<(), Fail> {
    use std::io::Read;
    let tick_ns = 1_000_000_000 / sys::clock_ticks().max(1);
    // Larger than the kernel's buffer (8 pages), so a read returns all
    // that buffer holds.
    let mut buf = vec![0u8; 128 * 1024];
    let mut have = 0;
    loop {
        if have == buf.len() {
            buf.resize(buf.len() * 2, 0);
        }
        match iter.read(&mut buf[have..]) {
            Ok(0) => break,
            Ok(n) => have += n,
            Err(e) if e.kind() == std::io::ErrorKind::Interrupted => continue,
            Err(e) => return Err(e.into()),
        }
        let used = records(&buf[..have], tick_ns, f);
        buf.copy_within(used..have, 0);
        have -= used;
    }
    if have != 0 {
        return Err(Fail {
            what: "the task iterator's output ends inside a record".into(),
            errno: None,
        });
    }
    Ok(())
}

fn u32_at(r: &[u8], at: usize) -> u32 {
    u32::from_ne_bytes(r[at..at + 4].try_into().unwrap())
}

/// stat's state letter from `__state` and `exit_state` (the kernel's
/// task_state_index).
fn state_char(state: u32, exit_state: u32) -> char {
    const EXIT_DEAD: u32 = 0x10;
    const EXIT_ZOMBIE: u32 = 0x20;
    const TASK_REPORT: u32 = 0x7f;
    const TASK_IDLE: u32 = 0x402;
    if exit_state & EXIT_ZOMBIE != 0 {
        return 'Z';
    }
    if exit_state & EXIT_DEAD != 0 {
        return 'X';
    }
    if state == TASK_IDLE {
        return 'I';
    }
    match state & TASK_REPORT {
        0 => 'R',
        s => match 31 - s.leading_zeros() {
            0 => 'S',
            1 => 'D',
            2 => 'T',
            3 => 't',
            4 => 'X',
            5 => 'Z',
            _ => 'P',
        },
    }
}

/// Every process on the host, from the kernel's task iterator, each handed
/// to `f` (in pid order). Err says why it could not run, or stopped (the
/// caller drops what it was given and walks /proc instead).
pub fn each(mut f: impl FnMut(Task<'_>)) -> Result<(), String> {
    if let Some(why) = fditer::not_here() {
        return Err(why);
    }
    static REFUSED: OnceLock<String> = OnceLock::new();
    if let Some(why) = REFUSED.get() {
        return Err(why.clone());
    }
    open().and_then(|iter| stream(iter, &mut f)).map_err(|e| {
        if e.errno
            .is_none_or(|n| matches!(n, libc::EPERM | libc::EACCES | libc::EINVAL))
        {
            let _ = REFUSED.set(e.what.clone());
        }
        e.what
    })
}

fn open() -> Result<std::fs::File, Fail> {
    let l = layout().map_err(|what| Fail { what, errno: None })?;
    let scratch: OwnedFd = sys::bpf_scratch(HDR as u32 + CAP).map_err(|e| Fail {
        what: format!("BPF_MAP_CREATE: {e}"),
        errno: e.raw_os_error(),
    })?;
    // The program holds the map: the fd may go.
    fditer::open_as(
        &program(&l, scratch.as_raw_fd()),
        l.attach_btf_id,
        "task environment",
        true,
    )
}

// ---- the program ----

/// A record's header: tgid u32, ppid u32, start_boottime u64, flags u32,
/// __state u32, exit_state u32, environment length u32, status u32, pad,
/// comm [u8; 16]; the environment's bytes follow.
const HDR: usize = 56;
/// The most environment one record carries. A record must fit the
/// iterator's buffer (8 pages) with room to spare; a larger environment
/// is read from /proc.
const CAP: u32 = 32 * 1024 - 8 - HDR as u32;
const STATUS_OK: u32 = 0;
const STATUS_NONE: u32 = 1;
const STATUS_BIG: u32 = 2;
const STATUS_FAILED: u32 = 3;

const PF_KTHREAD: i32 = crate::proc::PF_KTHREAD as i32;

/// The iterator: for each thread-group leader, one record (header, then
/// its environment) built in the scratch map's value and written whole.
/// r6 = ctx (`struct bpf_iter__task`: meta at 0, task at 8), r7 = task,
/// r8 = the record, r9 = the environment's length.
fn program(l: &Layout, map_fd: i32) -> Vec<Insn> {
    let mut a = Asm::default();
    let (out, status) = (a.label(), a.label());
    a.op(MOV64_X, 6, 1, 0, 0);
    a.op(LDX_DW, 7, 6, 8, 0); // r7 = ctx->task
    a.jump(JEQ_K, 7, 0, 0, out);
    a.op(LDX_W, 2, 7, l.pid, 0);
    a.op(LDX_W, 3, 7, l.tgid, 0);
    a.jump(JNE_X, 2, 3, 0, out); // a thread: skip
    a.op(ST_W, FP, 0, -4, 0); // key 0
    a.op(LD_IMM64, 1, PSEUDO_MAP_FD, 0, map_fd);
    a.op(0, 0, 0, 0, 0);
    a.op(MOV64_X, 2, FP, 0, 0);
    a.op(ADD64_K, 2, 0, 0, -4);
    a.op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM);
    a.jump(JEQ_K, 0, 0, 0, out);
    a.op(MOV64_X, 8, 0, 0, 0); // r8 = the record
    header(&mut a, l);
    environ(&mut a, l, status);
    a.here(status);
    a.op(STX_W, 8, 4, 32, 0);
    a.op(STX_W, 8, 9, 28, 0);
    a.op(LDX_DW, 1, 6, 0, 0); // r1 = ctx->meta
    a.op(LDX_DW, 1, 1, 0, 0); // r1 = meta->seq
    a.op(MOV64_X, 2, 8, 0, 0);
    a.op(MOV64_X, 3, 9, 0, 0);
    a.op(ADD64_K, 3, 0, 0, HDR as i32);
    a.op(CALL, 0, 0, 0, SEQ_WRITE);
    a.here(out);
    a.op(MOV64_K, 0, 0, 0, 0);
    a.op(EXIT, 0, 0, 0, 0);
    a.done()
}

/// The record's header from the task (r7) into the record (r8).
fn header(a: &mut Asm, l: &Layout) {
    a.op(LDX_W, 3, 7, l.tgid, 0);
    a.op(STX_W, 8, 3, 0, 0);
    // real_parent->tgid. The two pointers (real_parent, mm) are read as
    // numbers with bpf_probe_read_kernel, not walked: the verifier checks
    // each walked pointer by searching the kernel's BTF by name, which
    // cost more than the whole walk of a small host. A NULL pointer reads
    // as a failed read, and a failed read leaves zeros.
    read_kernel(a, 7, l.real_parent, 8, -16);
    a.op(LDX_DW, 3, FP, -16, 0); // r3 = real_parent
    read_kernel_at(a, l.tgid, 4, -8);
    a.op(LDX_W, 3, FP, -8, 0);
    a.op(STX_W, 8, 3, 4, 0);
    for (from, size, to) in [
        (l.start_boottime, 8, 8),
        (l.flags, 4, 16),
        (l.state, 4, 20),
        (l.exit_state, 4, 24),
        (l.comm, 8, 40),
        (l.comm + 8, 8, 48),
    ] {
        let (ld, st) = if size == 8 {
            (LDX_DW, STX_DW)
        } else {
            (LDX_W, STX_W)
        };
        a.op(ld, 3, 7, from, 0);
        a.op(st, 8, 3, to, 0);
    }
}

/// The environment, copied after the header: r9 = its length, r4 = the
/// status, then a jump to `status`. None for a kernel thread (its mm may
/// be borrowed) or a task without mm; too big or unreadable: marked for
/// /proc.
fn environ(a: &mut Asm, l: &Layout, status: usize) {
    a.op(MOV64_K, 9, 0, 0, 0);
    a.op(MOV64_K, 4, 0, 0, STATUS_NONE as i32);
    a.op(LDX_W, 3, 7, l.flags, 0);
    a.op(AND64_K, 3, 0, 0, PF_KTHREAD);
    a.jump(JNE_K, 3, 0, 0, status);
    read_kernel(a, 7, l.mm, 8, -16);
    a.op(LDX_DW, 3, FP, -16, 0); // r3 = mm
    a.op(MOV64_K, 4, 0, 0, STATUS_NONE as i32);
    a.jump(JEQ_K, 3, 0, 0, status);
    a.op(STX_DW, FP, 3, -24, 0);
    read_kernel_at(a, l.env_end, 8, -16);
    a.op(LDX_DW, 3, FP, -24, 0);
    read_kernel_at(a, l.env_start, 8, -24);
    a.op(LDX_DW, 2, FP, -16, 0); // env_end
    a.op(LDX_DW, 3, FP, -24, 0); // env_start
    a.op(SUB64_X, 2, 3, 0, 0);
    a.op(MOV64_K, 4, 0, 0, STATUS_BIG as i32);
    a.jump(JGT_K, 2, 0, CAP as i32, status);
    a.op(MOV64_X, 9, 2, 0, 0);
    a.op(MOV64_X, 1, 8, 0, 0);
    a.op(ADD64_K, 1, 0, 0, HDR as i32); // dst: after the header
    a.op(MOV64_X, 4, 7, 0, 0); // r2 = len, r3 = env_start, r4 = task
    a.op(MOV64_K, 5, 0, 0, 0);
    a.op(CALL, 0, 0, 0, COPY_FROM_USER_TASK);
    a.op(MOV64_K, 4, 0, 0, STATUS_OK as i32);
    a.jump(JEQ_K, 0, 0, 0, status);
    a.op(MOV64_K, 9, 0, 0, 0);
    a.op(MOV64_K, 4, 0, 0, STATUS_FAILED as i32);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn states_read_as_stat_shows_them() {
        assert_eq!(state_char(0, 0), 'R');
        assert_eq!(state_char(1, 0), 'S');
        assert_eq!(state_char(2, 0), 'D');
        assert_eq!(state_char(0x402, 0), 'I');
        assert_eq!(state_char(0, 0x20), 'Z');
    }

    /// The kernel is the oracle: this process, read by the iterator, is
    /// what /proc says it is, environment included.
    #[test]
    fn the_iterator_sees_this_process_as_proc_does() {
        let me = std::process::id();
        let (mut mine, mut kthreadd) = (None, None);
        let ran = each(|t| {
            let copy = (
                t.ppid,
                t.start_ticks,
                String::from_utf8_lossy(t.comm).into_owned(),
                match t.environ {
                    Environ::Bytes(b) => Some(b.to_vec()),
                    Environ::None => None,
                    Environ::Unread => Some(b"unread".to_vec()),
                },
            );
            match t.pid {
                2 => kthreadd = Some(copy),
                p if p == me => mine = Some(copy),
                _ => {}
            }
        });
        if let Err(why) = ran {
            eprintln!("SKIPPED: the task environment iterator cannot run here: {why}");
            return;
        }
        let (ppid, start, comm, env) = mine.expect("this process");
        let stat = crate::proc::read_stat(me).unwrap();
        assert_eq!((ppid, start), (stat.ppid, stat.start_ticks));
        assert_eq!(comm, stat.comm);
        let environ = crate::proc::read(me, "environ").unwrap();
        if environ.len() <= CAP as usize {
            assert_eq!(env, Some(environ));
        } else {
            assert_eq!(env.as_deref(), Some(&b"unread"[..]));
        }
        assert_eq!(kthreadd.expect("kthreadd").3, None);
    }
}

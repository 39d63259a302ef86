//! holders: sockets -> **fd map, from a BPF iterator** -> process details.
//!
//! The kernel walks every task's file table for us: a `iter/task_file`
//! program (kernel 5.8+) runs once per open file, keeps the socket files
//! (`bpf_sock_from_file`) whose inode is one of the wanted ones (a hash map
//! filled before the walk), and writes (inode, tgid, fd) to the iterator's
//! output, which is read in one go. That replaces one readlink (or kcmp)
//! per open file on the host by one read.
//!
//! The program is 30 instructions and is assembled here, as `ss` builds its
//! sock_diag filter: no ELF, no relocations, and no full parse of the
//! kernel's BTF (aya's loader needs one, 13-50 ms on this kind of machine,
//! which costs more than the walk it replaces). The three struct offsets it
//! reads come from [`super::btf`] and go in as immediates.
//!
//! It needs CAP_BPF and CAP_PERFMON (or root), BTF, and a kernel that
//! accepts the program: [`probe`] says whether it does; every failure sends
//! the scan back to [`super::fdmap`]'s walk of /proc. Pids are the initial
//! pid namespace's, so it is used only from there. `--no-bpf` (or
//! REAPER_FD_SOURCE=proc) keeps to /proc.

use std::collections::HashSet;
use std::io::{self, Read};
use std::os::fd::{AsFd, OwnedFd};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::OnceLock;

use super::bpfasm::{
    read_kernel, read_kernel_at, Asm, ADD64_K, CALL, EXIT, FP, JEQ_K, JNE_X, LDX_DW, LDX_W,
    MAP_LOOKUP_ELEM, MOV64_K, MOV64_X, SOCK_FROM_FILE, STX_DW, STX_W,
};
use super::btf;
use super::fdmap::FdWalk;
use crate::sys::{self, BpfInsn as Insn};

/// What [`holders_of`] needs of the kernel, read once per process.
#[derive(Clone, Copy, Debug)]
struct Layout {
    attach_btf_id: u32,
    f_inode: i16,
    i_ino: (i16, u32),
    tgid: i16,
}

/// What [`netns_of_tasks`] needs: the task iterator and the path from a
/// task to its network namespace's inode number.
#[derive(Clone, Copy, Debug)]
struct NsLayout {
    attach_btf_id: u32,
    pid: i16,
    tgid: i16,
    nsproxy: i16,
    net_ns: i16,
    /// net.ns.inum: the ns_common inside struct net, then its inum.
    inum: i16,
}

static DISABLED: AtomicBool = AtomicBool::new(false);
static LAYOUT: OnceLock<Result<(Layout, Option<NsLayout>), String>> = OnceLock::new();
/// Set when the kernel refused the program once: do not ask again.
static REFUSED: OnceLock<String> = OnceLock::new();

/// `--no-bpf`: never load the iterator in this process.
pub fn disable() {
    DISABLED.store(true, Ordering::Relaxed);
}

/// Why the iterator is not to be tried at all (None: try it).
pub(super) fn not_here() -> Option<String> {
    if DISABLED.load(Ordering::Relaxed) {
        return Some("--no-bpf".into());
    }
    if std::env::var_os("REAPER_FD_SOURCE").is_some_and(|v| v == "proc") {
        return Some("REAPER_FD_SOURCE=proc".into());
    }
    if let Some(why) = REFUSED.get() {
        return Some(why.clone());
    }
    // tgids are the initial pid namespace's; a reaper in another one sees
    // other numbers in /proc.
    match crate::proc::read_link("self", "ns/pid") {
        Ok(l) if l.as_os_str() == INIT_PID_NS => None,
        Ok(_) => Some("reaper runs in a pid namespace of its own".into()),
        Err(e) => Some(format!("cannot read /proc/self/ns/pid: {e}")),
    }
}

/// The initial pid namespace (PROC_PID_INIT_INO).
const INIT_PID_NS: &str = "pid:[4026531836]";

fn layout() -> Result<Layout, String> {
    layouts().map(|(l, _)| l)
}

fn ns_layout() -> Result<NsLayout, String> {
    layouts()?
        .1
        .ok_or_else(|| "this kernel's BTF lacks the task iterator or a field of task_struct.nsproxy->net_ns->ns.inum".into())
}

fn layouts() -> Result<(Layout, Option<NsLayout>), String> {
    LAYOUT
        .get_or_init(|| {
            let btf = btf::kernel();
            let found = (|| {
                let attach_btf_id = btf
                    .func_id("bpf_iter_task_file")?
                    .ok_or("this kernel has no task_file iterator (Linux 5.8+)")?;
                let field = |s: &str, m: &str| {
                    btf.field(s, m)?
                        .ok_or_else(|| format!("struct {s} has no field {m} in this kernel's BTF"))
                };
                let off = |f: btf::Field, s: &str, m: &str| {
                    i16::try_from(f.offset).map_err(|_| format!("{s}.{m} is out of reach"))
                };
                let f_inode = field("file", "f_inode")?;
                let i_ino = field("inode", "i_ino")?;
                let tgid = field("task_struct", "tgid")?;
                if f_inode.size != 8 || !matches!(i_ino.size, 4 | 8) || tgid.size != 4 {
                    return Err("unexpected field sizes in this kernel's BTF".into());
                }
                let layout = Layout {
                    attach_btf_id,
                    f_inode: off(f_inode, "file", "f_inode")?,
                    i_ino: (off(i_ino, "inode", "i_ino")?, i_ino.size),
                    tgid: off(tgid, "task_struct", "tgid")?,
                };
                Ok((layout, ns_layout_of(btf, layout.tgid)?))
            })();
            btf.save();
            found
        })
        .clone()
}

/// [`NsLayout`] from the BTF: Ok(None) when a piece is missing.
fn ns_layout_of(btf: &btf::Kernel, tgid: i16) -> Result<Option<NsLayout>, String> {
    // A field of this size within reach of an instruction's offset.
    let small = |s: &str, m: &str, size: u32| -> Result<Option<i16>, String> {
        Ok(btf
            .field(s, m)?
            .filter(|f| f.size == size)
            .and_then(|f| i16::try_from(f.offset).ok()))
    };
    // net.ns.inum: the ns_common inside struct net, then its inum.
    let inum = match (btf.field("net", "ns")?, btf.field("ns_common", "inum")?) {
        (Some(net), Some(inum)) if inum.size == 4 => i16::try_from(net.offset + inum.offset).ok(),
        _ => None,
    };
    let (Some(attach_btf_id), Some(pid), Some(nsproxy), Some(net_ns), Some(inum)) = (
        btf.func_id("bpf_iter_task")?,
        small("task_struct", "pid", 4)?,
        small("task_struct", "nsproxy", 8)?,
        small("nsproxy", "net_ns", 8)?,
        inum,
    ) else {
        return Ok(None);
    };
    Ok(Some(NsLayout {
        attach_btf_id,
        pid,
        tgid,
        nsproxy,
        net_ns,
        inum,
    }))
}

/// Where the iterators' answers from the kernel's BTF are kept, when a
/// file holds this kernel's (see [`btf::Kernel`]).
pub fn btf_cache() -> Option<std::path::PathBuf> {
    btf::cache_in_use()
}

/// Whether the iterator can run here, by loading and running it for real
/// (for `reaper doctor`): Ok with how many of our own sockets it found.
pub fn probe() -> Result<(), String> {
    if let Some(why) = not_here() {
        return Err(why);
    }
    let sock = std::net::UdpSocket::bind("127.0.0.1:0").map_err(|e| e.to_string())?;
    let inode = {
        use std::os::fd::AsRawFd;
        let t = crate::proc::read_link("self", &format!("fd/{}", sock.as_raw_fd()))
            .map_err(|e| e.to_string())?;
        super::fdmap::parse_socket_link(t.as_os_str().as_encoded_bytes())
            .ok_or("our own socket has no socket link")?
    };
    let walk = run(&HashSet::from([inode])).map_err(|e| e.what)?;
    let me = std::process::id();
    if walk.holders.get(&inode).is_some_and(|p| p.contains(&me)) {
        Ok(())
    } else {
        Err("the iterator ran but did not find reaper's own socket".into())
    }
}

/// Every pid holding one of `wanted`, from the kernel's task_file iterator.
/// Err says why it could not run (the caller walks /proc instead).
pub fn holders_of(wanted: &HashSet<u64>) -> Result<FdWalk, String> {
    if let Some(why) = not_here() {
        return Err(why);
    }
    if wanted.is_empty() {
        return Ok(FdWalk::default());
    }
    run(wanted).map_err(|e| {
        // A refusal is the kernel's policy (or its BTF's): it will not
        // change in this process, so later scans do not ask again.
        if e.errno
            .is_none_or(|n| matches!(n, libc::EPERM | libc::EACCES | libc::EINVAL))
        {
            let _ = REFUSED.set(e.what.clone());
        }
        e.what
    })
}

/// (pid, network namespace inode) of every process (thread-group leader),
/// from the kernel's task iterator: one read instead of a readlink of
/// /proc/PID/ns/net per process. Err says why not (the caller reads /proc).
pub fn netns_of_tasks() -> Result<Vec<(u32, u64)>, String> {
    if let Some(why) = not_here() {
        return Err(why);
    }
    let run = || -> Result<Vec<(u32, u64)>, Fail> {
        let l = ns_layout().map_err(|what| Fail { what, errno: None })?;
        let out = iterate(&task_program(&l), l.attach_btf_id)?;
        Ok(out
            .chunks_exact(8)
            .map(|r| {
                let pid = u32::from_ne_bytes(r[0..4].try_into().unwrap());
                let ns = u32::from_ne_bytes(r[4..8].try_into().unwrap());
                (pid, ns as u64)
            })
            // 0: the namespace could not be read (the task was exiting).
            .filter(|&(_, ns)| ns != 0)
            .collect())
    };
    run().map_err(|e| e.what)
}

/// Loads `insns` as an iterator program, runs it once, returns its output.
fn iterate(insns: &[Insn], attach_btf_id: u32) -> Result<Vec<u8>, Fail> {
    iterate_as(insns, attach_btf_id, "task_file", false)
}

fn iterate_as(
    insns: &[Insn],
    attach_btf_id: u32,
    what: &str,
    sleepable: bool,
) -> Result<Vec<u8>, Fail> {
    let mut iter = open_as(insns, attach_btf_id, what, sleepable)?;
    let mut out = Vec::with_capacity(64 * 1024);
    iter.read_to_end(&mut out)?;
    Ok(out)
}

/// Loads `insns` as the iterator named `what` in errors (sleepable when
/// asked: a program that reads user memory) and returns the file whose
/// reads run it (it keeps the program and its link alive).
pub(super) fn open_as(
    insns: &[Insn],
    attach_btf_id: u32,
    what: &str,
    sleepable: bool,
) -> Result<std::fs::File, Fail> {
    let prog = load(insns, attach_btf_id, what, sleepable)?;
    let link = link_create(&prog)?;
    Ok(std::fs::File::from(iter_create(&link)?))
}

fn run(wanted: &HashSet<u64>) -> Result<FdWalk, Fail> {
    let layout = layout().map_err(|what| Fail { what, errno: None })?;
    let map = map_of(wanted)?;
    let out = iterate(&program(&layout, raw(&map)), layout.attach_btf_id)?;
    let mut walk = FdWalk::default();
    for rec in out.chunks_exact(RECORD) {
        let inode = u64::from_ne_bytes(rec[0..8].try_into().unwrap());
        let tgid = u32::from_ne_bytes(rec[8..12].try_into().unwrap());
        if wanted.contains(&inode) && tgid != 0 {
            walk.holders.entry(inode).or_default().push(tgid);
        }
    }
    for pids in walk.holders.values_mut() {
        pids.sort_unstable();
        pids.dedup();
    }
    Ok(walk)
}

/// One output record: inode u64, tgid u32, fd u32.
const RECORD: usize = 16;

fn raw(fd: &OwnedFd) -> i32 {
    std::os::fd::AsRawFd::as_raw_fd(fd)
}

// ---- the programs ----

/// The iterator: for each (task, fd, file), when the file is a socket whose
/// inode is in the map, write {inode, tgid, fd}.
///
/// ctx is `struct bpf_iter__task_file`: meta at 0, task at 8, fd at 16,
/// file at 24 (each slot 8 bytes). `file->f_inode` is read as a number
/// (see [`bpfasm`]).
fn program(l: &Layout, map_fd: i32) -> Vec<Insn> {
    let mut a = Asm::default();
    let out = a.label();
    a.op(MOV64_X, 6, 1, 0, 0); // r6 = ctx
    a.op(LDX_DW, 7, 6, 24, 0); // r7 = ctx->file
    a.jump(JEQ_K, 7, 0, 0, out); // no file: done
    a.op(MOV64_X, 1, 7, 0, 0);
    a.op(CALL, 0, 0, 0, SOCK_FROM_FILE); // a socket's file?
    a.jump(JEQ_K, 0, 0, 0, out);
    read_kernel(&mut a, 7, l.f_inode, 8, -16);
    a.op(LDX_DW, 3, FP, -16, 0); // r3 = file->f_inode
    a.jump(JEQ_K, 3, 0, 0, out);
    read_kernel_at(&mut a, l.i_ino.0, l.i_ino.1 as i32, -16);
    if l.i_ino.1 == 4 {
        // Widen to the u64 key (the upper half still holds the pointer).
        a.op(LDX_W, 3, FP, -16, 0);
        a.op(STX_DW, FP, 3, -16, 0);
    }
    a.map(map_fd);
    a.op(MOV64_X, 2, FP, 0, 0);
    a.op(ADD64_K, 2, 0, 0, -16);
    a.op(CALL, 0, 0, 0, MAP_LOOKUP_ELEM); // wanted?
    a.jump(JEQ_K, 0, 0, 0, out);
    a.op(LDX_DW, 8, 6, 8, 0); // r8 = ctx->task
    a.jump(JEQ_K, 8, 0, 0, out);
    a.op(LDX_W, 3, 8, l.tgid, 0); // r3 = task->tgid
    a.op(STX_W, FP, 3, -8, 0);
    a.op(LDX_W, 3, 6, 16, 0); // r3 = ctx->fd
    a.op(STX_W, FP, 3, -4, 0);
    a.seq_write(-16, RECORD as i32);
    a.here(out);
    a.op(MOV64_K, 0, 0, 0, 0);
    a.op(EXIT, 0, 0, 0, 0);
    a.done()
}

/// The task iterator: for each thread-group leader with a network
/// namespace, write {tgid u32, netns inum u32}. ctx is `struct
/// bpf_iter__task`: meta at 0, task at 8. The path task->nsproxy->net_ns
/// is read as numbers (see [`bpfasm`]); a failed read leaves inum 0.
fn task_program(l: &NsLayout) -> Vec<Insn> {
    let mut a = Asm::default();
    let out = a.label();
    a.op(MOV64_X, 6, 1, 0, 0); // r6 = ctx
    a.op(LDX_DW, 7, 6, 8, 0); // r7 = ctx->task
    a.jump(JEQ_K, 7, 0, 0, out); // none: done
    a.op(LDX_W, 2, 7, l.pid, 0); // r2 = task->pid
    a.op(LDX_W, 3, 7, l.tgid, 0);
    a.jump(JNE_X, 2, 3, 0, out); // a thread: skip
    a.op(STX_W, FP, 3, -8, 0);
    read_kernel(&mut a, 7, l.nsproxy, 8, -16);
    a.op(LDX_DW, 3, FP, -16, 0); // r3 = task->nsproxy (NULL once exiting)
    a.jump(JEQ_K, 3, 0, 0, out);
    read_kernel_at(&mut a, l.net_ns, 8, -16);
    a.op(LDX_DW, 3, FP, -16, 0); // r3 = nsproxy->net_ns
    a.jump(JEQ_K, 3, 0, 0, out);
    read_kernel_at(&mut a, l.inum, 4, -4); // net->ns.inum
    a.seq_write(-8, 8);
    a.here(out);
    a.op(MOV64_K, 0, 0, 0, 0);
    a.op(EXIT, 0, 0, 0, 0);
    a.done()
}

// ---- bpf(2), through sys.rs ----

/// A hash map of the wanted inodes (value: one byte, unused).
fn map_of(wanted: &HashSet<u64>) -> Result<OwnedFd, Fail> {
    let keys: Vec<u64> = wanted.iter().copied().collect();
    sys::bpf_u64_set(&keys).map_err(|(call, e)| ctx(call)(e))
}

fn load(insns: &[Insn], attach_btf_id: u32, what: &str, sleepable: bool) -> Result<OwnedFd, Fail> {
    sys::bpf_load_iter(insns, attach_btf_id, sleepable).map_err(|(e, last)| Fail {
        what: format!(
            "BPF_PROG_LOAD of the {what} iterator: {e}{}",
            if last.is_empty() {
                String::new()
            } else {
                format!(" ({last})")
            }
        ),
        errno: e.raw_os_error(),
    })
}

fn link_create(prog: &OwnedFd) -> Result<OwnedFd, Fail> {
    sys::bpf_iter_link(prog.as_fd()).map_err(ctx("BPF_LINK_CREATE"))
}

fn iter_create(link: &OwnedFd) -> Result<OwnedFd, Fail> {
    sys::bpf_iter_create(link.as_fd()).map_err(ctx("BPF_ITER_CREATE"))
}

/// Names the call in an error; the errno stays readable (raw_os_error is
/// kept by rebuilding the error from it).
fn ctx(call: &'static str) -> impl Fn(io::Error) -> Fail {
    move |e| Fail {
        what: format!("{call}: {e}"),
        errno: e.raw_os_error(),
    }
}

/// Why the iterator did not run: what failed, and the kernel's errno.
#[derive(Debug)]
pub(super) struct Fail {
    pub(super) what: String,
    pub(super) errno: Option<i32>,
}

impl From<io::Error> for Fail {
    fn from(e: io::Error) -> Fail {
        Fail {
            what: e.to_string(),
            errno: e.raw_os_error(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every jump of both programs lands inside the program, on the exit
    /// for the fd program; the kernel checks the rest when it loads them
    /// (the holders and doctor tests).
    #[test]
    fn jumps_stay_in_the_programs() {
        for size in [4, 8] {
            let l = Layout {
                attach_btf_id: 1,
                f_inode: 40,
                i_ino: (64, size),
                tgid: 1000,
            };
            let p = program(&l, 3);
            let out = p.len() - 2;
            for (i, ins) in p.iter().enumerate() {
                if ins.code == JEQ_K {
                    assert_eq!(i as i64 + 1 + ins.off as i64, out as i64, "insn {i}");
                }
            }
            assert_eq!(p[out].code, MOV64_K);
            assert_eq!(p[out + 1].code, EXIT);
        }
        let t = task_program(&NsLayout {
            attach_btf_id: 1,
            pid: 8,
            tgid: 12,
            nsproxy: 16,
            net_ns: 40,
            inum: 176,
        });
        let out = t.len() - 2;
        for (i, ins) in t.iter().enumerate() {
            if matches!(ins.code, JEQ_K | JNE_X) {
                assert_eq!(i as i64 + 1 + ins.off as i64, out as i64, "insn {i}");
            }
        }
        // No pointer is walked: every load from a register other than the
        // ctx (r6), the frame (fp) or a helper's result is a task's scalar.
        assert!(t
            .iter()
            .all(|i| i.code != LDX_DW || matches!(i.regs >> 4, 6 | 1 | FP)));
    }
}

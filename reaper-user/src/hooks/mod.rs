//! **kernel hooks** -> ring buffer.
//!
//! Loads reaper's eBPF object (built from `reaper-ebpf` and embedded at build
//! time), picks a tier of hooks, attaches it, and hands the ring buffer to
//! `events`. Also probes which program types this kernel accepts, for
//! `reaper doctor` and for choosing a tier.
//!
//! Tiers, cheapest complete one first:
//! - `cgroup`: cgroup `bind4`/`bind6`, `post_bind4`/`post_bind6`,
//!   `sock_release` on the cgroup v2 root, plus tp_btf
//!   `inet_sock_set_state` for listens. Only binds pay for it. The request
//!   of a fixed-port bind waits in the socket's storage: a success is sent
//!   once at `post_bind`, a failure when the socket binds again or is
//!   released (a failing server usually exits or retries at once), and its
//!   cause is inferred. Binds to port 0 are counted, not sent, unless
//!   [`Options::all`]; every claim is kept in the kernel-side map
//!   ([`claims`]).
//! - `syscalls`: `cgroup` + the `sys_exit_bind` tracepoint: exact errno, but
//!   every syscall on the host takes the slow path while attached.
//! - `fexit`: `cgroup` + fexit on `inet_bind`/`inet6_bind`: exact errno at the
//!   cost of binds only; many kernels allow it, some (lockdown) refuse it.
//!
//! `auto` picks `cgroup`: a sidecar that runs all day must not tax every
//! syscall on the host, and an exact errno is a luxury the ledger can mostly
//! infer (the holder is known).

mod claims;
pub mod pidns;

use std::fs::File;
use std::io;
use std::path::PathBuf;

use anyhow::{Context, Result};

use crate::error::Error;
use aya::maps::{HashMap as BpfHashMap, Map, MapData, PerCpuArray, PerCpuHashMap, RingBuf};
use aya::programs::{
    BtfTracePoint, CgroupAttachMode, CgroupSock, CgroupSockAddr, FExit, Lsm, ProgramError,
    TracePoint,
};
use aya::{Btf, Ebpf, EbpfLoader};
use serde::Serialize;

/// What the BPF tiers send and what they only count, for `reaper doctor`.
pub const SUMMARY: &str = "binds to port 0 are counted per process kernel-side, not sent one by one (`watch --all` sends each; their listens and failures are always sent); every claim is kept in a kernel-side map (65536 entries by default, `claims_max`) the daemon reads after losses";

/// The eBPF object, built by build.rs from `reaper-ebpf`.
pub static BPF_OBJECT: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/reaper.bpf.o"));

/// What the user asked for with `--hooks`.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum TierChoice {
    /// The cheapest complete tier: cgroup.
    Auto,
    /// cgroup bind hooks: only binds pay; errno inferred.
    Cgroup,
    /// cgroup + sys_exit_bind tracepoint: exact errno; taxes every syscall.
    Syscalls,
    /// cgroup + fexit on inet_bind: exact errno; refused on some kernels.
    Fexit,
}

/// A tier that is attached.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Tier {
    Cgroup,
    Syscalls,
    Fexit,
}

impl Tier {
    pub fn as_str(self) -> &'static str {
        match self {
            Tier::Cgroup => "cgroup",
            Tier::Syscalls => "syscalls",
            Tier::Fexit => "fexit",
        }
    }
    /// Whether the errno of a failed bind comes from the kernel (true) or is
    /// inferred by reaper (false).
    pub fn exact_errno(self) -> bool {
        !matches!(self, Tier::Cgroup)
    }
}

impl TierChoice {
    pub fn resolve(self) -> Tier {
        match self {
            TierChoice::Auto | TierChoice::Cgroup => Tier::Cgroup,
            TierChoice::Syscalls => Tier::Syscalls,
            TierChoice::Fexit => Tier::Fexit,
        }
    }
}

/// The programs in the object, by name, with what they hook.
const CGROUP_SOCK_ADDR: &[(&str, &str)] = &[
    ("reaper_bind4", "cgroup/bind4"),
    ("reaper_bind6", "cgroup/bind6"),
];
const CGROUP_SOCK: &[(&str, &str)] = &[
    ("reaper_post_bind4", "cgroup/post_bind4"),
    ("reaper_post_bind6", "cgroup/post_bind6"),
    ("reaper_release", "cgroup/sock_release"),
];
const LISTEN_PROG: (&str, &str) = ("reaper_listen", "inet_sock_set_state");
const SYS_EXIT_BIND: &str = "reaper_sys_exit_bind";
const FEXITS: &[(&str, &str)] = &[
    ("reaper_fexit_inet_bind", "inet_bind"),
    ("reaper_fexit_inet6_bind", "inet6_bind"),
];
const LSM_PROBE: (&str, &str) = ("reaper_probe_lsm", "socket_bind");

/// Hooks that are attached, and the maps userspace reads. Dropping it
/// detaches everything.
pub struct Attached {
    pub tier: Tier,
    /// Whether listens are seen (tp_btf loaded); without it only binds are.
    pub listens: bool,
    /// The ring buffer; `events::EventStream` takes it.
    pub events: Option<RingBuf<MapData>>,
    pub lost: PerCpuArray<MapData, u64>,
    /// The kernel-side claims (socket cookie -> bind record).
    pub claims: claims::ClaimsMap,
    /// The kernel side's counters (`reaper_common::COUNT_*`).
    pub counts: PerCpuArray<MapData, u64>,
    /// Ephemeral binds summarised per process instead of sent.
    pub ephemeral: PerCpuHashMap<MapData, u32, u64>,
    /// Whether every bind is sent (`watch --all`), or ephemeral ones are
    /// summarised.
    pub all: bool,
    /// Local ports whose `connect()`s the kernel side sends
    /// (`reaper_common::KIND_CONNECT`).
    pub watched: BpfHashMap<MapData, u16, u8>,
    pub logger: Option<aya_log::EbpfLogger<&'static dyn log::Log>>,
    pub cgroup: PathBuf,
    /// Keeps the programs and links alive.
    _ebpf: Ebpf,
}

impl Attached {
    /// Events the kernel side could not reserve, summed over CPUs.
    pub fn lost_total(&self) -> u64 {
        match self.lost.get(&0, 0) {
            Ok(values) => values.iter().sum(),
            Err(_) => 0,
        }
    }

    /// One of the kernel side's counters (`reaper_common::COUNT_*`),
    /// summed over CPUs.
    pub fn count(&self, slot: u32) -> u64 {
        match self.counts.get(&slot, 0) {
            Ok(values) => values.iter().sum(),
            Err(_) => 0,
        }
    }

    /// Claims the kernel-side map had no room for.
    pub fn claims_full_total(&self) -> u64 {
        self.count(reaper_common::COUNT_CLAIMS_FULL)
    }

    /// Watches a local port: a `connect()` the kernel gives it is sent.
    /// False when the map is full (`reaper_common::WATCHED_MAX`).
    pub fn watch_port(&mut self, port: u16) -> bool {
        self.watched.insert(port, 1, 0).is_ok()
    }

    /// Ephemeral binds summarised kernel-side, per process (pid, count),
    /// biggest first. The table keeps the 4,096 most recent processes; it is
    /// filled only when the hooks were loaded with
    /// [`Options::ephemeral_by_pid`].
    pub fn ephemeral_by_pid(&self) -> Vec<(u32, u64)> {
        let mut v: Vec<(u32, u64)> = self
            .ephemeral
            .iter()
            .filter_map(|r| r.ok())
            .map(|(pid, per_cpu)| (pid, per_cpu.iter().sum()))
            .collect();
        v.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(&b.0)));
        v
    }
}

/// How to load the hooks.
#[derive(Clone, Copy, Debug)]
pub struct Options {
    /// Ring buffer bytes (a power of two, at least 4096).
    pub ringbuf_size: u32,
    /// Entries of the kernel-side claims map.
    pub claims_max: u32,
    /// Send every bind, ephemeral ones too (`watch --all`).
    pub all: bool,
    /// Count the summarised ephemeral binds per process
    /// ([`Attached::ephemeral_by_pid`]; a hash lookup per port-0 bind).
    pub ephemeral_by_pid: bool,
}

impl Options {
    pub fn new(ringbuf_size: u32) -> Options {
        Options {
            ringbuf_size,
            claims_max: reaper_common::CLAIMS_MAX_DEFAULT,
            all: false,
            ephemeral_by_pid: false,
        }
    }
}

/// Where the cgroup v2 hierarchy is mounted (the root the cgroup hooks
/// attach to, so that every process on the host is seen).
pub fn cgroup2_root() -> Result<PathBuf> {
    let mounts = crate::proc::read_string("self", "mountinfo")
        .context("reading /proc/self/mountinfo to find the cgroup v2 mount")?;
    cgroup2_from_mountinfo(&mounts).ok_or_else(|| {
        anyhow::anyhow!(
            "no cgroup v2 (cgroup2) mount found: the cgroup bind hooks need one (mount -t cgroup2 none /sys/fs/cgroup/unified)"
        )
    })
}

/// Finds the shortest cgroup2 mount point in a mountinfo text.
pub fn cgroup2_from_mountinfo(mountinfo: &str) -> Option<PathBuf> {
    mountinfo
        .lines()
        .filter_map(|line| {
            let (pre, post) = line.split_once(" - ")?;
            let fstype = post.split_whitespace().next()?;
            if fstype != "cgroup2" {
                return None;
            }
            let mount_point = pre.split_whitespace().nth(4)?;
            Some(PathBuf::from(unescape_mount(mount_point)))
        })
        .min_by_key(|p| p.as_os_str().len())
}

fn unescape_mount(s: &str) -> String {
    // mountinfo escapes space, tab, newline and backslash as \ooo.
    let mut out = String::new();
    let b = s.as_bytes();
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\' && i + 4 <= b.len() {
            if let Ok(v) = u8::from_str_radix(&s[i + 1..i + 4], 8) {
                out.push(v as char);
                i += 4;
                continue;
            }
        }
        out.push(b[i] as char);
        i += 1;
    }
    out
}

/// bpf_link cgroup attachments always coexist with other programs (they
/// take no flags); on kernels before 5.7 aya falls back to an exclusive
/// attach.
const CGROUP_MODE: CgroupAttachMode = CgroupAttachMode::Single;

/// Mounts tracefs at /sys/kernel/tracing when it is not there: tracepoints
/// are attached through it. Returns whether it is available.
pub fn ensure_tracefs() -> bool {
    let dir = std::path::Path::new("/sys/kernel/tracing");
    if dir.join("events").exists()
        || std::path::Path::new("/sys/kernel/debug/tracing/events").exists()
    {
        return true;
    }
    let r = nix::mount::mount(
        Some("tracefs"),
        dir,
        Some("tracefs"),
        nix::mount::MsFlags::MS_NOSUID
            | nix::mount::MsFlags::MS_NODEV
            | nix::mount::MsFlags::MS_NOEXEC,
        None::<&str>,
    );
    match r {
        Ok(()) => {
            tracing::info!(
                "mounted tracefs at /sys/kernel/tracing for the sys_exit_bind tracepoint"
            );
            true
        }
        Err(e) => {
            tracing::warn!("tracefs is not mounted and mounting it failed: {e}");
            false
        }
    }
}

/// The pid namespace the kernel side is told to number pids in, kept for
/// the loader (its globals borrow for as long as it lives): [0, 0] when
/// /proc speaks the initial namespace.
static PIDNS_GLOBALS: std::sync::OnceLock<[u64; 2]> = std::sync::OnceLock::new();

/// The pid namespace of reaper's /proc, or why it cannot be known (with the
/// fix).
fn proc_pidns() -> Result<pidns::PidNs> {
    pidns::of_proc().map_err(|e| {
        anyhow::anyhow!(
            "{e:#}: the kernel side's pids cannot be mapped to the processes reaper sees; run reaper in the host's pid namespace (Kubernetes: hostPID: true; Docker: --pid=host)"
        )
    })
}

fn loader(opts: &Options, exact: bool, ns: pidns::PidNs) -> EbpfLoader<'static> {
    let mut l = EbpfLoader::new();
    let globals = PIDNS_GLOBALS.get_or_init(|| {
        if ns.is_initial() {
            [0, 0]
        } else {
            [ns.dev, ns.ino]
        }
    });
    l.override_global(reaper_common::GLOBAL_PIDNS_DEV, &globals[0], true);
    l.override_global(reaper_common::GLOBAL_PIDNS_INO, &globals[1], true);
    l.map_max_entries(reaper_common::MAP_EVENTS, opts.ringbuf_size);
    l.map_max_entries(reaper_common::MAP_CLAIMS, opts.claims_max);
    static ON: u8 = 1;
    static OFF: u8 = 0;
    l.override_global(
        reaper_common::GLOBAL_EXACT,
        if exact { &ON } else { &OFF },
        true,
    );
    // REAPER_CONNECT_WATCH=off: connections are left alone entirely, so a
    // benchmark can measure what watching them costs (bench/src/bin/connect.rs).
    let connects = std::env::var_os("REAPER_CONNECT_WATCH").is_none_or(|v| v != "off");
    l.override_global(
        reaper_common::GLOBAL_CONNECTS,
        if connects { &ON } else { &OFF },
        true,
    );
    l.override_global(
        reaper_common::GLOBAL_ALL,
        if opts.all { &ON } else { &OFF },
        true,
    );
    l.override_global(
        reaper_common::GLOBAL_BY_PID,
        if opts.ephemeral_by_pid { &ON } else { &OFF },
        true,
    );
    l.override_global(
        reaper_common::GLOBAL_PERCPU_LOOKUP,
        if percpu_lookup() { &ON } else { &OFF },
        true,
    );
    l
}

/// Whether this kernel lets programs read another CPU's value of a per-CPU
/// map (`bpf_map_lookup_percpu_elem`, Linux 5.19), asked once by loading a
/// two-instruction program that calls it.
fn percpu_lookup() -> bool {
    static SUPPORTED: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *SUPPORTED.get_or_init(|| {
        use aya::programs::ProgramType;
        use aya::sys::{is_helper_supported, BpfHelper};
        is_helper_supported(
            ProgramType::CgroupSock,
            BpfHelper::BPF_FUNC_map_lookup_percpu_elem,
        )
        .unwrap_or(false)
    })
}

/// Checks a claims map size.
pub fn check_claims_max(n: u32) -> Result<(), Error> {
    if !(16..=1 << 22).contains(&n) {
        return Err(crate::error::bad_input(format!(
            "claims map size {n} is not allowed: give 16 to 4194304 entries (default {})",
            reaper_common::CLAIMS_MAX_DEFAULT
        )));
    }
    Ok(())
}

/// Checks a ring buffer size: the kernel wants a power of two and a multiple
/// of the page size.
pub fn check_ringbuf_size(size: u32) -> Result<(), Error> {
    if size < 4096 || !size.is_power_of_two() {
        return Err(crate::error::bad_input(format!(
            "ring buffer size {size} is not allowed: give a power of two of at least 4096 bytes (e.g. 262144)"
        )));
    }
    Ok(())
}

/// Loads and attaches the hooks of a tier with the default options.
pub fn attach(choice: TierChoice, ringbuf_size: u32) -> Result<Attached, Error> {
    attach_with(choice, &Options::new(ringbuf_size))
}

/// Loads and attaches the hooks of a tier: bad sizes are bad input, a
/// program the kernel refuses is [`Error::HookRefused`], anything else that
/// kept the hooks from attaching is [`Error::Attach`].
pub fn attach_with(choice: TierChoice, opts: &Options) -> Result<Attached, Error> {
    check_ringbuf_size(opts.ringbuf_size)?;
    check_claims_max(opts.claims_max)?;
    load_and_attach(choice, opts).map_err(|e| match e {
        Error::Failed(e) => Error::Attach(e),
        other => other,
    })
}

fn load_and_attach(choice: TierChoice, opts: &Options) -> Result<Attached, Error> {
    let tier = choice.resolve();
    let cgroup = cgroup2_root()?;
    let cgroup_fd = File::open(&cgroup)
        .with_context(|| format!("opening the cgroup v2 root {}", cgroup.display()))?;
    let ns = proc_pidns()?;
    if !ns.is_initial() {
        tracing::info!(
            "reaper's /proc numbers processes as pid namespace {} (not the host's): the kernel side reports pids in it, and marks binds of processes outside it",
            ns.name()
        );
    }
    let mut ebpf = loader(opts, tier.exact_errno(), ns)
        .load(BPF_OBJECT)
        .context("loading reaper's eBPF object (maps could not be created; is BPF allowed here? see `reaper doctor`)")?;
    let logger = match aya_log::EbpfLogger::init(&mut ebpf) {
        Ok(l) => Some(l),
        Err(e) => {
            tracing::debug!("aya-log not available: {e}");
            None
        }
    };
    attach_cgroup_hooks(&mut ebpf, &cgroup_fd).map_err(|e| in_pidns(e, ns))?;
    let btf = Btf::from_sys_fs().ok();
    let listens = attach_listens(&mut ebpf, btf.as_ref())?;
    attach_exact_errno(&mut ebpf, tier, btf.as_ref())?;
    let events = RingBuf::try_from(
        ebpf.take_map(reaper_common::MAP_EVENTS)
            .context("the eBPF object has no EVENTS map")?,
    )
    .map_err(anyhow::Error::from)?;
    let lost = PerCpuArray::try_from(
        ebpf.take_map(reaper_common::MAP_LOST)
            .context("the eBPF object has no LOST map")?,
    )
    .map_err(anyhow::Error::from)?;
    let claims = match ebpf
        .take_map(reaper_common::MAP_CLAIMS)
        .context("the eBPF object has no CLAIMS map")?
    {
        Map::HashMap(data) => claims::ClaimsMap::new(data)
            .context("the eBPF object's CLAIMS map does not hold claims (rebuild)")?,
        _ => {
            return Err(
                anyhow::anyhow!("the eBPF object's CLAIMS map is not a hash map (rebuild)").into(),
            )
        }
    };
    let counts = PerCpuArray::try_from(
        ebpf.take_map(reaper_common::MAP_COUNTS)
            .context("the eBPF object has no COUNTS map")?,
    )
    .map_err(anyhow::Error::from)?;
    let ephemeral = PerCpuHashMap::try_from(
        ebpf.take_map(reaper_common::MAP_EPHEMERAL)
            .context("the eBPF object has no EPHEMERAL map")?,
    )
    .map_err(anyhow::Error::from)?;
    let watched = BpfHashMap::try_from(
        ebpf.take_map(reaper_common::MAP_WATCHED)
            .context("the eBPF object has no WATCHED map")?,
    )
    .map_err(anyhow::Error::from)?;
    Ok(Attached {
        tier,
        listens,
        watched,
        events: Some(events),
        lost,
        claims,
        counts,
        ephemeral,
        all: opts.all,
        logger,
        cgroup,
        _ebpf: ebpf,
    })
}

/// A refusal in a pid namespace other than the initial one names it and
/// the fix: the kernel may refuse `bpf_get_ns_current_pid_tgid` to cgroup
/// programs (it allows it from Linux 6.10).
fn in_pidns(e: Error, ns: pidns::PidNs) -> Error {
    match e {
        Error::HookRefused { hook, reason } if !ns.is_initial() => Error::HookRefused {
            hook,
            reason: format!(
                "{reason}; reaper runs in pid namespace {} and maps pids into it with bpf_get_ns_current_pid_tgid, which cgroup programs may call from Linux 6.10: on an older kernel run reaper in the host's pid namespace (Kubernetes: hostPID: true; Docker: --pid=host)",
                ns.name()
            ),
        },
        other => other,
    }
}

/// The cgroup programs every tier uses, on the cgroup v2 root.
fn attach_cgroup_hooks(ebpf: &mut Ebpf, cgroup_fd: &File) -> Result<(), Error> {
    for (name, hook) in CGROUP_SOCK_ADDR {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        prog.load().map_err(|e| refused(hook, e))?;
        prog.attach(cgroup_fd, CGROUP_MODE)
            .map_err(|e| refused(hook, e))?;
    }
    for (name, hook) in CGROUP_SOCK {
        let prog: &mut CgroupSock = program(ebpf, name)?;
        prog.load().map_err(|e| refused(hook, e))?;
        prog.attach(cgroup_fd, CGROUP_MODE)
            .map_err(|e| refused(hook, e))?;
    }
    Ok(())
}

/// The listen tp_btf, when the kernel allows it: listens are a bonus,
/// so a refusal is said and not fatal. Whether listens will be seen.
fn attach_listens(ebpf: &mut Ebpf, btf: Option<&Btf>) -> Result<bool> {
    let Some(btf) = btf else {
        tracing::warn!("listens will not be seen: no kernel BTF at /sys/kernel/btf/vmlinux");
        return Ok(false);
    };
    let (name, tp) = LISTEN_PROG;
    let prog: &mut BtfTracePoint = program(ebpf, name)?;
    match prog.load(tp, btf).and_then(|_| prog.attach().map(|_| ())) {
        Ok(()) => Ok(true),
        Err(e) => {
            tracing::warn!(
                "listens will not be seen: tp_btf/{tp} refused: {}",
                describe(&e)
            );
            Ok(false)
        }
    }
}

/// The exact-errno programs of the `syscalls` and `fexit` tiers.
fn attach_exact_errno(ebpf: &mut Ebpf, tier: Tier, btf: Option<&Btf>) -> Result<(), Error> {
    match tier {
        Tier::Cgroup => {}
        Tier::Syscalls => {
            ensure_tracefs();
            let prog: &mut TracePoint = program(ebpf, SYS_EXIT_BIND)?;
            prog.load()
                .map_err(|e| refused("tracepoint/syscalls/sys_exit_bind", e))?;
            prog.attach("syscalls", "sys_exit_bind")
                .map_err(|e| refused("tracepoint/syscalls/sys_exit_bind", e))?;
        }
        Tier::Fexit => {
            let btf = btf.ok_or_else(|| {
                anyhow::anyhow!(
                    "the fexit tier needs kernel BTF (/sys/kernel/btf/vmlinux): use --hooks cgroup"
                )
            })?;
            for (name, func) in FEXITS {
                let prog: &mut FExit = program(ebpf, name)?;
                let hook = format!("fexit/{func}");
                prog.load(func, btf).map_err(|e| refused(&hook, e))?;
                prog.attach().map_err(|e| refused(&hook, e))?;
            }
        }
    }
    Ok(())
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .with_context(|| format!("the eBPF object has no program {name}"))?;
    Ok(prog.try_into()?)
}

/// A refused hook, with the errno and what to do.
fn refused(hook: &str, e: ProgramError) -> Error {
    Error::HookRefused {
        hook: hook.to_string(),
        reason: describe(&e),
    }
}

/// The errno behind a program error, if any.
pub fn errno_of(e: &ProgramError) -> Option<i32> {
    let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(e);
    while let Some(err) = cur {
        if let Some(io) = err.downcast_ref::<io::Error>() {
            if let Some(code) = io.raw_os_error() {
                return Some(code);
            }
        }
        cur = err.source();
    }
    None
}

/// "EPERM (Operation not permitted)" or the error text.
pub fn describe(e: &ProgramError) -> String {
    match errno_of(e) {
        Some(code) => format!(
            "{} ({})",
            crate::util::errno_name(code),
            io::Error::from_raw_os_error(code)
        ),
        None => e.to_string().lines().next().unwrap_or_default().to_string(),
    }
}

/// The result of trying one hook here.
#[derive(Clone, Debug, Serialize)]
pub struct Probe {
    /// e.g. "cgroup/bind4", "fexit/inet_bind".
    pub hook: String,
    /// The BPF program type.
    pub program_type: String,
    pub loads: bool,
    pub attaches: bool,
    /// Errno name when refused, e.g. "EPERM".
    pub errno: Option<String>,
    pub error: Option<String>,
    /// Which tiers need it.
    pub used_by: Vec<&'static str>,
}

/// Loads and attaches each hook once, then detaches: what this kernel allows.
pub fn probe_all() -> Result<Vec<Probe>> {
    let mut ebpf = loader(&Options::new(4096), false, proc_pidns()?)
        .load(BPF_OBJECT)
        .context("loading reaper's eBPF object")?;
    let cgroup = cgroup2_root().ok();
    let cgroup_fd = cgroup.as_ref().and_then(|p| File::open(p).ok());
    let mut out = Vec::new();
    probe_cgroup_hooks(&mut ebpf, cgroup_fd.as_ref(), &mut out)?;
    out.push(probe_sys_exit_bind(&mut ebpf)?);
    match Btf::from_sys_fs().ok() {
        Some(btf) => probe_btf_hooks(&mut ebpf, &btf, &mut out)?,
        None => out.extend(without_btf()),
    }
    Ok(out)
}

/// What loading (and, if it loaded, attaching then detaching) one program
/// said. `attach` is None when it was not tried.
fn probed(
    hook: &str,
    ty: &str,
    used_by: Vec<&'static str>,
    load: std::result::Result<(), ProgramError>,
    attach: Option<std::result::Result<(), ProgramError>>,
) -> Probe {
    let (attaches, err) = match (&load, attach) {
        (Err(e), _) => (false, Some(e.to_string()).map(|s| (s, errno_of(e)))),
        (Ok(()), Some(Err(e))) => (false, Some((e.to_string(), errno_of(&e)))),
        (Ok(()), Some(Ok(()))) => (true, None),
        (Ok(()), None) => (false, None),
    };
    Probe {
        hook: hook.to_string(),
        program_type: ty.to_string(),
        loads: load.is_ok(),
        attaches,
        errno: err
            .as_ref()
            .and_then(|(_, c)| c.map(crate::util::errno_name)),
        error: err.map(|(s, _)| s.lines().next().unwrap_or_default().to_string()),
        used_by,
    }
}

/// The cgroup programs every tier uses, attached to the cgroup v2 root
/// when there is one.
fn probe_cgroup_hooks(
    ebpf: &mut Ebpf,
    cgroup_fd: Option<&File>,
    out: &mut Vec<Probe>,
) -> Result<()> {
    let all = vec!["cgroup", "syscalls", "fexit"];
    for (name, hook) in CGROUP_SOCK_ADDR {
        let prog: &mut CgroupSockAddr = program(ebpf, name)?;
        let load = prog.load();
        let attach = match (&load, cgroup_fd) {
            (Ok(()), Some(fd)) => Some(prog.attach(fd, CGROUP_MODE).map(|link| {
                let _ = prog.detach(link);
            })),
            _ => None,
        };
        out.push(probed(hook, "cgroup_sock_addr", all.clone(), load, attach));
    }
    for (name, hook) in CGROUP_SOCK {
        let prog: &mut CgroupSock = program(ebpf, name)?;
        let load = prog.load();
        let attach = match (&load, cgroup_fd) {
            (Ok(()), Some(fd)) => Some(prog.attach(fd, CGROUP_MODE).map(|link| {
                let _ = prog.detach(link);
            })),
            _ => None,
        };
        out.push(probed(hook, "cgroup_sock", all.clone(), load, attach));
    }
    Ok(())
}

fn probe_sys_exit_bind(ebpf: &mut Ebpf) -> Result<Probe> {
    ensure_tracefs();
    let prog: &mut TracePoint = program(ebpf, SYS_EXIT_BIND)?;
    let load = prog.load();
    let attach = load.is_ok().then(|| {
        prog.attach("syscalls", "sys_exit_bind").map(|link| {
            let _ = prog.detach(link);
        })
    });
    Ok(probed(
        "tracepoint/syscalls/sys_exit_bind",
        "tracepoint",
        vec!["syscalls"],
        load,
        attach,
    ))
}

/// The programs that need kernel BTF: the listen tp_btf, the fexit pair,
/// and the BPF LSM probe.
fn probe_btf_hooks(ebpf: &mut Ebpf, btf: &Btf, out: &mut Vec<Probe>) -> Result<()> {
    let (name, tp) = LISTEN_PROG;
    let prog: &mut BtfTracePoint = program(ebpf, name)?;
    let load = prog.load(tp, btf);
    let attach = load.is_ok().then(|| {
        prog.attach().map(|link| {
            let _ = prog.detach(link);
        })
    });
    out.push(probed(
        &format!("tp_btf/{tp}"),
        "tracing (tp_btf)",
        vec!["cgroup", "syscalls", "fexit"],
        load,
        attach,
    ));
    for (name, func) in FEXITS {
        let prog: &mut FExit = program(ebpf, name)?;
        let load = prog.load(func, btf);
        let attach = load.is_ok().then(|| {
            prog.attach().map(|link| {
                let _ = prog.detach(link);
            })
        });
        out.push(probed(
            &format!("fexit/{func}"),
            "tracing (fexit)",
            vec!["fexit"],
            load,
            attach,
        ));
    }
    let (name, hook) = LSM_PROBE;
    let prog: &mut Lsm = program(ebpf, name)?;
    let load = prog.load(hook, btf);
    let attach = load.is_ok().then(|| {
        prog.attach().map(|link| {
            let _ = prog.detach(link);
        })
    });
    out.push(probed(&format!("lsm/{hook}"), "lsm", vec![], load, attach));
    Ok(())
}

/// Without kernel BTF the tracing programs cannot even load: said so.
fn without_btf() -> Vec<Probe> {
    [
        "tp_btf/inet_sock_set_state",
        "fexit/inet_bind",
        "fexit/inet6_bind",
        "lsm/socket_bind",
    ]
    .into_iter()
    .map(|hook| Probe {
        hook: hook.into(),
        program_type: "tracing".into(),
        loads: false,
        attaches: false,
        errno: None,
        error: Some("no kernel BTF at /sys/kernel/btf/vmlinux".into()),
        used_by: vec![],
    })
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_cgroup2_in_hybrid_mountinfo() {
        let mi = "\
25 30 0:22 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
26 25 0:23 / /sys/fs/cgroup/cpu rw,relatime - cgroup cgroup rw,cpu
33 25 0:30 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";
        assert_eq!(
            cgroup2_from_mountinfo(mi),
            Some(PathBuf::from("/sys/fs/cgroup/unified"))
        );
        assert_eq!(
            cgroup2_from_mountinfo("1 2 0:1 / / rw - ext4 /dev/vda rw\n"),
            None
        );
    }

    #[test]
    fn ringbuf_sizes_must_be_powers_of_two() {
        assert!(check_ringbuf_size(4096).is_ok());
        assert!(check_ringbuf_size(1 << 20).is_ok());
        assert!(check_ringbuf_size(4095).is_err());
        assert!(check_ringbuf_size(6000).is_err());
    }

    #[test]
    fn auto_picks_the_tier_that_taxes_only_binds() {
        assert_eq!(TierChoice::Auto.resolve(), Tier::Cgroup);
        assert!(!Tier::Cgroup.exact_errno());
        assert!(Tier::Syscalls.exact_errno());
    }
}

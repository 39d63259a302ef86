//! policy -> **builtin**: the protections no rule can lift: init, reaper
//! itself, its caller and the caller's ancestors, the container engine's
//! programs, kernel threads, and anything outside the namespace asked about.

use super::{basename, strip_deleted, Context, Glob};
use crate::holders::{Process, Socket};

/// The protections no rule can lift.
pub(super) fn builtin_protection(p: &Process, s: &Socket, ctx: &Context) -> Option<String> {
    if p.pid == 1 {
        return Some("pid 1 (init) is never signalled".into());
    }
    if p.pid == ctx.reaper_pid {
        return Some("this is reaper itself".into());
    }
    if let Some(i) = ctx.caller_chain.iter().position(|&c| c == p.pid) {
        return Some(if i == 0 {
            format!("pid {} is the caller (reaper's parent)", p.pid)
        } else {
            format!(
                "pid {} is an ancestor of the caller (reaper runs under it)",
                p.pid
            )
        });
    }
    if let Some(engine) = engine_program(p) {
        return Some(format!(
            "pid {} is {engine}, part of the container engine: never signalled (stop the container through the engine instead)",
            p.pid
        ));
    }
    if ctx.kernel_threads.contains(&p.pid) || (p.exe.is_none() && p.cmdline.is_empty()) {
        return Some(format!("pid {} ({}) is a kernel thread", p.pid, p.comm));
    }
    match p.netns {
        None => {
            return Some(format!(
                "the network namespace of pid {} is unreadable, so it cannot be shown to be {}",
                p.pid, ctx.netns
            ))
        }
        Some(n) if n != ctx.netns => {
            return Some(format!(
                "pid {} is in network namespace {n}, not {} where the port was asked about",
                p.pid, ctx.netns
            ))
        }
        Some(_) => {}
    }
    if s.netns != ctx.netns {
        return Some(format!(
            "the socket is in network namespace {}, not {} where the port was asked about",
            s.netns, ctx.netns
        ));
    }
    None
}

/// The container engine's own programs, never signalled: killing them
/// breaks every container's ports (the proxy) or the containers themselves.
pub const ENGINE_PROGRAMS: &[&str] = &[
    "docker-proxy",
    "dockerd",
    "containerd",
    "containerd-shim*",
    "runc",
    "conmon",
    "podman",
    "kubelet",
    "rootlesskit",
    "slirp4netns",
    "pasta",
];

/// Which engine program a process is (by exe or argv[0] basename; the comm
/// may be a truncation and is not trusted alone).
fn engine_program(p: &Process) -> Option<&'static str> {
    let exe = p.exe.as_deref().map(|e| basename(strip_deleted(e)));
    let argv0 = p.cmdline.first().map(|a| basename(a));
    ENGINE_PROGRAMS.iter().copied().find(|prog| {
        let g = Glob::new(prog);
        [exe, argv0].into_iter().flatten().any(|b| g.matches(b))
    })
}

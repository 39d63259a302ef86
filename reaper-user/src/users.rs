//! vocabulary: **user names** of the processes reaper sees, and the uids a
//! policy's `user = "NAME"` means.
//!
//! The users that matter are the host's: the holders reaper judges are the
//! host's processes. In a container (the FROM-scratch image has no
//! /etc/passwd at all, another image has its own), the host's files are
//! reached through pid 1's root, `/proc/1/root/etc/passwd` (or kthreadd's,
//! pid 2, where pid 1's is refused), when the
//! container shares the host's pid namespace (`hostPID: true`, `--pid=host`)
//! and may read it (CAP_SYS_PTRACE). When no file names a uid, reaper shows
//! the number; a policy naming a user no file knows is refused at load
//! ([`unresolvable`]), never a rule that silently cannot match.

use std::collections::HashMap;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::SystemTime;

/// The host's root, /proc/PID/root of pid 1, else pid 2 (the kernel's kthreadd under
/// hostPID: its root is the host's, and some hosts refuse even root a look
/// at pid 1's, as this project's CI machines do).
const HOST_ROOTS: [u32; 2] = [1, 2];
/// This process's own.
const OWN_PASSWD: &str = "/etc/passwd";

/// Both directions of one passwd file's users.
#[derive(Default, Clone, Debug, PartialEq, Eq)]
pub struct Users {
    names: HashMap<u32, String>,
    uids: HashMap<String, u32>,
}

impl Users {
    /// Parses passwd(5) text: `name:password:uid:gid:gecos:home:shell`.
    /// The first line naming a uid or a name wins, as getpwuid does.
    pub fn parse(text: &str) -> Users {
        let mut u = Users::default();
        for line in text.lines() {
            let mut f = line.split(':');
            let (Some(name), Some(_), Some(uid)) = (f.next(), f.next(), f.next()) else {
                continue;
            };
            let (name, Ok(uid)) = (name.trim(), uid.trim().parse::<u32>()) else {
                continue;
            };
            if name.is_empty() || name.starts_with('#') || name.starts_with(['+', '-']) {
                continue;
            }
            u.names.entry(uid).or_insert_with(|| name.to_string());
            u.uids.entry(name.to_string()).or_insert(uid);
        }
        u
    }

    pub fn name_of(&self, uid: u32) -> Option<&str> {
        self.names.get(&uid).map(String::as_str)
    }

    pub fn uid_of(&self, name: &str) -> Option<u32> {
        self.uids.get(name).copied()
    }
}

/// The files read, in order, with what was parsed and their mtimes then
/// (re-read when a file changes: users come and go on a long-running host).
struct Cache {
    stamps: Vec<(PathBuf, Option<SystemTime>)>,
    tables: Vec<Users>,
}

static CACHE: Mutex<Option<Cache>> = Mutex::new(None);

/// The passwd files that name the users reaper sees: the host's first when
/// pid 1's root is not this process's root (a container under hostPID),
/// then this process's own.
pub fn sources() -> Vec<PathBuf> {
    let mut out = Vec::new();
    if let Some(root) = host_root() {
        out.push(root.join("etc/passwd"));
    }
    out.push(PathBuf::from(OWN_PASSWD));
    out
}

/// The first root of [`HOST_ROOTS`] (/proc/PID/root) that can be read and
/// is another directory than this process's "/" (a container under
/// hostPID); None on the host.
fn host_root() -> Option<PathBuf> {
    let own = std::fs::metadata("/").ok()?;
    HOST_ROOTS.into_iter().find_map(|pid| {
        crate::proc::metadata(pid, "root")
            .is_ok_and(|host| (host.dev(), host.ino()) != (own.dev(), own.ino()))
            .then(|| crate::proc::path(pid, "root"))
    })
}

fn stamp(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

fn with_tables<T>(f: impl FnOnce(&[Users]) -> T) -> T {
    let paths = sources();
    let stamps: Vec<_> = paths.iter().map(|p| (p.clone(), stamp(p))).collect();
    let mut cache = CACHE.lock().unwrap_or_else(|e| e.into_inner());
    if cache.as_ref().is_none_or(|c| c.stamps != stamps) {
        let tables = paths
            .iter()
            .map(|p| {
                std::fs::read_to_string(p)
                    .map(|t| Users::parse(&t))
                    .unwrap_or_default()
            })
            .collect();
        *cache = Some(Cache { stamps, tables });
    }
    f(&cache.as_ref().expect("filled above").tables)
}

/// The name of `uid`: from the files, else from this system's NSS (LDAP,
/// systemd's dynamic users); None: show the number.
pub fn name_of(uid: u32) -> Option<String> {
    with_tables(|t| t.iter().find_map(|u| u.name_of(uid).map(String::from))).or_else(|| {
        nix::unistd::User::from_uid(nix::unistd::Uid::from_raw(uid))
            .ok()
            .flatten()
            .map(|u| u.name)
    })
}

/// The uid a user name means, from the same sources as [`name_of`].
pub fn uid_of(name: &str) -> Option<u32> {
    with_tables(|t| t.iter().find_map(|u| u.uid_of(name))).or_else(|| {
        nix::unistd::User::from_name(name)
            .ok()
            .flatten()
            .map(|u| u.uid.as_raw())
    })
}

/// The error for a policy naming `name`, a user none of the sources knows:
/// such a rule or protection could never match.
pub fn unresolvable(name: &str) -> String {
    let looked: Vec<String> = sources().iter().map(|p| p.display().to_string()).collect();
    format!(
        "user \"{name}\" is not known here (looked in {} and the system's user database), so this could never match: give its uid (user = 1001), or run reaper where the host's users are visible (in a container: hostPID: true / docker run --pid=host, with CAP_SYS_PTRACE, so the host's /etc/passwd is reached through /proc/1/root or /proc/2/root)",
        looked.join(", ")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_passwd_both_ways_first_line_wins() {
        let u = Users::parse(
            "root:x:0:0:root:/root:/bin/bash\n# a comment\npostgres:x:105:110::/var/lib/postgresql:/bin/false\n\nbroken line\n+nis::::::\ntoor:x:0:0::/root:/bin/sh\npostgres:x:999:999::/:/bin/false\n",
        );
        assert_eq!(u.name_of(0), Some("root"));
        assert_eq!(u.uid_of("toor"), Some(0));
        assert_eq!(u.uid_of("postgres"), Some(105));
        assert_eq!(u.name_of(105), Some("postgres"));
        assert_eq!(u.name_of(999), Some("postgres"));
        assert_eq!(u.uid_of("+nis"), None);
        assert_eq!(u.uid_of("broken line"), None);
    }

    #[test]
    fn this_hosts_root_resolves_and_a_made_up_name_does_not() {
        assert_eq!(uid_of("root"), Some(0));
        assert_eq!(name_of(0).as_deref(), Some("root"));
        assert_eq!(uid_of("no-such-user-reaper-test"), None);
        let e = unresolvable("no-such-user-reaper-test");
        assert!(e.contains("\"no-such-user-reaper-test\"") && e.contains("hostPID"));
    }
}

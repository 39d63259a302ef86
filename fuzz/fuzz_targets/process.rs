//! /proc/PID/{stat,cmdline,cgroup}: partly chosen by the process itself
//! (comm, argv), so nothing in them is trusted. Invariants: no panic on any
//! bytes; a comm of any bytes (`a) b (c`, NULs, non-UTF-8, fake fields)
//! round-trips through a stat line without shifting a field; argv of any
//! bytes round-trips through a cmdline. (status is parsed by procfs.)
#![no_main]

use libfuzzer_sys::fuzz_target;
use reaper::holders::container::{from_cgroup, proxy_target};
use reaper::holders::job::parse_environ;
use reaper::holders::process::{container_id, parse_cgroup, parse_cmdline, parse_stat};

fuzz_target!(|data: &[u8]| {
    // Raw bytes into every parser.
    let _ = parse_stat(data);
    let argv = parse_cmdline(data);
    if !data.is_empty() {
        let body = data.strip_suffix(b"\0").unwrap_or(data);
        assert_eq!(argv.len(), body.iter().filter(|&&c| c == 0).count() + 1);
    }
    if let Some(path) = parse_cgroup(data) {
        if let Some(id) = container_id(&path) {
            assert!(id.len() == 64 && id.bytes().all(|c| c.is_ascii_hexdigit()));
        }
        // A container from any path: a non-empty id, 64 hex digits unless it
        // is an nspawn machine name; a pod UID is always 36 characters.
        if let Some(c) = from_cgroup(&path) {
            assert!(!c.id.is_empty());
            if c.runtime != Some("systemd-nspawn") {
                assert!(c.id.len() == 64 && c.id.bytes().all(|b| b.is_ascii_hexdigit()));
            }
            assert!(c.pod_uid.is_none_or(|u| u.len() == 36));
        }
    }
    // The environment (a process chooses it) and a proxy's argv.
    if let Some(job) = parse_environ(data) {
        assert!(!job.id.is_empty());
    }
    let _ = proxy_target(&argv);

    // The bytes as a comm inside a stat line.
    let mut line = b"4242 (".to_vec();
    line.extend_from_slice(data);
    line.extend_from_slice(
        b") S 17 4242 4000 0 -1 4194560 100 0 0 0 5 3 0 0 20 0 1 0 987654 1000000 200\n",
    );
    let st = parse_stat(&line).expect("a stat line with any comm parses");
    assert_eq!(st.pid, 4242);
    assert_eq!(st.comm, String::from_utf8_lossy(data));
    assert_eq!(
        (st.state, st.ppid, st.session, st.start_ticks),
        ('S', 17, 4000, 987654)
    );

    // The bytes as argv (split at NULs, as execve would have them).
    let args: Vec<&[u8]> = data.split(|&c| c == 0).collect();
    let mut cmdline = Vec::new();
    for a in &args {
        cmdline.extend_from_slice(a);
        cmdline.push(0);
    }
    let back = parse_cmdline(&cmdline);
    let want: Vec<String> = args
        .iter()
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    assert_eq!(back, want);
});

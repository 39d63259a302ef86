//! /proc/PID/{stat,cmdline,cgroup}: partly chosen by the process itself
//! (comm, argv), so nothing in them is trusted. Invariants: no panic on any
//! bytes; a comm of any bytes (`a) b (c`, NULs, non-UTF-8, fake fields)
//! round-trips through a stat line without shifting a field; argv of any
//! bytes round-trips through a cmdline (less a rewritten argv's padding). (status is parsed by procfs.)
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
        // One argument per NUL-separated field, less the trailing padding
        // (NULs and spaces) of a rewritten argv.
        let fields = body.iter().filter(|&&c| c == 0).count() + 1;
        assert!(!argv.is_empty() && argv.len() <= fields);
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
    // A rewritten argv's padding (trailing NULs and spaces) is trimmed:
    // exact unless the last argument is empty or ends in a space; then
    // `back` is `want` less trailing all-space arguments and the last
    // one's trailing spaces.
    let exact = args
        .last()
        .is_some_and(|a| !a.is_empty() && !a.ends_with(b" "));
    if exact {
        assert_eq!(back, want);
    } else {
        let n = back.len();
        assert!(n >= 1 && n <= want.len(), "{back:?} from {want:?}");
        assert_eq!(back[..n - 1], want[..n - 1]);
        let (kept, whole) = (&back[n - 1], &want[n - 1]);
        assert!(whole.starts_with(kept.as_str()), "{kept:?} of {whole:?}");
        assert!(whole[kept.len()..].bytes().all(|c| c == b' '));
        assert!(want[n..].iter().all(|a| a.bytes().all(|c| c == b' ')));
    }
});

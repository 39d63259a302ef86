//! `reaper why` against the kernel: a matrix of existing sockets (state,
//! protocol, family, address, v6only, SO_REUSEADDR, SO_REUSEPORT, uid) and
//! new binds, in a private network namespace. For each case the fixture
//! makes the existing sockets, `reaper why` predicts the new bind from its
//! model (it binds nothing), then the fixture makes the real bind and the
//! errno is compared. Every disagreement fails the test; none is skipped.
//!
//! Each case has a port of its own, so the cases of one namespace cannot
//! meet (the kernel's bind tables are per port and namespace).

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader, Write};
use std::process::Stdio;
use std::sync::Mutex;
use std::time::Duration;

use reaper_tests::{fixture_bin, poll_until, reaper, reaper_bin, require_root, Netns};

#[derive(Clone, Debug)]
struct Sock {
    /// listen, bound, estab, timewait, udp-bound, udp-conn (holds) or bind.
    state: &'static str,
    addr: &'static str,
    v6only: bool,
    reuseaddr: bool,
    reuseport: bool,
    uid: u32,
}

impl Sock {
    fn words(&self, udp: bool, port: u16) -> String {
        let b = |v: bool| if v { "1" } else { "0" };
        format!(
            "{} {} {port} {} {} {} {}",
            if udp { "udp" } else { "tcp" },
            self.addr,
            b(self.v6only),
            b(self.reuseaddr),
            b(self.reuseport),
            self.uid
        )
    }
    /// IPV6_V6ONLY as the kernel has it: the flag, or forced on by binding
    /// a specific non-mapped IPv6 address (not by connect()).
    fn true_v6only(&self) -> bool {
        let a: std::net::IpAddr = self.addr.parse().unwrap();
        match a {
            std::net::IpAddr::V4(_) => false,
            std::net::IpAddr::V6(v6) => {
                self.v6only
                    || (self.state != "estab"
                        && !v6.is_unspecified()
                        && v6.to_ipv4_mapped().is_none())
            }
        }
    }
}

#[derive(Clone, Debug)]
struct Case {
    port: u16,
    holds: Vec<Sock>,
    new: Sock,
    udp: bool,
}

const ADDRS: [(&str, bool); 7] = [
    ("0.0.0.0", false),
    ("127.0.0.1", false),
    ("127.0.0.2", false),
    ("::", false),
    ("::", true),
    ("::1", false),
    ("::ffff:127.0.0.1", false),
];

fn sock(state: &'static str, addr: &'static str, v6only: bool) -> Sock {
    Sock {
        state,
        addr,
        v6only,
        reuseaddr: false,
        reuseport: false,
        uid: 0,
    }
}

fn cases() -> Vec<Case> {
    let mut v: Vec<(Vec<Sock>, Sock, bool)> = Vec::new();
    // A: every address against every address, no options.
    for state in ["listen", "bound", "udp-bound"] {
        for (ea, e6) in ADDRS {
            for (na, n6) in ADDRS {
                let udp = state == "udp-bound";
                v.push((vec![sock(state, ea, e6)], sock("bind", na, n6), udp));
            }
        }
    }
    // B: every option on both sides, in every state.
    for (state, ea) in [
        ("listen", "0.0.0.0"),
        ("bound", "0.0.0.0"),
        ("udp-bound", "0.0.0.0"),
        ("estab", "127.0.0.1"),
        ("timewait", "127.0.0.1"),
        ("udp-conn", "127.0.0.1"),
    ] {
        for na in ["0.0.0.0", "127.0.0.1"] {
            for bits in 0..16u8 {
                let (era, erp, nra, nrp) =
                    (bits & 1 != 0, bits & 2 != 0, bits & 4 != 0, bits & 8 != 0);
                let uids: &[(u32, u32)] = if erp && nrp {
                    &[(0, 0), (1000, 0), (1000, 1000)]
                } else {
                    &[(0, 0)]
                };
                for &(eu, nu) in uids {
                    let mut e = sock(state, ea, false);
                    (e.reuseaddr, e.reuseport, e.uid) = (era, erp, eu);
                    let mut n = sock("bind", na, false);
                    (n.reuseaddr, n.reuseport, n.uid) = (nra, nrp, nu);
                    v.push((vec![e], n, state.starts_with("udp")));
                }
            }
        }
    }
    // C: connections (a port connect() picked, TIME_WAIT, connected UDP) of
    // each family against every address.
    for state in ["estab", "timewait", "udp-conn"] {
        for ea in ["127.0.0.1", "::1", "::ffff:127.0.0.1"] {
            for (na, n6) in ADDRS {
                for both_reuseaddr in [false, true] {
                    let mut e = sock(state, ea, false);
                    e.reuseaddr = both_reuseaddr;
                    let mut n = sock("bind", na, n6);
                    n.reuseaddr = both_reuseaddr;
                    v.push((vec![e], n, state == "udp-conn"));
                }
            }
        }
    }
    // E: SO_REUSEPORT groups of two, joined or refused by uid.
    for (state, udp) in [("listen", false), ("udp-bound", true)] {
        for (nrp, nu) in [(true, 1000), (true, 0), (false, 1000)] {
            let mut e = sock(state, "0.0.0.0", false);
            (e.reuseport, e.uid) = (true, 1000);
            let mut n = sock("bind", "0.0.0.0", false);
            (n.reuseport, n.uid) = (nrp, nu);
            v.push((vec![e.clone(), e], n, udp));
        }
    }
    let mut out: Vec<Case> = v
        .into_iter()
        .enumerate()
        .map(|(i, (holds, new, udp))| Case {
            port: 20000 + i as u16,
            holds,
            new,
            udp,
        })
        .collect();
    // D: a privileged port: EACCES for a user first, whatever holds it.
    for (i, (held, uid)) in [(false, 1000), (true, 1000), (true, 0), (false, 0)]
        .into_iter()
        .enumerate()
    {
        let mut n = sock("bind", "0.0.0.0", false);
        n.uid = uid;
        out.push(Case {
            port: 600 + i as u16,
            holds: if held {
                vec![sock("listen", "0.0.0.0", false)]
            } else {
                vec![]
            },
            new: n,
            udp: false,
        });
    }
    out
}

/// The model's answer for a case, with facts the kernel hides (a TIME_WAIT
/// socket's options) resolved from what the test knows it set: the JSON
/// lists the answer under each value they could have.
fn predicted(json: &serde_json::Value, c: &Case) -> Result<String, String> {
    let outcome = json["outcome"].as_str().ok_or("no outcome")?;
    if outcome != "unknown" {
        return Ok(outcome.to_string());
    }
    let mut blocks = false;
    for s in json["sockets"].as_array().ok_or("no sockets")? {
        if let Some(b) = s["blocks"].as_bool() {
            blocks |= b;
            continue;
        }
        // Which hold: the one in this state at this address.
        let state = s["socket"]["state"].as_str().unwrap_or("");
        let h = c
            .holds
            .iter()
            .find(|h| (h.state == "timewait") == (state == "TIME-WAIT"))
            .ok_or("an unknown socket the case did not make")?;
        let truth = |name: &str| match name {
            "reuseaddr" => h.reuseaddr,
            "reuseport" => h.reuseport,
            _ => h.true_v6only(),
        };
        let case = s["cases"]
            .as_array()
            .ok_or("unknown without cases")?
            .iter()
            .find(|k| {
                ["reuseaddr", "reuseport", "v6only"]
                    .iter()
                    .all(|f| k[*f].as_bool().is_none_or(|v| v == truth(f)))
            })
            .ok_or("no case matches the socket's real options")?;
        blocks |= case["blocks"].as_bool().ok_or("a case without blocks")?;
    }
    Ok(if blocks { "EADDRINUSE" } else { "ok" }.to_string())
}

fn errno_word(e: i32) -> String {
    match e {
        0 => "ok".into(),
        libc::EADDRINUSE => "EADDRINUSE".into(),
        libc::EACCES => "EACCES".into(),
        e => format!("errno {e}"),
    }
}

#[test]
fn why_agrees_with_the_kernel_on_every_case_of_the_matrix() {
    require_root();
    let cases = cases();
    assert!(cases.len() >= 300, "the matrix has {} cases", cases.len());
    let ns = Netns::new("why");
    let mut child = ns
        .exec(fixture_bin("bind-matrix"))
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .expect("starting the bind-matrix fixture");
    let mut to = child.stdin.take().unwrap();
    let mut from = BufReader::new(child.stdout.take().unwrap());
    let mut ask = |line: String| -> String {
        writeln!(to, "{line}").unwrap();
        to.flush().unwrap();
        let mut reply = String::new();
        from.read_line(&mut reply).unwrap();
        assert!(!reply.is_empty(), "bind-matrix ended on `{line}`");
        reply.trim().to_string()
    };

    // 1. The existing sockets.
    for (i, c) in cases.iter().enumerate() {
        for h in &c.holds {
            let r = ask(format!("hold {i} {} {}", h.state, h.words(c.udp, c.port)));
            assert_eq!(r, format!("held {i}"), "making {h:?} for case {c:?}");
        }
    }

    // 2. The model's predictions, two at a time.
    let inode = ns.inode();
    let next = Mutex::new(0usize);
    let answers: Mutex<BTreeMap<usize, Result<String, String>>> = Mutex::default();
    std::thread::scope(|s| {
        for _ in 0..2 {
            s.spawn(|| loop {
                let i = {
                    let mut n = next.lock().unwrap();
                    *n += 1;
                    *n - 1
                };
                let Some(c) = cases.get(i) else { break };
                let a = why(c, inode);
                answers.lock().unwrap().insert(i, a);
            });
        }
    });
    let answers = answers.into_inner().unwrap();

    // 3. The real binds, and the comparison.
    let mut wrong = Vec::new();
    let mut unknown_resolved = 0;
    let mut by_outcome: BTreeMap<String, usize> = BTreeMap::new();
    for (i, c) in cases.iter().enumerate() {
        let r = ask(format!("bind {i} {}", c.new.words(c.udp, c.port)));
        let errno: i32 = r
            .strip_prefix(&format!("result {i} "))
            .and_then(|e| e.parse().ok())
            .unwrap_or_else(|| panic!("bind-matrix said `{r}` for case {i}"));
        let kernel = errno_word(errno);
        *by_outcome.entry(kernel.clone()).or_default() += 1;
        match &answers[&i] {
            Ok(p) if *p == kernel => {}
            Ok(p) => wrong.push(format!(
                "case {i}: kernel {kernel}, model {p}: existing {:?}, new {:?}",
                c.holds, c.new
            )),
            Err(e) => wrong.push(format!("case {i}: no prediction ({e}): {c:?}")),
        }
        if answers[&i].is_ok() && why_was_unknown(c) {
            unknown_resolved += 1;
        }
    }
    drop(to);
    let _ = child.wait();
    eprintln!(
        "why matrix: {} cases, {} agree with the kernel ({} TIME_WAIT cases answered per unknown option); kernel said {by_outcome:?}",
        cases.len(),
        cases.len() - wrong.len(),
        unknown_resolved
    );
    assert!(
        wrong.is_empty(),
        "{} of {} cases disagree with the kernel:\n{}",
        wrong.len(),
        cases.len(),
        wrong.join("\n")
    );
}

fn why_was_unknown(c: &Case) -> bool {
    c.holds.iter().any(|h| h.state == "timewait") && (c.new.reuseaddr || c.new.reuseport)
}

/// `reaper why` for the case's new bind, in the namespace, as JSON.
fn why(c: &Case, netns: u64) -> Result<String, String> {
    let n = &c.new;
    let mut cmd = reaper();
    cmd.arg("why")
        .arg(c.port.to_string())
        .args(["--addr", n.addr])
        .args(["--uid", &n.uid.to_string()])
        .args(["--netns", &netns.to_string()])
        .arg("--json");
    for (on, flag) in [
        (c.udp, "--udp"),
        (n.reuseaddr, "--reuseaddr"),
        (n.reuseport, "--reuseport"),
        (n.v6only, "--v6only"),
    ] {
        if on {
            cmd.arg(flag);
        }
    }
    let out = cmd.output().map_err(|e| e.to_string())?;
    // 0 ok, 1 would fail, 3 cannot tell: all answers.
    if !matches!(out.status.code(), Some(0 | 1 | 3)) {
        return Err(format!(
            "reaper why exited {:?}: {}",
            out.status.code(),
            String::from_utf8_lossy(&out.stderr)
        ));
    }
    let json: serde_json::Value =
        serde_json::from_slice(&out.stdout).map_err(|e| format!("bad JSON: {e}"))?;
    predicted(&json, c)
}

/// The fixture in a namespace of its own, and a way to talk to it.
struct Matrix {
    ns: Netns,
    child: std::process::Child,
    from: BufReader<std::process::ChildStdout>,
}

impl Matrix {
    fn start(tag: &str) -> Matrix {
        let ns = Netns::new(tag);
        let mut child = ns
            .exec(fixture_bin("bind-matrix"))
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("starting the bind-matrix fixture");
        let from = BufReader::new(child.stdout.take().unwrap());
        Matrix { ns, child, from }
    }

    fn ask(&mut self, line: &str) -> String {
        let to = self.child.stdin.as_mut().unwrap();
        writeln!(to, "{line}").unwrap();
        to.flush().unwrap();
        let mut reply = String::new();
        self.from.read_line(&mut reply).unwrap();
        reply.trim().to_string()
    }

    fn hold(&mut self, id: u32, what: &str) {
        assert_eq!(
            self.ask(&format!("hold {id} {what}")),
            format!("held {id}"),
            "{what}"
        );
    }

    /// reaper with `args`, from outside the namespace (who, why take --netns).
    fn reaper(&self, args: &[&str]) -> (i32, String, String) {
        let out = reaper().args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }

    /// reaper run inside the namespace (free works where it runs).
    fn reaper_inside(&self, args: &[&str]) -> (i32, String, String) {
        let out = self.ns.exec(reaper_bin()).args(args).output().unwrap();
        (
            out.status.code().unwrap_or(-1),
            String::from_utf8_lossy(&out.stdout).into_owned(),
            String::from_utf8_lossy(&out.stderr).into_owned(),
        )
    }
}

impl Drop for Matrix {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[test]
fn a_port_the_kernel_lent_to_a_client_is_named_as_such_and_never_signalled() {
    require_root();
    let mut m = Matrix::start("lent");
    // A one-port ephemeral range: the client's connect() takes exactly 40000
    // (the namespace's own net.ipv4.ip_local_port_range).
    m.hold(0, "estab tcp 127.0.0.1 40000 0 0 0 0");
    let ns = m.ns.inode().to_string();

    let (code, out, _) = m.reaper(&["who", "40000", "--netns", &ns]);
    assert_eq!(code, 0, "{out}");
    assert!(out.contains("a client's connection"), "{out}");
    assert!(out.contains("ip_local_reserved_ports"), "{out}");
    assert!(
        out.contains("blocks a plain bind and a SO_REUSEADDR bind"),
        "{out}"
    );

    let (code, out, _) = m.reaper(&["why", "40000", "--netns", &ns, "--json"]);
    assert_eq!(code, 1, "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["outcome"], "EADDRINUSE");
    assert_eq!(v["sockets"][0]["lent_to_client"], true, "{out}");
    assert_eq!(
        v["sockets"][0]["processes"][0]["comm"], "bind-matrix",
        "{out}"
    );
    assert!(
        v["fixes"].as_array().unwrap().iter().any(|f| f
            .as_str()
            .unwrap()
            .contains("net.ipv4.ip_local_reserved_ports")),
        "{out}"
    );

    // free, whatever --match says: exit 4, the words, nothing signalled.
    let (code, out, err) = m.reaper_inside(&[
        "free",
        "40000",
        "--match",
        "bind-matrix",
        "--deadline",
        "2s",
    ]);
    assert_eq!(code, 4, "stdout: {out}\nstderr: {err}");
    assert!(err.contains("a client's connection"), "{err}");
    assert!(err.contains("ip_local_reserved_ports"), "{err}");
    assert!(
        out.contains("1 holder"),
        "the header counts the client: {out}"
    );
    assert!(!out.contains("0 holders"), "{out}");
    // The client is still there and answering.
    assert_eq!(m.ask("bind 9 tcp 127.0.0.1 40000 0 0 0 0"), "result 9 98");

    // Unless a rule names clients explicitly (`clients = true`): then the
    // plan judges the client by that rule, and free stops it.
    let policy = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        policy.path(),
        "[[rule]]\nname = \"stale test clients\"\nmatch = { name = \"bind-matrix\" }\nclients = true\n",
    )
    .unwrap();
    let (code, out, err) = m.reaper_inside(&[
        "free",
        "40000",
        "--policy",
        policy.path().to_str().unwrap(),
        "--deadline",
        "5s",
    ]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("stale test clients"), "{out}");
    let status = poll_until("the client to exit", Duration::from_secs(10), || {
        m.child.try_wait().unwrap()
    });
    assert!(!status.success(), "it was signalled: {status}");
}

#[test]
fn udp_servers_connected_clients_and_reuseport_groups() {
    require_root();
    let mut m = Matrix::start("udp");
    m.hold(0, "udp-bound udp 0.0.0.0 40100 0 0 0 0");
    m.hold(1, "udp-conn udp 127.0.0.1 40101 0 0 0 0");
    m.hold(2, "udp-bound udp 0.0.0.0 40102 0 0 1 0");
    m.hold(3, "udp-bound udp 0.0.0.0 40102 0 0 1 0");
    let ns = m.ns.inode().to_string();

    for port in ["40100", "40101"] {
        let (code, out, _) = m.reaper(&["who", port, "--udp", "--netns", &ns]);
        assert_eq!(code, 0, "{out}");
        assert!(out.contains("blocks a plain bind"), "{out}");
        let (code, out, _) =
            m.reaper(&["why", port, "--udp", "--netns", &ns, "--addr", "127.0.0.1"]);
        assert_eq!(code, 1, "{out}");
        assert!(out.contains("EADDRINUSE"), "{out}");
    }
    // The group takes a member of the same uid, and refuses one without
    // SO_REUSEPORT or of another uid.
    let why = |extra: &[&str]| {
        let mut a = vec!["why", "40102", "--udp", "--netns", &ns, "--json"];
        a.extend_from_slice(extra);
        let (code, out, _) = m.reaper(&a);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        (
            code,
            v["outcome"].as_str().unwrap().to_string(),
            v["conflicts"].as_u64().unwrap(),
        )
    };
    assert_eq!(why(&["--reuseport", "--uid", "0"]), (0, "ok".into(), 0));
    assert_eq!(why(&[]), (1, "EADDRINUSE".into(), 2));
    assert_eq!(
        why(&["--reuseport", "--uid", "1000"]),
        (1, "EADDRINUSE".into(), 2)
    );
    // And the kernel agrees.
    assert_eq!(m.ask("bind 9 udp 0.0.0.0 40102 0 0 1 0"), "result 9 0");
    assert_eq!(m.ask("bind 9 udp 0.0.0.0 40102 0 0 0 0"), "result 9 98");
    assert_eq!(m.ask("bind 9 udp 0.0.0.0 40102 0 0 1 1000"), "result 9 98");

    // doctor: the ephemeral range is this namespace's, and a configured
    // port inside it that is not reserved is a warning.
    let cfg = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(cfg.path(), "reserve_ports = [\"40000\"]\n").unwrap();
    let (code, out, err) = m.reaper_inside(&["doctor", "--config", cfg.path().to_str().unwrap()]);
    assert_eq!(code, 0, "{err}");
    assert!(out.contains("ephemeral   32768-60999"), "{out}");
    assert!(
        out.contains("warning: 40000 lies in net.ipv4.ip_local_port_range"),
        "{out}"
    );

    // free --udp judges the server (dry run: nothing signalled).
    let (code, out, err) = m.reaper_inside(&[
        "free",
        "40100",
        "--udp",
        "--match",
        "bind-matrix",
        "--dry-run",
    ]);
    assert_eq!(code, 0, "stdout: {out}\nstderr: {err}");
    assert!(out.contains("port 40100/udp"), "{out}");
    assert!(out.contains("1 holder"), "{out}");
}

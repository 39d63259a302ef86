//! Helpers for tests that need real processes holding real sockets (the
//! processes are the crate's [`crate::fixture::Holder`]): throwaway network
//! namespaces, `ss` as the independent oracle, and running `reaper` itself.

use std::collections::BTreeSet;
use std::process::Command;

/// Runs a command to completion; panics with its stderr when it fails.
pub fn run_ok(cmd: &mut Command) -> String {
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running {cmd:?}: {e}"));
    if !out.status.success() {
        panic!(
            "{cmd:?} failed ({}): {}",
            out.status,
            String::from_utf8_lossy(&out.stderr)
        );
    }
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// Network namespaces for tests: the crate's one helper.
pub use crate::Netns;

/// One socket line of `ss -tu...H` (with the Netid column).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct SsSocket {
    pub netid: String,
    pub state: String,
    /// As ss prints it: `0.0.0.0:80`, `[::]:80`, `*:80` (dual-stack), `127.0.0.1%lo:53`.
    pub local: String,
    pub port: u16,
    pub peer: String,
    pub pids: BTreeSet<u32>,
}

/// Parses `ss -tu[a|l]n[p]H` output.
pub fn parse_ss(text: &str) -> Vec<SsSocket> {
    text.lines()
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            if f.len() < 6 {
                return None;
            }
            let local = f[4].to_string();
            let port = local.rsplit(':').next()?.parse().ok()?;
            let mut pids = BTreeSet::new();
            let mut rest = line;
            while let Some(i) = rest.find("pid=") {
                rest = &rest[i + 4..];
                let digits: String = rest.chars().take_while(char::is_ascii_digit).collect();
                if let Ok(p) = digits.parse() {
                    pids.insert(p);
                }
            }
            Some(SsSocket {
                netid: f[0].to_string(),
                state: f[1].to_string(),
                local,
                port,
                peer: f[5].to_string(),
                pids,
            })
        })
        .collect()
}

/// Runs ss with `args` (in a namespace when given) and keeps the sockets on `port`.
pub fn ss_on(port: u16, args: &[&str], netns: Option<&Netns>) -> Vec<SsSocket> {
    let mut cmd = match netns {
        Some(ns) => ns.exec("ss"),
        None => Command::new("ss"),
    };
    cmd.args(args);
    parse_ss(&run_ok(&mut cmd))
        .into_iter()
        .filter(|s| s.port == port)
        .collect()
}

/// What a reaper run returned.
#[derive(Debug)]
pub struct Run {
    pub code: i32,
    pub stdout: String,
    pub stderr: String,
}

impl Run {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.stdout).unwrap_or_else(|e| {
            panic!(
                "reaper printed no JSON ({e}):\n{}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the reaper binary with `args` and `env`.
pub fn reaper(args: &[&str], env: &[(&str, &str)]) -> Run {
    let mut cmd = crate::reaper();
    cmd.args(args).env("NO_COLOR", "1");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd
        .output()
        .unwrap_or_else(|e| panic!("running reaper {args:?}: {e}"));
    Run {
        code: out.status.code().unwrap_or(-1),
        stdout: String::from_utf8_lossy(&out.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&out.stderr).into_owned(),
    }
}

/// Holder pids in a `reaper who --json` answer (or a `ports --json` list),
/// optionally only in one namespace.
pub fn holder_pids(answer: &serde_json::Value, netns: Option<u64>) -> BTreeSet<u32> {
    let holdings = answer.get("holdings").unwrap_or(answer);
    holdings
        .as_array()
        .expect("a list of holdings")
        .iter()
        .filter(|h| netns.is_none_or(|n| h["socket"]["netns"].as_u64() == Some(n)))
        .flat_map(|h| h["processes"].as_array().cloned().unwrap_or_default())
        .filter_map(|p| p["pid"].as_u64().map(|p| p as u32))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ss_lines() {
        let text = "tcp   LISTEN 0      128          0.0.0.0:2024      0.0.0.0:*    users:((\"python3\",pid=123,fd=3),(\"python3\",pid=124,fd=3))\n\
                    udp   UNCONN 0      0                  *:47103             *:*    users:((\"x\",pid=9,fd=5))\n\
                    tcp   TIME-WAIT 0   0          127.0.0.1:47104   127.0.0.1:34758\n";
        let v = parse_ss(text);
        assert_eq!(v.len(), 3);
        assert_eq!(v[0].port, 2024);
        assert_eq!(v[0].pids, BTreeSet::from([123, 124]));
        assert_eq!(v[1].local, "*:47103");
        assert_eq!(v[2].state, "TIME-WAIT");
        assert!(v[2].pids.is_empty());
    }
}

//! The daemon's TOML config: every key has a default, and a bad file is
//! refused with the file, the line, the key and what is allowed.
//!
//! Parsing is strict on purpose: a typo in a key of a sidecar that may kill
//! processes must stop the daemon at start (or keep the old config on
//! SIGHUP), never be silently ignored. serde's `deny_unknown_fields` names
//! the key; the toml span gives the line.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use serde::{Deserialize, Deserializer};
use toml::Spanned;

use crate::policy::Policy;
use crate::util::parse_duration;
use crate::vocab::Action;

/// Which hooks the daemon attaches. `none` is degraded mode on purpose.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum HooksChoice {
    Auto,
    Cgroup,
    Syscalls,
    Fexit,
    None,
}

impl HooksChoice {
    /// The tier to ask `hooks::attach` for; None for no BPF at all.
    pub fn tier(self) -> Option<crate::hooks::TierChoice> {
        use crate::hooks::TierChoice;
        match self {
            HooksChoice::Auto => Some(TierChoice::Auto),
            HooksChoice::Cgroup => Some(TierChoice::Cgroup),
            HooksChoice::Syscalls => Some(TierChoice::Syscalls),
            HooksChoice::Fexit => Some(TierChoice::Fexit),
            HooksChoice::None => None,
        }
    }
}

/// What to do when a journal write fails.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum OnJournalError {
    /// Log, count in `reaper_journal_errors_total`, go on (the ledger, the
    /// metrics and the control socket still work).
    KeepRunning,
    /// Stop the daemon (exit 5): for sites where an unrecorded reaping is
    /// worse than no daemon.
    Exit,
}

/// What the daemon needs to know about a `[[rule]]` beyond what the policy
/// parser reads: whether `action` was written (the daemon's default is
/// "report", the policy file's is "reap").
#[derive(Debug, Deserialize)]
struct RuleView {
    #[serde(default)]
    action: Option<toml::Value>,
}

/// The whole config. Field docs are the reference; docs/daemon.md explains.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    /// The journal (JSON lines).
    pub journal: PathBuf,
    /// Rotate when the journal would grow past this many bytes (0: never).
    pub journal_max_bytes: u64,
    /// Rotated files kept (journal.jsonl.1 .. .N).
    pub journal_keep: u32,
    /// fdatasync after each record: survives power loss, costs a disk flush.
    pub fsync: bool,
    pub on_journal_error: OnJournalError,
    /// A claim released within this long of its bind, never listened on and
    /// met by no failed bind, is churn: counted in a `churn` record per
    /// process and port instead of a `claim` and a `release` line each.
    /// Every record waits this long before it is written. "0s": off.
    #[serde(deserialize_with = "duration_or_zero")]
    pub journal_churn_window: Duration,
    /// Prometheus /metrics listen address; "" turns the endpoint off.
    #[serde(deserialize_with = "opt_addr")]
    pub metrics_listen: Option<SocketAddr>,
    /// The metrics carry process names and ports: loopback only unless set.
    pub metrics_allow_non_loopback: bool,
    /// The control socket (root only); "" turns it off.
    #[serde(deserialize_with = "opt_path")]
    pub control_socket: Option<PathBuf>,
    pub hooks: HooksChoice,
    #[serde(deserialize_with = "ringbuf")]
    pub ringbuf_size: u32,
    /// Entries of the kernel-side claims map (every claim alive on the host
    /// that a BPF tier saw). When it is full, further claims are known from
    /// their events only, and the daemon says so (metric, journal).
    #[serde(deserialize_with = "claims_max")]
    pub claims_max: u32,
    /// Degraded mode: rescan the sockets this often.
    #[serde(deserialize_with = "duration")]
    pub poll_interval: Duration,
    /// Failed binds of one (netns, proto, port) within this window of the
    /// first are one conflict with a count.
    #[serde(deserialize_with = "duration")]
    pub conflict_window: Duration,
    /// Reaping: SIGTERM, then SIGKILL after this long.
    #[serde(deserialize_with = "duration")]
    pub reap_grace: Duration,
    /// Reaping: give up waiting for the port to bind again after this long.
    #[serde(deserialize_with = "duration")]
    pub reap_deadline: Duration,
    /// Ports added to the host's `net.ipv4.ip_local_reserved_ports` at
    /// start ("8080", "9000-9100"), merged with what is there: connect()
    /// never lends them to a client, so a server can always bind them.
    #[serde(deserialize_with = "port_ranges")]
    pub reserve_ports: Vec<(u16, u16)>,
    /// `[job]`: what `reaper job start` reads from this config.
    pub job: JobConfig,
    /// Only `version = 1` exists (as in a policy file).
    version: Option<Spanned<u32>>,
    /// `[[rule]]` and `[[protect]]` in the policy file format (see
    /// deploy/policy.toml); read by `policy::Policy`, kept here only so the
    /// top-level keys can be checked strictly.
    rule: Vec<Spanned<RuleView>>,
    protect: Vec<Spanned<toml::Value>>,
    /// The rules and protections, parsed by the policy module.
    #[serde(skip)]
    pub policy: Policy,
}

/// `[job]`: the `reaper job` hooks' settings.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct JobConfig {
    /// The ports every job needs free at its start (`job start` without
    /// `--port`): numbers or strings like "7000-7010".
    #[serde(deserialize_with = "job_ports")]
    pub ports: Vec<u16>,
}

/// Where `reaper job start` looks for the config when no `--config` is
/// given (it is read only when it exists).
pub const DEFAULT_CONFIG: &str = "/etc/reaper/reaper.toml";

fn job_ports<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<u16>, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(i64),
        S(String),
    }
    let words: Vec<String> = Vec::<Raw>::deserialize(d)?
        .into_iter()
        .map(|r| match r {
            Raw::N(n) => n.to_string(),
            Raw::S(s) => s,
        })
        .collect();
    if words.is_empty() {
        return Ok(Vec::new());
    }
    crate::job::ports::parse_list(&words.join(",")).map_err(|e| {
        serde::de::Error::custom(format!(
            "{} (write e.g. ports = [8080, \"7000-7010\"])",
            e.replacen("--port", "ports", 1)
        ))
    })
}

pub const DEFAULT_JOURNAL: &str = "/var/lib/reaper/journal.jsonl";
pub use crate::control::DEFAULT_CONTROL_SOCKET;
pub const DEFAULT_METRICS: &str = "127.0.0.1:9464";

impl Default for Config {
    fn default() -> Self {
        Config {
            journal: PathBuf::from(DEFAULT_JOURNAL),
            journal_max_bytes: 64 * 1024 * 1024,
            journal_keep: 5,
            fsync: false,
            on_journal_error: OnJournalError::KeepRunning,
            journal_churn_window: Duration::from_secs(1),
            metrics_listen: Some(DEFAULT_METRICS.parse().unwrap()),
            metrics_allow_non_loopback: false,
            control_socket: Some(PathBuf::from(DEFAULT_CONTROL_SOCKET)),
            hooks: HooksChoice::Auto,
            ringbuf_size: 1024 * 1024,
            claims_max: reaper_common::CLAIMS_MAX_DEFAULT,
            poll_interval: Duration::from_secs(1),
            conflict_window: Duration::from_secs(5),
            reap_grace: Duration::from_secs(3),
            reap_deadline: Duration::from_secs(10),
            reserve_ports: Vec::new(),
            job: JobConfig::default(),
            version: None,
            rule: Vec::new(),
            protect: Vec::new(),
            policy: Policy::default(),
        }
    }
}

fn duration<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        N(f64),
        S(String),
    }
    let s = match Raw::deserialize(d)? {
        Raw::N(n) => n.to_string(),
        Raw::S(s) => s,
    };
    let d = parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d.is_zero() {
        return Err(serde::de::Error::custom(format!(
            "'{s}' is zero: give a positive duration like 500ms or 5s"
        )));
    }
    Ok(d)
}

/// A duration where zero means off (at most a minute).
fn duration_or_zero<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
    let s = String::deserialize(d)?;
    let d = parse_duration(&s).map_err(serde::de::Error::custom)?;
    if d > Duration::from_secs(60) {
        return Err(serde::de::Error::custom(format!(
            "'{s}' is too long: give at most 60s (every record waits this long), or \"0s\" to turn it off"
        )));
    }
    Ok(d)
}

fn port_ranges<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<(u16, u16)>, D::Error> {
    let words = Vec::<String>::deserialize(d)?;
    let mut out = Vec::new();
    for w in &words {
        match crate::bindmodel::setting::parse_port_list(w) {
            Some(r) if r.len() == 1 => out.extend(r),
            _ => {
                return Err(serde::de::Error::custom(format!(
                    "'{w}' is not a port or a range: write e.g. \"8080\" or \"9000-9100\" (1-65535, low-high)"
                )))
            }
        }
    }
    Ok(out)
}

fn opt_addr<'de, D: Deserializer<'de>>(d: D) -> Result<Option<SocketAddr>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    s.parse().map(Some).map_err(|_| {
        serde::de::Error::custom(format!("'{s}' is not an address:port: write e.g. \"127.0.0.1:9464\" or \"[::1]:9464\", or \"\" to turn it off"))
    })
}

fn opt_path<'de, D: Deserializer<'de>>(d: D) -> Result<Option<PathBuf>, D::Error> {
    let s = String::deserialize(d)?;
    if s.is_empty() {
        return Ok(None);
    }
    if !s.starts_with('/') {
        return Err(serde::de::Error::custom(format!("'{s}' is not an absolute path: write e.g. \"/run/reaper/reaper.sock\", or \"\" to turn it off")));
    }
    Ok(Some(PathBuf::from(s)))
}

fn ringbuf<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    let ok = (4096..=(1i64 << 30)).contains(&n) && (n as u64).is_power_of_two();
    if !ok {
        return Err(serde::de::Error::custom(format!(
            "{n} is not allowed: give a power of two from 4096 to 1073741824 bytes (e.g. 262144)"
        )));
    }
    Ok(n as u32)
}

fn claims_max<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = i64::deserialize(d)?;
    if !(16..=(1i64 << 22)).contains(&n) {
        return Err(serde::de::Error::custom(format!(
            "{n} is not allowed: give 16 to 4194304 entries (default {})",
            reaper_common::CLAIMS_MAX_DEFAULT
        )));
    }
    Ok(n as u32)
}

/// A config that failed to load: where and why.
#[derive(Debug)]
pub struct ConfigError {
    pub path: PathBuf,
    pub line: Option<usize>,
    pub message: String,
}

impl std::fmt::Display for ConfigError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self.line {
            Some(l) => write!(
                f,
                "config {} line {l}: {}",
                self.path.display(),
                self.message
            ),
            None => write!(f, "config {}: {}", self.path.display(), self.message),
        }
    }
}

impl std::error::Error for ConfigError {}

fn line_of(text: &str, offset: usize) -> usize {
    text[..offset.min(text.len())]
        .bytes()
        .filter(|&b| b == b'\n')
        .count()
        + 1
}

/// The line where a top-level `key = ...` is written, for errors found after
/// parsing.
fn key_line(text: &str, key: &str) -> Option<usize> {
    text.lines()
        .position(|l| {
            let l = l.trim_start();
            l.strip_prefix(key)
                .is_some_and(|rest| rest.trim_start().starts_with('='))
        })
        .map(|i| i + 1)
}

impl Config {
    /// Reads and checks a config file.
    pub fn load(path: &Path) -> Result<Config, ConfigError> {
        let text = std::fs::read_to_string(path).map_err(|e| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message: format!("cannot read it: {e} (give an existing TOML file; deploy/reaper.toml is an annotated example)"),
        })?;
        let config = Config::parse(&text, path)?;
        // Here, not in parse: which users exist is the host's, not the text's.
        config.policy.check_users().map_err(|message| ConfigError {
            path: path.to_path_buf(),
            line: None,
            message,
        })?;
        Ok(config)
    }

    /// Parses and checks config text; `path` only names it in errors.
    pub fn parse(text: &str, path: &Path) -> Result<Config, ConfigError> {
        let err = |line: Option<usize>, message: String| ConfigError {
            path: path.to_path_buf(),
            line,
            message,
        };
        let mut config: Config = toml::from_str(text).map_err(|e| {
            let line = e.span().map(|s| line_of(text, s.start));
            err(line, crate::policy::file::toml_message(text, &e))
        })?;
        if let Some(addr) = config.metrics_listen {
            if !addr.ip().is_loopback() && !config.metrics_allow_non_loopback {
                return Err(err(
                    key_line(text, "metrics_listen"),
                    format!("metrics_listen = \"{addr}\" is not a loopback address: the metrics name processes and ports, so they stay on 127.0.0.1 or [::1] unless `metrics_allow_non_loopback = true` is set"),
                ));
            }
        }
        if let Some(v) = &config.version {
            if *v.get_ref() != 1 {
                return Err(err(
                    Some(line_of(text, v.span().start)),
                    format!(
                        "version {} is not known: this reaper reads version = 1",
                        v.get_ref()
                    ),
                ));
            }
        }
        config.policy = policy_of(text, &config).map_err(|e| err(e.line, e.message))?;
        if config.journal.as_os_str().is_empty() || !config.journal.is_absolute() {
            return Err(err(
                key_line(text, "journal"),
                format!(
                    "journal = \"{}\" is not an absolute path: write e.g. \"{DEFAULT_JOURNAL}\"",
                    config.journal.display()
                ),
            ));
        }
        Ok(config)
    }

    /// A short line for the log: how many rules reap, report, protect.
    pub fn summary(&self) -> String {
        let reap = self
            .policy
            .rules
            .iter()
            .filter(|r| r.action == Action::Reap)
            .count();
        format!(
            "{} rules ({reap} reap, {} report), {} protections",
            self.policy.rules.len(),
            self.policy.rules.len() - reap,
            self.policy.protects.len()
        )
    }
}

/// Parses `[[rule]]`/`[[protect]]` with the policy module's parser, so the
/// daemon and `reaper free --policy` read one format. The daemon's own keys
/// come before the first table (TOML puts top-level keys first), so they are
/// blanked out, keeping every newline so the policy's line numbers stay the
/// config's. A rule without `action` reports here (the policy file's default
/// is to reap; a sidecar that runs all day starts by only telling).
fn policy_of(text: &str, config: &Config) -> Result<Policy, crate::policy::PolicyError> {
    let first_table = config
        .rule
        .iter()
        .map(|r| r.span().start)
        .chain(config.protect.iter().map(|p| p.span().start))
        .min();
    let Some(first) = first_table else {
        return Ok(Policy::default());
    };
    // The header line of the first table: back up to its line start.
    let cut = text[..first.min(text.len())]
        .rfind('\n')
        .map(|i| i + 1)
        .unwrap_or(0);
    let mut policy_text: String = text[..cut]
        .chars()
        .map(|c| if c == '\n' { '\n' } else { ' ' })
        .collect();
    policy_text.push_str(&text[cut..]);
    let mut policy = Policy::from_toml_str(&policy_text)?;
    for (rule, view) in policy.rules.iter_mut().zip(&config.rule) {
        if view.get_ref().action.is_none() {
            rule.action = Action::Report;
        }
    }
    Ok(policy)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(s: &str) -> Result<Config, ConfigError> {
        Config::parse(s, Path::new("t.toml"))
    }

    /// As in the policy: toml words a lone carriage return as nothing; the
    /// daemon must still say what is wrong and where.
    #[test]
    fn a_lone_carriage_return_is_an_error_with_words() {
        let e = parse("\r").unwrap_err();
        assert!(!e.message.trim().is_empty(), "{e:?}");
        assert_eq!(e.line, Some(1));
    }

    #[test]
    fn empty_is_all_defaults() {
        let c = parse("").unwrap();
        assert_eq!(c.journal, Config::default().journal);
        assert_eq!(c.conflict_window, Duration::from_secs(5));
        assert!(c.policy.rules.is_empty());
        assert_eq!(c.metrics_listen.unwrap().to_string(), "127.0.0.1:9464");
    }

    #[test]
    fn unknown_key_names_key_line_and_allowed() {
        let e = parse("journal = \"/tmp/j\"\n\nmetrics_lisen = \"127.0.0.1:1\"\n").unwrap_err();
        assert_eq!(e.line, Some(3));
        assert!(e.message.contains("metrics_lisen"), "{e}");
        assert!(
            e.message.contains("metrics_listen"),
            "lists what is allowed: {e}"
        );
    }

    #[test]
    fn unknown_key_in_a_rule_is_found_by_the_policy_parser_on_the_config_line() {
        let e = parse("journal = \"/tmp/j\"\n\n[[rule]]\nname = \"a\"\nmatch = { name = \"x\" }\naction = \"reap\"\nsignl = \"INT\"\n").unwrap_err();
        assert_eq!(e.line, Some(7), "{e}");
        assert!(e.message.contains("signl"), "{e}");
        assert!(e.message.contains("`signal`"), "lists what is allowed: {e}");
        // A rule's stop signal is the policy's `signal`, checked at load.
        let c = parse("[[rule]]\nname = \"pg\"\nmatch = { exe = \"postgres\" }\naction = \"reap\"\nsignal = \"INT\"\n").unwrap();
        assert_eq!(c.policy.rules[0].signal, Some(crate::vocab::Signal::Int));
        let e = parse(
            "[[rule]]\nname = \"pg\"\nmatch = { exe = \"postgres\" }\nsignal = \"SIGSTOP\"\n",
        )
        .unwrap_err();
        assert_eq!(e.line, Some(4), "{e}");
        assert!(e.message.starts_with("rule 'pg': signal 'SIGSTOP'"), "{e}");
    }

    #[test]
    fn rules_default_to_report_in_the_daemon() {
        let c = parse("poll_interval = \"2s\"\n[[rule]]\nname = \"a\"\nmatch = { name = \"x\" }\n[[rule]]\nname = \"b\"\naction = \"reap\"\nmatch = { exe = \"/usr/bin/y\" }\n[[protect]]\nname = \"p\"\nmatch = { user = 0 }\n").unwrap();
        assert_eq!(c.policy.rules[0].action, Action::Report);
        assert_eq!(c.policy.rules[1].action, Action::Reap);
        assert_eq!(c.policy.protects.len(), 1);
        assert_eq!(c.poll_interval, Duration::from_secs(2));
        let e = parse("[[rule]]\nname = \"a\"\naction = \"reap\"\nmatch = { orphaned = true }\n")
            .unwrap_err();
        assert_eq!(e.line, Some(1), "{e}");
    }

    #[test]
    fn job_ports_are_numbers_and_ranges_checked_at_load() {
        let c = parse("journal = \"/tmp/j\"\n[job]\nports = [8080, \"7000-7002\"]\n").unwrap();
        assert_eq!(c.job.ports, [7000, 7001, 7002, 8080]);
        assert!(parse("").unwrap().job.ports.is_empty());
        let e = parse("[job]\nports = [\"80-\"]\n").unwrap_err();
        assert_eq!(e.line, Some(2), "{e}");
        assert!(e.message.contains("needs both ends"), "{e}");
        assert!(e.message.contains("ports = [8080"), "{e}");
        let e = parse("[job]\nports = [0]\n").unwrap_err();
        assert!(e.message.contains("port 0"), "{e}");
        let e = parse("[job]\nport = [80]\n").unwrap_err();
        assert!(e.message.contains("ports"), "{e}");
    }

    #[test]
    fn bad_values_say_what_is_allowed() {
        let e = parse("ringbuf_size = 5000\n").unwrap_err();
        assert_eq!(e.line, Some(1));
        assert!(e.message.contains("power of two"), "{e}");
        let e = parse("claims_max = 3\n").unwrap_err();
        assert!(e.message.contains("16 to 4194304"), "{e}");
        let e = parse("x = 1\nhooks = \"kprobe\"\n").unwrap_err();
        assert!(e.message.contains('x'), "{e}");
        let e = parse("hooks = \"kprobe\"\n").unwrap_err();
        assert!(e.message.contains("cgroup"), "{e}");
        let e = parse("poll_interval = \"soon\"\n").unwrap_err();
        assert!(e.message.contains("500ms"), "{e}");
        let e = parse("on_journal_error = \"ignore\"\n").unwrap_err();
        assert!(e.message.contains("keep-running"), "{e}");
    }

    #[test]
    fn metrics_must_stay_on_loopback_unless_allowed() {
        let e = parse("\nmetrics_listen = \"0.0.0.0:9464\"\n").unwrap_err();
        assert_eq!(e.line, Some(2));
        assert!(e.message.contains("metrics_allow_non_loopback"));
        assert!(
            parse("metrics_listen = \"0.0.0.0:9464\"\nmetrics_allow_non_loopback = true\n").is_ok()
        );
        assert_eq!(
            parse("metrics_listen = \"\"\n").unwrap().metrics_listen,
            None
        );
    }
}

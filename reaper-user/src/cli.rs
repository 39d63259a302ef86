//! The command line: clap definitions only. Each subcommand maps to one
//! function in `commands`.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};

use reaper::hooks::TierChoice;
use reaper::output::ColorChoice;
use reaper::report::Format as ReportFormat;
use reaper::util::{parse_duration, parse_port};
use reaper::vocab::{Proto, Signal};

#[derive(Parser, Debug)]
#[command(
    name = "reaper",
    version,
    about = "Who holds this port, since when, and is it stale? Frees it safely and keeps the record.",
    long_about = None,
    // A fixed width keeps help the same everywhere (and its golden tests stable).
    term_width = 100,
    after_help = concat!("Examples:\n",
        "  reaper who 8080                  who holds :8080, in every network namespace\n",
        "  reaper free 8080 --match platform-server --exe /usr/local/bin/platform-server\n",
        "  reaper watch --json              stream every bind, listen, release and failure\n",
        "  reaper doctor                    which kernel hooks load here\n",
        "  reaper why 8080 --reuseaddr      would this bind succeed, and if not, why\n",
        "\n",
        "Exit status:\n",
        "  0  success (who: the port is held; free: the port is free)\n",
        "  1  who: the port is not held; why: the bind would fail\n",
        "  2  bad input (usage, port, config or policy file)\n",
        "  3  free, job: still held after the deadline; why: cannot tell\n",
        "  4  free, job: held by something the policy refuses to kill (job: or by a running job)\n",
        "  5  could not do the job (needs root, BPF refused, I/O error)\n",
        "  6  free: the port is free, but its journal record could not be written"),
)]
pub struct Cli {
    #[command(flatten)]
    pub global: Global,
    #[command(subcommand)]
    pub command: Command,
}

/// Flags every command takes. Shown under their own heading, after the
/// command's own options, so the options a user came for come first.
#[derive(Args, Debug, Clone)]
#[command(next_help_heading = "Global options")]
pub struct Global {
    /// Never use BPF: answer from a sock_diag + /proc scan.
    #[arg(long, global = true)]
    pub no_bpf: bool,
    /// Which kernel hooks to attach (default: auto, the cheapest complete tier).
    #[arg(long, global = true, value_enum, default_value_t = TierChoice::Auto)]
    pub hooks: TierChoice,
    /// More detail on stderr (-v, -vv).
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    /// Colour: auto (only on a terminal, not with NO_COLOR), always, never.
    #[arg(long, global = true, value_enum, default_value_t = ColorChoice::Auto)]
    pub color: ColorChoice,
}

#[derive(Subcommand, Debug)]
pub enum Command {
    /// Stream bind attempts, listens, releases and failures as they happen.
    #[command(
        after_help = "Examples:\n  reaper watch\n  reaper watch --json --duration 30 | jq 'select(.ok == false)'"
    )]
    Watch(WatchArgs),
    /// What this kernel allows: hooks, program types, privileges, the tier reaper would use.
    #[command(after_help = "Examples:\n  reaper doctor\n  reaper doctor --json")]
    Doctor(DoctorArgs),
    /// Who holds PORT: every process, in every network namespace.
    #[command(after_help = concat!("Examples:\n  reaper who 8080\n  reaper who 53 --proto udp --json\n  reaper who 8080 --netns all\n\n",
        "Exit status: 0 held, 1 not held, 2 bad input, 5 could not scan"))]
    Who(WhoArgs),
    /// Would this bind succeed? Which sockets block it, by which kernel rule, and what would fix it.
    #[command(after_help = concat!("Examples:\n",
        "  reaper why 8080\n",
        "  reaper why 8080 --addr :: --reuseaddr\n",
        "  reaper why 5353 --udp --reuseport --uid 1000 --json\n\n",
        "Exit status: 0 the bind would succeed, 1 it would fail (EADDRINUSE or EACCES), 2 bad input,\n",
        "3 cannot tell (a fact the kernel does not show decides), 5 could not scan"))]
    Why(WhyArgs),
    /// Every bound port with its holders.
    #[command(
        after_help = "Examples:\n  reaper ports --listening\n  reaper ports --proto udp --json"
    )]
    Ports(PortsArgs),
    /// Free PORT: judge its holders against a policy, stop the stale ones safely, wait until it binds again.
    #[command(after_help = concat!("Examples:\n",
        "  reaper free 8080 --match platform-server --dry-run\n",
        "  reaper free 8080 --exe /usr/local/bin/platform-server --grace 2s --deadline 10s\n",
        "  reaper free 8080 --policy /etc/reaper/policy.toml --json\n",
        "  reaper free 5432 --exe postgres --signal SIGINT      postgres's fast shutdown\n\n",
        "Exit status: 0 free, 2 bad input, 3 still held after the deadline, 4 refused by the policy,\n",
        "5 could not do the job (nothing signalled), 6 free but the journal record was not written"))]
    Free(FreeArgs),
    /// For runner hooks: before a CI job, its ports must bind; after it, what it left holding a port is stopped.
    #[command(subcommand, after_help = concat!("Examples:\n",
        "  reaper job start --port 8080,5432     in the runner's job-started hook\n",
        "  reaper job end                        in the runner's job-completed hook\n",
        "  reaper job end --dry-run --json --job 4242 --provider gitlab\n\n",
        "Exit status: 0 every port binds, 2 bad input (no job found, a bad port list),\n",
        "3 still held after the deadline, 4 refused (a running job holds it, or the policy keeps it),\n",
        "5 could not do the job"))]
    Job(JobCommand),
    /// Run beside CI jobs: keep the ledger, record conflicts, free ports by policy.
    #[command(
        after_help = "Examples:\n  reaper daemon --config /etc/reaper/reaper.toml\n  reaper daemon --check-config deploy/reaper.toml"
    )]
    Daemon(DaemonArgs),
    /// Forensics: what held a port, since when, who failed to bind, what was done.
    #[command(after_help = concat!("Examples:\n",
        "  reaper report --since 2h --port 8080\n",
        "  reaper report --journal a.jsonl --journal b.jsonl --format html --output report.html\n",
        "  reaper report --demo --format md"))]
    Report(ReportArgs),
    /// The man page (roff) on stdout; `cargo xtask man` writes target/man/reaper.1.
    #[command(hide = true)]
    Man,
    /// Shell completions on stdout.
    #[command(after_help = "Examples:\n  reaper completions bash > /etc/bash_completion.d/reaper")]
    Completions(CompletionsArgs),
}

#[derive(Args, Debug)]
pub struct WatchArgs {
    /// One JSON object a line.
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Stop after this many seconds (or a duration like 500ms).
    #[arg(long, value_parser = parse_duration)]
    pub duration: Option<Duration>,
    /// Size of the BPF ring buffer in bytes (a power of two, at least 4096).
    #[arg(long, default_value_t = 256 * 1024)]
    pub ringbuf_size: u32,
    /// Show every bind, ephemeral ones (port 0) too. By default the kernel
    /// side counts those per process instead of sending each: no one fights
    /// over a port the kernel picked. Their listens and failures are shown
    /// either way.
    #[arg(long)]
    pub all: bool,
    /// Without BPF: poll the sockets at this interval and show changes.
    #[arg(long, value_parser = parse_duration, default_value = "1s")]
    pub poll_interval: Duration,
}

#[derive(Args, Debug)]
pub struct DoctorArgs {
    /// Also check the daemon config's ports: each `reserve_ports` entry is
    /// reserved, and no port it names is left in the ephemeral range.
    #[arg(long, value_name = "FILE")]
    pub config: Option<std::path::PathBuf>,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WhoArgs {
    /// The port (1-65535).
    #[arg(value_parser = parse_port)]
    pub port: u16,
    /// Only this protocol (default: both).
    #[arg(long)]
    pub proto: Option<Proto>,
    /// UDP only (the same as --proto udp).
    #[arg(long, conflicts_with = "proto")]
    pub udp: bool,
    /// A network namespace inode (as in `ls -l /proc/PID/ns/net`), or `all` (default).
    #[arg(long, default_value = "all")]
    pub netns: String,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct WhyArgs {
    /// The port (1-65535).
    #[arg(value_parser = parse_port)]
    pub port: u16,
    /// The local address to bind: 0.0.0.0, ::, 127.0.0.1, ::ffff:127.0.0.1, ...
    #[arg(long, default_value = "0.0.0.0", value_name = "A")]
    pub addr: String,
    /// A UDP socket (default: TCP).
    #[arg(long)]
    pub udp: bool,
    /// The new socket sets SO_REUSEADDR.
    #[arg(long)]
    pub reuseaddr: bool,
    /// The new socket sets SO_REUSEPORT.
    #[arg(long)]
    pub reuseport: bool,
    /// The new socket sets IPV6_V6ONLY (IPv6 addresses only).
    #[arg(long)]
    pub v6only: bool,
    /// The effective uid that binds (default: yours).
    #[arg(long, value_name = "U")]
    pub uid: Option<u32>,
    /// The network namespace to bind in: an inode as in `readlink /proc/PID/ns/net` (default: this one).
    #[arg(long, value_name = "ID")]
    pub netns: Option<String>,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug)]
pub struct PortsArgs {
    /// Only listening TCP sockets and bound UDP sockets.
    #[arg(long)]
    pub listening: bool,
    #[arg(long)]
    pub proto: Option<Proto>,
    /// A network namespace inode, or `all` (default).
    #[arg(long, default_value = "all")]
    pub netns: String,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
}

#[derive(Args, Debug, Clone)]
pub struct FreeArgs {
    /// The port (1-65535).
    #[arg(value_parser = parse_port)]
    pub port: u16,
    #[arg(long, default_value = "tcp")]
    pub proto: Proto,
    /// A UDP port (the same as --proto udp).
    #[arg(long)]
    pub udp: bool,
    /// Holder's process name (matched against comm, exe basename and argv[0]).
    #[arg(long = "match", value_name = "NAME")]
    pub match_name: Option<String>,
    /// Holder's executable: a full path or a basename.
    #[arg(long, value_name = "PATH")]
    pub exe: Option<String>,
    /// Holder's command line: a substring, or /a regex/.
    #[arg(long, value_name = "PATTERN")]
    pub cmdline: Option<String>,
    /// Rules from a TOML file (see deploy/policy.toml).
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// How long to wait after the stop signal before SIGKILL.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub grace: Duration,
    /// The stop signal for this run, whatever the rules say (SIGINT, INT or
    /// 2; default: each rule's `signal`, else SIGTERM, and a container's own
    /// STOPSIGNAL).
    #[arg(long, value_name = "SIG", value_parser = parse_stop_signal)]
    pub signal: Option<Signal>,
    /// How long to wait in all for the port to bind again.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub deadline: Duration,
    /// Also stop the holder's descendants that share the socket and do not
    /// match the rule on their own (those that match, like nginx workers,
    /// are judged on their own without it).
    #[arg(long)]
    pub tree: bool,
    #[command(flatten)]
    pub run: RunFlags,
}

/// The flags `free` and the job hooks share: a dry run, JSON, a journal.
#[derive(Args, Debug, Clone)]
pub struct RunFlags {
    /// Print verdicts and what would be signalled; signal nothing.
    #[arg(long)]
    pub dry_run: bool,
    /// Machine-readable JSON on stdout.
    #[arg(long)]
    pub json: bool,
    /// Append the record of this run to this journal (JSON lines).
    #[arg(long, value_name = "PATH", env = "REAPER_JOURNAL")]
    pub journal: Option<PathBuf>,
}

/// `--signal`: a stop signal by name or number (never SIGCONT).
fn parse_stop_signal(s: &str) -> Result<Signal, String> {
    Signal::parse_stop(s)
}

#[derive(Args, Debug)]
pub struct DaemonArgs {
    /// The daemon's TOML config (see deploy/reaper.toml).
    #[arg(long, value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Validate a config file and exit (0 valid, 2 invalid).
    #[arg(long, value_name = "FILE")]
    pub check_config: Option<PathBuf>,
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Human)]
    pub log_format: LogFormat,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum LogFormat {
    Human,
    Json,
}

#[derive(Args, Debug)]
pub struct ReportArgs {
    /// Journal files (repeatable; rotated files and several hosts' journals merge).
    #[arg(long, value_name = "PATH")]
    pub journal: Vec<PathBuf>,
    /// Only records at or after T (RFC 3339, or relative like 2h, 30m).
    #[arg(long, value_name = "T")]
    pub since: Option<String>,
    /// Only records before T (RFC 3339, or relative like 2h).
    #[arg(long, value_name = "T")]
    pub until: Option<String>,
    /// Only this port.
    #[arg(long, value_parser = parse_port)]
    pub port: Option<u16>,
    /// Only this host.
    #[arg(long, value_name = "NAME")]
    pub host: Option<String>,
    #[arg(long, value_enum, default_value_t = ReportFormat::Md)]
    pub format: ReportFormat,
    /// Write here instead of stdout.
    #[arg(long, short, value_name = "FILE")]
    pub output: Option<PathBuf>,
    /// Render a report from a built-in example journal.
    #[arg(long)]
    pub demo: bool,
}

#[derive(Args, Debug)]
pub struct CompletionsArgs {
    #[arg(value_enum)]
    pub shell: Shell,
}

#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Shell {
    Bash,
    Zsh,
    Fish,
}

#[derive(Subcommand, Debug)]
pub enum JobCommand {
    /// Before the job's first step: each port it needs must bind. A holder
    /// whose job has ended is stopped; one of a running job is refused.
    #[command(
        after_help = "Examples:\n  reaper job start --port 8080,9090,7000-7010\n  reaper job start --port 5432 --policy /etc/reaper/policy.toml --json"
    )]
    Start(JobStartArgs),
    /// After the job's last step: every process and container of the job
    /// that holds a port is stopped, and the ports bind again.
    #[command(
        after_help = "Examples:\n  reaper job end\n  reaper job end --dry-run\n  reaper job end --all --json"
    )]
    End(JobEndArgs),
}

/// Which job, and how to act: the flags `job start` and `job end` share.
#[derive(Args, Debug, Clone)]
pub struct JobCommon {
    /// The job's id (default: from the environment: RUNNER_TRACKING_ID,
    /// CI_JOB_ID, BUILD_TAG, BUILDKITE_JOB_ID, ...). Needs --provider.
    #[arg(long, value_name = "ID")]
    pub job: Option<String>,
    /// The job's CI: github, gitlab, jenkins, buildkite. Needs --job.
    #[arg(long, value_name = "P")]
    pub provider: Option<String>,
    /// Rules from a TOML file: protect more, keep a job's deliberate
    /// daemon (action = "report"), or reap more.
    #[arg(long, value_name = "FILE")]
    pub policy: Option<PathBuf>,
    /// How long to wait after SIGTERM before SIGKILL.
    #[arg(long, value_parser = parse_duration, default_value = "3s")]
    pub grace: Duration,
    /// How long to wait, per port, for it to bind again.
    #[arg(long, value_parser = parse_duration, default_value = "10s")]
    pub deadline: Duration,
    #[command(flatten)]
    pub run: RunFlags,
}

#[derive(Args, Debug, Clone)]
pub struct JobStartArgs {
    /// The ports the job needs: a list and ranges, like 8080,9090,7000-7010 (repeatable).
    /// Default: the config's `[job] ports`.
    #[arg(long, value_name = "P,Q,R-S")]
    pub port: Vec<String>,
    /// The daemon's config, for its `[job] ports` when no --port is given
    /// (default: /etc/reaper/reaper.toml when it exists, else the running
    /// daemon's).
    #[arg(long, value_name = "FILE", env = "REAPER_CONFIG")]
    pub config: Option<PathBuf>,
    #[command(flatten)]
    pub common: JobCommon,
}

#[derive(Args, Debug, Clone)]
pub struct JobEndArgs {
    /// Also stop the job's processes that hold no port.
    #[arg(long)]
    pub all: bool,
    #[command(flatten)]
    pub common: JobCommon,
}

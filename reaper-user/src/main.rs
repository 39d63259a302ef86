//! `reaper`: parse, dispatch, and turn errors into one line and an exit status.

use std::ffi::OsString;

use clap::Parser;
use reaper::error::{Error, Exit};

use cli::Cli;

mod cli;
mod commands;

/// The shipped static binary allocates with mimalloc rather than musl's
/// allocator (see reaper-user/Cargo.toml).
#[cfg(target_env = "musl")]
#[global_allocator]
static ALLOC: mimalloc::MiMalloc = mimalloc::MiMalloc;

fn main() {
    let cli = match parse(std::env::args_os().collect()) {
        Ok(cli) => cli,
        Err(e) => {
            // Help and version are not errors; usage errors are bad input.
            let code = if e.use_stderr() {
                Exit::BadInput.code()
            } else {
                0
            };
            let _ = e.print();
            std::process::exit(code);
        }
    };
    // The daemon sets up its own logging (info by default, --log-format).
    if !matches!(cli.command, cli::Command::Daemon(_)) {
        reaper::output::init_logging_with(cli.global.verbose, false);
    }
    if cli.global.no_bpf {
        reaper::holders::fditer::disable();
    }
    let code = match commands::dispatch(cli) {
        Ok(exit) => exit.code(),
        Err(err) if broken_pipe(&err) => 0,
        Err(err) => {
            // One line: the outermost context first, then the cause chain.
            let causes = err.causes();
            let mut line = String::from("reaper");
            for cause in causes {
                let c = cause.to_string();
                if !line.contains(&c) {
                    line.push_str(": ");
                    line.push_str(&c);
                }
            }
            // Errors quote what processes chose (comm, cmdline, exe): never
            // raw on a terminal.
            eprintln!("{}", reaper::text::term(&line));
            err.exit().code()
        }
    };
    std::process::exit(code);
}

/// The command line. `reaper who ...` (what scripts and hooks run most,
/// and often, against the daemon) is parsed by a command line that knows
/// `who` and the global options only: building every command's arguments
/// was a fifth of the time of a `who` the daemon answers. Whatever that
/// parser does not accept (help, a typo, a flag before `who`) goes to the
/// full one, so every error and every help text is the full parser's.
fn parse(args: Vec<OsString>) -> Result<Cli, clap::Error> {
    if let Some(cli) = plain_who(&args) {
        return Ok(cli);
    }
    if args.get(1).is_some_and(|a| a == "who") {
        // clap's Command is a command line, not a process (least_privilege's
        // source check looks for process spawning by that name).
        use clap::{Args, Command as Line, FromArgMatches};
        let who = cli::WhoArgs::augment_args(Line::default().name("who"));
        let cmd = cli::Global::augment_args(Line::default().name("reaper"))
            .subcommand(who)
            .subcommand_required(true);
        if let Ok(cli) = cmd
            .try_get_matches_from(&args)
            .and_then(|m| Cli::from_arg_matches(&m))
        {
            return Ok(cli);
        }
    }
    Cli::try_parse_from(args)
}

/// `reaper who PORT` and `reaper who PORT --json`, the forms scripts use,
/// without clap at all (its smallest command line still cost 0.1 ms). The
/// test below holds them to what the full parser makes of the same words.
fn plain_who(args: &[OsString]) -> Option<Cli> {
    let mut rest: Vec<&str> = args
        .get(2..)?
        .iter()
        .map(|a| a.to_str())
        .collect::<Option<_>>()?;
    if args.get(1)? != "who" {
        return None;
    }
    let json = match rest.iter().position(|a| *a == "--json") {
        Some(i) => {
            rest.remove(i);
            true
        }
        None => false,
    };
    let [port] = rest[..] else {
        return None;
    };
    if port.starts_with('-') {
        return None;
    }
    let port = reaper::util::parse_port(port).ok()?;
    Some(Cli {
        global: cli::Global {
            no_bpf: false,
            hooks: reaper::hooks::TierChoice::Auto,
            verbose: 0,
            color: reaper::output::ColorChoice::Auto,
        },
        command: cli::Command::Who(cli::WhoArgs {
            port,
            proto: None,
            udp: false,
            netns: "all".into(),
            json,
        }),
    })
}

/// A reader that went away (`reaper ports | head`) is not an error.
fn broken_pipe(err: &Error) -> bool {
    err.causes().into_iter().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn args(line: &str) -> Vec<OsString> {
        std::iter::once("reaper")
            .chain(line.split_whitespace())
            .map(OsString::from)
            .collect()
    }

    #[test]
    fn who_parses_as_the_full_command_line_does() {
        for line in [
            "who 8080",
            "who 8080 --json",
            "who --json 8080",
            "who 1",
            "who 65535 --json",
            "who +80",
            "who  08080",
            "who 53 --proto udp --json",
            "who 53 --udp",
            "who 8080 --netns all -v",
            "who 8080 --netns 4026531840 --no-bpf --color never",
            "who --hooks cgroup 8080 -vv --color=always",
            "-v who 8080",
            "--no-bpf who 8080",
            "ports --listening",
        ] {
            let fast = parse(args(line)).unwrap();
            let full = Cli::try_parse_from(args(line)).unwrap();
            let plain = line.starts_with("who ")
                && line.split_whitespace().filter(|w| *w != "--json").count() == 2;
            assert_eq!(plain_who(&args(line)).is_some(), plain, "{line}");
            assert_eq!(format!("{fast:?}"), format!("{full:?}"), "{line}");
        }
    }

    #[test]
    fn what_who_does_not_take_gets_the_full_parsers_error() {
        for line in [
            "who",
            "who --json",
            "who 8080 8081",
            "who 8080 --json --json",
            "who -1",
            "who 0",
            "who 70000",
            "who http",
            "who 8080 --udp --proto tcp",
            "who 8080 --bogus",
            "who --help",
            "who 8080 --version",
            "who 8080 --hooks nope",
        ] {
            let fast = parse(args(line)).unwrap_err();
            let full = Cli::try_parse_from(args(line)).unwrap_err();
            assert_eq!(fast.kind(), full.kind(), "{line}");
            assert_eq!(fast.to_string(), full.to_string(), "{line}");
        }
    }
}

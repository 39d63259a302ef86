//! `reaper`: parse, dispatch, and turn errors into one line and an exit status.

use clap::Parser;
use reaper::error::{Error, Exit};

use cli::Cli;

mod cli;
mod commands;

fn main() {
    let cli = match Cli::try_parse() {
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

/// A reader that went away (`reaper ports | head`) is not an error.
fn broken_pipe(err: &Error) -> bool {
    err.causes().into_iter().any(|e| {
        e.downcast_ref::<std::io::Error>()
            .is_some_and(|io| io.kind() == std::io::ErrorKind::BrokenPipe)
    })
}

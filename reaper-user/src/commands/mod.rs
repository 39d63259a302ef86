//! One function per subcommand, over the library types.

use crate::cli::{Cli, Command};
use reaper::error::{Error, Exit};

pub mod completions;
pub mod daemon;
pub mod doctor;
pub mod free;
mod holdings;
pub mod job;
pub mod ports;
pub mod report;
pub mod watch;
pub mod who;
pub mod why;

/// What a command returns: how it ended, or an [`Error`] whose kind
/// gives the exit status.
pub type Result<T, E = Error> = std::result::Result<T, E>;

pub fn dispatch(cli: Cli) -> Result<Exit> {
    let global = cli.global;
    match cli.command {
        Command::Watch(args) => watch::run(&global, args),
        Command::Doctor(args) => doctor::run(&global, args),
        Command::Who(args) => who::run(&global, args),
        Command::Why(args) => why::run(&global, args),
        Command::Ports(args) => ports::run(&global, args),
        Command::Free(args) => free::run(&global, args),
        Command::Job(args) => job::run(&global, args),
        Command::Daemon(args) => daemon::run(&global, args),
        Command::Report(args) => report::run(&global, args),
        Command::Completions(args) => completions::run(args),
        Command::Man => completions::man(),
    }
}

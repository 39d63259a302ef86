//! `reaper completions SHELL` and `reaper man`: generated from the clap definitions.

use super::Result;
use clap::CommandFactory;

use crate::cli::{Cli, CompletionsArgs, Shell};
use reaper::error::Exit;

pub fn run(args: CompletionsArgs) -> Result<Exit> {
    let shell = match args.shell {
        Shell::Bash => clap_complete::Shell::Bash,
        Shell::Zsh => clap_complete::Shell::Zsh,
        Shell::Fish => clap_complete::Shell::Fish,
    };
    let mut cmd = Cli::command();
    clap_complete::generate(shell, &mut cmd, "reaper", &mut std::io::stdout());
    Ok(Exit::Ok)
}

/// The man page, generated from the same clap definitions.
pub fn man() -> Result<Exit> {
    let cmd = Cli::command();
    clap_mangen::Man::new(cmd).render(&mut std::io::stdout())?;
    Ok(Exit::Ok)
}

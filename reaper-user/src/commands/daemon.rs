//! `reaper daemon`: parse the config (or only check it), set up logging,
//! hand over to `daemon::run`.

use super::Result;

use crate::cli::{DaemonArgs, Global, LogFormat};
use reaper::daemon::{self, config::Config};
use reaper::error::{bad_input, Exit};

pub fn run(global: &Global, args: DaemonArgs) -> Result<Exit> {
    reaper::output::init_daemon_logging(global.verbose, args.log_format == LogFormat::Json);
    if let Some(path) = &args.check_config {
        return match daemon::check_config(path) {
            Ok(summary) => {
                reaper::output::print(&format!("{summary}\n"))?;
                Ok(Exit::Ok)
            }
            Err(e) => Err(bad_input(e.to_string())),
        };
    }
    let config = match &args.config {
        Some(path) => Config::load(path).map_err(|e| bad_input(e.to_string()))?,
        None => {
            tracing::warn!("no --config given: running on the defaults (see deploy/reaper.toml)");
            Config::default()
        }
    };
    if global.no_bpf && config.hooks != daemon::config::HooksChoice::None {
        tracing::warn!("--no-bpf: ignoring `hooks` in the config, running in degraded mode");
    }
    let mut config = config;
    if global.no_bpf {
        config.hooks = daemon::config::HooksChoice::None;
    }
    Ok(daemon::run(config, args.config.clone())?)
}

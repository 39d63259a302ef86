//! `reaper daemon`.

use anyhow::Result;

use crate::cli::{DaemonArgs, Global};
use crate::error::Exit;

pub fn run(global: &Global, args: DaemonArgs) -> Result<Exit> {
    let _ = (global, args);
    anyhow::bail!("`reaper daemon` is not built yet")
}

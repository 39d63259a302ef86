//! `reaper ports`.

use anyhow::Result;

use crate::cli::{Global, PortsArgs};
use crate::error::Exit;

pub fn run(global: &Global, args: PortsArgs) -> Result<Exit> {
    let _ = (global, args);
    anyhow::bail!("`reaper ports` is not built yet")
}

//! `reaper who`.

use anyhow::Result;

use crate::cli::{Global, WhoArgs};
use crate::error::Exit;

pub fn run(global: &Global, args: WhoArgs) -> Result<Exit> {
    let _ = (global, args);
    anyhow::bail!("`reaper who` is not built yet")
}

//! `reaper free`.

use anyhow::Result;

use crate::cli::{Global, FreeArgs};
use crate::error::Exit;

pub fn run(global: &Global, args: FreeArgs) -> Result<Exit> {
    let _ = (global, args);
    anyhow::bail!("`reaper free` is not built yet")
}

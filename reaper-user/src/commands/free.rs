//! `reaper free`.

use anyhow::Result;

use crate::cli::{FreeArgs, Global};
use crate::error::Exit;

pub fn run(global: &Global, args: FreeArgs) -> Result<Exit> {
    let _ = (global, args);
    anyhow::bail!("`reaper free` is not built yet")
}

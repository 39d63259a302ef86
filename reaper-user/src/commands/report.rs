//! `reaper report`.

use anyhow::Result;

use crate::cli::{Global, ReportArgs};
use crate::error::Exit;

pub fn run(global: &Global, args: ReportArgs) -> Result<Exit> {
    let _ = (global, args);
    anyhow::bail!("`reaper report` is not built yet")
}

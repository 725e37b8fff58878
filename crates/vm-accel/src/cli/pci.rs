//! `vm-accel list|show|check`.

use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct ListArgs {}
#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Device address, e.g. 0000:00:06.0.
    pub bdf: String,
}
#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Only this device (default: every accelerator).
    pub bdf: Option<String>,
}

pub fn list(_g: &Global, _a: ListArgs) -> CmdResult {
    anyhow::bail!("list is not implemented yet")
}
pub fn show(_g: &Global, _a: ShowArgs) -> CmdResult {
    anyhow::bail!("show is not implemented yet")
}
pub fn check(_g: &Global, _a: CheckArgs) -> CmdResult {
    anyhow::bail!("check is not implemented yet")
}

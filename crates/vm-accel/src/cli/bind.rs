//! `vm-accel bind|unbind|restore` (issue #6 fills this in).

use super::{CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// Device address, e.g. 0000:00:06.0.
    pub bdf: String,
}
#[derive(Debug, clap::Args)]
pub struct UnbindArgs {
    /// Device address, e.g. 0000:00:06.0.
    pub bdf: String,
}
#[derive(Debug, clap::Args)]
pub struct RestoreArgs {}

pub fn bind(_g: &Global, _a: BindArgs) -> CmdResult {
    anyhow::bail!("bind is not implemented yet")
}
pub fn unbind(_g: &Global, _a: UnbindArgs) -> CmdResult {
    anyhow::bail!("unbind is not implemented yet")
}
pub fn restore(_g: &Global, _a: RestoreArgs) -> CmdResult {
    anyhow::bail!("restore is not implemented yet")
}

//! `vm-accel cuda ...` (issue #4 fills this in).

use super::{CmdResult, Global};

#[derive(Debug, clap::Subcommand)]
pub enum CudaCommand {
    /// List CUDA devices.
    Info,
    /// Run the GPU health check.
    Check,
}

pub fn run(_g: &Global, _c: CudaCommand) -> CmdResult {
    anyhow::bail!("the cuda commands are not implemented yet")
}

//! `cargo xtask lab` (issue #5 fills this in).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("the emulated VFIO lab is not implemented yet")
}

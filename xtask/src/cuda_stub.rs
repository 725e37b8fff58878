//! `cargo xtask cuda-stub` (issue #4 fills this in).

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("cuda-stub is not implemented yet")
}

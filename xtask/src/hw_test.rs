//! `cargo xtask hw-test`.

#[derive(Debug, clap::Args)]
pub struct Args {}

pub fn run(_args: Args) -> anyhow::Result<()> {
    anyhow::bail!("hw-test is not implemented yet")
}

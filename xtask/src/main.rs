//! `cargo xtask`: project automation that needs more than a cargo command.
//!
//! - `hw-test`: detect what this host has (GPU, /dev/kvm, /dev/vfio, IOMMU, qemu), run each
//!   suite whose needs are met, print what ran and what was skipped and why.
//! - `cuda-stub`: generate the stub libcuda that cust's build script links against.
//! - `man`: render the `vm-accel` man pages from the CLI's definition (clap_mangen).
//! - `lab`: boot the emulated VFIO lab (QEMU + intel-iommu + edu) and run tests inside it.

use clap::{Parser, Subcommand};

mod bench;
mod cuda_stub;
mod hw_test;
mod lab;
mod man;

#[derive(Debug, Parser)]
#[command(name = "cargo xtask", about = "vm-accel project automation")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// Run the hardware-gated test suites this host can run; report the rest as skipped.
    HwTest(hw_test::Args),
    /// Generate a stub libcuda.so for building the `cuda` feature without a GPU.
    CudaStub(cuda_stub::Args),
    /// Time `vm-accel list --json` against `lspci -D -nn -k` on this host.
    BenchList(bench::Args),
    /// Boot the emulated VFIO lab and run tests inside the guest.
    Lab(lab::Args),
    /// Write the `vm-accel` man pages (default: target/man).
    Man(man::Args),
}

fn main() -> anyhow::Result<()> {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("info")).init();
    let cli = Cli::parse();
    match cli.command {
        Command::HwTest(args) => hw_test::run(args),
        Command::CudaStub(args) => cuda_stub::run(args),
        Command::Lab(args) => lab::run(args),
        Command::BenchList(args) => bench::run(args),
        Command::Man(args) => man::run(args),
    }
}

//! Argument parsing and dispatch. Each command group lives in its own module.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

mod attach;
mod bind;
mod cuda;
mod pci;
mod table;

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct Global {
    /// Read sysfs from this directory instead of /sys (fixtures, captures).
    #[arg(
        long,
        global = true,
        default_value = "/sys",
        hide = true,
        env = "VM_ACCEL_SYSFS_ROOT"
    )]
    pub sysfs_root: PathBuf,
    /// Print machine-readable JSON (schema: docs/json-schema.md).
    #[arg(long, global = true)]
    pub json: bool,
}

#[derive(Debug, Parser)]
#[command(
    name = "vm-accel",
    version,
    about = "Manage PCI accelerators for rust-vmm based VMMs"
)]
struct Cli {
    #[command(flatten)]
    global: Global,
    #[command(subcommand)]
    command: Command,
}

#[derive(Debug, Subcommand)]
enum Command {
    /// List PCI devices, accelerators first.
    List(pci::ListArgs),
    /// Show everything known about one device.
    Show(pci::ShowArgs),
    /// Check host and per-device passthrough readiness (exit 1 if any check fails).
    Check(pci::CheckArgs),
    /// CUDA device information and health checks.
    #[command(subcommand)]
    Cuda(cuda::CudaCommand),
    /// Bind a device and the rest of its IOMMU group to vfio-pci.
    Bind(bind::BindArgs),
    /// Return a device bound by `vm-accel bind` to its original driver.
    Unbind(bind::UnbindArgs),
    /// Restore every device recorded as changed by vm-accel (after a crash, say).
    Restore(bind::RestoreArgs),
    /// Attach a vfio-pci device to a throwaway KVM VM and detach it: proves a VMM could
    /// use it now, and times each step.
    AttachTest(attach::AttachTestArgs),
}

/// Prints a value as pretty JSON on stdout.
pub fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// What a command wants the process to exit with; errors are reported by [`main`].
pub type CmdResult = anyhow::Result<ExitCode>;

pub fn main() -> ExitCode {
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let cli = Cli::parse();
    let g = &cli.global;
    let result = match cli.command {
        Command::List(a) => pci::list(g, a),
        Command::Show(a) => pci::show(g, a),
        Command::Check(a) => pci::check(g, a),
        Command::Cuda(c) => cuda::run(g, c),
        Command::Bind(a) => bind::bind(g, a),
        Command::Unbind(a) => bind::unbind(g, a),
        Command::Restore(a) => bind::restore(g, a),
        Command::AttachTest(a) => attach::attach_test(g, a),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vm-accel: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

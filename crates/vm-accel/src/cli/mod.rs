//! The `vm-accel` command line (feature `cli`): argument parsing and dispatch. Each command
//! group lives in its own module. The binary calls [`main`]; `cargo xtask man` renders
//! [`command`] with clap_mangen.

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

mod attach;
mod bind;
mod cuda;
mod pci;
mod table;

/// Options every command takes.
#[derive(Debug, Clone, clap::Args)]
pub(crate) struct Global {
    /// Read sysfs from this directory instead of /sys (fixtures, captures).
    #[arg(
        long,
        global = true,
        default_value = "/sys",
        value_name = "DIR",
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
    /// Print a shell completion script, e.g. `vm-accel completions bash >
    /// /etc/bash_completion.d/vm-accel`.
    Completions {
        /// The shell to complete for.
        shell: clap_complete::Shell,
    },
}

/// Prints a value as pretty JSON on stdout.
pub(crate) fn print_json<T: serde::Serialize>(value: &T) -> anyhow::Result<()> {
    println!("{}", serde_json::to_string_pretty(value)?);
    Ok(())
}

/// What a command wants the process to exit with; errors are reported by [`main`].
pub(crate) type CmdResult = anyhow::Result<ExitCode>;

/// Writes the completion script; clap_complete panics on a failed write to the stream it is
/// given, so it writes to memory and this reports a closed pipe like any other write error.
fn completions(shell: clap_complete::Shell) -> CmdResult {
    use std::io::Write;
    let mut script = Vec::new();
    clap_complete::generate(shell, &mut command(), "vm-accel", &mut script);
    match std::io::stdout().lock().write_all(&script) {
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => Ok(ExitCode::SUCCESS),
        r => {
            r?;
            Ok(ExitCode::SUCCESS)
        }
    }
}

/// The command line's clap definition (completions, the man page).
pub fn command() -> clap::Command {
    Cli::command()
}

/// Runs the command line on the process's arguments; the exit code follows
/// docs/json-schema.md (0 success, 1 a check failed, 2 an error).
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
        Command::Completions { shell } => completions(shell),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("vm-accel: error: {e:#}");
            ExitCode::from(2)
        }
    }
}

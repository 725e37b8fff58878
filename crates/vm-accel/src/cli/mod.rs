//! The `vm-accel` command line (feature `cli`): argument parsing and dispatch. Each command
//! group lives in its own module. The binary calls [`main`]; `cargo xtask man` renders
//! [`command`] with clap_mangen.

use std::io::Write;
use std::path::PathBuf;
use std::process::ExitCode;

use clap::{CommandFactory, Parser, Subcommand};

/// `println!` that returns write errors (a closed pipe, a full disk) to the caller instead
/// of panicking; [`main`] turns them into coreutils' behaviour.
macro_rules! outln {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($arg)*)?
    }};
}

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
    outln!("{}", serde_json::to_string_pretty(value)?);
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

/// Exit status for "stdout is a closed pipe": what a shell reports for a coreutils program
/// killed by SIGPIPE (128 + 13), without a message.
const EXIT_BROKEN_PIPE: u8 = 141;

/// An error that ends a command with exit status 2, for every command (docs/json-schema.md).
pub(crate) const EXIT_ERROR: u8 = 2;

/// The one shape of an error with `--json` (docs/json-schema.md): on stdout, under the
/// schema name of the document the command prints when it succeeds.
#[derive(Debug, serde::Serialize)]
struct ErrorOutput<'a> {
    schema: &'static str,
    ok: bool,
    error: &'a str,
}

fn write_error_json(schema: &'static str, msg: &str) -> std::io::Result<()> {
    let v = ErrorOutput {
        schema,
        ok: false,
        error: msg,
    };
    let text = serde_json::to_string_pretty(&v).map_err(std::io::Error::other)?;
    let mut out = std::io::stdout().lock();
    writeln!(out, "{text}")?;
    out.flush()
}

/// The schema of the document a command line prints, from its words (usable before, or
/// without, a successful parse); `None` when no command is named.
fn schema_of_args(args: &[String]) -> Option<&'static str> {
    let has = |w: &str| args.iter().any(|a| a == w);
    // The first word that names a command (option values, such as a --sysfs-root path,
    // come before it).
    let words: Vec<&str> = args
        .iter()
        .skip(1)
        .map(String::as_str)
        .skip_while(|a| {
            !matches!(
                *a,
                "list" | "show" | "check" | "bind" | "unbind" | "restore" | "attach-test" | "cuda"
            )
        })
        .filter(|a| !a.starts_with('-'))
        .collect();
    Some(match *words.first()? {
        "list" => "vm-accel.list/v1",
        "show" => "vm-accel.show/v2",
        "check" => "vm-accel.check/v1",
        "bind" if has("--dry-run") => "vm-accel.bind-plan/v1",
        "bind" => "vm-accel.bind/v1",
        "unbind" => "vm-accel.unbind/v1",
        "restore" => "vm-accel.restore/v1",
        "attach-test" => "vm-accel.attach-test/v1",
        "cuda" => match words.get(1).copied() {
            Some("info") => "vm-accel.cuda-info/v2",
            Some("check") if has("--all") => "vm-accel.cuda-check-all/v2",
            Some("check") => "vm-accel.cuda-check/v2",
            _ => return None,
        },
        _ => return None,
    })
}

/// Writes a diagnostic to stderr; a closed stderr is not worth a panic.
pub(crate) fn warn_line(msg: std::fmt::Arguments<'_>) {
    let _ = writeln!(std::io::stderr().lock(), "{msg}");
}

/// The I/O error at the root of `e`, if writing output is what failed.
fn output_error(e: &anyhow::Error) -> Option<&std::io::Error> {
    e.chain().find_map(|c| c.downcast_ref::<std::io::Error>())
}

/// Runs the command line on the process's arguments; the exit code follows
/// docs/json-schema.md (0 success, 1 a check failed, 2 an error).
pub fn main() -> ExitCode {
    // First: the process is still single-threaded (setting variables is not thread-safe).
    cuda::set_driver_env();
    env_logger::Builder::from_env(env_logger::Env::default().default_filter_or("warn")).init();
    let args: Vec<String> = std::env::args_os()
        .map(|a| a.to_string_lossy().into_owned())
        .collect();
    let json = args.iter().any(|a| a == "--json");
    let schema = schema_of_args(&args).filter(|_| json);
    let cli = match Cli::try_parse() {
        Ok(c) => c,
        Err(e) if !e.use_stderr() => {
            // --help, --version: not errors.
            let _ = e.print();
            return ExitCode::SUCCESS;
        }
        Err(e) => {
            if let Some(schema) = schema {
                if write_error_json(schema, e.render().to_string().trim()).is_err() {
                    return ExitCode::from(EXIT_ERROR);
                }
            }
            let _ = e.print();
            return ExitCode::from(EXIT_ERROR);
        }
    };
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
    let result = result.and_then(|code| {
        std::io::stdout().lock().flush()?;
        Ok(code)
    });
    match result {
        Ok(code) => code,
        Err(e) => match output_error(&e) {
            Some(io) if io.kind() == std::io::ErrorKind::BrokenPipe => {
                ExitCode::from(EXIT_BROKEN_PIPE)
            }
            Some(io) if is_write_error(&e) => {
                warn_line(format_args!("vm-accel: error: writing output: {io}"));
                ExitCode::from(EXIT_ERROR)
            }
            _ => {
                let msg = format!("{e:#}");
                if let Some(schema) = schema {
                    if let Err(io) = write_error_json(schema, &msg) {
                        if io.kind() == std::io::ErrorKind::BrokenPipe {
                            return ExitCode::from(EXIT_BROKEN_PIPE);
                        }
                    }
                }
                warn_line(format_args!("vm-accel: error: {msg}"));
                ExitCode::from(EXIT_ERROR)
            }
        },
    }
}

/// Whether `e` is an error writing stdout (as opposed to, say, an I/O error reading sysfs
/// that a command returned): output errors are bare `io::Error`s with no context.
fn is_write_error(e: &anyhow::Error) -> bool {
    e.chain().count() == 1 && e.downcast_ref::<std::io::Error>().is_some()
}

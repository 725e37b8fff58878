//! The `vm-accel` command line: discover, check, bind and health-check accelerators.

mod cli;

fn main() -> std::process::ExitCode {
    cli::main()
}

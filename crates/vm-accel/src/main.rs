//! The `vm-accel` command line: discover, check, bind and health-check accelerators.

fn main() -> std::process::ExitCode {
    vm_accel::cli::main()
}

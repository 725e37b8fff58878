//! Shared helpers for the workspace's tests: the hardware gate ([`hw`]), and for the emulated
//! VFIO lab's tests the edu device model ([`edu`]) and lab plumbing ([`lab`]).
//!
//! [`hw`] is the one place that decides what a hardware-gated test does when the hardware
//! is missing: report *skipped, with the reason* (visible in `cargo test` output), or, when
//! `cargo xtask hw-test --require ...` asked for that hardware, fail.

pub mod edu;
pub mod lab;

pub mod hw {
    use std::io::Write;

    /// Set by `cargo xtask hw-test` for suites whose hardware was required (`--require`).
    pub const REQUIRE_ENV: &str = "VM_ACCEL_REQUIRE_HW";
    /// When set, every skip is also appended to this file (one `test<TAB>reason` a line).
    pub const SKIP_LOG_ENV: &str = "VM_ACCEL_SKIP_LOG";

    /// Reports that `test` could not run for `reason`.
    ///
    /// Panics (so the test fails) when [`REQUIRE_ENV`] is set: a required capability that
    /// turns out missing must never read as a pass.
    pub fn skip(test: &str, reason: &str) {
        if std::env::var_os(REQUIRE_ENV).is_some() {
            panic!("{test}: required hardware is missing: {reason}");
        }
        // Written straight to the stderr handle: libtest captures print!/eprint!, and a
        // skip must be visible in a plain `cargo test` run.
        let _ = writeln!(std::io::stderr(), "SKIPPED {test}: {reason}");
        if let Some(path) = std::env::var_os(SKIP_LOG_ENV) {
            if let Ok(mut f) = std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(path)
            {
                let _ = writeln!(f, "{test}\t{reason}");
            }
        }
    }
}

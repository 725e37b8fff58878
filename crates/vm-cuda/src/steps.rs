//! A debug timeline of the health checks: each step's duration and when it ended, counted
//! from the process's first timed step, so the lines of parallel checks (`check --all`)
//! line up in a `RUST_LOG=vm_cuda=debug` log and show which steps wait for each other.

use std::sync::OnceLock;
use std::time::Instant;

fn epoch() -> Instant {
    static EPOCH: OnceLock<Instant> = OnceLock::new();
    *EPOCH.get_or_init(Instant::now)
}

/// Runs `f` as step `name` of GPU `ordinal`'s check and logs how long it took.
pub(crate) fn timed<T>(ordinal: u32, name: &str, f: impl FnOnce() -> T) -> T {
    let start = Instant::now();
    let since = start.saturating_duration_since(epoch());
    let r = f();
    log::debug!(
        "GPU {ordinal}: {name}: {:.1} ms (from +{:.1} ms)",
        start.elapsed().as_secs_f64() * 1e3,
        since.as_secs_f64() * 1e3
    );
    r
}

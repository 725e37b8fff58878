//! GPU health check: proves a device computes and moves memory correctly, fast enough,
//! before a tenant gets it and after one returns it.
//!
//! Checks, in order (each one passes or fails with a reason; a failure does not stop the
//! checks that do not depend on it):
//! 1. `ptx_load`: the health kernels JIT-compile and load.
//! 2. `vec_add`: a kernel with four real parameters computes `a + b` exactly.
//! 3. `memory_pattern`: a share of free memory is written with an address-dependent
//!    pattern and verified on the GPU, twice with complementary seeds (stuck bits, aliasing).
//! 4. `d2d_copy`: a device-to-device copy is verified, and its bandwidth (bytes read plus
//!    written per second) is compared with the theoretical peak.
//!
//! Verdicts ([`Verdict`]): a GPU that computes a wrong result is unhealthy, always. A GPU
//! that is only slow, or out of memory, while other processes hold it open is *busy*: the
//! result measured the sharing, not the GPU. [`run_exclusive`] takes the per-GPU lock of
//! [`crate::sharing`] first, so two checks never measure each other.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use crate::args::KernelArgs;
use crate::context::Context;
use crate::deadline::{run_within, Late, Outcome, Progress};
use crate::device::{driver_version, Device, DeviceInfo};
use crate::error::{DriverCode, Error, Result};
use crate::launch::LaunchConfig;
use crate::memory::DeviceBuffer;
use crate::module::{JitOptions, Kernel, Module};
use crate::sharing::{self, GpuLock, GpuUser, Wait};
use crate::steps::timed;
use crate::stream::{Event, EventOptions, Stream, StreamOptions};

/// The health kernels (nvcc 13 PTX of kernels/health.cu).
pub const HEALTH_PTX: &str = include_str!("../kernels/health.ptx");

/// What to test and the pass thresholds.
#[derive(Debug, Clone, PartialEq)]
pub struct HealthOptions {
    /// Share of the free device memory the pattern test covers (0 < f <= 0.95).
    pub memory_fraction: f64,
    /// Bytes per device-to-device copy in the bandwidth test.
    pub copy_bytes: u64,
    /// Copies timed in the bandwidth test.
    pub copy_iterations: u32,
    /// The measured copy bandwidth must reach this share of the theoretical peak.
    pub min_bandwidth_fraction: f64,
    /// Elements of the vector addition.
    pub vec_add_elements: usize,
    /// A check that has not finished by then is reported `stuck` (a GPU or driver that
    /// hangs), instead of hanging its caller; the check itself is left running (no driver
    /// call can be cancelled) and keeps the GPU's lock until it ends.
    pub deadline: Duration,
}

impl Default for HealthOptions {
    fn default() -> Self {
        Self {
            memory_fraction: 0.25,
            copy_bytes: 1 << 30,
            copy_iterations: 10,
            min_bandwidth_fraction: 0.6,
            vec_add_elements: 1 << 22,
            deadline: DEFAULT_DEADLINE,
        }
    }
}

/// [`HealthOptions::deadline`] by default: a check takes well under a second on an H200, a
/// few seconds on any GPU with the default options.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(60);

/// One check's outcome.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct CheckResult {
    /// Check id (`ptx_load`, `vec_add`, `memory_pattern`, `d2d_copy`).
    pub name: &'static str,
    /// The check passed.
    pub passed: bool,
    /// What was measured or what went wrong; `message` in JSON, as in every vm-accel check.
    #[serde(rename = "message")]
    pub detail: String,
    /// How long it took.
    pub elapsed_ms: f64,
    /// What kind of failure (`null` when passed).
    pub failure: Option<Failure>,
}

/// Why a check failed: all but `wrong` can be another process's doing.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Failure {
    /// A wrong result or a driver error: the GPU is unhealthy whoever else uses it.
    Wrong,
    /// Correct but below the bandwidth bar.
    Slow,
    /// An allocation failed.
    OutOfMemory,
    /// It did not finish by the deadline: the GPU or its driver hangs.
    Stuck,
}

/// The health check's conclusion.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Verdict {
    /// Every check passed.
    Healthy,
    /// A check failed and nothing else explains it.
    Unhealthy,
    /// The GPU is in use by someone else: locked by another check, or a slow,
    /// out-of-memory or stuck result while other processes held the GPU.
    Busy,
}

impl Verdict {
    /// The verdict of `checks` on a GPU that other processes did (`shared`) or did not use.
    pub fn of(checks: &[CheckResult], shared: bool) -> Self {
        if checks.iter().all(|c| c.passed) {
            Self::Healthy
        } else if shared
            && checks
                .iter()
                .all(|c| c.passed || c.failure != Some(Failure::Wrong))
        {
            Self::Busy
        } else {
            Self::Unhealthy
        }
    }
}

/// Bandwidth figures of the `d2d_copy` check.
#[derive(Debug, Clone, Copy, PartialEq, serde::Serialize)]
pub struct Bandwidth {
    /// Bytes per copy.
    pub copy_bytes: u64,
    /// Bytes copied per second (each byte is read once and written once).
    pub copied_gbs: f64,
    /// Read plus write traffic per second: comparable with the memory's peak.
    pub traffic_gbs: f64,
    /// Theoretical memory bandwidth, when the driver reports clock and bus width.
    pub peak_gbs: Option<f64>,
    /// `traffic_gbs / peak_gbs`.
    pub fraction_of_peak: Option<f64>,
}

/// The whole health check of one device.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct HealthReport {
    /// The device checked.
    pub device: DeviceInfo,
    /// CUDA driver API version (major, minor); `"13.0"` in JSON, as `cuda info` prints it.
    #[serde(serialize_with = "version_string")]
    pub driver_version: (u32, u32),
    /// Every check, in the order run.
    pub checks: Vec<CheckResult>,
    /// Device memory the pattern test wrote and verified, in bytes.
    pub tested_memory_bytes: u64,
    /// Copy bandwidth, when the copy check ran.
    pub bandwidth: Option<Bandwidth>,
    /// Every check passed.
    pub passed: bool,
    /// `healthy`, `unhealthy` or `busy` (see [`Verdict`]).
    pub verdict: Verdict,
    /// Other processes that held the GPU's device node during the check.
    pub other_users: Vec<GpuUser>,
    /// Why the verdict is `busy`, when it is (`busy_reason` in JSON: `busy` is a flag
    /// elsewhere, as in `check --all`'s `peers.busy`).
    #[serde(rename = "busy_reason")]
    pub busy: Option<String>,
    /// Wall time of the check, from the device lookup on (driver initialisation excluded,
    /// as in `check --all`'s `devices_elapsed_ms`).
    pub elapsed_ms: f64,
}

impl HealthReport {
    /// A check did not finish by the deadline: the GPU or its driver hangs, and a thread of
    /// this process is still inside the driver for it (leave the GPU alone; a process that
    /// exits should skip the driver's exit-time teardown, which would wait for that thread).
    pub fn is_stuck(&self) -> bool {
        self.checks
            .iter()
            .any(|c| c.failure == Some(Failure::Stuck))
    }
}

/// Where the per-GPU locks live, where to look for other users, and whether to queue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Exclusive {
    /// Directory of the per-GPU lock files.
    pub run_dir: PathBuf,
    /// The /proc to scan for other users of the GPU.
    pub proc_root: PathBuf,
    /// Queue behind a held lock, or report busy at once.
    pub wait: Wait,
}

fn version_string<S: serde::Serializer>(
    v: &(u32, u32),
    s: S,
) -> std::result::Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{}.{}", v.0, v.1))
}

impl Default for Exclusive {
    fn default() -> Self {
        Self {
            run_dir: PathBuf::from("/run/vm-accel"),
            proc_root: PathBuf::from("/proc"),
            wait: Wait::Yes,
        }
    }
}

/// [`run`] under the GPU's lock, with the other users of the GPU taken into account (see
/// the module docs). A lock held elsewhere with [`Wait::No`] is a report with verdict
/// `busy` and no checks, not an error.
pub fn run_exclusive(ordinal: u32, opts: &HealthOptions, ex: &Exclusive) -> Result<HealthReport> {
    validate(opts)?;
    let device = Device::get(ordinal)?;
    // From here on: what `check --all` times per device (the driver is up by then).
    let t = Instant::now();
    let info = device.info()?;
    let driver = driver_version()?;
    let lock = match timed(ordinal, "lock", || {
        GpuLock::acquire(&ex.run_dir, &info.pci_bdf, ex.wait)
    }) {
        Ok(l) => l,
        Err(Error::Busy { reason, .. }) => {
            let users = sharing::other_users(&ex.proc_root, &info.pci_bdf, None);
            return Ok(HealthReport {
                device: info,
                driver_version: driver,
                checks: Vec::new(),
                tested_memory_bytes: 0,
                bandwidth: None,
                passed: false,
                verdict: Verdict::Busy,
                other_users: users,
                busy: Some(reason),
                elapsed_ms: t.elapsed().as_secs_f64() * 1e3,
            });
        }
        Err(e) => return Err(e),
    };
    let lock_path = lock.lock_path().to_path_buf();
    let before = timed(ordinal, "other users", || {
        sharing::other_users(&ex.proc_root, &info.pci_bdf, Some(&lock_path))
    });
    // The lock goes with the check and comes back with its result: a stuck check keeps
    // its GPU locked, so the next check queues (or is told busy) instead of hanging too.
    let left = "the check is left running and keeps the GPU's lock";
    let (report, lock) = run_on_within(device, &info, driver, opts, t, lock, left)?;
    let mut report = report?;
    let mut users = before;
    if let Some(lock) = lock {
        for u in sharing::other_users(&ex.proc_root, &info.pci_bdf, Some(&lock_path)) {
            if !users.iter().any(|v| v.pid == u.pid) {
                users.push(u);
            }
        }
        drop(lock);
    }
    report.verdict = Verdict::of(&report.checks, !users.is_empty());
    if report.verdict == Verdict::Busy {
        report.busy = Some(format!(
            "{} while {} held the GPU",
            report
                .checks
                .iter()
                .filter(|c| !c.passed)
                .map(|c| c.name)
                .collect::<Vec<_>>()
                .join(", ")
                + " failed",
            users
                .iter()
                .map(|u| format!("pid {} ({})", u.pid, u.comm))
                .collect::<Vec<_>>()
                .join(", ")
        ));
    }
    report.other_users = users;
    Ok(report)
}

fn validate(opts: &HealthOptions) -> Result<()> {
    if !(opts.memory_fraction > 0.0 && opts.memory_fraction <= 0.95) {
        return Err(Error::InvalidArgument {
            operation: "health check",
            reason: format!(
                "memory fraction {} is not in (0, 0.95]",
                opts.memory_fraction
            ),
        });
    }
    Ok(())
}

pub(crate) struct Kernels {
    pub(crate) fill: Kernel,
    pub(crate) check: Kernel,
    vec_add: Kernel,
}

impl Kernels {
    pub(crate) fn load(ctx: &Context) -> Result<Self> {
        let m = Module::from_ptx(ctx, HEALTH_PTX, &JitOptions::default())?;
        Ok(Self {
            fill: m.kernel("fill_pattern")?,
            check: m.kernel("check_pattern")?,
            vec_add: m.kernel("vec_add")?,
        })
    }
}

/// Runs the health check on device `ordinal`. `Err` only when the device cannot be opened
/// at all (no GPU, stub library); everything after that is a pass or fail in the report.
/// No lock is taken and other users are not looked for: the verdict is `healthy` or
/// `unhealthy` ([`run_exclusive`] is what the CLI runs).
pub fn run(ordinal: u32, opts: &HealthOptions) -> Result<HealthReport> {
    validate(opts)?;
    let device = Device::get(ordinal)?;
    let t = Instant::now();
    let info = device.info()?;
    let driver = driver_version()?;
    run_on_within(
        device,
        &info,
        driver,
        opts,
        t,
        (),
        "the check is left running",
    )?
    .0
}

/// The report of a check that did not finish by `deadline`: the checks done, then the step
/// it is stuck in as a failed check (`stuck`). `left` says what is left running.
pub(crate) fn stuck_report(
    device: DeviceInfo,
    driver: (u32, u32),
    late: Late<CheckResult>,
    deadline: Duration,
    started: Instant,
    left: &str,
) -> HealthReport {
    let Late {
        step,
        in_step,
        mut done,
    } = late;
    log::error!(
        "GPU {}: the health check is stuck in {step} after {:.1} s; leaving it running",
        device.ordinal,
        started.elapsed().as_secs_f64()
    );
    done.push(CheckResult {
        name: step,
        passed: false,
        detail: format!(
            "did not finish within the {} deadline (in it for {:.3} s): the GPU or its driver \
             is stuck; {left}",
            crate::deadline::human(deadline),
            in_step.as_secs_f64()
        ),
        elapsed_ms: in_step.as_secs_f64() * 1e3,
        failure: Some(Failure::Stuck),
    });
    HealthReport {
        device,
        driver_version: driver,
        verdict: Verdict::of(&done, false),
        passed: false,
        checks: done,
        tested_memory_bytes: 0,
        bandwidth: None,
        other_users: Vec::new(),
        busy: None,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    }
}

/// [`run_on`] on a thread of its own, waited for until the deadline; `keep` (the GPU's
/// lock) goes with it and comes back when it finishes in time. Past the deadline: a report
/// of the checks done so far plus the one in progress as `stuck`, and `None`.
fn run_on_within<K: Send + 'static>(
    device: Device,
    info: &DeviceInfo,
    driver: (u32, u32),
    opts: &HealthOptions,
    started: Instant,
    keep: K,
    left: &str,
) -> Result<(Result<HealthReport>, Option<K>)> {
    let (info2, opts2) = (info.clone(), opts.clone());
    let work =
        move |p: &Progress<CheckResult>| (run_on(device, info2, driver, &opts2, started, p), keep);
    let name = format!("gpu{} check", device.ordinal());
    Ok(match run_within(opts.deadline, name, work)? {
        Outcome::Finished((report, keep)) => (report, Some(keep)),
        Outcome::Elapsed(late) => {
            let report = stuck_report(info.clone(), driver, late, opts.deadline, started, left);
            (Ok(report), None)
        }
    })
}

fn run_on(
    device: Device,
    info: DeviceInfo,
    driver: (u32, u32),
    opts: &HealthOptions,
    started: Instant,
    progress: &Progress<CheckResult>,
) -> Result<HealthReport> {
    let ordinal = device.ordinal();
    progress.step("context");
    let ctx = timed(ordinal, "context", || Context::new(device))?;
    let stream = timed(ordinal, "stream", || {
        Stream::new(&ctx, StreamOptions::default())
    })?;

    // Each check is announced to `progress` before it starts and its result after it ends:
    // what a stuck check's report is made of.
    let mut checks = Vec::new();
    let mut check = |name: &'static str, f: &mut dyn FnMut() -> Result<String>| {
        progress.step(name);
        let t = Instant::now();
        let c = outcome(name, t, timed(ordinal, name, f));
        progress.done(c.clone());
        checks.push(c);
    };
    let mut tested = 0u64;
    let mut bandwidth = None;

    let mut kernels = None;
    check("ptx_load", &mut || {
        let k = Kernels::load(&ctx).map_err(|e| fail("ptx_load", e.to_string()))?;
        kernels = Some(k);
        Ok("health kernels loaded".to_string())
    });

    if let Some(k) = &kernels {
        let grid = info.sm_count.max(1) * 8;
        progress.step("allocation");
        let mut mem = timed(ordinal, "allocate", || Allocations::new(&ctx, opts));

        check("vec_add", &mut || {
            vec_add(&stream, k, &mut mem.vec_add, opts.vec_add_elements, grid)
        });
        check("memory_pattern", &mut || {
            let (bytes, detail) = memory_pattern(&stream, k, &mut mem, opts.memory_fraction, grid)?;
            tested = bytes;
            Ok(detail)
        });
        check("d2d_copy", &mut || {
            let bw = d2d_copy(&ctx, &stream, k, &mut mem, opts, &info, grid)?;
            bandwidth = Some(bw);
            let detail = format!(
                "{:.0} GB/s copied, {:.0} GB/s read+write{}",
                bw.copied_gbs,
                bw.traffic_gbs,
                match (bw.peak_gbs, bw.fraction_of_peak) {
                    (Some(p), Some(f)) => format!(" = {:.0}% of the {p:.0} GB/s peak", f * 100.0),
                    _ => " (peak unknown)".to_string(),
                }
            );
            match bw.fraction_of_peak {
                Some(f) if f < opts.min_bandwidth_fraction => Err(Error::InvalidArgument {
                    operation: BANDWIDTH,
                    reason: format!(
                        "{detail}: below the required {:.0}%",
                        opts.min_bandwidth_fraction * 100.0
                    ),
                }),
                _ => Ok(detail),
            }
        });
        progress.step("free");
        timed(ordinal, "free", || drop(mem));
    }

    let passed = checks.iter().all(|c| c.passed);
    Ok(HealthReport {
        device: info,
        driver_version: driver,
        verdict: Verdict::of(&checks, false),
        checks,
        tested_memory_bytes: tested,
        bandwidth,
        passed,
        other_users: Vec::new(),
        busy: None,
        elapsed_ms: started.elapsed().as_secs_f64() * 1e3,
    })
}

/// Every device allocation of the checks, made before the first check and freed after the
/// last. The driver serialises allocations and frees across all the GPUs of the host, and
/// a free of the pattern buffer waits while the driver clears it (~25 ms for 35 GiB on an
/// H200): made between checks, they would make parallel checks (`check --all`) wait for
/// each other in the middle of their work. A failed allocation fails the check that
/// needed it, as out of memory (busy, if other processes hold the GPU).
struct Allocations {
    /// `a`, `b` and `c` of the vector addition.
    vec_add: Result<[DeviceBuffer<f32>; 3]>,
    /// Source and destination of the copy check.
    copy: Result<[DeviceBuffer<u32>; 2]>,
    /// The verification counters of the pattern passes.
    counters: Result<Counters>,
    /// The pattern test's share of the memory still free after the others.
    pattern: Result<DeviceBuffer<u32>>,
}

impl Allocations {
    fn new(ctx: &Context, opts: &HealthOptions) -> Self {
        let vec_add = (|| {
            let n = opts.vec_add_elements;
            Ok([
                DeviceBuffer::alloc(ctx, n)?,
                DeviceBuffer::alloc(ctx, n)?,
                DeviceBuffer::alloc(ctx, n)?,
            ])
        })();
        let copy = ctx.memory_info().and_then(|m| {
            let words = (opts.copy_bytes.min(m.free_bytes / 4).max(4) / 4) as usize;
            Ok([
                DeviceBuffer::alloc(ctx, words)?,
                DeviceBuffer::alloc(ctx, words)?,
            ])
        });
        let counters = Counters::new(ctx);
        let pattern = ctx.memory_info().and_then(|m| {
            let words = ((m.free_bytes as f64 * opts.memory_fraction) as u64 / 4) as usize;
            if words == 0 {
                return Err(fail(
                    "memory_pattern",
                    format!("no free memory to test ({} bytes free)", m.free_bytes),
                ));
            }
            DeviceBuffer::alloc(ctx, words)
        });
        Self {
            vec_add,
            copy,
            counters,
            pattern,
        }
    }
}

/// The allocation's failure again, for the check that needed the memory: a driver error
/// keeps its code, so out of memory stays out of memory.
fn alloc_failure(e: &Error) -> Error {
    match e {
        Error::Driver { operation, code } => Error::Driver {
            operation,
            code: *code,
        },
        other => fail("allocation", other.to_string()),
    }
}

/// The counters a verification pass writes: mismatches and the first bad index.
pub(crate) struct Counters {
    mismatches: DeviceBuffer<u64>,
    first_bad: DeviceBuffer<u64>,
}

impl Counters {
    pub(crate) fn new(ctx: &Context) -> Result<Self> {
        Ok(Self {
            mismatches: DeviceBuffer::alloc(ctx, 1)?,
            first_bad: DeviceBuffer::alloc(ctx, 1)?,
        })
    }
}

pub(crate) fn outcome(name: &'static str, t: Instant, r: Result<String>) -> CheckResult {
    let elapsed_ms = t.elapsed().as_secs_f64() * 1e3;
    match r {
        Ok(detail) => CheckResult {
            name,
            passed: true,
            detail,
            elapsed_ms,
            failure: None,
        },
        Err(e) => CheckResult {
            name,
            passed: false,
            failure: Some(failure_of(&e)),
            detail: e.to_string(),
            elapsed_ms,
        },
    }
}

fn failure_of(e: &Error) -> Failure {
    match e {
        Error::Driver { code, .. } if *code == DriverCode::OUT_OF_MEMORY => Failure::OutOfMemory,
        Error::InvalidArgument {
            operation: BANDWIDTH,
            ..
        } => Failure::Slow,
        Error::Stuck { .. } => Failure::Stuck,
        _ => Failure::Wrong,
    }
}

/// The operation name of the "below the bandwidth bar" failure.
const BANDWIDTH: &str = "d2d bandwidth";

fn fail(operation: &'static str, reason: String) -> Error {
    Error::InvalidArgument { operation, reason }
}

fn vec_add(
    stream: &Stream,
    k: &Kernels,
    bufs: &mut Result<[DeviceBuffer<f32>; 3]>,
    n: usize,
    grid: u32,
) -> Result<String> {
    let [da, db, dc] = bufs.as_mut().map_err(|e| alloc_failure(e))?;
    let a: Vec<f32> = (0..n).map(|i| (i % (1 << 20)) as f32).collect();
    let b: Vec<f32> = (0..n).map(|i| (2 * (i % (1 << 20)) + 1) as f32).collect();
    da.copy_from_host(&a)?;
    db.copy_from_host(&b)?;
    dc.memset_u32(0xFFFF_FFFF)?; // NaN everywhere: an unwritten element cannot pass
    let args = KernelArgs::new()
        .buffer(da)
        .buffer(db)
        .buffer(dc)
        .u64(n as u64);
    k.vec_add
        .launch(stream, &LaunchConfig::new(grid, 256), &args)?;
    stream.synchronize()?;
    let c = dc.to_vec()?;
    let bad = c
        .iter()
        .zip(a.iter().zip(&b))
        .position(|(c, (a, b))| *c != a + b);
    match bad {
        None => Ok(format!("{n} sums correct")),
        Some(i) => Err(fail(
            "vec_add",
            format!("element {i}: got {}, expected {}", c[i], a[i] + b[i]),
        )),
    }
}

/// Fills (when `fill`) and verifies `buf` with `seed`; returns the mismatch count and the
/// first bad index.
pub(crate) fn pattern_pass(
    stream: &Stream,
    k: &Kernels,
    buf: &DeviceBuffer<u32>,
    counters: &mut Counters,
    seed: u32,
    fill: bool,
    grid: u32,
) -> Result<(u64, u64)> {
    let n = buf.len() as u64;
    let cfg = LaunchConfig::new(grid, 256);
    if fill {
        k.fill.launch(
            stream,
            &cfg,
            &KernelArgs::new().buffer(buf).u64(n).u32(seed),
        )?;
    }
    counters.mismatches.copy_from_host(&[0])?;
    counters.first_bad.copy_from_host(&[u64::MAX])?;
    k.check.launch(
        stream,
        &cfg,
        &KernelArgs::new()
            .buffer(buf)
            .u64(n)
            .u32(seed)
            .buffer(&counters.mismatches)
            .buffer(&counters.first_bad),
    )?;
    stream.synchronize()?;
    let mismatches = counters.mismatches.to_vec()?[0];
    Ok((mismatches, counters.first_bad.to_vec()?[0]))
}

fn memory_pattern(
    stream: &Stream,
    k: &Kernels,
    mem: &mut Allocations,
    fraction: f64,
    grid: u32,
) -> Result<(u64, String)> {
    let buf = mem.pattern.as_ref().map_err(alloc_failure)?;
    let counters = mem.counters.as_mut().map_err(|e| alloc_failure(e))?;
    let ordinal = buf.context().device().ordinal();
    let words = buf.len();
    for seed in [0x5EED_1234u32, !0x5EED_1234u32] {
        let (bad, first) = timed(ordinal, "memory_pattern pass", || {
            pattern_pass(stream, k, buf, counters, seed, true, grid)
        })?;
        if bad != 0 {
            return Err(fail(
                "memory_pattern",
                format!(
                    "{bad} of {words} words wrong (seed {seed:#x}), first at byte offset {:#x}",
                    first.saturating_mul(4)
                ),
            ));
        }
    }
    let bytes = buf.byte_len() as u64;
    Ok((
        bytes,
        format!(
            "{:.2} GiB ({:.0}% of free memory) written and verified twice",
            bytes as f64 / (1u64 << 30) as f64,
            fraction * 100.0
        ),
    ))
}

fn d2d_copy(
    ctx: &Context,
    stream: &Stream,
    k: &Kernels,
    mem: &mut Allocations,
    opts: &HealthOptions,
    info: &DeviceInfo,
    grid: u32,
) -> Result<Bandwidth> {
    let [src, dst] = mem.copy.as_mut().map_err(|e| alloc_failure(e))?;
    let counters = mem.counters.as_mut().map_err(|e| alloc_failure(e))?;
    let words = src.len();
    let seed = 0xC0DE_D00D;
    k.fill.launch(
        stream,
        &LaunchConfig::new(grid, 256),
        &KernelArgs::new().buffer(src).u64(words as u64).u32(seed),
    )?;
    dst.memset_u32(0)?;
    stream.synchronize()?;
    dst.copy_from_device_async(src, stream)?; // warm-up, and the copy verified below
    let (bad, first) = pattern_pass(stream, k, dst, counters, seed, false, grid)?;
    if bad != 0 {
        return Err(fail(
            "d2d_copy",
            format!(
                "{bad} words differ after the copy, first at byte offset {:#x}",
                first * 4
            ),
        ));
    }
    let start = Event::new(ctx, EventOptions::default())?;
    let end = Event::new(ctx, EventOptions::default())?;
    let iters = opts.copy_iterations.max(1);
    start.record(stream)?;
    for _ in 0..iters {
        dst.copy_from_device_async(src, stream)?;
    }
    end.record(stream)?;
    end.synchronize()?;
    let secs = f64::from(Event::elapsed_ms(&start, &end)?) / 1e3;
    let copy_bytes = dst.byte_len() as u64;
    let copied = copy_bytes as f64 * f64::from(iters) / secs;
    let peak = info.peak_memory_bandwidth_bytes_per_s;
    Ok(Bandwidth {
        copy_bytes,
        copied_gbs: copied / 1e9,
        traffic_gbs: 2.0 * copied / 1e9,
        peak_gbs: peak.map(|p| p / 1e9),
        fraction_of_peak: peak.map(|p| 2.0 * copied / p),
    })
}

#[cfg(test)]
mod verdict_tests {
    use super::*;

    fn check(name: &'static str, failure: Option<Failure>) -> CheckResult {
        CheckResult {
            name,
            passed: failure.is_none(),
            detail: String::new(),
            elapsed_ms: 0.0,
            failure,
        }
    }

    #[test]
    fn slow_or_out_of_memory_on_a_shared_gpu_is_busy_not_unhealthy() {
        let slow = [
            check("vec_add", None),
            check("d2d_copy", Some(Failure::Slow)),
        ];
        assert_eq!(Verdict::of(&slow, true), Verdict::Busy);
        assert_eq!(Verdict::of(&slow, false), Verdict::Unhealthy);
        let oom = [check("memory_pattern", Some(Failure::OutOfMemory))];
        assert_eq!(Verdict::of(&oom, true), Verdict::Busy);
        assert_eq!(Verdict::of(&oom, false), Verdict::Unhealthy);
        let stuck = [
            check("vec_add", None),
            check("memory_pattern", Some(Failure::Stuck)),
        ];
        assert_eq!(Verdict::of(&stuck, true), Verdict::Busy);
        assert_eq!(Verdict::of(&stuck, false), Verdict::Unhealthy);
    }

    #[test]
    fn a_wrong_result_is_unhealthy_whoever_shares_the_gpu() {
        let wrong = [
            check("memory_pattern", Some(Failure::Wrong)),
            check("d2d_copy", Some(Failure::Slow)),
        ];
        assert_eq!(Verdict::of(&wrong, true), Verdict::Unhealthy);
        assert_eq!(Verdict::of(&wrong, false), Verdict::Unhealthy);
        let ok = [check("vec_add", None)];
        assert_eq!(Verdict::of(&ok, true), Verdict::Healthy);
        assert_eq!(Verdict::of(&ok, false), Verdict::Healthy);
    }

    #[test]
    fn failures_are_classified_by_cause() {
        let slow = Error::InvalidArgument {
            operation: BANDWIDTH,
            reason: "below".into(),
        };
        assert_eq!(failure_of(&slow), Failure::Slow);
        let oom = Error::Driver {
            operation: "cuMemAlloc",
            code: DriverCode::OUT_OF_MEMORY,
        };
        assert_eq!(failure_of(&oom), Failure::OutOfMemory);
        let wrong = fail("memory_pattern", "3 words differ".into());
        assert_eq!(failure_of(&wrong), Failure::Wrong);
        let stuck = Error::Stuck {
            operation: "the peer copy",
            deadline: DEFAULT_DEADLINE,
        };
        assert_eq!(failure_of(&stuck), Failure::Stuck);
        assert!(stuck.to_string().contains("60 s deadline"), "{stuck}");
        assert_eq!(
            serde_json::to_value(Verdict::Busy).unwrap(),
            serde_json::json!("busy")
        );
    }
}

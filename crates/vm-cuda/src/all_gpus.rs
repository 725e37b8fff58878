//! Every GPU of the host: the health check on each (in parallel: they share nothing but
//! the host), then a peer-copy test between every ordered pair with peer access, with the
//! bandwidth per pair.
//!
//! Parallel is safe because each check runs on its own device, context and memory, under
//! its own GPU lock; the peer phase runs after it, holding the locks of every GPU (taken
//! in PCI order, so two `--all` checks queue instead of deadlocking).

use std::time::{Duration, Instant};

use crate::args::KernelArgs;
use crate::context::Context;
use crate::deadline::{run_within, Late, Outcome, Progress};
use crate::device::{driver_version, Device};
use crate::error::{Error, Result};
use crate::health::{self, Exclusive, Failure, HealthOptions, HealthReport, Kernels, Verdict};
use crate::launch::LaunchConfig;
use crate::memory::DeviceBuffer;
use crate::peer::PeerLink;
use crate::sharing::GpuLock;
use crate::stream::{Event, EventOptions, Stream, StreamOptions};

/// One device's part of the report: its health report, or why it could not run.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct DeviceOutcome {
    /// The device's CUDA ordinal.
    pub ordinal: u32,
    /// Its health report, when the check ran.
    pub report: Option<HealthReport>,
    /// Why the check could not run.
    pub error: Option<String>,
}

/// The peer copy from `src` to `dst` (a copy on `dst`'s stream reading `src`'s memory).
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerCopy {
    /// Ordinal of the GPU read from.
    pub src: u32,
    /// Ordinal of the GPU written to.
    pub dst: u32,
    /// The driver's peer attributes for the pair.
    pub link: PeerLink,
    /// The copy arrived intact.
    pub passed: bool,
    /// What was measured or what went wrong (`message` in JSON, as in every check).
    #[serde(rename = "message")]
    pub detail: String,
    /// Bytes per copy.
    pub copy_bytes: u64,
    /// Bytes copied per second, 10^9 (each byte crosses the link once).
    pub gbs: Option<f64>,
    /// Why it failed, when it did.
    pub failure: Option<Failure>,
}

/// The peer phase: the pairs tested, or why there were none.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct PeerTests {
    /// Why no pair was tested (one GPU, or no pair with peer access), else `null`.
    pub skipped: Option<String>,
    /// Every pair tested.
    pub pairs: Vec<PeerCopy>,
    /// Ordered pairs without peer access: not tested, listed for the topology.
    pub without_access: Vec<PeerLink>,
    /// True when the pairs were not tested because a GPU was locked by another check.
    pub busy: bool,
}

/// `vm-accel cuda check --all`.
#[derive(Debug, Clone, PartialEq, serde::Serialize)]
pub struct AllReport {
    /// Every device and pair passed.
    pub passed: bool,
    /// `healthy`, `unhealthy` or `busy`, over all devices and pairs.
    pub verdict: Verdict,
    /// One outcome per device, by ordinal.
    pub devices: Vec<DeviceOutcome>,
    /// The peer phase.
    pub peers: PeerTests,
    /// Wall time of the parallel per-device phase, and of the peer phase.
    pub devices_elapsed_ms: f64,
    /// Wall time of the peer phase.
    pub peers_elapsed_ms: f64,
}

impl AllReport {
    /// A device's check or a peer copy did not finish by the deadline (see
    /// [`HealthReport::is_stuck`]).
    pub fn is_stuck(&self) -> bool {
        self.devices
            .iter()
            .any(|d| d.report.as_ref().is_some_and(HealthReport::is_stuck))
            || self
                .peers
                .pairs
                .iter()
                .any(|p| p.failure == Some(Failure::Stuck))
    }
}

/// Copies per timed peer measurement.
const PEER_ITERATIONS: u32 = 10;

/// Runs the health check on every device in parallel, then the peer copies.
pub fn run_all(opts: &HealthOptions, ex: &Exclusive) -> Result<AllReport> {
    let devices = Device::all()?;
    let t = Instant::now();
    // Each thread retains its device's primary context for the whole run, so the peer
    // phase reuses it instead of starting it again. The driver starts contexts partly one at
    // a time (docs/benchmarks.md); starting them together still beats taking turns, which
    // was measured too.
    let (outcomes, ctxs): (Vec<DeviceOutcome>, Vec<Option<Context>>) = std::thread::scope(|s| {
        let handles: Vec<_> = devices
            .iter()
            .map(|d| {
                let (device, ordinal) = (*d, d.ordinal());
                let h = s.spawn(move || {
                    let t = Instant::now();
                    match retain(device, opts.deadline) {
                        Ok(Some(ctx)) => (health::run_exclusive(ordinal, opts, ex), Some(ctx)),
                        Ok(None) => {
                            let late = Late {
                                step: "context",
                                in_step: t.elapsed(),
                                done: Vec::new(),
                            };
                            let stuck = device.info().and_then(|info| {
                                Ok(health::stuck_report(
                                    info,
                                    driver_version()?,
                                    late,
                                    opts.deadline,
                                    t,
                                    "the context start is left running",
                                ))
                            });
                            (stuck, None)
                        }
                        Err(e) => (Err(e), None),
                    }
                });
                (ordinal, h)
            })
            .collect();
        handles
            .into_iter()
            .map(|(ordinal, h)| {
                let (r, ctx) = h.join().unwrap_or_else(|_| {
                    (
                        Err(Error::InvalidArgument {
                            operation: "health check",
                            reason: "the check thread panicked".into(),
                        }),
                        None,
                    )
                });
                let outcome = match r {
                    Ok(report) => DeviceOutcome {
                        ordinal,
                        report: Some(report),
                        error: None,
                    },
                    Err(e) => DeviceOutcome {
                        ordinal,
                        report: None,
                        error: Some(e.to_string()),
                    },
                };
                (outcome, ctx)
            })
            .unzip()
    });
    let devices_elapsed_ms = t.elapsed().as_secs_f64() * 1e3;

    // A GPU whose check is stuck is not touched again: its retained context is left to the
    // stuck check (releasing it would wait for the stuck work), and no peer copy is tried.
    let mut stuck = Vec::new();
    let ctxs: Vec<Option<Context>> = ctxs
        .into_iter()
        .zip(&outcomes)
        .map(|(ctx, o)| {
            if o.report.as_ref().is_some_and(HealthReport::is_stuck) {
                stuck.push(o.ordinal);
                std::mem::forget(ctx);
                None
            } else {
                ctx
            }
        })
        .collect();

    let t = Instant::now();
    let peers = if stuck.is_empty() {
        peer_phase(&devices, &ctxs, opts, ex)?
    } else {
        PeerTests {
            skipped: Some(format!(
                "GPU {} did not finish its check: no peer copy tried",
                stuck
                    .iter()
                    .map(u32::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            )),
            pairs: Vec::new(),
            without_access: Vec::new(),
            busy: false,
        }
    };
    let peers_elapsed_ms = t.elapsed().as_secs_f64() * 1e3;

    let verdict = combine(&outcomes, &peers);
    Ok(AllReport {
        passed: verdict == Verdict::Healthy,
        verdict,
        devices: outcomes,
        peers,
        devices_elapsed_ms,
        peers_elapsed_ms,
    })
}

/// The device's primary context, retained for the whole run, started under `deadline`:
/// `None` when it did not start in time (the start is left running).
fn retain(device: Device, deadline: Duration) -> Result<Option<Context>> {
    let name = format!("gpu{} context", device.ordinal());
    let started = crate::steps::timed(device.ordinal(), "context (--all)", || {
        run_within(deadline, name, move |_: &Progress<()>| Context::new(device))
    })?;
    match started {
        Outcome::Finished(ctx) => ctx.map(Some),
        Outcome::Elapsed(_) => Ok(None),
    }
}

/// Unhealthy beats busy beats healthy; a device that could not run is unhealthy, and so is
/// a failed peer copy (unless it is busy: then the devices say so already).
pub fn combine(devices: &[DeviceOutcome], peers: &PeerTests) -> Verdict {
    let mut v = Verdict::Healthy;
    for d in devices {
        match d.report.as_ref().map(|r| r.verdict) {
            None | Some(Verdict::Unhealthy) => return Verdict::Unhealthy,
            Some(Verdict::Busy) => v = Verdict::Busy,
            Some(Verdict::Healthy) => {}
        }
    }
    if peers
        .pairs
        .iter()
        .any(|p| p.failure == Some(Failure::Wrong))
    {
        return Verdict::Unhealthy;
    }
    if v == Verdict::Healthy && peers.pairs.iter().any(|p| !p.passed) {
        return Verdict::Unhealthy;
    }
    if peers.busy {
        return Verdict::Busy;
    }
    v
}

fn peer_phase(
    devices: &[Device],
    retained: &[Option<Context>],
    opts: &HealthOptions,
    ex: &Exclusive,
) -> Result<PeerTests> {
    if devices.len() < 2 {
        return Ok(PeerTests {
            skipped: Some(format!("{} GPU(s): peer copies need two", devices.len())),
            pairs: Vec::new(),
            without_access: Vec::new(),
            busy: false,
        });
    }
    let mut links = Vec::new();
    for a in devices {
        for b in devices {
            if a != b {
                links.push(a.peer_link(b)?);
            }
        }
    }
    let (with, without): (Vec<_>, Vec<_>) = links.into_iter().partition(|l| l.access_supported);
    if with.is_empty() {
        return Ok(PeerTests {
            skipped: Some("no pair of GPUs supports peer access".into()),
            pairs: Vec::new(),
            without_access: without,
            busy: false,
        });
    }
    let mut bdfs = devices
        .iter()
        .map(|d| d.pci_location().map(|p| p.to_string()))
        .collect::<Result<Vec<_>>>()?;
    bdfs.sort();
    let locks = bdfs
        .iter()
        .map(|b| GpuLock::acquire(&ex.run_dir, b, ex.wait))
        .collect::<Result<Vec<_>>>();
    let _locks = match locks {
        Ok(l) => l,
        Err(Error::Busy { bdf, reason }) => {
            return Ok(PeerTests {
                skipped: Some(format!("GPU {bdf} is busy: {reason}")),
                pairs: Vec::new(),
                without_access: without,
                busy: true,
            })
        }
        Err(e) => return Err(e),
    };
    let ctxs = devices
        .iter()
        .zip(retained)
        .map(|(d, c)| c.clone().map_or_else(|| Context::new(*d), Ok))
        .collect::<Result<Vec<_>>>()?;
    let mut pairs = Vec::new();
    for l in &with {
        let t0 = Instant::now();
        let src = ctxs[l.src as usize].clone();
        let dst = ctxs[l.dst as usize].clone();
        let bytes = opts.copy_bytes;
        let name = format!("gpu{} peer copy", l.dst);
        let r = crate::steps::timed(l.dst, &format!("peer copy from GPU {}", l.src), || {
            run_within(opts.deadline, name, move |_: &Progress<()>| {
                peer_copy(&src, &dst, bytes)
            })
        });
        let (r, stuck) = match r {
            Ok(Outcome::Finished(r)) => (r, false),
            Ok(Outcome::Elapsed(_)) => (
                Err(Error::Stuck {
                    operation: "the peer copy",
                    deadline: opts.deadline,
                }),
                true,
            ),
            Err(e) => (Err(e), false),
        };
        let (passed, detail, gbs, failure) = match r {
            Ok(g) => (
                true,
                format!("{g:.0} GB/s, verified ({:?})", l.link).to_lowercase(),
                Some(g),
                None,
            ),
            Err(e) => {
                let c = health::outcome("peer_copy", t0, Err(e));
                (false, c.detail, None, c.failure)
            }
        };
        pairs.push(PeerCopy {
            src: l.src,
            dst: l.dst,
            link: *l,
            passed,
            detail,
            copy_bytes: opts.copy_bytes,
            gbs,
            failure,
        });
        if stuck {
            // The stuck copy keeps both contexts (it holds clones); nothing more is tried.
            break;
        }
    }
    Ok(PeerTests {
        skipped: None,
        pairs,
        without_access: without,
        busy: false,
    })
}

/// Fills `bytes` on `src` with the address pattern, copies it to `dst` with peer access
/// enabled, verifies it on `dst`, then times PEER_ITERATIONS async copies with events.
fn peer_copy(src_ctx: &Context, dst_ctx: &Context, bytes: u64) -> Result<f64> {
    dst_ctx.enable_peer_access(src_ctx)?;
    src_ctx.enable_peer_access(dst_ctx)?;
    let words = usize::try_from(bytes / 4).unwrap_or(usize::MAX).max(1);
    let src_k = Kernels::load(src_ctx)?;
    let dst_k = Kernels::load(dst_ctx)?;
    let src_stream = Stream::new(src_ctx, StreamOptions::default())?;
    let dst_stream = Stream::new(dst_ctx, StreamOptions::default())?;
    let src = DeviceBuffer::<u32>::alloc(src_ctx, words)?;
    let mut dst = DeviceBuffer::<u32>::alloc(dst_ctx, words)?;
    let seed = 0x5EE2_0C0F ^ src_ctx.device().ordinal();
    let grid = 8 * src_ctx.device().info()?.sm_count.max(1);
    src_k.fill.launch(
        &src_stream,
        &LaunchConfig::new(grid, 256),
        &KernelArgs::new().buffer(&src).u64(words as u64).u32(seed),
    )?;
    src_stream.synchronize()?;
    dst.memset_u32(0)?;
    dst.copy_from_peer(&src)?;
    let mut counters = health::Counters::new(dst_ctx)?;
    let (bad, first) =
        health::pattern_pass(&dst_stream, &dst_k, &dst, &mut counters, seed, false, grid)?;
    if bad != 0 {
        return Err(Error::InvalidArgument {
            operation: "peer copy",
            reason: format!(
                "{bad} words differ after the copy from device {} to {}, first at byte offset {:#x}",
                src_ctx.device().ordinal(),
                dst_ctx.device().ordinal(),
                first * 4
            ),
        });
    }
    let start = Event::new(dst_ctx, EventOptions::default())?;
    let end = Event::new(dst_ctx, EventOptions::default())?;
    start.record(&dst_stream)?;
    for _ in 0..PEER_ITERATIONS {
        dst.copy_from_peer_async(&src, &dst_stream)?;
    }
    end.record(&dst_stream)?;
    end.synchronize()?;
    let secs = f64::from(Event::elapsed_ms(&start, &end)?) / 1e3;
    Ok(dst.byte_len() as f64 * f64::from(PEER_ITERATIONS) / secs / 1e9)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn peers(pairs: Vec<PeerCopy>, busy: bool) -> PeerTests {
        PeerTests {
            skipped: None,
            pairs,
            without_access: Vec::new(),
            busy,
        }
    }

    fn pair(failure: Option<Failure>) -> PeerCopy {
        let link = PeerLink {
            src: 0,
            dst: 1,
            access_supported: true,
            native_atomics: true,
            performance_rank: 0,
            link: crate::peer::LinkKind::Nvlink,
        };
        PeerCopy {
            src: 0,
            dst: 1,
            link,
            passed: failure.is_none(),
            detail: String::new(),
            copy_bytes: 1,
            gbs: None,
            failure,
        }
    }

    #[test]
    fn a_device_that_could_not_run_or_a_wrong_peer_copy_is_unhealthy() {
        let missing = [DeviceOutcome {
            ordinal: 0,
            report: None,
            error: Some("x".into()),
        }];
        assert_eq!(combine(&missing, &peers(vec![], false)), Verdict::Unhealthy);
        assert_eq!(
            combine(&[], &peers(vec![pair(None)], false)),
            Verdict::Healthy
        );
        assert_eq!(
            combine(&[], &peers(vec![pair(Some(Failure::Wrong))], false)),
            Verdict::Unhealthy
        );
        assert_eq!(combine(&[], &peers(vec![], true)), Verdict::Busy);
        // A peer copy that never finished: unhealthy, and the run is stuck.
        let stuck = peers(vec![pair(Some(Failure::Stuck))], false);
        assert_eq!(combine(&[], &stuck), Verdict::Unhealthy);
        let report = AllReport {
            passed: false,
            verdict: Verdict::Unhealthy,
            devices: Vec::new(),
            peers: stuck,
            devices_elapsed_ms: 0.0,
            peers_elapsed_ms: 0.0,
        };
        assert!(report.is_stuck());
    }
}

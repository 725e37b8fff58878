//! Several GPUs on a real host: peer access, peer copies, topology, contexts used from
//! several threads, `check --all`, and health checks that queue instead of failing.
//! Tests that need two GPUs report skipped on one, with the reason.

mod common;

use std::path::PathBuf;

use vm_cuda::all_gpus;
use vm_cuda::health::{self, Exclusive, HealthOptions, Verdict};
use vm_cuda::sharing::{GpuLock, Wait};
use vm_cuda::*;

/// Two devices' contexts, or a visible skip.
fn two_gpus(test: &str) -> Option<(Context, Context)> {
    common::gpu(test)?;
    let n = Device::count().expect("count");
    if n < 2 {
        vm_accel_tests::hw::skip(test, &format!("{n} GPU: peer tests need two"));
        return None;
    }
    Some((
        Context::for_ordinal(0).expect("ctx 0"),
        Context::for_ordinal(1).expect("ctx 1"),
    ))
}

/// One lock directory for every test of this binary: the tests run in parallel threads,
/// and checks that measure bandwidth must queue on the GPU locks like separate processes.
fn run_dir() -> PathBuf {
    let d = std::env::temp_dir().join(format!("vm-cuda-gpu-peer-{}", std::process::id()));
    std::fs::create_dir_all(&d).expect("run dir");
    d
}

fn small() -> HealthOptions {
    HealthOptions {
        memory_fraction: 0.05,
        copy_bytes: 256 << 20,
        ..HealthOptions::default()
    }
}

#[test]
fn topology_lists_every_ordered_pair() {
    let Some(_) = common::gpu("topology_lists_every_ordered_pair") else {
        return;
    };
    let n = Device::count().expect("count");
    let links = topology().expect("topology");
    assert_eq!(links.len() as u32, n * (n - 1));
    for l in &links {
        assert_ne!(l.src, l.dst);
        let (a, b) = (Device::get(l.src).unwrap(), Device::get(l.dst).unwrap());
        assert_eq!(a.can_access_peer(&b).unwrap(), l.access_supported);
        assert_eq!(
            l.link,
            LinkKind::infer(l.access_supported, l.native_atomics)
        );
        println!("peer {} -> {}: {l:?}", l.src, l.dst);
    }
}

#[test]
fn peer_access_enable_disable_is_idempotent() {
    let Some((a, b)) = two_gpus("peer_access_enable_disable_is_idempotent") else {
        return;
    };
    if !a.device().can_access_peer(&b.device()).unwrap() {
        vm_accel_tests::hw::skip("peer_access_enable_disable_is_idempotent", "no peer access");
        return;
    }
    a.enable_peer_access(&b).expect("enable");
    a.enable_peer_access(&b).expect("enable again");
    a.disable_peer_access(&b).expect("disable");
    a.disable_peer_access(&b).expect("disable again");
    a.enable_peer_access(&b).expect("enable after disable");
}

#[test]
fn peer_copies_exact_both_ways_sync_and_async_with_bounds() {
    let Some((a, b)) = two_gpus("peer_copies_exact_both_ways_sync_and_async_with_bounds") else {
        return;
    };
    for (src_ctx, dst_ctx) in [(&a, &b), (&b, &a)] {
        // With and without peer access: both must copy exactly.
        for enable in [false, true] {
            if enable {
                let _ = dst_ctx.enable_peer_access(src_ctx);
                let _ = src_ctx.enable_peer_access(dst_ctx);
            }
            let data: Vec<u32> = (0..1_000_003u32)
                .map(|i| i.wrapping_mul(2_654_435_761))
                .collect();
            let src = DeviceBuffer::from_slice(src_ctx, &data).expect("src");
            let mut dst = DeviceBuffer::<u32>::zeroed(dst_ctx, data.len()).expect("dst");
            dst.copy_from_peer(&src).expect("peer copy");
            assert_eq!(dst.to_vec().unwrap(), data, "sync peer copy");
            // Sub-range at odd offsets.
            let mut part = DeviceBuffer::<u32>::zeroed(dst_ctx, 1000).expect("part");
            part.copy_range_from_peer(1, &src, 12_345, 998)
                .expect("range");
            let got = part.to_vec().unwrap();
            assert_eq!(got[0], 0);
            assert_eq!(&got[1..999], &data[12_345..12_345 + 998]);
            assert_eq!(got[999], 0);
            // Bounds and sizes are checked before the driver sees them.
            assert!(matches!(
                part.copy_range_from_peer(0, &src, data.len() - 10, 11),
                Err(Error::OutOfBounds { .. })
            ));
            assert!(matches!(
                part.copy_range_from_peer(995, &src, 0, 6),
                Err(Error::OutOfBounds { .. })
            ));
            assert!(matches!(
                part.copy_from_peer(&src),
                Err(Error::SizeMismatch { .. })
            ));
            // Async on the destination's stream; a stream of the source's context is refused.
            let s = Stream::new(dst_ctx, StreamOptions::default()).expect("stream");
            let wrong = Stream::new(src_ctx, StreamOptions::default()).expect("stream");
            let mut dst2 = DeviceBuffer::<u32>::zeroed(dst_ctx, data.len()).expect("dst2");
            assert!(matches!(
                dst2.copy_from_peer_async(&src, &wrong),
                Err(Error::InvalidArgument { .. })
            ));
            dst2.copy_from_peer_async(&src, &s)
                .expect("async peer copy");
            // Freeing the source right away waits for the queued copy.
            drop(src);
            s.synchronize().expect("sync");
            assert_eq!(dst2.to_vec().unwrap(), data, "async peer copy");
        }
    }
}

#[test]
fn contexts_of_two_gpus_used_from_many_threads_at_once() {
    let Some((a, b)) = two_gpus("contexts_of_two_gpus_used_from_many_threads_at_once") else {
        return;
    };
    std::thread::scope(|s| {
        for t in 0..8u32 {
            let ctx = if t % 2 == 0 { a.clone() } else { b.clone() };
            s.spawn(move || {
                for round in 0..20u32 {
                    let data: Vec<u32> = (0..4096).map(|i| i ^ (t << 20) ^ round).collect();
                    let d = DeviceBuffer::from_slice(&ctx, &data).expect("alloc");
                    assert_eq!(d.to_vec().expect("read"), data);
                }
            });
        }
    });
}

#[test]
fn concurrent_checks_of_one_gpu_queue_and_both_pass() {
    let Some(_) = common::gpu("concurrent_checks_of_one_gpu_queue_and_both_pass") else {
        return;
    };
    let ex = Exclusive {
        run_dir: run_dir(),
        proc_root: "/proc".into(),
        wait: Wait::Yes,
    };
    let opts = HealthOptions::default();
    let reports: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| health::run_exclusive(common::ordinal(), &opts, &ex)))
            .collect();
        hs.into_iter().map(|h| h.join().unwrap().unwrap()).collect()
    });
    for r in &reports {
        assert_eq!(r.verdict, Verdict::Healthy, "{r:#?}");
    }
}

#[test]
fn no_wait_on_a_locked_gpu_is_busy_not_failed() {
    let Some(ctx) = common::gpu("no_wait_on_a_locked_gpu_is_busy_not_failed") else {
        return;
    };
    let dir = run_dir();
    let bdf = ctx.device().pci_location().unwrap().to_string();
    let held = GpuLock::acquire(&dir, &bdf, Wait::Yes).expect("lock");
    let ex = Exclusive {
        run_dir: dir.clone(),
        proc_root: "/proc".into(),
        wait: Wait::No,
    };
    let r = health::run_exclusive(common::ordinal(), &small(), &ex).expect("report");
    assert_eq!(r.verdict, Verdict::Busy);
    assert!(!r.passed);
    assert!(r.checks.is_empty());
    assert!(
        r.busy.as_deref().unwrap().contains("another health check"),
        "{r:?}"
    );
    drop(held);
    // Other tests of this binary may take the lock now: queue behind them.
    let ex = Exclusive {
        wait: Wait::Yes,
        ..ex
    };
    let r = health::run_exclusive(common::ordinal(), &small(), &ex).expect("report");
    assert_eq!(r.verdict, Verdict::Healthy, "{r:#?}");
}

#[test]
fn check_all_covers_every_gpu_and_every_peer_pair() {
    let Some(_) = common::gpu("check_all_covers_every_gpu_and_every_peer_pair") else {
        return;
    };
    let ex = Exclusive {
        run_dir: run_dir(),
        proc_root: "/proc".into(),
        wait: Wait::Yes,
    };
    let r = all_gpus::run_all(&small(), &ex).expect("check --all");
    let n = Device::count().unwrap();
    assert_eq!(r.devices.len() as u32, n);
    assert_eq!(r.verdict, Verdict::Healthy, "{r:#?}");
    if n < 2 {
        assert!(r.peers.skipped.as_deref().unwrap().contains("need two"));
        return;
    }
    let access = topology()
        .unwrap()
        .iter()
        .filter(|l| l.access_supported)
        .count();
    assert_eq!(r.peers.pairs.len(), access);
    for p in &r.peers.pairs {
        assert!(p.passed, "{p:?}");
        assert!(p.gbs.unwrap() > 1.0, "{p:?}");
        println!(
            "peer {} -> {}: {:.0} GB/s ({:?})",
            p.src,
            p.dst,
            p.gbs.unwrap(),
            p.link.link
        );
    }
}

/// A check past its deadline is reported at once as stuck (the step it was in, after the
/// checks it had done) instead of making its caller wait; the check goes on and keeps the
/// GPU's lock until it ends, so the next check queues behind it instead of joining a stuck
/// GPU. (A 1 ms deadline makes any check late; a really stuck GPU cannot be made on
/// purpose.)
#[test]
fn a_check_past_its_deadline_is_stuck_and_keeps_the_lock() {
    let Some(ctx) = common::gpu("a_check_past_its_deadline_is_stuck_and_keeps_the_lock") else {
        return;
    };
    let dir = run_dir();
    let bdf = ctx.device().pci_location().unwrap().to_string();
    let ex = Exclusive {
        run_dir: dir.clone(),
        proc_root: "/proc".into(),
        wait: Wait::Yes,
    };
    let opts = HealthOptions {
        deadline: std::time::Duration::from_millis(1),
        ..small()
    };
    let r = health::run_exclusive(common::ordinal(), &opts, &ex).expect("report");
    assert!(r.is_stuck(), "{r:#?}");
    assert!(!r.passed);
    assert_ne!(r.verdict, Verdict::Healthy);
    let last = r.checks.last().expect("the stuck step");
    assert_eq!(last.failure, Some(health::Failure::Stuck), "{last:?}");
    assert!(last.detail.contains("within the 1 ms deadline"), "{last:?}");
    // Still running, still locked: a check that will not wait is told busy.
    let probe = GpuLock::acquire(&dir, &bdf, Wait::No);
    assert!(matches!(probe, Err(Error::Busy { .. })), "{probe:?}");
    // Once the late check ends it lets go: queueing for the lock returns.
    drop(GpuLock::acquire(&dir, &bdf, Wait::Yes).expect("the lock after the check ended"));
}

//! The facade's health-check step on a real GPU (hw-test suite `cuda-lifecycle`): the GPU
//! named by PCI address, under the same per-GPU lock as `vm-accel cuda check`. Skipped,
//! with the reason, where no usable GPU is found.

use vm_accel::gpu_check::{self, Exclusive, HealthOptions};
use vm_accel::vm_cuda::health::Verdict;
use vm_accel::vm_cuda::sharing::{GpuLock, Wait};
use vm_accel::vm_cuda::Device;
use vm_accel::vm_pci::Bdf;

/// The PCI address of CUDA device 0, or `None` after reporting the skip.
fn gpu0(test: &str) -> Option<Bdf> {
    let d = match Device::get(0) {
        Ok(d) => d,
        Err(e) if e.means_no_gpu() => {
            vm_accel_tests::hw::skip(test, &format!("no usable GPU: {e}"));
            return None;
        }
        Err(e) => panic!("{test}: CUDA device 0: {e}"),
    };
    let p = d.pci_location().expect("PCI location");
    Some(gpu_check::bdf_of(&p).expect("a GPU's PCI address"))
}

fn ex(dir: &tempfile::TempDir, wait: Wait) -> Exclusive {
    Exclusive {
        run_dir: dir.path().to_path_buf(),
        proc_root: "/proc".into(),
        wait,
    }
}

#[test]
fn a_gpu_named_by_pci_address_is_checked() {
    let Some(bdf) = gpu0("a_gpu_named_by_pci_address_is_checked") else {
        return;
    };
    let dir = tempfile::tempdir().expect("run dir");
    let r = gpu_check::check(bdf, &HealthOptions::default(), &ex(&dir, Wait::Yes)).expect("report");
    assert_eq!(r.verdict, Verdict::Healthy, "{r:#?}");
    assert_eq!(
        r.device.ordinal,
        gpu_check::cuda_ordinal(bdf).expect("ordinal")
    );
    // A function the CUDA driver does not own is named in the error, not guessed at.
    let other = Bdf::new(bdf.domain(), bdf.bus(), bdf.device(), 7).expect("function 7");
    let err = gpu_check::check(other, &HealthOptions::default(), &ex(&dir, Wait::Yes))
        .expect_err("not a CUDA device");
    assert!(
        err.to_string().contains("does not see this device"),
        "{err}"
    );
}

/// Two checks of one GPU at once (a VMM's check of the GPU it released and an operator's)
/// queue on the lock and both pass; unlocked, they measure each other and fail the
/// bandwidth bar (seen on an H200: 47% and 60% of peak).
#[test]
fn concurrent_facade_checks_of_one_gpu_queue_and_both_pass() {
    let Some(bdf) = gpu0("concurrent_facade_checks_of_one_gpu_queue_and_both_pass") else {
        return;
    };
    let dir = tempfile::tempdir().expect("run dir");
    let (opts, ex) = (HealthOptions::default(), ex(&dir, Wait::Yes));
    let reports: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = (0..2)
            .map(|_| s.spawn(|| gpu_check::check(bdf, &opts, &ex)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("check thread").expect("report"))
            .collect()
    });
    for r in &reports {
        assert_eq!(r.verdict, Verdict::Healthy, "{r:#?}");
    }
}

#[test]
fn a_locked_gpu_is_busy_for_the_facade_too() {
    let Some(bdf) = gpu0("a_locked_gpu_is_busy_for_the_facade_too") else {
        return;
    };
    let dir = tempfile::tempdir().expect("run dir");
    let held = GpuLock::acquire(dir.path(), &bdf.to_string(), Wait::Yes).expect("lock");
    let r = gpu_check::check(bdf, &HealthOptions::default(), &ex(&dir, Wait::No)).expect("report");
    assert_eq!(r.verdict, Verdict::Busy, "{r:#?}");
    assert!(r.checks.is_empty());
    drop(held);
}

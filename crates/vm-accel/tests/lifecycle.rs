//! The facade's typed lifecycle on a simulated host (vm-vfio's simulated kernel over a
//! sysfs-shaped tree): prepare binds the group, an attach that cannot happen hands the
//! `Prepared` device back untouched, release restores the original drivers exactly, and a
//! health check without CUDA is a typed error, never a pass.

use std::sync::Arc;
use std::time::Duration;

use vm_accel::attach::{AttachOptions, AttachVm, VmLayout};
use vm_accel::vm_vfio::access::{BackendChoice, BackendKind};
use vm_accel::vm_vfio::bind::sim::SimHost;
use vm_accel::vm_vfio::bind::{Binder, DriverState, Paths, RecordStore};
use vm_pci::Bdf;

fn state(p: &Paths, b: Bdf) -> DriverState {
    p.driver_state(b).expect("driver state")
}

#[test]
fn prepare_attach_refused_release_and_health_check() {
    let dir = tempfile::tempdir().expect("tempdir");
    let sys = dir.path().join("sys");
    std::fs::create_dir(&sys).expect("sys");
    let kernel = SimHost::gpu_with_audio()
        .build(&sys)
        .expect("simulated host");
    let paths = Paths::new(&sys);
    let store =
        RecordStore::new(dir.path().join("run")).with_lock_timeout(Duration::from_millis(200));
    let mut binder = Binder::new(paths.clone(), kernel, store)
        .with_probe_timeout(Duration::from_millis(30))
        .with_readiness(None);
    let gpu: Bdf = "0000:41:00.0".parse().expect("bdf");
    let audio: Bdf = "0000:41:00.1".parse().expect("bdf");
    let before = (state(&paths, gpu), state(&paths, audio));

    let prepared = vm_accel::prepare(&mut binder, gpu).expect("prepare");
    assert_eq!(prepared.bdf(), gpu);
    for b in [gpu, audio] {
        assert_eq!(state(&paths, b).driver.as_deref(), Some("vfio-pci"), "{b}");
    }

    // Attach needs /dev/kvm and a VFIO device node; neither a simulated host nor this
    // machine has the latter, so the step is refused and gives the device back.
    let prepared = match kvm_ioctls::Kvm::new() {
        Ok(kvm) => {
            let vm = Arc::new(kvm.create_vm().expect("VM"));
            vm.create_irq_chip().expect("irqchip");
            let mem = vm_memory::GuestMemoryMmap::<()>::from_ranges(&[(
                vm_memory::GuestAddress(0),
                1 << 20,
            )])
            .expect("RAM");
            let avm = AttachVm::new(vm, &mem, VmLayout::default()).expect("AttachVm");
            let refused = prepared
                .attach(
                    &avm,
                    BackendChoice::Force(BackendKind::Legacy),
                    &AttachOptions::default(),
                )
                .expect_err("no VFIO here");
            assert!(
                refused.error.to_string().contains("legacy"),
                "{}",
                refused.error
            );
            assert!(avm.dma_mappings().is_empty(), "nothing mapped");
            refused.state
        }
        Err(e) => {
            vm_accel_tests::hw::skip("lifecycle attach step", &format!("/dev/kvm: {e}"));
            prepared
        }
    };
    // Still bound: a refused attach changed nothing.
    assert_eq!(state(&paths, gpu).driver.as_deref(), Some("vfio-pci"));

    let released = prepared.release(&mut binder).expect("release");
    assert_eq!(released.bdf(), gpu);
    assert_eq!(
        (state(&paths, gpu), state(&paths, audio)),
        before,
        "original drivers and overrides back"
    );
    let e = released
        .health_check(&Default::default())
        .expect_err("no CUDA on this machine");
    let _ = e.to_string();
}

//! The lifecycle against the simulated kernel, including the fault-injection proof: for a
//! failure injected at every single step, every device ends on exactly its original driver
//! and driver_override.

use std::time::Duration;

use proptest::prelude::*;

use super::sim::{Fault, SimDevice, SimHost, SimKernel};
use super::*;

fn bdf(s: &str) -> Bdf {
    s.parse().unwrap()
}

struct Host {
    _dir: tempfile::TempDir,
    binder: Binder<SimKernel>,
    devices: Vec<Bdf>,
}

fn host(sim: SimHost) -> Host {
    let dir = tempfile::tempdir().unwrap();
    let sys = dir.path().join("sys");
    std::fs::create_dir(&sys).unwrap();
    let kernel = sim.build(&sys).unwrap();
    let paths = Paths::new(&sys);
    let devices = std::fs::read_dir(sys.join("bus/pci/devices"))
        .unwrap()
        .map(|e| e.unwrap().file_name().to_str().unwrap().parse().unwrap())
        .collect();
    let store =
        RecordStore::new(dir.path().join("run")).with_lock_timeout(Duration::from_millis(200));
    let binder = Binder::new(paths, kernel, store).with_probe_timeout(Duration::from_millis(30));
    Host {
        _dir: dir,
        binder,
        devices,
    }
}

impl Host {
    fn snapshot(&self) -> Vec<(Bdf, DriverState)> {
        let mut v: Vec<_> = self
            .devices
            .iter()
            .map(|b| (*b, self.binder.paths().driver_state(*b).unwrap()))
            .collect();
        v.sort_by_key(|(b, _)| *b);
        v
    }
    fn state(&self, b: &str) -> DriverState {
        self.binder.paths().driver_state(bdf(b)).unwrap()
    }
}

/// A GPU with its audio function in group 5 behind a bridge, plus an unrelated NIC.
fn gpu_host() -> SimHost {
    SimHost::gpu_with_audio().device(SimDevice::endpoint("0000:42:00.0", 6, Some("mlx5_core")))
}

fn st(driver: Option<&str>, ov: Option<&str>) -> DriverState {
    DriverState {
        driver: driver.map(str::to_string),
        driver_override: ov.map(str::to_string),
    }
}

#[test]
fn plan_lists_the_exact_writes() {
    let h = host(gpu_host());
    let plan = h.binder.plan(bdf("0000:41:00.0")).unwrap();
    assert!(plan.refusals.is_empty(), "{:?}", plan.refusals);
    assert_eq!(plan.iommu_group, Some(5));
    let root = h.binder.paths().root().display().to_string();
    let ops: Vec<String> = plan
        .ops()
        .iter()
        .map(|o| o.to_string().replace(&root, "/sys"))
        .collect();
    assert_eq!(
        ops,
        [
            "modprobe vfio-pci",
            "echo vfio-pci > /sys/bus/pci/devices/0000:41:00.0/driver_override",
            "echo 0000:41:00.0 > /sys/bus/pci/drivers/nvidia/unbind",
            "echo 0000:41:00.0 > /sys/bus/pci/drivers_probe",
            "echo vfio-pci > /sys/bus/pci/devices/0000:41:00.1/driver_override",
            "echo 0000:41:00.1 > /sys/bus/pci/drivers/snd_hda_intel/unbind",
            "echo 0000:41:00.1 > /sys/bus/pci/drivers_probe",
        ]
    );
    let actions: Vec<_> = plan
        .devices
        .iter()
        .map(|d| (d.bdf.to_string(), d.action))
        .collect();
    assert!(actions.contains(&("0000:40:01.0".into(), Action::Bridge)));
}

#[test]
fn prepare_then_release_restores_exactly() {
    let mut h = host(gpu_host());
    let before = h.snapshot();
    let out = h.binder.prepare(bdf("0000:41:00.0")).unwrap();
    assert!(out.changed);
    assert_eq!(out.devices.len(), 2);
    assert_eq!(
        h.state("0000:41:00.0"),
        st(Some("vfio-pci"), Some("vfio-pci"))
    );
    assert_eq!(
        h.state("0000:41:00.1"),
        st(Some("vfio-pci"), Some("vfio-pci"))
    );
    // Bridges and other groups are untouched.
    assert_eq!(h.state("0000:40:01.0"), st(Some("pcieport"), None));
    assert_eq!(h.state("0000:42:00.0"), st(Some("mlx5_core"), None));
    let rec = h.binder.record().unwrap();
    assert_eq!(rec.bindings.len(), 1);
    assert_eq!(rec.bindings[0].phase, Phase::Bound);

    // A second prepare is a no-op; releasing through the other function releases the group.
    assert!(!h.binder.prepare(bdf("0000:41:00.0")).unwrap().changed);
    h.binder.release(bdf("0000:41:00.1")).unwrap();
    assert_eq!(h.snapshot(), before);
    assert!(h.binder.record().unwrap().bindings.is_empty());
    assert!(!h.binder.store().record_path().exists());
}

#[test]
fn original_override_and_unbound_devices_come_back_as_they_were() {
    let mut odd = SimDevice::endpoint("0000:41:00.0", 5, Some("nvidia"));
    odd.driver_override = Some("nvidia".into());
    let h0 = SimHost::new()
        .device(odd)
        .device(SimDevice::edu("0000:41:00.1", 5));
    let mut h = host(h0);
    let before = h.snapshot();
    h.binder.prepare(bdf("0000:41:00.1")).unwrap();
    assert_eq!(h.state("0000:41:00.1").driver.as_deref(), Some("vfio-pci"));
    h.binder.release(bdf("0000:41:00.1")).unwrap();
    assert_eq!(h.snapshot(), before);
    assert_eq!(h.state("0000:41:00.1"), st(None, None));
    assert_eq!(h.state("0000:41:00.0"), st(Some("nvidia"), Some("nvidia")));
}

#[test]
fn refuses_without_iommu_group_and_for_bridges_and_writes_nothing() {
    let mut lone = SimDevice::endpoint("0000:41:00.0", 0, Some("nvidia"));
    lone.iommu_group = None;
    let mut h = host(
        SimHost::new()
            .device(lone)
            .device(SimDevice::bridge("0000:40:01.0", 3)),
    );
    let e = h.binder.prepare(bdf("0000:41:00.0")).unwrap_err();
    assert!(e.to_string().contains("no IOMMU group"), "{e}");
    let e = h.binder.prepare(bdf("0000:40:01.0")).unwrap_err();
    assert!(e.to_string().contains("is a bridge"), "{e}");
    assert_eq!(h.binder.kernel_mut().steps(), 0);
    let e = h.binder.prepare(bdf("0000:99:00.0")).unwrap_err();
    assert!(matches!(e, BindError::Read { .. }), "{e}");
}

#[test]
fn readiness_checks_of_vm_pci_refuse() {
    let mut h = host(gpu_host());
    // vm-pci's checks run by default: a group mate of the boot VGA device is refused.
    let vga = h.binder.paths().device_dir(bdf("0000:41:00.1")).unwrap();
    std::fs::write(vga.join("boot_vga"), "1\n").unwrap();
    let e = h.binder.prepare(bdf("0000:41:00.0")).unwrap_err();
    assert!(
        e.to_string()
            .contains("boot_vga: 0000:41:00.0 shares its IOMMU group"),
        "{e}"
    );
    // Interrupt remapping off on the command line is refused too.
    std::fs::write(vga.join("boot_vga"), "0\n").unwrap();
    let cmdline = h.binder.paths().root().join("cmdline");
    std::fs::write(cmdline, "intel_iommu=on intremap=off\n").unwrap();
    let e = h.binder.prepare(bdf("0000:41:00.0")).unwrap_err();
    assert!(
        e.to_string().contains("interrupt_remapping: disabled"),
        "{e}"
    );
    assert_eq!(h.binder.kernel_mut().steps(), 0);
    // An operator can accept a named failure, and only that one.
    let Host { _dir, binder, .. } = h;
    let mut b = binder.with_readiness(Some(vm_pci_readiness_allowing(vec!["reset".into()])));
    assert!(b.prepare(bdf("0000:41:00.0")).is_err());
    let allow = vec!["interrupt_remapping".into(), "iommu_enabled".into()];
    let mut b = b.with_readiness(Some(vm_pci_readiness_allowing(allow)));
    b.prepare(bdf("0000:41:00.0")).unwrap();
    // Some failures cannot be allowed: with no IOMMU there is nothing to bind to.
    let root = b.paths().root().to_path_buf();
    std::fs::remove_dir_all(root.join("class/iommu")).unwrap();
    std::fs::remove_dir_all(root.join("kernel/iommu_groups")).unwrap();
    std::fs::create_dir_all(root.join("kernel/iommu_groups")).unwrap();
    let nic = b.paths().device_dir(bdf("0000:42:00.0")).unwrap();
    std::fs::remove_file(nic.join("iommu_group")).unwrap();
    let e = b.plan(bdf("0000:42:00.0")).unwrap().refusals.join("; ");
    assert!(e.contains("iommu_enabled: no IOMMU"), "{e}");
    assert!(!e.contains("--allow iommu_enabled"), "{e}");
}

#[test]
fn readiness_hook_can_be_replaced() {
    let Host { _dir, binder, .. } = host(gpu_host());
    let mut b = binder.with_readiness(Some(Box::new(|_, b| vec![format!("{b}: custom")])));
    let e = b.prepare(bdf("0000:41:00.0")).unwrap_err();
    assert!(e.to_string().contains("0000:41:00.0: custom"), "{e}");
    assert_eq!(b.kernel_mut().steps(), 0);
}

#[test]
fn missing_vfio_module_is_a_clear_error_and_nothing_changes() {
    let mut h = host(gpu_host().without_vfio_module());
    let before = h.snapshot();
    let e = h.binder.prepare(bdf("0000:41:00.0")).unwrap_err();
    assert!(
        e.to_string().contains("vfio-pci driver is not available"),
        "{e}"
    );
    assert_eq!(h.snapshot(), before);
}

#[test]
fn already_on_vfio_is_left_alone_and_unbind_refuses_what_it_did_not_bind() {
    let mut d = SimDevice::endpoint("0000:41:00.0", 5, Some("vfio-pci"));
    d.native_driver = Some("nvidia".into());
    let mut h = host(SimHost::new().device(d));
    let out = h.binder.prepare(bdf("0000:41:00.0")).unwrap();
    assert!(!out.changed);
    let e = h.binder.release(bdf("0000:41:00.0")).unwrap_err();
    assert!(matches!(e, BindError::NotRecorded { .. }), "{e}");
    assert_eq!(h.state("0000:41:00.0").driver.as_deref(), Some("vfio-pci"));
}

/// Runs a clean prepare to count its steps.
fn clean_prepare_steps(sim: fn() -> SimHost, target: &str) -> usize {
    let mut h = host(sim());
    h.binder.prepare(bdf(target)).unwrap();
    h.binder.kernel_mut().steps()
}

#[test]
fn fault_at_every_step_of_prepare_rolls_back_exactly() {
    let n = clean_prepare_steps(gpu_host, "0000:41:00.0");
    assert_eq!(n, 7, "modprobe + 3 writes for each of the two endpoints");
    for fault in [
        Fault::Errno(libc::EIO),
        Fault::Errno(libc::EBUSY),
        Fault::Ignored,
    ] {
        for step in 0..n {
            let mut h = host(gpu_host());
            let before = h.snapshot();
            h.binder.kernel_mut().inject(step, fault);
            let e = h
                .binder
                .prepare(bdf("0000:41:00.0"))
                .expect_err(&format!("fault {fault:?} at step {step} must fail prepare"));
            match &e {
                BindError::Failed {
                    rollback_failures, ..
                } => assert!(rollback_failures.is_empty(), "step {step}: {e}"),
                other => panic!("step {step}: unexpected error {other}"),
            }
            assert_eq!(h.snapshot(), before, "{fault:?} at step {step}: {e}");
            assert!(h.binder.record().unwrap().bindings.is_empty());
        }
    }
}

#[test]
fn fault_at_every_step_of_release_is_recoverable_by_restore() {
    let mut probe = host(gpu_host());
    probe.binder.prepare(bdf("0000:41:00.0")).unwrap();
    let bind_steps = probe.binder.kernel_mut().steps();
    probe.binder.release(bdf("0000:41:00.0")).unwrap();
    let n = probe.binder.kernel_mut().steps() - bind_steps;
    assert_eq!(n, 6, "override + unbind + bind for each endpoint");
    for step in 0..n {
        let mut h = host(gpu_host());
        let before = h.snapshot();
        h.binder.prepare(bdf("0000:41:00.0")).unwrap();
        h.binder
            .kernel_mut()
            .inject(bind_steps + step, Fault::Errno(libc::EIO));
        let e = h.binder.release(bdf("0000:41:00.0")).unwrap_err();
        assert!(matches!(e, BindError::ReleaseFailed { .. }), "{e}");
        // Nothing may be on a driver other than vfio-pci or its original one.
        for (b, s) in h.snapshot() {
            let orig = &before.iter().find(|(x, _)| *x == b).unwrap().1;
            assert!(
                s.driver == orig.driver
                    || s.driver.as_deref() == Some(VFIO_PCI)
                    || s.driver.is_none(),
                "step {step}: {b} on {s}"
            );
        }
        let rec = h.binder.record().unwrap();
        assert_eq!(rec.bindings[0].phase, Phase::Releasing);
        let results = h.binder.restore().unwrap();
        assert_eq!(results.len(), 1);
        results.into_iter().for_each(|r| {
            r.unwrap();
        });
        assert_eq!(h.snapshot(), before, "release fault at step {step}");
    }
}

#[test]
fn fault_during_rollback_keeps_the_record_and_restore_finishes() {
    let n = clean_prepare_steps(gpu_host, "0000:41:00.0");
    // Fail the second endpoint's probe, then fail the first write of the rollback.
    let mut h = host(gpu_host());
    let before = h.snapshot();
    h.binder.kernel_mut().inject(n - 1, Fault::Errno(libc::EIO));
    h.binder.kernel_mut().inject(n, Fault::Errno(libc::EIO));
    let e = h.binder.prepare(bdf("0000:41:00.0")).unwrap_err();
    let msg = e.to_string();
    assert!(msg.contains("ROLLBACK INCOMPLETE"), "{msg}");
    assert!(msg.contains("os error 5"), "errno named: {msg}");
    assert_eq!(h.binder.record().unwrap().bindings[0].phase, Phase::Binding);
    // A new prepare refuses until the host is restored.
    let e = h.binder.prepare(bdf("0000:41:00.0")).unwrap_err();
    assert!(matches!(e, BindError::Interrupted { .. }), "{e}");
    for r in h.binder.restore().unwrap() {
        r.unwrap();
    }
    assert_eq!(h.snapshot(), before);
}

#[test]
fn crash_after_partial_bind_is_restored_from_the_record() {
    // Simulate a process killed mid-bind: record written, some writes done, no rollback.
    let mut h = host(gpu_host());
    let before = h.snapshot();
    let plan = h.binder.plan(bdf("0000:41:00.0")).unwrap();
    {
        let store = h.binder.store().clone();
        let lock = store.lock().unwrap();
        let mut rec = store.load(&lock).unwrap();
        rec.bindings.push(BindingRecord {
            target: plan.target,
            iommu_group: plan.iommu_group,
            phase: Phase::Binding,
            devices: plan.bind_records(),
            pid: 1,
            created: 0,
        });
        store.save(&lock, &rec).unwrap();
    }
    let ops = plan.ops();
    for op in &ops[..4] {
        h.binder.kernel_mut().apply(op).unwrap();
    }
    assert_eq!(h.state("0000:41:00.0").driver.as_deref(), Some("vfio-pci"));
    for r in h.binder.restore().unwrap() {
        r.unwrap();
    }
    assert_eq!(h.snapshot(), before);
}

#[test]
fn an_unloaded_original_driver_leaves_the_device_on_vfio_pci_until_restore() {
    let mut h = host(gpu_host());
    let before = h.snapshot();
    h.binder.prepare(bdf("0000:41:00.0")).unwrap();
    // The audio driver's module is unloaded meanwhile.
    let drv = h.binder.paths().driver_dir("snd_hda_intel");
    let saved = h._dir.path().join("snd_hda_intel.saved");
    std::fs::rename(&drv, &saved).unwrap();
    let e = h.binder.release(bdf("0000:41:00.0")).unwrap_err();
    assert!(
        e.to_string()
            .contains("original driver snd_hda_intel is no longer registered"),
        "{e}"
    );
    // Not driverless: still on vfio-pci, with its override; the GPU went back.
    assert_eq!(
        h.state("0000:41:00.1"),
        st(Some("vfio-pci"), Some("vfio-pci"))
    );
    assert_eq!(h.state("0000:41:00.0"), st(Some("nvidia"), None));
    // Module back: restore finishes.
    std::fs::rename(&saved, &drv).unwrap();
    for r in h.binder.restore().unwrap() {
        r.unwrap();
    }
    assert_eq!(h.snapshot(), before);
}

#[test]
fn release_rebinds_the_exact_driver_not_whatever_probes_first() {
    // Held by pci-stub (through new_id) although nvidia is what a probe would pick.
    let mut d = SimDevice::endpoint("0000:41:00.0", 5, Some("pci-stub"));
    d.native_driver = Some("nvidia".into());
    d.extra_drivers = vec!["pci-stub".into()];
    let mut h = host(SimHost::new().device(d));
    let before = h.snapshot();
    h.binder.prepare(bdf("0000:41:00.0")).unwrap();
    h.binder.release(bdf("0000:41:00.0")).unwrap();
    assert_eq!(h.state("0000:41:00.0").driver.as_deref(), Some("pci-stub"));
    assert_eq!(h.snapshot(), before);
}

#[test]
fn a_device_removed_since_binding_does_not_block_restore() {
    let mut h = host(gpu_host());
    h.binder.prepare(bdf("0000:41:00.0")).unwrap();
    // The audio function is hot-unplugged.
    let link = h.binder.paths().device(bdf("0000:41:00.1"));
    std::fs::remove_file(link).unwrap();
    let out = h.binder.release(bdf("0000:41:00.0")).unwrap();
    assert_eq!(out.devices.len(), 2);
    assert!(
        out.devices.iter().any(|d| d.after.is_none()),
        "the gone device has no state"
    );
    assert_eq!(h.state("0000:41:00.0"), st(Some("nvidia"), None));
    assert!(h.binder.record().unwrap().bindings.is_empty());
}

#[test]
fn lock_excludes_a_second_binder() {
    let mut h = host(gpu_host());
    let store = h.binder.store().clone();
    let _held = store.lock().unwrap();
    let e = h.binder.prepare(bdf("0000:41:00.0")).unwrap_err();
    assert!(
        matches!(e, BindError::Record(RecordError::Locked { .. })),
        "{e}"
    );
    assert_eq!(h.binder.kernel_mut().steps(), 0);
}

fn driver_name() -> impl Strategy<Value = Option<String>> {
    prop_oneof![
        Just(None),
        Just(Some("nvidia".to_string())),
        Just(Some("snd_hda_intel".to_string())),
        Just(Some("xhci_hcd".to_string())),
        Just(Some("vfio-pci".to_string())),
    ]
}

#[derive(Debug, Clone)]
struct Shape {
    endpoints: Vec<(Option<String>, Option<String>)>,
    bridges: usize,
    vfio_loaded: bool,
}

fn shape() -> impl Strategy<Value = Shape> {
    (
        prop::collection::vec(
            (
                driver_name(),
                prop_oneof![
                    Just(None),
                    Just(Some("nvidia".to_string())),
                    Just(Some("vfio-pci".to_string()))
                ],
            ),
            1..5,
        ),
        0usize..3,
        any::<bool>(),
    )
        .prop_map(|(endpoints, bridges, vfio_loaded)| Shape {
            endpoints,
            bridges,
            vfio_loaded,
        })
}

fn build_shape(s: &Shape) -> SimHost {
    let mut sim = SimHost::new();
    if s.vfio_loaded {
        sim = sim.loaded(VFIO_PCI);
    }
    for i in 0..s.bridges {
        sim = sim.device(SimDevice::bridge(&format!("0000:40:{:02x}.0", i), 9));
    }
    for (i, (drv, ov)) in s.endpoints.iter().enumerate() {
        let mut d = SimDevice::endpoint(&format!("0000:41:00.{i}"), 9, drv.as_deref());
        // A device bound to vfio-pci natively matches some other driver.
        if drv.as_deref() == Some(VFIO_PCI) {
            d.native_driver = Some("nvidia".into());
        }
        // A consistent override: the kernel only binds what the override names.
        d.driver_override = match (drv.as_deref(), ov.as_deref()) {
            (Some(d), Some(_)) => Some(d.to_string()),
            (None, o) => o.map(str::to_string),
            _ => None,
        };
        if d.driver_override.is_some() && drv.is_none() {
            // Unbound with an override: vfio-pci will be asked for; keep it meaningful.
            d.native_driver = None;
        }
        sim = sim.device(d);
    }
    sim.device(SimDevice::endpoint("0000:42:00.0", 10, Some("mlx5_core")))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 64, ..ProptestConfig::default() })]

    /// Random group shapes, a random fault (kind and step) during prepare: either prepare
    /// succeeds and release restores the host exactly, or it fails and the host is exactly
    /// as it was.
    #[test]
    fn random_faults_never_lose_a_device(s in shape(), step in 0usize..16, errno_fault in any::<bool>()) {
        let mut h = host(build_shape(&s));
        let before = h.snapshot();
        let fault = if errno_fault { Fault::Errno(libc::EIO) } else { Fault::Ignored };
        h.binder.kernel_mut().inject(step, fault);
        match h.binder.prepare(bdf("0000:41:00.0")) {
            Ok(_) => {
                for (b, st) in h.snapshot() {
                    if b.bus() == 0x41 {
                        prop_assert_eq!(st.driver.as_deref(), Some(VFIO_PCI), "{} not on vfio-pci", b);
                    }
                }
                h.binder.kernel_mut().clear_faults();
                h.binder.release(bdf("0000:41:00.0")).ok();
                // release errs only if nothing was recorded (all already on vfio-pci)
            }
            Err(BindError::Failed { rollback_failures, .. }) => {
                prop_assert!(rollback_failures.is_empty());
            }
            Err(e) => prop_assert!(false, "unexpected error: {}", e),
        }
        prop_assert_eq!(h.snapshot(), before);
        prop_assert!(h.binder.record().unwrap().bindings.is_empty());
    }
}

// Host safety (issue 10): writes stay inside the root, names from records are checked,
// dry runs are read-only and faithful, devices the host uses are refused.

#[test]
fn a_crafted_record_cannot_steer_restore_out_of_sysfs() {
    let mut h = host(gpu_host());
    let outside = h.binder.paths().root().parent().unwrap().join("tmp/x");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("bind"), "").unwrap();
    let run = h.binder.store().dir().to_path_buf();
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("bindings.json"),
        r#"{"version":1,"bindings":[{"target":"0000:41:00.0","iommu_group":5,"phase":"bound",
        "devices":[{"bdf":"0000:41:00.0","original":{"driver":"../../../../tmp/x","driver_override":null}}],
        "pid":1,"created":0}]}"#,
    )
    .unwrap();
    let e = h.binder.restore().unwrap_err();
    assert!(
        e.to_string().contains("not a driver name"),
        "refused as malformed: {e}"
    );
    assert_eq!(h.binder.kernel_mut().steps(), 0);
    assert_eq!(std::fs::read_to_string(outside.join("bind")).unwrap(), "");
}

#[test]
fn a_write_through_a_link_out_of_the_root_is_refused_before_it_happens() {
    let mut h = host(gpu_host().loaded("vfio-pci"));
    let root = h.binder.paths().root().to_path_buf();
    // The nvidia driver directory is a link to somewhere outside the tree.
    let outside = root.parent().unwrap().join("outside-driver");
    std::fs::create_dir_all(&outside).unwrap();
    std::fs::write(outside.join("unbind"), "").unwrap();
    let drv = root.join("bus/pci/drivers/nvidia");
    std::fs::remove_dir_all(&drv).unwrap();
    std::os::unix::fs::symlink(&outside, &drv).unwrap();
    let before = h.state("0000:41:00.0");
    let e = h.binder.prepare(bdf("0000:41:00.0")).unwrap_err();
    assert!(e.to_string().contains("outside the sysfs root"), "{e}");
    assert_eq!(std::fs::read_to_string(outside.join("unbind")).unwrap(), "");
    assert_eq!(h.state("0000:41:00.0"), before, "rolled back");
}

#[test]
fn a_device_its_group_does_not_list_is_an_error_not_a_plan_for_others() {
    let h = host(gpu_host());
    let root = h.binder.paths().root().to_path_buf();
    std::fs::remove_file(root.join("kernel/iommu_groups/5/devices/0000:41:00.0")).unwrap();
    let e = h.binder.plan(bdf("0000:41:00.0")).unwrap_err();
    assert!(e.to_string().contains("does not list it"), "{e}");
}

#[test]
fn dry_runs_take_no_lock_create_nothing_and_refuse_like_the_real_run() {
    let mut h = host(gpu_host());
    let run = h.binder.store().dir().to_path_buf();
    h.binder.preview(bdf("0000:41:00.0")).unwrap();
    h.binder.record().unwrap();
    assert!(!run.exists(), "a dry run created {}", run.display());
    // A bind killed mid-way: the real run refuses, so the dry run must too.
    std::fs::create_dir_all(&run).unwrap();
    std::fs::write(
        run.join("bindings.json"),
        r#"{"version":1,"bindings":[{"target":"0000:41:00.0","iommu_group":5,"phase":"binding",
        "devices":[{"bdf":"0000:41:00.0","original":{"driver":"nvidia","driver_override":null}}],
        "pid":1,"created":0}]}"#,
    )
    .unwrap();
    let real = h.binder.prepare(bdf("0000:41:00.0")).unwrap_err();
    assert!(matches!(real, BindError::Interrupted { .. }), "{real}");
    let dry = h.binder.preview(bdf("0000:41:00.1")).unwrap_err();
    assert!(matches!(dry, BindError::Interrupted { .. }), "{dry}");
    // While another process holds the lock, a dry run still answers at once.
    let _held = h.binder.store().lock().unwrap();
    let started = std::time::Instant::now();
    assert!(h.binder.record().is_ok());
    assert!(started.elapsed() < Duration::from_millis(150));
}

#[test]
fn a_device_the_host_uses_is_refused_unless_allowed() {
    let h = host(gpu_host().loaded("vfio-pci"));
    let root = h.binder.paths().root().to_path_buf();
    // A process holds the GPU's device node (the driver's minor map is absent, so any
    // /dev/nvidiaN may be this GPU).
    let fd = root.join("proc/777/fd");
    std::fs::create_dir_all(&fd).unwrap();
    std::fs::write(root.join("proc/777/comm"), "python3\n").unwrap();
    std::os::unix::fs::symlink("/dev/nvidia0", fd.join("5")).unwrap();
    let plan = h.binder.plan(bdf("0000:41:00.1")).unwrap();
    let r = plan.refusals.join("; ");
    assert!(
        r.contains("in_use:") && r.contains("/dev/nvidia0 open by pid 777 (python3)"),
        "{r}"
    );
    assert!(r.contains("--allow in_use"), "the override is named: {r}");
    let Host { _dir, binder, .. } = h;
    let b = binder.with_readiness(Some(vm_pci_readiness_allowing(vec!["in_use".into()])));
    assert!(b.plan(bdf("0000:41:00.1")).unwrap().refusals.is_empty());
}

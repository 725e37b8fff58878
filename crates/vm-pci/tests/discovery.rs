//! Discovery against real captures (tests/fixtures/sysfs) and synthetic trees (vm_pci::fixture).

use std::path::PathBuf;

use vm_pci::config::{CapDetail, ExtDetail, PortType};
use vm_pci::fixture::{self, ConfigBuilder, DeviceSpec, TreeBuilder};
use vm_pci::readiness::{all_pass, device_checks, host_checks};
use vm_pci::{Bdf, Inventory, Level, SysfsRoot, Viability};

fn capture(name: &str) -> SysfsRoot {
    SysfsRoot::new(
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("../../tests/fixtures/sysfs")
            .join(name),
    )
}

fn bdf(s: &str) -> Bdf {
    s.parse().expect("valid test BDF")
}

fn check<'a>(checks: &'a [vm_pci::Check], id: &str) -> &'a vm_pci::Check {
    checks
        .iter()
        .find(|c| c.id == id)
        .unwrap_or_else(|| panic!("no {id} check in {checks:#?}"))
}

#[test]
fn h200_capture_devices_bars_and_caps() {
    let inv = Inventory::scan(&capture("h200-host")).unwrap();
    assert_eq!(inv.devices.len(), 7);
    assert!(inv.unreadable.is_empty());
    let accel: Vec<Bdf> = inv
        .devices
        .iter()
        .filter(|d| d.is_accelerator())
        .map(|d| d.bdf)
        .collect();
    assert_eq!(accel, vec![bdf("0000:00:06.0")]);
    assert_eq!(inv.devices_accelerators_first()[0].bdf, bdf("0000:00:06.0"));

    let gpu = inv.device(bdf("0000:00:06.0")).unwrap();
    assert_eq!((gpu.vendor_id, gpu.device_id), (0x10de, 0x2335));
    assert_eq!(gpu.device_name, Some("GH100 [H200 SXM 141GB]"));
    assert_eq!(gpu.class_name, "3D controller");
    assert_eq!(gpu.driver.as_deref(), Some("nvidia"));
    assert_eq!(gpu.driver_override, None);
    assert_eq!(gpu.numa_node, None, "numa_node -1 means no affinity");
    assert_eq!(gpu.reset_methods, vec!["flr"]);
    assert_eq!(
        (gpu.subsystem_vendor_id, gpu.subsystem_device_id),
        (Some(0x10de), Some(0x18bf))
    );
    let bars: Vec<(usize, u64, u64, bool, bool)> = gpu
        .bars
        .iter()
        .map(|b| (b.index, b.address, b.size, b.is_64bit, b.prefetchable))
        .collect();
    assert_eq!(
        bars,
        vec![
            (0, 0x1040_0200_0000, 16 << 20, true, true),
            (2, 0x1000_0000_0000, 256 << 30, true, true),
            (4, 0x1040_0000_0000, 32 << 20, true, true),
        ]
    );
    assert_eq!(gpu.largest_bar().map(|b| b.index), Some(2));
    let link = gpu.link.as_ref().unwrap();
    assert_eq!(
        (link.current_speed.as_deref(), link.current_width),
        (Some("32.0 GT/s PCIe"), Some(16))
    );
    assert!(!link.is_degraded());

    let caps = &gpu.capabilities;
    assert!(caps.warnings.is_empty(), "{:?}", caps.warnings);
    let ids: Vec<u8> = caps.standard.iter().map(|c| c.id).collect();
    assert_eq!(ids, vec![0x01, 0x05, 0x10, 0x11]);
    let pcie = caps.pcie().unwrap();
    assert_eq!(pcie.port_type, PortType::Endpoint);
    assert!(pcie.flr);
    assert_eq!((pcie.link_gen, pcie.link_width), (Some(5), Some(16)));
    let msix = caps.msix().unwrap();
    assert_eq!(
        (msix.table_size, msix.table.bar, msix.table.offset),
        (9, 0, 0xb9_0000)
    );
    assert_eq!((msix.pba.bar, msix.pba.offset), (0, 0xba_0000));
    assert!(matches!(caps.standard[1].detail, CapDetail::Msi(ref m) if m.is_64bit));
    let ext: Vec<u16> = caps.extended.iter().map(|c| c.id).collect();
    assert_eq!(
        ext,
        vec![0x18, 0x01, 0x0b, 0x04, 0x03],
        "null capabilities are skipped, not the end"
    );
    assert!(caps
        .extended
        .iter()
        .any(|c| matches!(c.detail, ExtDetail::SerialNumber { .. })));
}

#[test]
fn h200_capture_readiness_says_no_iommu() {
    let inv = Inventory::scan(&capture("h200-host")).unwrap();
    assert!(!inv.iommu.enabled());
    assert!(inv.groups.is_empty());
    let host = host_checks(&inv);
    let iommu = check(&host, "iommu_enabled");
    assert_eq!(iommu.level, Level::Fail);
    assert!(iommu.message.contains("no IOMMU"), "{}", iommu.message);
    assert!(
        iommu.message.contains("intel_iommu=on"),
        "the fix is named: {}",
        iommu.message
    );
    assert_eq!(check(&host, "interrupt_remapping").level, Level::Fail);
    let dev = device_checks(&inv, bdf("0000:00:06.0")).unwrap();
    assert_eq!(check(&dev, "iommu_group").level, Level::Fail);
    assert_eq!(check(&dev, "reset").level, Level::Pass);
    assert_eq!(
        check(&dev, "driver").level,
        Level::Fail,
        "on nvidia: a VMM cannot open it now"
    );
    assert_eq!(check(&dev, "large_bar").level, Level::Warn);
    assert!(!all_pass(&dev));
    assert!(device_checks(&inv, bdf("0000:00:1f.0")).is_err());
}

#[test]
fn h200x2_capture_has_two_gpus() {
    let inv = Inventory::scan(&capture("h200x2-host")).unwrap();
    let gpus: Vec<String> = inv
        .devices
        .iter()
        .filter(|d| d.is_accelerator())
        .map(|d| d.bdf.to_string())
        .collect();
    assert_eq!(gpus, vec!["0000:00:06.0", "0000:00:07.0"]);
    for g in inv.devices.iter().filter(|d| d.is_accelerator()) {
        assert_eq!(g.largest_bar().map(|b| b.size), Some(256 << 30));
    }
}

fn iommu_host() -> (tempfile::TempDir, Inventory) {
    let t = tempfile::tempdir().expect("tempdir");
    fixture::iommu_host(t.path()).expect("write fixture");
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).expect("scan fixture");
    (t, inv)
}

#[test]
fn synthetic_iommu_host_groups_and_viability() {
    let (_t, inv) = iommu_host();
    assert!(inv.iommu.enabled());
    assert_eq!(inv.groups.len(), 9);
    assert_eq!(inv.iommu.cmdline_flags, vec!["intel_iommu=on", "iommu=pt"]);
    let host = host_checks(&inv);
    assert!(all_pass(&host), "{host:#?}");

    // GPU + audio share group 1; the audio function is still on its host driver.
    let g1 = inv.group_of(bdf("0000:01:00.0")).unwrap();
    assert_eq!(g1.devices, vec![bdf("0000:01:00.0"), bdf("0000:01:00.1")]);
    assert_eq!(g1.reserved_regions[0].kind, "msi");
    match inv.group_viability(g1) {
        Viability::NotViable { bound_to_host } => {
            let drivers: Vec<_> = bound_to_host
                .iter()
                .map(|m| m.driver.clone().unwrap())
                .collect();
            assert_eq!(drivers, vec!["nvidia", "snd_hda_intel"]);
        }
        v => panic!("group 1 should not be viable: {v:?}"),
    }
    let gpu = device_checks(&inv, bdf("0000:01:00.0")).unwrap();
    assert_eq!(check(&gpu, "group_viable").level, Level::Fail);
    assert!(
        check(&gpu, "group_viable")
            .message
            .contains("0000:01:00.1 on snd_hda_intel (not in use)"),
        "{}",
        check(&gpu, "group_viable").message
    );
    assert!(!vm_pci::readiness::is_ready(&gpu));
    assert!(vm_pci::readiness::is_preparable(&gpu));
    assert_eq!(
        check(&gpu, "acs").level,
        Level::Pass,
        "root port 00:01.0 has ACS isolation"
    );
    assert_eq!(
        inv.device(bdf("0000:01:00.0")).unwrap().upstream_path(),
        vec![bdf("0000:00:01.0")]
    );
    assert_eq!(inv.group_companions(bdf("0000:01:00.0")).len(), 1);

    // Already on vfio-pci: viable, everything passes.
    let nic = device_checks(&inv, bdf("0000:02:00.0")).unwrap();
    assert!(
        nic.iter()
            .all(|c| c.level == Level::Pass || c.id == "in_use"),
        "{nic:#?}"
    );
    assert!(vm_pci::readiness::is_ready(&nic));
    assert!(
        check(&nic, "in_use").message.contains("no /proc"),
        "a fixture without proc/ says what it could not see"
    );

    // A bridge in the group does not block it, but its missing ACS is reported.
    let g3 = inv.group_of(bdf("0000:03:00.0")).unwrap();
    assert_eq!(g3.devices.len(), 2);
    assert_eq!(inv.group_viability(g3), Viability::Viable);
    let acc = device_checks(&inv, bdf("0000:03:00.0")).unwrap();
    assert_eq!(check(&acc, "acs").level, Level::Warn);
    assert!(check(&acc, "acs").message.contains("no ACS"));
    let bridge = device_checks(&inv, bdf("0000:00:03.0")).unwrap();
    assert_eq!(check(&bridge, "endpoint").level, Level::Fail);

    // Boot VGA is refused.
    let vga = device_checks(&inv, bdf("0000:00:1f.0")).unwrap();
    assert_eq!(check(&vga, "boot_vga").level, Level::Fail);
}

#[test]
fn synthetic_sriov_pf_and_vfs() {
    let (_t, inv) = iommu_host();
    let pf = inv.device(bdf("0000:04:00.0")).unwrap();
    let sriov = pf.sriov.as_ref().unwrap();
    assert_eq!(sriov.total_vfs, 8);
    assert_eq!(sriov.vfs, vec![bdf("0000:04:00.1"), bdf("0000:04:00.2")]);
    assert_eq!(sriov.num_vfs, 2);
    let cap = pf.capabilities.sriov().unwrap();
    assert_eq!(
        (cap.total_vfs, cap.num_vfs, cap.vf_device_id),
        (8, 2, 0x101e)
    );
    assert!(pf.capabilities.find_ext(0x000e).is_some(), "ARI");
    let vf = inv.device(bdf("0000:04:00.2")).unwrap();
    assert_eq!(vf.physfn, Some(bdf("0000:04:00.0")));
    assert_ne!(vf.iommu_group, pf.iommu_group);
}

#[test]
fn malformed_config_space_is_a_warning_not_a_panic() {
    let (_t, inv) = iommu_host();
    let d = inv.device(bdf("0000:00:05.0")).unwrap();
    assert_eq!(d.capabilities.standard.len(), 2);
    assert!(
        d.capabilities.warnings.iter().any(|w| w.contains("loops")),
        "{:?}",
        d.capabilities.warnings
    );
    // No reset_method attribute on a kernel that has it (6.1 here): no reset method at all.
    let checks = device_checks(&inv, d.bdf).unwrap();
    assert_eq!(check(&checks, "reset").level, Level::Fail);
}

#[test]
fn before_linux_5_15_reset_is_judged_from_capabilities() {
    let (t, _) = iommu_host();
    std::fs::write(t.path().join("kernel-release"), "5.10.0\n").unwrap();
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).unwrap();
    // The cyclic-config device has PM without No_Soft_Reset: a D3hot reset works.
    let checks = device_checks(&inv, bdf("0000:00:05.0")).unwrap();
    assert_eq!(check(&checks, "reset").level, Level::Pass);
    assert!(check(&checks, "reset").message.contains("PM capability"));
}

#[test]
fn broken_attributes_are_errors_that_name_the_file() {
    let t = tempfile::tempdir().unwrap();
    let mut tree = TreeBuilder::new(t.path()).unwrap();
    let good = DeviceSpec::endpoint(bdf("0000:00:02.0"), 0x1234, 0x11e8, 0x00ff00);
    tree.device(&good).unwrap();
    let mut bad = DeviceSpec::endpoint(bdf("0000:00:03.0"), 0x1234, 0x11e8, 0x00ff00);
    bad.resource = "0x1000 0x0fff 0x200\n".into();
    tree.device(&bad).unwrap();
    let mut short = DeviceSpec::endpoint(bdf("0000:00:04.0"), 0x1234, 0x11e8, 0x00ff00);
    short.config = ConfigBuilder::new(0x1234, 0x11e8, 0xff00, 0).build()[..64].to_vec();
    tree.device(&short).unwrap();
    std::fs::write(
        tree.device_path(bdf("0000:00:02.0"), None).join("vendor"),
        "banana\n",
    )
    .unwrap();

    let inv = Inventory::scan(&SysfsRoot::new(t.path())).unwrap();
    assert_eq!(inv.devices.len(), 1, "one readable device");
    assert_eq!(inv.unreadable.len(), 2);
    let e = &inv
        .unreadable
        .iter()
        .find(|u| u.entry == "0000:00:02.0")
        .unwrap()
        .error;
    assert!(e.contains("vendor") && e.contains("banana"), "{e}");
    let e = &inv
        .unreadable
        .iter()
        .find(|u| u.entry == "0000:00:03.0")
        .unwrap()
        .error;
    assert!(e.contains("resource"), "{e}");
    // 64 bytes of config (what an unprivileged reader gets): no caps, no panic.
    let d = inv.device(bdf("0000:00:04.0")).unwrap();
    assert_eq!(d.config_len, 64);
    assert!(d.capabilities.standard.is_empty());
    assert!(
        d.capabilities.warnings.is_empty(),
        "a short read is not a device defect"
    );
    let checks = device_checks(&inv, d.bdf).unwrap();
    assert_eq!(
        check(&checks, "reset").level,
        Level::Pass,
        "reset_method attribute present"
    );

    let missing = Inventory::scan(&SysfsRoot::new(t.path().join("nope"))).unwrap_err();
    assert!(missing.to_string().contains("nope"), "{missing}");
}

#[test]
fn header_only_scan_reads_64_bytes_and_warns_about_nothing() {
    let inv = Inventory::scan_with(&capture("h200-host"), vm_pci::ConfigRead::Header).unwrap();
    for d in &inv.devices {
        assert_eq!(d.config_len, 64, "{}", d.bdf);
        assert!(
            d.capabilities.warnings.is_empty(),
            "{}: {:?}",
            d.bdf,
            d.capabilities.warnings
        );
        assert_eq!(d.header_type, Some(0));
    }
    assert_eq!(
        inv.device(bdf("0000:00:06.0"))
            .unwrap()
            .largest_bar()
            .unwrap()
            .size,
        256 << 30
    );
}

#[test]
fn interrupt_remapping_states() {
    use vm_pci::InterruptRemapping;
    let t = tempfile::tempdir().unwrap();
    let mut tree = TreeBuilder::new(t.path()).unwrap();
    tree.intel_iommu("dmar0", 0x0).unwrap();
    tree.device(&DeviceSpec::endpoint(bdf("0000:00:02.0"), 0x1234, 0x11e8, 0x00ff00).group(0))
        .unwrap();
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).unwrap();
    assert!(matches!(
        inv.iommu.interrupt_remapping,
        InterruptRemapping::Unsupported(_)
    ));
    assert_eq!(
        check(&host_checks(&inv), "interrupt_remapping").level,
        Level::Fail
    );
    tree.cmdline("intel_iommu=on intremap=off").unwrap();
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).unwrap();
    assert!(matches!(
        inv.iommu.interrupt_remapping,
        InterruptRemapping::Disabled(_)
    ));
    // Modules directory present but vfio_pci missing, on a non-live root: warn, not pass.
    assert_eq!(check(&host_checks(&inv), "vfio_modules").level, Level::Warn);
}

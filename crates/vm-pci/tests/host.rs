//! vm-pci on this host's real /sys: every device reads, config space agrees with sysfs,
//! and (when pciutils is installed) the device list matches `lspci -D -n`.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::Command;

use vm_pci::{Inventory, SysfsRoot};

#[test]
fn real_sysfs_reads_cleanly() {
    if !Path::new("/sys/bus/pci/devices").exists() {
        return vm_accel_tests::hw::skip(
            "real_sysfs_reads_cleanly",
            "no /sys/bus/pci on this host",
        );
    }
    let inv = Inventory::scan(&SysfsRoot::default()).expect("scan /sys");
    assert!(
        inv.unreadable.is_empty(),
        "unreadable devices: {:?}",
        inv.unreadable
    );
    for d in &inv.devices {
        assert!(
            d.config_len >= 64,
            "{}: config space too short ({})",
            d.bdf,
            d.config_len
        );
        assert!(
            d.capabilities.warnings.is_empty(),
            "{}: {:?}",
            d.bdf,
            d.capabilities.warnings
        );
        if let Some(g) = d.iommu_group {
            assert!(
                inv.groups[&g].devices.contains(&d.bdf),
                "{} missing from group {g}",
                d.bdf
            );
        }
    }
}

#[test]
fn matches_lspci() {
    let Ok(out) = Command::new("lspci").args(["-D", "-n"]).output() else {
        return vm_accel_tests::hw::skip(
            "matches_lspci",
            "lspci not installed (apt-get install pciutils)",
        );
    };
    assert!(out.status.success());
    // `0000:00:06.0 0302: 10de:2335 (rev a1)`
    let lspci: BTreeMap<String, String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut f = l.split_whitespace();
            let bdf = f.next()?.to_string();
            let _class = f.next()?;
            Some((bdf, f.next()?.to_string()))
        })
        .collect();
    let inv = Inventory::scan(&SysfsRoot::default()).expect("scan /sys");
    let ours: BTreeMap<String, String> = inv
        .devices
        .iter()
        .map(|d| {
            (
                d.bdf.to_string(),
                format!("{:04x}:{:04x}", d.vendor_id, d.device_id),
            )
        })
        .collect();
    assert_eq!(ours, lspci);
}

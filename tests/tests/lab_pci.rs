//! vm-pci discovery on a host that really has an IOMMU (the lab guest: emulated Intel
//! IOMMU with interrupt remapping, edu devices on vfio-pci): groups, viability, readiness.
//! Skips outside `cargo xtask lab`.

mod lab_support;

use lab_support::*;
use vm_pci::readiness::{self, Level};
use vm_pci::{Bdf, InterruptRemapping, Inventory, SysfsRoot, Viability};

fn inventory(test: &str) -> Option<(Inventory, Vec<Bdf>)> {
    lab_device(test)?;
    let inv = Inventory::scan(&SysfsRoot::default()).expect("scan /sys");
    let bdfs = lab_edu_bdfs()
        .iter()
        .map(|b| b.parse().expect("edu BDF"))
        .collect();
    Some((inv, bdfs))
}

#[test]
fn finds_the_iommu_and_every_edu_in_its_own_viable_group() {
    let Some((inv, edus)) = inventory("finds_the_iommu_and_every_edu_in_its_own_viable_group")
    else {
        return;
    };
    assert!(inv.iommu.enabled(), "IOMMU not seen: {:?}", inv.iommu);
    assert!(
        inv.iommu.units.iter().any(|u| u.starts_with("dmar")),
        "units {:?}",
        inv.iommu.units
    );
    assert!(
        inv.unreadable.is_empty(),
        "unreadable: {:?}",
        inv.unreadable
    );
    assert!(edus.len() >= 2);
    for bdf in &edus {
        let dev = inv.device(*bdf).expect("edu in the inventory");
        assert_eq!((dev.vendor_id, dev.device_id), (0x1234, 0x11e8), "{bdf}");
        assert_eq!(dev.driver.as_deref(), Some("vfio-pci"), "{bdf}");
        assert_eq!(dev.driver_override.as_deref(), Some("vfio-pci"), "{bdf}");
        let group = inv.group_of(*bdf).expect("edu has a group");
        assert_eq!(group.devices, vec![*bdf], "edu alone in group {}", group.id);
        assert_eq!(inv.group_viability(group), Viability::Viable, "{bdf}");
        assert!(inv.group_companions(*bdf).is_empty());
        // The MSI window every x86 IOMMU group reserves.
        assert!(
            group
                .reserved_regions
                .iter()
                .any(|r| r.start == 0xfee0_0000),
            "group {} reserved regions {:?}",
            group.id,
            group.reserved_regions
        );
        let bar0 = dev.bars.first().expect("edu BAR0");
        assert_eq!(bar0.size, 1 << 20, "{bdf} BAR0 size");
    }
    let mut ids: Vec<u32> = edus
        .iter()
        .filter_map(|b| inv.device(*b)?.iommu_group)
        .collect();
    ids.dedup();
    assert_eq!(ids.len(), edus.len(), "one group per edu");
}

#[test]
fn chipset_functions_share_a_group_and_are_listed_as_companions() {
    let Some((inv, _)) = inventory("chipset_functions_share_a_group_and_are_listed_as_companions")
    else {
        return;
    };
    // q35's ICH9 functions at 00:1f.* (LPC, SATA, SMBus) cannot be isolated from each other:
    // one group, and preparing any of them means binding the others too.
    let lpc: Bdf = "0000:00:1f.0".parse().expect("bdf");
    let group = inv.group_of(lpc).expect("00:1f.0 has a group");
    assert!(
        group.devices.len() >= 3,
        "chipset group {}: {:?}",
        group.id,
        group.devices
    );
    let companions: Vec<Bdf> = inv.group_companions(lpc).iter().map(|d| d.bdf).collect();
    assert!(
        !companions.is_empty() && !companions.contains(&lpc),
        "companions {companions:?}"
    );
    for c in &companions {
        assert!(group.devices.contains(c));
    }
    let members: Vec<String> = group.devices.iter().map(|b| b.to_string()).collect();
    report(&format!(
        "chipset group {}: {}",
        group.id,
        members.join(" ")
    ));
}

#[test]
fn readiness_of_the_lab_host_and_its_edu_devices() {
    let Some((inv, edus)) = inventory("readiness_of_the_lab_host_and_its_edu_devices") else {
        return;
    };
    let host = readiness::host_checks(&inv);
    let mut all = Vec::new();
    for c in &host {
        report(&format!("host {:<22} {} {}", c.id, c.level, c.message));
    }
    assert!(
        host.iter().all(|c| c.level == Level::Pass),
        "host checks: {host:#?}"
    );
    assert!(
        matches!(
            inv.iommu.interrupt_remapping,
            InterruptRemapping::Enabled(_)
        ),
        "{:?}",
        inv.iommu.interrupt_remapping
    );
    for bdf in &edus {
        let checks = readiness::device_checks(&inv, *bdf).expect("edu in the inventory");
        for c in &checks {
            report(&format!("{bdf} {:<22} {} {}", c.id, c.level, c.message));
        }
        all.push((*bdf, checks));
    }
    for (bdf, checks) in &all {
        let on_root_bus = bdf.to_string().starts_with("0000:00:");
        for c in checks {
            // The lab puts its first edu on the root bus, where it has no reset method at
            // all (no FLR, no PM reset, no parent bridge): readiness must refuse it. The
            // edus behind root ports can only get a secondary bus reset: a warning.
            let expected = match (c.id, on_root_bus) {
                ("reset", true) => Level::Fail,
                ("reset", false) => Level::Warn,
                _ => Level::Pass,
            };
            assert_eq!(c.level, expected, "{bdf} {}: {}", c.id, c.message);
        }
        assert_eq!(readiness::all_pass(checks), !on_root_bus, "{bdf}");
    }
    assert!(
        all.iter()
            .any(|(b, _)| !b.to_string().starts_with("0000:00:")),
        "an edu behind a root port"
    );
}

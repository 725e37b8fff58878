//! Lab: the mini VMM (examples/mini_vmm) inside the lab guest, on its nested /dev/kvm,
//! passing real vfio-pci devices to its own guest through `AttachedDevice`:
//! - edu (`VM_ACCEL_TEST_BDF`) on every VFIO path the kernel offers (legacy container
//!   always; iommufd too where /dev/iommu exists, required on the lab's iommufd kernel):
//!   ID register through the BAR's memory slot, DMA both ways from guest RAM (IOVA = GPA),
//!   the completion MSI taken by the guest's handler, BAR0 moved by the guest and read
//!   again; after detach the device is back on vfio-pci, opens and reads its ID;
//! - MSI-X on the nvme (`VM_ACCEL_LAB_MSIX_BDF`) through the emulated table, vectors fired
//!   from the host with VFIO's trigger; a masked vector that fires is pending in the PBA and
//!   delivered on unmask;
//! - a large 64-bit prefetchable BAR (`VM_ACCEL_LAB_LARGE_BAR_BDF`, QEMU ivshmem-plain on
//!   a sparse 64 GiB backend): the guest reads and writes its far end through the slot.
//!
//! Skips (fails under VM_ACCEL_REQUIRE_HW) without /dev/kvm, /dev/vfio or the variables.

#[allow(dead_code)]
#[path = "../examples/mini_vmm/guest.rs"]
mod guest;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/scenarios.rs"]
mod scenarios;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/vmm.rs"]
mod vmm;

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use scenarios::Fire;
use vm_accel::attach::{AttachOptions, AttachVm, AttachedDevice};
use vm_accel_tests::lab::report;
use vm_pci::Bdf;
use vm_vfio::access::{BackendChoice, BackendKind, Device, RegionIndex};
use vm_vfio::bind::Paths;

/// The device in `var`, or `None` after reporting the skip.
fn device(test: &str, var: &str) -> Option<Bdf> {
    let _ = env_logger::builder().is_test(true).try_init();
    let missing = if !Path::new("/dev/kvm").exists() {
        Some("no /dev/kvm".to_string())
    } else if !Path::new("/dev/vfio").exists() {
        Some("no /dev/vfio".to_string())
    } else if std::env::var_os(var).is_none() {
        Some(format!("{var} is not set (run `cargo xtask lab`)"))
    } else {
        None
    };
    if let Some(why) = missing {
        vm_accel_tests::hw::skip(test, &why);
        return None;
    }
    let v = std::env::var(var).ok()?;
    Some(v.parse().unwrap_or_else(|e| panic!("{var}={v}: {e}")))
}

/// The VFIO paths to run on: legacy where /dev/vfio/vfio exists, iommufd where /dev/iommu
/// does; the lab's iommufd kernel must offer both.
fn paths() -> Vec<BackendKind> {
    let mut kinds = Vec::new();
    if Path::new("/dev/vfio/vfio").exists() {
        kinds.push(BackendKind::Legacy);
    }
    if Path::new("/dev/iommu").exists() {
        kinds.push(BackendKind::Iommufd);
    }
    if std::env::var("VM_ACCEL_LAB_KERNEL").as_deref() == Ok("iommufd") {
        assert_eq!(
            kinds.len(),
            2,
            "the iommufd lab kernel must offer both VFIO paths, found {kinds:?}"
        );
    }
    assert!(
        !kinds.is_empty(),
        "no VFIO path: neither /dev/vfio/vfio nor /dev/iommu"
    );
    kinds
}

/// A mini VMM VM with the vfio-pci device `bdf` attached at 00:01.0.
fn attach(bdf: Bdf, kind: BackendKind) -> (vmm::Vm, Arc<AttachVm>, AttachedDevice) {
    let vm = vmm::Vm::new().expect("VM on the nested /dev/kvm");
    let avm = vm.attach_vm().expect("AttachVm");
    let dev = AttachedDevice::attach_vfio(
        &avm,
        &Paths::new("/sys"),
        bdf,
        BackendChoice::Force(kind),
        &AttachOptions::default(),
    )
    .unwrap_or_else(|e| panic!("attach {bdf} ({kind}): {e}"));
    (vm, avm, dev)
}

/// Detaches, then checks the device is on vfio-pci, opens again and reads `id` at config 0.
fn detach_and_reopen(dev: AttachedDevice, bdf: Bdf, kind: BackendKind, id: u32) -> Device {
    let r = dev.detach();
    assert!(r.errors.is_empty(), "detach {bdf} ({kind}): {:?}", r.errors);
    let driver = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()));
    assert_eq!(
        driver.as_deref(),
        Some("vfio-pci"),
        "{bdf} after detach ({kind})"
    );
    let d = Device::open_new(&Paths::new("/sys"), bdf, BackendChoice::Force(kind))
        .unwrap_or_else(|e| panic!("reopen {bdf} after detach ({kind}): {e}"));
    assert_eq!(
        d.config_u32(0).expect("config"),
        id,
        "{bdf} ids after detach"
    );
    d
}

#[test]
fn edu_passes_through_the_mini_vmm_on_every_vfio_path_and_comes_back_intact() {
    let Some(bdf) = device(
        "edu_passes_through_the_mini_vmm_on_every_vfio_path_and_comes_back_intact",
        "VM_ACCEL_TEST_BDF",
    ) else {
        return;
    };
    for kind in paths() {
        let start = Instant::now();
        let (mut vm, _avm, mut dev) = attach(bdf, kind);
        let attached = start.elapsed();
        let r = scenarios::edu(&mut vm, &mut dev, true)
            .unwrap_or_else(|e| panic!("{bdf} ({kind}): {e:#}"));
        report(&format!(
            "mini VMM, {bdf} ({kind}): attach {attached:?}, guest run {:?}: edu ID {:#x} through the slot, DMA round trip, MSI taken, BAR0 moved to {:#x} and read: {r:x?}",
            start.elapsed() - attached,
            r.get(guest::key::EDU_ID).unwrap_or_default(),
            r.get(guest::key::MOVED_ADDR).unwrap_or_default(),
        ));
        let d = detach_and_reopen(dev, bdf, kind, 0x11e8_1234);
        let mut id = [0u8; 4];
        d.read_region(RegionIndex::Bar(0), 0, &mut id)
            .expect("BAR0 read");
        assert_eq!(
            u32::from_le_bytes(id),
            0x0100_00ed,
            "{bdf} edu ID after detach ({kind})"
        );
        report(&format!(
            "mini VMM, {bdf} ({kind}): detached, back on vfio-pci, reopened, ID {:#x}",
            u32::from_le_bytes(id)
        ));
    }
}

#[test]
fn msix_through_the_emulated_table_with_a_pending_masked_vector_on_every_vfio_path() {
    let Some(bdf) = device(
        "msix_through_the_emulated_table_with_a_pending_masked_vector_on_every_vfio_path",
        "VM_ACCEL_LAB_MSIX_BDF",
    ) else {
        return;
    };
    for kind in paths() {
        let start = Instant::now();
        let (mut vm, _avm, mut dev) = attach(bdf, kind);
        let r = scenarios::msix(&mut vm, &mut dev, &Fire::Vfio)
            .unwrap_or_else(|e| panic!("{bdf} ({kind}): {e:#}"));
        report(&format!(
            "mini VMM, {bdf} ({kind}): MSI-X table of {} entries emulated; vectors 0-2 delivered; vector 1 fired while masked: PBA {:#x}, delivered on unmask, PBA then {:#x}; {:?}",
            r.get(guest::key::MSIX_SIZE).unwrap_or_default(),
            r.get(guest::key::MSIX_PBA_MASKED).unwrap_or_default(),
            r.get(guest::key::MSIX_PBA_AFTER).unwrap_or_default(),
            start.elapsed()
        ));
        detach_and_reopen(dev, bdf, kind, 0x0010_1b36);
    }
}

#[test]
fn the_far_end_of_a_64_gib_bar_through_the_mini_vmm() {
    let Some(bdf) = device(
        "the_far_end_of_a_64_gib_bar_through_the_mini_vmm",
        "VM_ACCEL_LAB_LARGE_BAR_BDF",
    ) else {
        return;
    };
    let kind = paths()[0];
    let start = Instant::now();
    let (mut vm, _avm, mut dev) = attach(bdf, kind);
    let attached = start.elapsed();
    let size = dev
        .vfio()
        .expect("a VFIO device")
        .region(RegionIndex::Bar(2))
        .expect("BAR2")
        .size;
    assert!(
        size >= 64 << 30,
        "{bdf} BAR2 is {size:#x} bytes, the lab gives it 64 GiB"
    );
    let r = scenarios::large_bar(&mut vm, &mut dev, 2)
        .unwrap_or_else(|e| panic!("{bdf} ({kind}): {e:#}"));
    report(&format!(
        "mini VMM, {bdf} ({kind}): {} GiB BAR2 at {:#x}, far end read and written by the guest; attach {attached:?}, total {:?}",
        size >> 30,
        r.get(guest::key::BAR_ADDR).unwrap_or_default(),
        start.elapsed()
    ));
    detach_and_reopen(dev, bdf, kind, 0x1110_1af4);
}

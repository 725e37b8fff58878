//! Attach against real vfio-pci devices, in the emulated lab (QEMU + intel-iommu + edu, nested
//! /dev/kvm): the group or cdev is really registered with the KVM VFIO device, guest RAM is
//! mapped once per VM however many devices share it, hotplugged RAM is mapped and unmapped
//! exactly, the device's DMA reaches guest RAM at IOVA = GPA, and 1,000 attach/detach
//! cycles leave no fd or mapping behind. The VFIO path is whatever the lab kernel offers
//! (legacy on Debian's, iommufd on the lab kernel). Skips outside the lab.
#![allow(clippy::unwrap_used)]

use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::{Kvm, VmFd};
use vm_accel::attach::{AttachOptions, AttachVm, AttachedDevice, VmLayout};
use vm_accel_tests::edu::{self, Bar0, Direction};
use vm_accel_tests::lab::{fd_count, map_count, report};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap, GuestRegionMmap};
use vm_pci::Bdf;
use vm_vfio::access::{BackendChoice, Device, RegionIndex};
use vm_vfio::bind::Paths;

/// Guest RAM of the test VMs: 16 MiB at 0 (the edu's DMA reaches 256 MiB).
const RAM: u64 = 16 << 20;

fn lab(test: &str) -> Option<Vec<Bdf>> {
    let _ = env_logger::builder().is_test(true).try_init();
    let bdfs: Vec<Bdf> = vm_accel_tests::lab::edu_bdfs()
        .iter()
        .map(|s| s.parse().unwrap())
        .collect();
    if bdfs.is_empty() || !std::path::Path::new("/dev/kvm").exists() {
        vm_accel_tests::hw::skip(test, "not in the lab (VM_ACCEL_LAB_EDU_BDFS, /dev/kvm)");
        return None;
    }
    Some(bdfs)
}

fn vm() -> (Arc<VmFd>, GuestMemoryMmap) {
    let kvm = Kvm::new().unwrap();
    let vm = Arc::new(kvm.create_vm().unwrap());
    vm.create_irq_chip().unwrap();
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), RAM as usize)]).unwrap();
    (vm, mem)
}

fn sys() -> Paths {
    Paths::new("/sys")
}

fn opts() -> AttachOptions {
    AttachOptions {
        reset_on_attach: false,
        ..AttachOptions::default()
    }
}

/// edu register access through vm-vfio's region I/O.
struct Regs<'a>(&'a Device);
impl Bar0 for Regs<'_> {
    fn read32(&self, off: u64) -> u32 {
        let mut b = [0u8; 4];
        self.0
            .read_region(RegionIndex::Bar(0), off, &mut b)
            .unwrap();
        u32::from_le_bytes(b)
    }
    fn write32(&self, off: u64, v: u32) {
        self.0
            .write_region(RegionIndex::Bar(0), off, &v.to_le_bytes())
            .unwrap()
    }
    fn read64(&self, off: u64) -> u64 {
        let mut b = [0u8; 8];
        self.0
            .read_region(RegionIndex::Bar(0), off, &mut b)
            .unwrap();
        u64::from_le_bytes(b)
    }
    fn write64(&self, off: u64, v: u64) {
        self.0
            .write_region(RegionIndex::Bar(0), off, &v.to_le_bytes())
            .unwrap()
    }
}

/// The device copies `len` bytes from guest RAM at `src` to guest RAM at `dst` through its
/// buffer: only works if guest RAM is mapped at IOVA = GPA.
fn edu_copy(d: &Device, src: u64, dst: u64, len: u64) {
    d.enable_bus_master().unwrap();
    let r = Regs(d);
    r.dma(src, 0, len, Direction::ToDevice, false);
    r.dma(dst, 0, len, Direction::ToRam, false);
}

#[test]
fn the_device_is_registered_with_kvm_and_released_on_detach() {
    let Some(bdfs) = lab("the_device_is_registered_with_kvm_and_released_on_detach") else {
        return;
    };
    let (vm, mem) = vm();
    let avm = AttachVm::new(vm, &mem, VmLayout::default()).unwrap();
    let a =
        AttachedDevice::attach_vfio(&avm, &sys(), bdfs[0], BackendChoice::Auto, &opts()).unwrap();
    let d = a.vfio().unwrap();
    assert!(
        avm.check_device_registered(d).unwrap(),
        "{}: the {} file is not registered with the KVM VFIO device",
        bdfs[0],
        d.backend()
    );
    report(&format!(
        "{}: {} file registered with KVM (FILE_ADD again: EEXIST); attach timings {:?}",
        bdfs[0],
        d.backend(),
        a.timings()
    ));
    let r = a.detach();
    assert!(r.errors.is_empty(), "{:?}", r.errors);
    // KVM let go of the file: the device opens again (a group KVM still held would be
    // EBUSY) and reads its identity.
    let again = Device::open_new(&sys(), bdfs[0], BackendChoice::Auto).unwrap();
    assert_eq!(Regs(&again).read32(edu::REG_ID), edu::ID);
}

#[test]
fn guest_ram_is_mapped_once_per_vm_and_hotplug_is_exact() {
    let Some(bdfs) = lab("guest_ram_is_mapped_once_per_vm_and_hotplug_is_exact") else {
        return;
    };
    assert!(bdfs.len() >= 2, "the lab has at least two edu devices");
    let (vm, mem) = vm();
    let avm = AttachVm::new(vm, &mem, VmLayout::default()).unwrap();
    let a =
        AttachedDevice::attach_vfio(&avm, &sys(), bdfs[0], BackendChoice::Auto, &opts()).unwrap();
    let ram = vec![(vm_vfio::access::Iova(0), RAM)];
    assert_eq!(avm.dma_mappings(), ram);
    // A second device in the same VM: no second map of guest RAM (no EEXIST).
    let b =
        AttachedDevice::attach_vfio(&avm, &sys(), bdfs[1], BackendChoice::Auto, &opts()).unwrap();
    assert_eq!(avm.dma_mappings(), ram);

    // Both devices DMA into guest RAM at IOVA = GPA.
    let pattern: Vec<u8> = (0..255u8).collect();
    mem.write_slice(&pattern, GuestAddress(0x1000)).unwrap();
    edu_copy(a.vfio().unwrap(), 0x1000, 0x2000, 255);
    edu_copy(b.vfio().unwrap(), 0x2000, 0x3000, 255);
    let mut back = vec![0u8; 255];
    mem.read_slice(&mut back, GuestAddress(0x3000)).unwrap();
    assert_eq!(back, pattern, "device DMA through the VM's one mapping");

    // Hotplugged RAM is mapped right away, and unmapped exactly.
    let hot = Arc::new(GuestRegionMmap::from_range(GuestAddress(64 << 20), 1 << 20, None).unwrap());
    avm.add_region(hot.clone()).unwrap();
    assert_eq!(
        avm.dma_mappings(),
        vec![ram[0], (vm_vfio::access::Iova(64 << 20), 1 << 20)]
    );
    hot.write_slice(&pattern, vm_memory::MemoryRegionAddress(0))
        .unwrap();
    edu_copy(a.vfio().unwrap(), 64 << 20, 0x4000, 255);
    mem.read_slice(&mut back, GuestAddress(0x4000)).unwrap();
    assert_eq!(back, pattern, "DMA from hotplugged RAM");
    avm.remove_region(GuestAddress(64 << 20)).unwrap();
    assert_eq!(avm.dma_mappings(), ram);

    // The first device leaving keeps the maps for the second; the last takes them.
    assert!(a.detach().errors.is_empty());
    assert_eq!(avm.dma_mappings(), ram);
    assert!(b.detach().errors.is_empty());
    assert!(avm.dma_mappings().is_empty());
    report(&format!(
        "{} + {}: guest RAM mapped once for two devices, hotplug mapped/unmapped exactly",
        bdfs[0], bdfs[1]
    ));
}

#[test]
fn a_thousand_vfio_attach_detach_cycles_leave_nothing_behind() {
    let Some(bdfs) = lab("a_thousand_vfio_attach_detach_cycles_leave_nothing_behind") else {
        return;
    };
    // The edu on the root bus has no reset method: cycles are not slowed by bus resets.
    let bdf = *bdfs.iter().find(|b| b.bus() == 0).unwrap_or(&bdfs[0]);
    let (vm, mem) = vm();
    let avm = AttachVm::new(vm, &mem, VmLayout::default()).unwrap();
    let cycle = || {
        let a =
            AttachedDevice::attach_vfio(&avm, &sys(), bdf, BackendChoice::Auto, &opts()).unwrap();
        let r = a.detach();
        assert!(r.errors.is_empty(), "{:?}", r.errors);
    };
    cycle();
    let (fds, maps) = (fd_count(), map_count());
    let start = Instant::now();
    let n = 1000;
    for _ in 0..n {
        cycle();
    }
    let took = start.elapsed();
    assert_eq!(fd_count(), fds, "fds after {n} cycles");
    let after = map_count();
    assert_eq!(after.1, maps.1, "BAR mmaps after {n} cycles");
    // The allocator may split or merge a heap mapping or two over a thousand cycles; a
    // leak of ours would be one or more per cycle.
    assert!(
        after.0 <= maps.0 + 4,
        "mappings after {n} cycles: {} before, {} after",
        maps.0,
        after.0
    );
    assert!(avm.dma_mappings().is_empty());
    assert_eq!(avm.routes().len(), 0);
    report(&format!(
        "{bdf}: {n} attach/detach cycles, {:?} each, fds {fds} unchanged, mappings {} -> {} (VFIO {} -> {})",
        took / n,
        maps.0,
        after.0,
        maps.1,
        after.1
    ));
}

#[test]
fn the_cli_attach_test_attaches_through_the_library() {
    let Some(bdfs) = lab("the_cli_attach_test_attaches_through_the_library") else {
        return;
    };
    let out = std::process::Command::new("vm-accel")
        .args([
            "attach-test",
            &bdfs[0].to_string(),
            "--json",
            "--ram-mib",
            "64",
        ])
        .output()
        .expect("vm-accel on PATH (the lab target carries it)");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{text}\n{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_str(&text).unwrap();
    assert_eq!(v["schema"], "vm-accel.attach-test/v1");
    assert_eq!(v["kvm_vfio_registered"], true);
    assert_eq!(v["bars"][0]["index"], 0);
    assert_eq!(v["bars"][0]["size"], 1 << 20, "edu BAR0 is 1 MiB");
    assert!(v["detach_errors"].as_array().unwrap().is_empty());
    report(&format!("vm-accel attach-test: {}", v["timings_us"]));
}

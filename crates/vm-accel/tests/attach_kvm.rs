//! Attach on this host's /dev/kvm with a software stand-in device (no VFIO): BARs placed in
//! the VM's windows and reached by a guest through memory slots, BAR moves, trapped MSI-X
//! table accesses, the KVM VFIO device, guest RAM bookkeeping, and 1,000 attach/detach
//! cycles leaving no fd, mapping, slot or route behind. Skips without /dev/kvm.

use std::sync::Arc;

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit, VcpuFd, VmFd};
use vm_accel::attach::{AttachOptions, AttachVm, AttachedDevice, SoftBar, SoftDevice, VmLayout};
use vm_accel_tests::lab::{fd_count, map_count};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};
use vm_pci::fixture::ConfigBuilder;
use vm_vfio::access::{Area, IrqIndex};

const CODE: u64 = 0x1000;

/// The tests of this file count the process's fds and mappings: one at a time.
static SERIAL: std::sync::Mutex<()> = std::sync::Mutex::new(());

type Vm = (
    std::sync::MutexGuard<'static, ()>,
    Kvm,
    Arc<VmFd>,
    GuestMemoryMmap,
);

fn vm_or_skip(test: &str) -> Option<Vm> {
    let serial = SERIAL.lock().unwrap_or_else(|p| p.into_inner());
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            vm_accel_tests::hw::skip(test, &format!("/dev/kvm: {e}"));
            return None;
        }
    };
    let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10_0000)]).expect("RAM");
    let host = mem.get_host_address(GuestAddress(0)).expect("host");
    // SAFETY: `mem` outlives the VM in every test (dropped after it).
    unsafe {
        vm.set_user_memory_region(kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: 0x10_0000,
            userspace_addr: host as u64,
        })
    }
    .expect("RAM slot");
    Some((serial, kvm, vm, mem))
}

/// A function with a 1 MiB 32-bit BAR0 (MSI-X table at 0x2000, PBA at 0x3000, those pages
/// trapped) and a 64 GiB 64-bit prefetchable BAR2.
fn soft() -> SoftDevice {
    soft_with_bar2(64 << 30)
}

fn soft_with_bar2(bar2: u64) -> SoftDevice {
    let mut cfg = ConfigBuilder::new(0x1234, 0x11e8, 0x00ff00, 0);
    cfg.msi(0).msix(16, 0, 0x2000, 0, 0x3000);
    SoftDevice::new(
        "soft0",
        cfg.build(),
        &[
            (
                0,
                SoftBar {
                    size: 1 << 20,
                    is_64bit: false,
                    prefetchable: false,
                },
            ),
            (
                2,
                SoftBar {
                    size: bar2,
                    is_64bit: true,
                    prefetchable: true,
                },
            ),
        ],
    )
    .expect("soft device")
    .with_irqs(IrqIndex::Msi, 1)
    .with_irqs(IrqIndex::Msix, 16)
    .with_mmap_areas(
        0,
        vec![
            Area {
                offset: 0,
                size: 0x2000,
            },
            Area {
                offset: 0x4000,
                size: (1 << 20) - 0x4000,
            },
        ],
    )
}

/// Runs 32-bit protected-mode code at CODE on `vcpu` that reads the dword at `gpa` and outputs it on
/// port 0x80. Returns what the guest saw: `Ok(value)`, or `Err(exit)` for any other exit.
fn guest_read32(vcpu: &mut VcpuFd, mem: &GuestMemoryMmap, gpa: u32) -> Result<u32, String> {
    let mut code = vec![0xa1]; // mov eax, [moffs32]
    code.extend_from_slice(&gpa.to_le_bytes());
    code.extend_from_slice(&[0xe7, 0x80, 0xf4]); // out 0x80, eax; hlt
    mem.write_slice(&code, GuestAddress(CODE)).expect("code");
    let mut sregs = vcpu.get_sregs().expect("sregs");
    for s in [
        &mut sregs.cs,
        &mut sregs.ds,
        &mut sregs.es,
        &mut sregs.ss,
        &mut sregs.fs,
        &mut sregs.gs,
    ] {
        s.base = 0;
        s.limit = 0xffff_ffff;
        s.g = 1;
        s.db = 1;
    }
    sregs.cs.selector = 0x8;
    sregs.cs.type_ = 0xb;
    sregs.cr0 |= 1;
    vcpu.set_sregs(&sregs).expect("set sregs");
    let mut regs = vcpu.get_regs().expect("regs");
    regs.rip = CODE;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("set regs");
    match vcpu.run().expect("KVM_RUN") {
        VcpuExit::IoOut(0x80, d) => Ok(u32::from_le_bytes(d.try_into().expect("4 bytes"))),
        other => Err(format!("{other:?}")),
    }
}

#[test]
fn bars_are_placed_mapped_and_moved() {
    let Some((_serial, _kvm, vm, mem)) = vm_or_skip("bars_are_placed_mapped_and_moved") else {
        return;
    };
    let avm = AttachVm::new(vm.clone(), &mem, VmLayout::default()).expect("AttachVm");
    let dev = Arc::new(soft());
    let host0 = dev.bar_host(0).expect("BAR0 memory");
    // SAFETY: BAR0 memory of the stand-in, 1 MiB long; offset 0x10 is in bounds.
    unsafe { std::ptr::write_volatile(host0.add(0x10).cast::<u32>(), 0xfeed_f00d) };
    let mut a =
        AttachedDevice::attach(&avm, dev.clone(), &AttachOptions::default()).expect("attach");
    let bars = a.bars();
    let b0 = bars.iter().find(|b| b.index == 0).expect("BAR0");
    let b2 = bars.iter().find(|b| b.index == 2).expect("BAR2");
    let layout = VmLayout::default();
    assert!(
        layout.mmio32.contains(&b0.gpa) && b0.gpa % (1 << 20) == 0,
        "{b0:?}"
    );
    assert!(
        layout.mmio64.contains(&b2.gpa) && b2.gpa % (64 << 30) == 0,
        "{b2:?}"
    );
    assert!(b2.is_64bit && b2.prefetchable);
    // BAR0: two direct parts around the trapped MSI-X pages.
    assert_eq!(b0.slots.len(), 2, "{b0:?}");
    let mut vcpu = vm.create_vcpu(0).expect("vCPU");
    assert_eq!(
        guest_read32(&mut vcpu, &mem, (b0.gpa + 0x10) as u32),
        Ok(0xfeed_f00d),
        "the guest reads BAR0 through its memory slot"
    );
    // The guest reads the config BAR register as placed.
    let mut r = [0u8; 4];
    a.config_read(0x10, &mut r);
    assert_eq!(u64::from(u32::from_le_bytes(r) & !0xf), b0.gpa);

    // The guest moves BAR0 (decoding on): the slots follow.
    let before0 = b0.gpa;
    let new = 0xd000_0000u32;
    a.config_write(0x04, &0x0006u16.to_le_bytes())
        .expect("COMMAND");
    a.config_write(0x10, &new.to_le_bytes()).expect("move BAR0");
    let b0 = a.bars().into_iter().find(|b| b.index == 0).expect("BAR0");
    assert_eq!(b0.gpa, u64::from(new));
    assert!(b0.slots.iter().all(|s| s.gpa >= u64::from(new)));
    assert_eq!(guest_read32(&mut vcpu, &mem, new + 0x10), Ok(0xfeed_f00d));
    // The old address is no longer the device's: the guest's read exits as MMIO.
    let old = guest_read32(&mut vcpu, &mem, (before0 + 0x10) as u32).expect_err("old BAR0 address");
    assert!(old.starts_with("MmioRead"), "{old}");

    // A trapped access to the MSI-X table is served by the emulated table: every entry
    // starts masked (vector control bit 0).
    let mut ctl = [0u8; 4];
    assert!(a
        .mmio_read(u64::from(new) + 0x2000 + 12, &mut ctl)
        .expect("table read"));
    assert_eq!(u32::from_le_bytes(ctl) & 1, 1, "entry 0 masked at reset");
    // Outside every BAR: not this device's.
    assert!(!a.mmio_read(0x1000, &mut ctl).expect("miss"));
    // A trapped access outside the table goes to the device's region.
    let report = a.detach();
    assert!(report.errors.is_empty(), "{:?}", report.errors);
    assert_eq!(dev.resets(), 2, "reset at attach and at detach");
}

#[test]
fn a_failed_move_is_rolled_back() {
    let Some((_serial, _kvm, vm, mem)) = vm_or_skip("a_failed_move_is_rolled_back") else {
        return;
    };
    let avm = AttachVm::new(vm.clone(), &mem, VmLayout::default()).expect("AttachVm");
    let mut a =
        AttachedDevice::attach(&avm, Arc::new(soft()), &AttachOptions::default()).expect("attach");
    let before = a.bars();
    // Onto guest RAM (slot 0 covers 0..1 MiB): KVM refuses the overlapping slot.
    a.config_write(0x04, &0x0006u16.to_le_bytes())
        .expect("COMMAND");
    let e = a
        .config_write(0x10, &0u32.to_le_bytes())
        .expect_err("a BAR moved onto RAM must fail");
    assert!(e.to_string().contains("KVM_SET_USER_MEMORY_REGION"), "{e}");
    assert_eq!(a.bars(), before, "the BAR stays where it was");
    let mut r = [0u8; 4];
    a.config_read(0x10, &mut r);
    assert_eq!(
        u64::from(u32::from_le_bytes(r) & !0xf),
        before[0].gpa,
        "the guest reads the old address back"
    );
    assert!(a.detach().errors.is_empty());
}

#[test]
fn a_thousand_attach_detach_cycles_leave_nothing_behind() {
    let Some((_serial, _kvm, vm, mem)) =
        vm_or_skip("a_thousand_attach_detach_cycles_leave_nothing_behind")
    else {
        return;
    };
    let avm = AttachVm::new(vm.clone(), &mem, VmLayout::default()).expect("AttachVm");
    // A 64 MiB BAR2 here: KVM sizes a slot's bookkeeping by its length, and a 64 GiB slot
    // a thousand times would time KVM, not attach.
    let dev = Arc::new(soft_with_bar2(64 << 20));
    // Warm up once (lazy allocations in libraries), then measure.
    AttachedDevice::attach(&avm, dev.clone(), &AttachOptions::default())
        .expect("attach")
        .detach();
    let (fds, mappings) = (fd_count(), map_count().0);
    for i in 0..1000 {
        let a = AttachedDevice::attach(&avm, dev.clone(), &AttachOptions::default())
            .unwrap_or_else(|e| panic!("cycle {i}: {e}"));
        let r = a.detach();
        assert!(r.errors.is_empty(), "cycle {i}: {:?}", r.errors);
    }
    assert_eq!(fd_count(), fds, "fds after 1,000 cycles");
    assert_eq!(map_count().0, mappings, "mappings after 1,000 cycles");
    assert_eq!(avm.routes().len(), 0, "GSI routes after 1,000 cycles");
    assert!(dev.routed_vectors(IrqIndex::Msix).is_empty());
}

#[test]
fn the_kvm_vfio_device_exists_and_refuses_what_is_not_vfio() {
    let Some((_serial, _kvm, vm, mem)) =
        vm_or_skip("the_kvm_vfio_device_exists_and_refuses_what_is_not_vfio")
    else {
        return;
    };
    let avm = AttachVm::new(vm, &mem, VmLayout::default()).expect("KVM_CREATE_DEVICE(VFIO)");
    let not_vfio = vmm_sys_util::eventfd::EventFd::new(0).expect("eventfd");
    let e = avm
        .check_file_registered(&not_vfio)
        .expect_err("an eventfd is no VFIO file");
    assert!(e.to_string().contains("KVM_DEV_VFIO_FILE_ADD"), "{e}");
}

#[test]
fn guest_ram_regions_are_tracked_exactly() {
    let Some((_serial, _kvm, vm, mem)) = vm_or_skip("guest_ram_regions_are_tracked_exactly") else {
        return;
    };
    let avm = AttachVm::new(vm, &mem, VmLayout::default()).expect("AttachVm");
    // No VFIO device yet: nothing is mapped, hotplug is recorded.
    assert!(avm.dma_mappings().is_empty());
    let r = Arc::new(
        GuestRegionMmap::from_range(GuestAddress(1 << 32), 1 << 20, None).expect("region"),
    );
    avm.add_region(r.clone()).expect("hotplug");
    let e = avm.add_region(r).expect_err("the same range twice");
    assert!(e.to_string().contains("overlaps"), "{e}");
    avm.remove_region(GuestAddress(1 << 32)).expect("unplug");
    let e = avm
        .remove_region(GuestAddress(1 << 32))
        .expect_err("already gone");
    assert!(e.to_string().contains("no region starts there"), "{e}");
    let e = AttachVm::new(
        avm.vm().clone(),
        &mem,
        VmLayout {
            #[allow(clippy::reversed_empty_ranges)] // the bad layout under test
            memslots: 10..=5,
            ..VmLayout::default()
        },
    )
    .expect_err("bad layout");
    assert!(e.to_string().contains("memslots"), "{e}");
}

#[test]
fn an_h200_sized_bar_gets_a_naturally_aligned_range_in_the_64_bit_window() {
    let Some((_serial, _kvm, vm, mem)) =
        vm_or_skip("an_h200_sized_bar_gets_a_naturally_aligned_range_in_the_64_bit_window")
    else {
        return;
    };
    let avm = AttachVm::new(vm, &mem, VmLayout::default()).expect("AttachVm");
    // An H200's BAR2: 256 GiB, 64-bit, prefetchable (tests/fixtures/sysfs/h200-host).
    let a = AttachedDevice::attach(
        &avm,
        Arc::new(soft_with_bar2(256 << 30)),
        &AttachOptions::default(),
    )
    .expect("attach a 256 GiB BAR");
    let b2 = a.bars().into_iter().find(|b| b.index == 2).expect("BAR2");
    assert_eq!(b2.size, 256 << 30);
    assert_eq!(b2.gpa % (256 << 30), 0, "natural alignment: {:#x}", b2.gpa);
    assert!(VmLayout::default().mmio64.contains(&(b2.gpa + b2.size - 1)));
    assert_eq!(b2.slots.len(), 1, "one memory slot for the whole BAR");
    // A second one fits too (two GPUs); a third does not, and says so.
    let b = AttachedDevice::attach(
        &avm,
        Arc::new(soft_with_bar2(256 << 30)),
        &AttachOptions::default(),
    )
    .expect("a second 256 GiB BAR");
    let e = AttachedDevice::attach(
        &avm,
        Arc::new(soft_with_bar2(256 << 30)),
        &AttachOptions::default(),
    )
    .expect_err("the default 512 GiB window holds two");
    assert!(e.to_string().contains("256 GiB 64-bit MMIO range"), "{e}");
    assert!(a.detach().errors.is_empty());
    assert!(b.detach().errors.is_empty());
}

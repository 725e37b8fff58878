//! `Interrupts` over a real vfio-pci device with MSI-X (`VM_ACCEL_LAB_MSIX_BDF`; in the lab,
//! QEMU's NVMe controller) and the lab guest's nested /dev/kvm: vectors VFIO triggers reach
//! a vCPU's LAPIC through the emulated table, a vector triggered while masked is pending in
//! the emulated PBA and delivered on unmask (VFIO itself keeps nothing pending), and
//! teardown turns MSI-X off on the device. Skips without the variable, /dev/vfio or /dev/kvm.

mod kvm_guest;

use std::sync::Arc;

use kvm_guest::{guest, mask, msix_control, pba_bit, program};
use vm_accel::attach::{DeviceBackend, GsiRoutes, InterruptStats, Interrupts, MsixLayout};
use vm_pci::{Bdf, SysfsRoot};
use vm_vfio::access::{BackendChoice, Device, IrqIndex};
use vm_vfio::bind::Paths;

fn msix_device(test: &str) -> Option<Bdf> {
    vm_accel_tests::lab::vfio_device_from_env(
        test,
        "VM_ACCEL_LAB_MSIX_BDF",
        "a vfio-pci device with MSI-X",
    )
    .map(|b| b.parse().expect("VM_ACCEL_LAB_MSIX_BDF is a PCI address"))
}

/// The device's MSI-X capability as the host decodes it (vm-pci, from sysfs).
fn host_msix(bdf: Bdf) -> vm_pci::config::MsixCap {
    let dev = vm_pci::read_device(&SysfsRoot::default(), bdf).expect("vm-pci reads the device");
    dev.capabilities
        .msix()
        .cloned()
        .unwrap_or_else(|| panic!("{bdf} has no MSI-X capability"))
}

#[test]
fn msix_of_a_real_device_through_the_emulated_table_and_pba() {
    let test = "msix_of_a_real_device_through_the_emulated_table_and_pba";
    let Some(bdf) = msix_device(test) else {
        return;
    };
    let Some(g) = guest(test, true) else {
        return;
    };
    let cap = host_msix(bdf);
    let layout = MsixLayout {
        offset: 0, // not used by Interrupts
        table_size: cap.table_size,
        table_bar: cap.table.bar,
        table_offset: cap.table.offset,
        pba_bar: cap.pba.bar,
        pba_offset: cap.pba.offset,
    };
    let d = Arc::new(
        Device::open_new(&Paths::new("/sys"), bdf, BackendChoice::Auto)
            .unwrap_or_else(|e| panic!("open {bdf}: {e}")),
    );
    vm_accel_tests::lab::report(&format!(
        "{bdf} ({}): {} MSI-X vectors, resizable in VFIO: {}",
        d.backend(),
        d.irq_count(IrqIndex::Msix),
        d.irq_resizable(IrqIndex::Msix)
    ));
    let routes = GsiRoutes::new(g.vm.clone(), 24..=4095).expect("GsiRoutes");
    let mut irq =
        Interrupts::new(d.clone(), routes.clone(), None, Some(layout)).expect("Interrupts");
    program(&mut irq, 0, 0x40, false);
    program(&mut irq, 1, 0x41, false);
    msix_control(&mut irq, true, false);
    assert!(host_msix(bdf).enabled, "MSI-X enabled on the device");
    assert_eq!(
        irq.stats(),
        InterruptStats {
            gsis: 2,
            irqfds: 2,
            vfio_vectors: 2
        }
    );

    d.trigger(IrqIndex::Msix, 0).expect("trigger vector 0");
    assert!(g.delivered(0x40), "vector 0 not delivered");

    mask(&mut irq, 1, true);
    d.trigger(IrqIndex::Msix, 1).expect("trigger vector 1");
    assert!(g.not_delivered(0x41), "masked vector delivered");
    assert!(pba_bit(&irq, 1), "masked vector not pending in the PBA");
    mask(&mut irq, 1, false);
    assert!(g.delivered(0x41), "pending vector not delivered on unmask");
    assert!(!pba_bit(&irq, 1));

    irq.teardown().expect("teardown");
    assert_eq!(irq.stats(), InterruptStats::default());
    assert_eq!(routes.len(), 0);
    assert!(!host_msix(bdf).enabled, "MSI-X off on the device");
}

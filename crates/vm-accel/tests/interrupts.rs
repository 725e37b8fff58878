//! Interrupts on this host's /dev/kvm: a SoftDevice raises MSI-X, MSI and INTx vectors
//! through the routes and irqfds attach sets up, and the vector must (or must not) appear
//! in the vCPU's LAPIC IRR; for INTx a real-mode guest takes the interrupt and EOIs it.
//! Skipped with the reason when /dev/kvm is missing.

mod kvm_guest;

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_bindings::{kvm_irqchip, KVM_IRQCHIP_IOAPIC};
use kvm_guest::{guest, mask, msix_control, msix_layout, pba_bit, program, LAPIC_SVR, MSI_ADDR};
use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_accel::attach::{
    ConfigEvent, DeviceBackend, GsiRoutes, InterruptStats, Interrupts, MsiLayout, MsiState,
    SoftDevice,
};
use vm_vfio::access::IrqIndex;

fn soft(index: IrqIndex, count: u32) -> Arc<SoftDevice> {
    let dev = SoftDevice::new("soft-irq", vec![0; 256], &[])
        .expect("SoftDevice")
        .with_irqs(index, count);
    Arc::new(dev)
}

/// A software device with `vectors` MSI-X vectors, and its interrupts on `routes`.
fn msix_device(routes: &Arc<GsiRoutes>, vectors: u16) -> (Arc<SoftDevice>, Interrupts) {
    let dev = soft(IrqIndex::Msix, u32::from(vectors));
    let irq = Interrupts::new(
        dev.clone(),
        routes.clone(),
        None,
        Some(msix_layout(vectors)),
    )
    .expect("Interrupts");
    (dev, irq)
}

#[test]
fn types_can_move_between_threads() {
    fn shared<T: Send + Sync>() {}
    shared::<GsiRoutes>();
    shared::<Interrupts>();
}

#[test]
fn msix_unmasked_vector_reaches_the_lapic() {
    let Some(g) = guest("msix_unmasked_vector_reaches_the_lapic", true) else {
        return;
    };
    let routes = g.routes();
    let (dev, mut irq) = msix_device(&routes, 4);
    program(&mut irq, 0, 0x40, false);
    // Nothing is taken before MSI-X is enabled.
    assert_eq!(irq.stats(), InterruptStats::default());
    assert!(!dev.fire(IrqIndex::Msix, 0), "no eventfd before enable");
    msix_control(&mut irq, true, false);
    assert_eq!(
        irq.stats(),
        InterruptStats {
            gsis: 1,
            irqfds: 1,
            vfio_vectors: 1
        }
    );
    assert_eq!(routes.len(), 1);
    assert_eq!(dev.routed_vectors(IrqIndex::Msix), vec![0]);
    assert!(!g.irr(0x40));
    assert!(dev.fire(IrqIndex::Msix, 0));
    assert!(g.delivered(0x40), "vector 0x40 not in the IRR");

    // The table reads back what the guest wrote; an untouched entry reads masked.
    let mut d = [0u8; 8];
    irq.msix_table_read(0, &mut d);
    assert_eq!(u64::from_le_bytes(d), MSI_ADDR);
    irq.msix_table_read(8, &mut d);
    assert_eq!(u64::from_le_bytes(d), 0x40);
    irq.msix_table_read(16 + 12, &mut d[..4]);
    assert_eq!(u32::from_le_bytes([d[0], d[1], d[2], d[3]]), 1);
    // Misaligned or out-of-table accesses are refused, and change nothing.
    assert!(irq.msix_table_write(2, &[0; 4]).is_err());
    assert!(irq.msix_table_write(4 * 16, &[0; 4]).is_err());
    assert!(irq.msix_table_write(0, &[0; 2]).is_err());
    let mut d4 = [0u8; 4];
    irq.msix_table_read(0, &mut d4);
    assert_eq!(u32::from_le_bytes(d4), MSI_ADDR as u32);
}

#[test]
fn msix_masked_vector_is_pending_and_delivered_on_unmask() {
    let Some(g) = guest(
        "msix_masked_vector_is_pending_and_delivered_on_unmask",
        true,
    ) else {
        return;
    };
    let routes = g.routes();
    let (dev, mut irq) = msix_device(&routes, 8);
    program(&mut irq, 1, 0x41, false);
    program(&mut irq, 2, 0x42, false);
    msix_control(&mut irq, true, false);

    // Vector mask.
    mask(&mut irq, 1, true);
    assert_eq!(irq.stats().irqfds, 1, "masking deassigns the irqfd");
    assert_eq!(irq.stats().gsis, 2, "the route stays while masked");
    assert!(!pba_bit(&irq, 1));
    assert!(dev.fire(IrqIndex::Msix, 1));
    assert!(g.not_delivered(0x41), "a masked vector was delivered");
    assert!(pba_bit(&irq, 1), "PBA bit of the masked vector that fired");
    assert!(!pba_bit(&irq, 2));
    mask(&mut irq, 1, false);
    assert!(g.delivered(0x41), "pending vector not delivered on unmask");
    assert!(!pba_bit(&irq, 1), "PBA bit after delivery");
    // Masked again without a new interrupt: nothing pending (delivered counts are gone).
    mask(&mut irq, 1, true);
    assert!(!pba_bit(&irq, 1), "stale PBA bit after mask");

    // Function mask.
    msix_control(&mut irq, true, true);
    assert_eq!(irq.stats().irqfds, 0);
    assert!(dev.fire(IrqIndex::Msix, 2));
    assert!(g.not_delivered(0x42), "delivered under the function mask");
    assert!(pba_bit(&irq, 2));
    msix_control(&mut irq, true, false);
    assert!(
        g.delivered(0x42),
        "pending vector not delivered on function unmask"
    );
    assert!(!pba_bit(&irq, 2));
    // Vector 1 is still masked in its entry.
    assert_eq!(irq.stats().irqfds, 1);

    // A bad PBA access reads zeros instead of failing.
    let mut d = [0xaau8; 4];
    irq.pba_read(2, &mut d);
    assert_eq!(d, [0; 4]);
}

#[test]
fn msix_2048_vectors_take_gsis_only_when_unmasked() {
    let Some(g) = guest("msix_2048_vectors_take_gsis_only_when_unmasked", true) else {
        return;
    };
    let routes = g.routes();
    let (dev, mut irq) = msix_device(&routes, 2048);
    msix_control(&mut irq, true, false);
    for i in 0..2048 {
        program(&mut irq, i, 0x50, true);
    }
    assert_eq!(irq.stats(), InterruptStats::default());
    assert_eq!(routes.len(), 0);
    for i in [0, 1000, 2047] {
        mask(&mut irq, i, false);
    }
    assert_eq!(
        irq.stats(),
        InterruptStats {
            gsis: 3,
            irqfds: 3,
            vfio_vectors: 3
        }
    );
    assert_eq!(routes.len(), 3);
    assert_eq!(dev.routed_vectors(IrqIndex::Msix), vec![0, 1000, 2047]);
    assert!(dev.fire(IrqIndex::Msix, 2047));
    assert!(g.delivered(0x50));

    // Disable frees the GSIs and turns MSI-X off in VFIO.
    msix_control(&mut irq, false, false);
    assert_eq!(irq.stats(), InterruptStats::default());
    assert_eq!(routes.len(), 0);
    assert!(!dev.irq_enabled(IrqIndex::Msix));
    assert_eq!(routes.allocate().expect("GSI"), 24, "GSIs were given back");
}

#[test]
fn msix_route_follows_a_reprogrammed_entry() {
    let Some(g) = guest("msix_route_follows_a_reprogrammed_entry", true) else {
        return;
    };
    let (dev, mut irq) = msix_device(&g.routes(), 1);
    program(&mut irq, 0, 0x60, false);
    msix_control(&mut irq, true, false);
    // The guest moves the vector (as Linux does for affinity): mask, new data, unmask.
    mask(&mut irq, 0, true);
    irq.msix_table_write(8, &0x61u32.to_le_bytes())
        .expect("data");
    mask(&mut irq, 0, false);
    assert!(dev.fire(IrqIndex::Msix, 0));
    assert!(g.delivered(0x61), "new data not used");
    assert!(!g.irr(0x60), "old data used");
    // Reprogrammed while unmasked: the route is updated under the live irqfd.
    irq.msix_table_write(8, &0x62u32.to_le_bytes())
        .expect("data");
    assert_eq!(irq.stats().gsis, 1, "same GSI, new message");
    assert!(dev.fire(IrqIndex::Msix, 0));
    assert!(g.delivered(0x62), "live route not updated");
}

#[test]
fn msi_vectors_with_per_vector_mask() {
    let Some(g) = guest("msi_vectors_with_per_vector_mask", true) else {
        return;
    };
    let routes = g.routes();
    let dev = soft(IrqIndex::Msi, 4);
    let layout = MsiLayout {
        offset: 0x50,
        max_vectors: 4,
        is_64bit: true,
        per_vector_mask: true,
    };
    let mut irq = Interrupts::new(dev.clone(), routes.clone(), Some(layout), None).expect("new");
    let mut st = MsiState {
        enabled: true,
        vectors: 4,
        address: MSI_ADDR,
        data: 0x70,
        mask: 0b0010,
    };
    irq.on_config_event(&ConfigEvent::Msi(st)).expect("MSI on");
    assert_eq!(
        irq.stats(),
        InterruptStats {
            gsis: 3,
            irqfds: 3,
            vfio_vectors: 4
        }
    );
    assert!(dev.fire(IrqIndex::Msi, 0));
    assert!(g.delivered(0x70));
    assert!(dev.fire(IrqIndex::Msi, 3));
    assert!(g.delivered(0x73), "vector 3 uses data | 3");
    assert!(dev.fire(IrqIndex::Msi, 1));
    assert!(g.not_delivered(0x71), "masked MSI vector delivered");
    assert_eq!(irq.msi_pending(), 0b0010);
    st.mask = 0;
    irq.on_config_event(&ConfigEvent::Msi(st)).expect("unmask");
    assert!(
        g.delivered(0x71),
        "pending MSI vector not delivered on unmask"
    );
    assert_eq!(irq.msi_pending(), 0);
    assert_eq!(irq.stats().gsis, 4);
    // More vectors than the capability offers: refused, nothing changes.
    let too_many = MsiState { vectors: 8, ..st };
    assert!(irq.on_config_event(&ConfigEvent::Msi(too_many)).is_err());
    assert_eq!(irq.stats().gsis, 4);
    st.enabled = false;
    irq.on_config_event(&ConfigEvent::Msi(st)).expect("MSI off");
    assert_eq!(irq.stats(), InterruptStats::default());
    assert_eq!(routes.len(), 0);
    assert!(!dev.irq_enabled(IrqIndex::Msi));
}

/// Points IOAPIC pin `pin` at LAPIC vector `vector` (fixed, physical dest 0, level, unmasked).
fn ioapic_pin(vm: &VmFd, pin: usize, vector: u8) {
    let mut chip = kvm_irqchip {
        chip_id: KVM_IRQCHIP_IOAPIC,
        ..Default::default()
    };
    vm.get_irqchip(&mut chip).expect("KVM_GET_IRQCHIP");
    // SAFETY: chip_id IOAPIC selects the ioapic member of the union (KVM filled it).
    unsafe {
        chip.chip.ioapic.redirtbl[pin].bits = u64::from(vector) | 1 << 15;
    }
    vm.set_irqchip(&chip).expect("KVM_SET_IRQCHIP");
}

#[test]
fn intx_through_a_resampling_irqfd() {
    let Some(g) = guest("intx_through_a_resampling_irqfd", true) else {
        return;
    };
    let routes = g.routes();
    routes
        .set_irqchip(10, KVM_IRQCHIP_IOAPIC, 10)
        .expect("INTx route");
    ioapic_pin(&g.vm, 10, 0x80);
    let dev = Arc::new(
        SoftDevice::new("soft-irq", vec![0; 256], &[])
            .expect("SoftDevice")
            .with_irqs(IrqIndex::Intx, 1)
            .with_irqs(IrqIndex::Msix, 1),
    );
    let mut irq = Interrupts::new(dev.clone(), routes.clone(), None, Some(msix_layout(1)))
        .expect("Interrupts");
    irq.enable_intx(10).expect("INTx");
    assert_eq!(
        irq.stats(),
        InterruptStats {
            gsis: 0,
            irqfds: 1,
            vfio_vectors: 1
        }
    );
    assert!(
        dev.intx_unmask_fd().is_some(),
        "VFIO got the resample eventfd"
    );
    assert!(dev.fire(IrqIndex::Intx, 0));
    assert!(g.delivered(0x80), "INTx not delivered through the IOAPIC");

    // MSI-X on: INTx off in VFIO and KVM; MSI-X off: INTx back.
    msix_control(&mut irq, true, false);
    assert!(
        !dev.irq_enabled(IrqIndex::Intx),
        "INTx on while MSI-X is enabled (no vector active yet)"
    );
    assert_eq!(irq.stats(), InterruptStats::default());
    program(&mut irq, 0, 0x81, false);
    assert!(!dev.irq_enabled(IrqIndex::Intx));
    assert!(dev.irq_enabled(IrqIndex::Msix));
    assert_eq!(irq.stats().irqfds, 1);
    msix_control(&mut irq, false, false);
    assert!(dev.irq_enabled(IrqIndex::Intx));
    assert_eq!(
        irq.stats(),
        InterruptStats {
            gsis: 0,
            irqfds: 1,
            vfio_vectors: 1
        }
    );
    // The VMM's route is the VMM's: not counted, not removed.
    assert_eq!(routes.len(), 1);
    irq.teardown().expect("teardown");

    // INTx wired while the guest has MSI-X enabled (no vector active yet) stays off.
    let mut irq = Interrupts::new(dev.clone(), routes.clone(), None, Some(msix_layout(1)))
        .expect("Interrupts");
    msix_control(&mut irq, true, false);
    irq.enable_intx(10).expect("INTx");
    assert!(!dev.irq_enabled(IrqIndex::Intx), "INTx on under MSI-X");
    assert_eq!(irq.stats(), InterruptStats::default());
    msix_control(&mut irq, false, false);
    assert!(dev.irq_enabled(IrqIndex::Intx));
    assert_eq!(irq.stats().irqfds, 1);
}

#[test]
fn teardown_leaves_no_route_irqfd_or_vfio_vector() {
    let Some(g) = guest("teardown_leaves_no_route_irqfd_or_vfio_vector", true) else {
        return;
    };
    let routes = g.routes();
    routes
        .set_irqchip(11, KVM_IRQCHIP_IOAPIC, 11)
        .expect("INTx route");
    let dev = Arc::new(
        SoftDevice::new("soft-irq", vec![0; 256], &[])
            .expect("SoftDevice")
            .with_irqs(IrqIndex::Intx, 1)
            .with_irqs(IrqIndex::Msix, 16),
    );
    for round in 0..3 {
        let mut irq = Interrupts::new(dev.clone(), routes.clone(), None, Some(msix_layout(16)))
            .expect("Interrupts");
        irq.enable_intx(11).expect("INTx");
        msix_control(&mut irq, true, false);
        for i in 0..16 {
            program(&mut irq, i, 0x90, i % 2 == 1);
        }
        assert_eq!(irq.stats().gsis, 8, "round {round}");
        assert_eq!(routes.len(), 9);
        irq.teardown().expect("teardown");
        assert_eq!(irq.stats(), InterruptStats::default());
        assert_eq!(routes.len(), 1, "only the VMM's INTx route is left");
        assert!(dev.routed_vectors(IrqIndex::Msix).is_empty());
        assert!(!dev.irq_enabled(IrqIndex::Msix));
        assert!(!dev.irq_enabled(IrqIndex::Intx));
        irq.teardown().expect("teardown is idempotent");
    }
    // Dropping without teardown releases too.
    {
        let mut irq = Interrupts::new(dev.clone(), routes.clone(), None, Some(msix_layout(16)))
            .expect("Interrupts");
        msix_control(&mut irq, true, false);
        program(&mut irq, 3, 0x90, false);
        assert_eq!(routes.len(), 2);
    }
    assert_eq!(routes.len(), 1);
    assert_eq!(routes.allocate().expect("GSI"), 24, "every GSI was freed");
}

#[test]
fn errors_name_the_ioctl_and_change_nothing() {
    // Without an in-kernel irqchip KVM refuses both routes and irqfds.
    let Some(g) = guest("errors_name_the_ioctl_and_change_nothing", false) else {
        return;
    };
    let routes = g.routes();
    let e = routes
        .set_msi(30, MSI_ADDR, 0x40)
        .expect_err("GSI not allocated");
    assert!(e.to_string().contains("not allocated"), "{e}");
    let gsi = routes.allocate().expect("GSI");
    let e = routes.set_msi(gsi, MSI_ADDR, 0x40).expect_err("no irqchip");
    assert!(e.to_string().contains("KVM_SET_GSI_ROUTING"), "{e}");
    assert!(e.errno().is_some());
    assert_eq!(routes.len(), 0, "refused route kept");
    routes.free(gsi);

    let (_, mut irq) = msix_device(&routes, 4);
    msix_control(&mut irq, true, false);
    program(&mut irq, 0, 0x40, true);
    let e = irq
        .msix_table_write(12, &0u32.to_le_bytes())
        .expect_err("unmask without irqchip");
    assert!(e.to_string().contains("KVM_SET_GSI_ROUTING"), "{e}");
    assert_eq!(irq.stats().gsis, 0, "GSI of the refused route freed");
    assert_eq!(routes.allocate().expect("GSI"), 24);

    let dev = soft(IrqIndex::Intx, 1);
    let mut irq = Interrupts::new(dev.clone(), routes, None, None).expect("Interrupts");
    let e = irq.enable_intx(10).expect_err("INTx without irqchip");
    assert!(e.to_string().contains("KVM_IRQFD"), "{e}");
    irq.teardown().expect("teardown after a failed enable");
    assert!(!dev.irq_enabled(IrqIndex::Intx));

    // Asking for what the device lacks is an error, not a panic.
    let mut none = Interrupts::new(dev.clone(), g.routes(), None, None).expect("Interrupts");
    assert!(none
        .on_config_event(&ConfigEvent::Msix {
            enabled: true,
            function_mask: false
        })
        .is_err());
    assert!(none.msix_table_write(0, &[0; 4]).is_err());
    let mut d = [0u8; 4];
    none.msix_table_read(0, &mut d);
    assert_eq!(d, [0xff; 4]);
    let no_intx = soft(IrqIndex::Msix, 1);
    let mut irq = Interrupts::new(no_intx, g.routes(), None, None).expect("Interrupts");
    assert!(irq.enable_intx(10).is_err());
    assert!(Interrupts::new(dev.clone(), g.routes(), None, Some(msix_layout(4096))).is_err());
    let _ = dev.name();
}

/// One guest access to the trapped MSI-X pages.
#[derive(Debug, Clone)]
enum Access {
    TableRead(u64, usize),
    TableWrite(u64, Vec<u8>),
    PbaRead(u64, usize),
    Control(bool, bool),
}

fn access() -> impl proptest::strategy::Strategy<Value = Access> {
    use proptest::prelude::*;
    // Offsets near the 4-entry table (so some hit), at the top of u64 (overflow), anywhere.
    let off = prop_oneof![0u64..80, u64::MAX - 16..=u64::MAX, any::<u64>()];
    prop_oneof![
        (off.clone(), 0usize..=16).prop_map(|(o, n)| Access::TableRead(o, n)),
        (off.clone(), proptest::collection::vec(any::<u8>(), 0..=16))
            .prop_map(|(o, d)| Access::TableWrite(o, d)),
        (off, 0usize..=16).prop_map(|(o, n)| Access::PbaRead(o, n)),
        (any::<bool>(), any::<bool>()).prop_map(|(e, m)| Access::Control(e, m)),
    ]
}

proptest::proptest! {
    #![proptest_config(proptest::prelude::ProptestConfig::with_cases(48))]

    /// Random guest accesses (any offset, any length, any data, MSI-X on and off) never
    /// panic, never hold more GSIs than unmasked-and-programmed entries, and teardown
    /// leaves nothing.
    #[test]
    fn random_guest_accesses_never_panic_or_leak(
        accesses in proptest::collection::vec(access(), 1..40)
    ) {
        let Some(g) = guest("random_guest_accesses_never_panic_or_leak", true) else {
            return Ok(());
        };
        let routes = g.routes();
        let (_, mut irq) = msix_device(&routes, 4);
        for a in accesses {
            match a {
                Access::TableRead(o, n) => irq.msix_table_read(o, &mut vec![0; n]),
                Access::TableWrite(o, d) => {
                    let _ = irq.msix_table_write(o, &d);
                }
                Access::PbaRead(o, n) => irq.pba_read(o, &mut vec![0; n]),
                Access::Control(e, m) => {
                    let _ = irq.on_config_event(&ConfigEvent::Msix { enabled: e, function_mask: m });
                }
            }
            proptest::prop_assert!(irq.stats().gsis <= 4);
            proptest::prop_assert_eq!(routes.len(), irq.stats().gsis);
        }
        irq.teardown().expect("teardown");
        proptest::prop_assert_eq!(irq.stats(), InterruptStats::default());
        proptest::prop_assert_eq!(routes.len(), 0);
    }
}

/// Guest code (16-bit real mode, at 0x1000): wait for interrupts.
const GUEST_MAIN: &[u8] = &[
    0xfb, // sti
    0xf4, // hlt
    0xeb, 0xfd, // jmp hlt
];
/// Interrupt handler (at 0x2000): x2APIC EOI (wrmsr 0x80b), then `out 0x10` to report.
const GUEST_HANDLER: &[u8] = &[
    0x66, 0xb9, 0x0b, 0x08, 0x00, 0x00, // mov ecx, 0x80b (x2APIC EOI)
    0x66, 0x31, 0xc0, // xor eax, eax
    0x66, 0x31, 0xd2, // xor edx, edx
    0x0f, 0x30, // wrmsr
    0xe6, 0x10, // out 0x10, al
    0xf4, // hlt
];

extern "C" fn kick(_: libc::c_int, _: *mut libc::siginfo_t, _: *mut libc::c_void) {}

/// Runs `vcpu` until the guest reports on port 0x10 (true), or 2 s pass (false).
fn run_until_report(vcpu: VcpuFd) -> bool {
    use kvm_ioctls::VcpuExit;
    use vmm_sys_util::signal::{register_signal_handler, Killable, SIGRTMIN};
    register_signal_handler(SIGRTMIN(), kick).expect("signal handler");
    let (tx, rx) = std::sync::mpsc::channel();
    let runner = std::thread::spawn(move || {
        let mut vcpu = vcpu;
        let reported = loop {
            match vcpu.run() {
                Ok(VcpuExit::IoOut(0x10, _)) => break true,
                Ok(VcpuExit::Hlt) => continue,
                Ok(other) => {
                    eprintln!("unexpected exit {other:?}");
                    break false;
                }
                Err(e) => {
                    if e.errno() != libc::EINTR {
                        eprintln!("KVM_RUN: {e}");
                    }
                    break false;
                }
            }
        };
        let _ = tx.send(());
        reported
    });
    if rx.recv_timeout(Duration::from_secs(2)).is_err() {
        // The guest never reported: kick KVM_RUN out (again, in case a kick came before it).
        while !runner.is_finished() {
            let _ = runner.kill(SIGRTMIN());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
    runner.join().unwrap_or(false)
}

#[test]
fn intx_eoi_in_the_guest_signals_the_resample_eventfd() {
    use kvm_bindings::{kvm_msr_entry, kvm_userspace_memory_region, Msrs, KVM_MAX_CPUID_ENTRIES};
    use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

    let test = "intx_eoi_in_the_guest_signals_the_resample_eventfd";
    if !std::path::Path::new("/dev/kvm").exists() {
        vm_accel_tests::hw::skip(test, "/dev/kvm is missing");
        return;
    }
    let Ok(kvm) = Kvm::new() else {
        vm_accel_tests::hw::skip(test, "cannot open /dev/kvm");
        return;
    };
    let vm = Arc::new(kvm.create_vm().expect("KVM_CREATE_VM"));
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    let mem: GuestMemoryMmap<()> =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(0), 0x10000)]).expect("guest RAM");
    mem.write_slice(GUEST_MAIN, GuestAddress(0x1000))
        .expect("code");
    mem.write_slice(GUEST_HANDLER, GuestAddress(0x2000))
        .expect("handler");
    // Real-mode IVT entry of vector 0x80: offset 0x2000, segment 0.
    mem.write_slice(&[0x00, 0x20, 0x00, 0x00], GuestAddress(0x80 * 4))
        .expect("IVT");
    let host = mem.get_host_address(GuestAddress(0)).expect("host address");
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: 0,
        memory_size: 0x10000,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: `mem` maps those 64 KiB and outlives the VM's use of them (the vCPU stops
    // before this function returns).
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");

    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut cpuid = kvm
        .get_supported_cpuid(KVM_MAX_CPUID_ENTRIES)
        .expect("KVM_GET_SUPPORTED_CPUID");
    for e in cpuid.as_mut_slice() {
        if e.function == 1 {
            e.ecx |= 1 << 21; // x2APIC: EOI by wrmsr works from real mode
        }
    }
    vcpu.set_cpuid2(&cpuid).expect("KVM_SET_CPUID2");
    let apic_base = Msrs::from_entries(&[kvm_msr_entry {
        index: 0x1b,
        data: 0xfee0_0000 | 1 << 11 | 1 << 10 | 1 << 8, // enabled, x2APIC, BSP
        ..Default::default()
    }])
    .expect("MSR list");
    assert_eq!(vcpu.set_msrs(&apic_base).expect("KVM_SET_MSRS"), 1);
    let mut lapic = vcpu.get_lapic().expect("KVM_GET_LAPIC");
    for (i, b) in 0x1ffu32.to_le_bytes().iter().enumerate() {
        lapic.regs[LAPIC_SVR + i] = *b as _;
    }
    vcpu.set_lapic(&lapic).expect("KVM_SET_LAPIC");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS");
    regs.rip = 0x1000;
    regs.rflags = 2;
    regs.rsp = 0x8000;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");

    let routes = GsiRoutes::new(vm.clone(), 24..=4095).expect("GsiRoutes");
    routes
        .set_irqchip(10, KVM_IRQCHIP_IOAPIC, 10)
        .expect("INTx route");
    ioapic_pin(&vm, 10, 0x80);
    let dev = soft(IrqIndex::Intx, 1);
    let mut irq = Interrupts::new(dev.clone(), routes.clone(), None, None).expect("Interrupts");
    irq.enable_intx(10).expect("INTx");
    let unmask = dev.intx_unmask_fd().expect("VFIO got the resample eventfd");
    assert!(
        unmask.read().is_err(),
        "resample eventfd signalled before any EOI"
    );

    assert!(dev.fire(IrqIndex::Intx, 0));
    assert!(
        run_until_report(vcpu),
        "the guest did not take INTx (vector 0x80) and report"
    );
    // The guest's EOI of the level interrupt made KVM signal the resample eventfd, which
    // VFIO uses to unmask the line.
    let start = Instant::now();
    let mut count = unmask.read();
    while count.is_err() && start.elapsed() < Duration::from_secs(1) {
        std::thread::sleep(Duration::from_millis(5));
        count = unmask.read();
    }
    assert_eq!(
        count.ok(),
        Some(1),
        "no resample signal after the guest's EOI"
    );
    irq.teardown().expect("teardown");
}

//! The mini VMM (examples/mini_vmm) on this host's /dev/kvm with software stand-ins
//! (`SoftDevice`) attached through `AttachedDevice`: the guest finds the device through
//! config mechanism #1, sizes and places its BAR (config-space emulation: the device never
//! sees the BAR writes), reads edu's ID register through the BAR's memory slot (no trapped
//! access), runs DMA both ways and takes the completion MSI as a real interrupt (KVM MSI
//! route + irqfd, its handler runs); MSI-X through the emulated table with a masked vector
//! pending in the PBA and delivered on unmask; the far end of a 64 GiB BAR through its slot.
//! No VFIO needed; skipped with the reason when /dev/kvm is missing.

#[allow(dead_code)]
#[path = "../examples/mini_vmm/guest.rs"]
mod guest;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/scenarios.rs"]
mod scenarios;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/soft.rs"]
mod soft;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/vmm.rs"]
mod vmm;

use std::sync::Arc;
use std::time::Duration;

use anyhow::bail;
use guest::{key, Scenario};
use scenarios::Fire;
use vm_accel::attach::{AttachOptions, AttachedDevice, DeviceBackend, SoftDevice};

fn kvm(test: &str) -> bool {
    let _ = env_logger::builder().is_test(true).try_init();
    let ok = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open("/dev/kvm")
        .is_ok();
    if !ok {
        vm_accel_tests::hw::skip(test, "/dev/kvm cannot be opened read-write");
    }
    ok
}

/// A VM with `dev` attached at 00:01.0.
fn attach(dev: Arc<SoftDevice>) -> (vmm::Vm, AttachedDevice) {
    let vm = vmm::Vm::new().expect("VM");
    let avm = vm.attach_vm().expect("AttachVm");
    let attached = AttachedDevice::attach(&avm, dev, &AttachOptions::default()).expect("attach");
    (vm, attached)
}

fn detach(dev: AttachedDevice) {
    let report = dev.detach();
    assert!(report.errors.is_empty(), "detach: {:?}", report.errors);
}

/// Runs the edu program against a fresh soft edu (`fire_irq: false`: a broken edu that
/// never raises the completion interrupt).
fn run_edu(
    move_bar: bool,
    fire_irq: bool,
    timeout: Duration,
) -> (vmm::Vm, Arc<SoftDevice>, anyhow::Result<vmm::Report>) {
    run_edu_on(
        soft::device().expect("soft edu"),
        move_bar,
        fire_irq,
        timeout,
    )
}

fn run_edu_on(
    dev: Arc<SoftDevice>,
    move_bar: bool,
    fire_irq: bool,
    timeout: Duration,
) -> (vmm::Vm, Arc<SoftDevice>, anyhow::Result<vmm::Report>) {
    let (mut vm, mut attached) = attach(dev.clone());
    let engine = soft::Engine::start(dev.clone(), vm.mem.clone(), fire_irq).expect("engine");
    let r = scenarios::run(
        &mut vm,
        &mut attached,
        Scenario::Edu { move_bar },
        &mut |_, a| bail!("unexpected host action {a:#x}"),
        timeout,
    );
    drop(engine);
    detach(attached);
    (vm, dev, r)
}

#[test]
fn guest_finds_edu_reads_id_through_the_slot_dma_round_trip_and_msi() {
    if !kvm("guest_finds_edu_reads_id_through_the_slot_dma_round_trip_and_msi") {
        return;
    }
    let (vm, dev, r) = run_edu(false, true, scenarios::TIMEOUT);
    let r = r.expect("mini VMM run");
    scenarios::check_edu(&vm, &r, false).expect("edu checks");
    // BAR registers are emulated: sizing and placement never reached the device.
    let bar_writes: Vec<_> = dev
        .config_writes()
        .into_iter()
        .filter(|(off, _)| (0x10..0x28).contains(off))
        .collect();
    assert!(
        bar_writes.is_empty(),
        "BAR writes reached the device: {bar_writes:x?}"
    );
    // COMMAND passed through: MEM and bus master on.
    let cmd = dev
        .config_writes()
        .into_iter()
        .rev()
        .find(|(off, _)| *off == 4)
        .expect("a COMMAND write");
    assert_eq!(cmd.1[0] & 6, 6, "COMMAND {:x?}", cmd.1);
    // Every BAR access went through the memory slot (none trapped to the VMM).
    assert!(
        dev.bar_accesses().is_empty(),
        "trapped BAR accesses: {:x?}",
        dev.bar_accesses()
    );
}

#[test]
fn a_bar_the_guest_moves_still_reads_the_device_and_the_old_address_is_gone() {
    if !kvm("a_bar_the_guest_moves_still_reads_the_device_and_the_old_address_is_gone") {
        return;
    }
    let (vm, _dev, r) = run_edu(true, true, scenarios::TIMEOUT);
    let r = r.expect("mini VMM run");
    scenarios::check_edu(&vm, &r, true).expect("edu checks");
    assert_eq!(
        r.get(key::MOVED_ADDR),
        Some(guest::LOW_BAR_BASE + (1 << 20))
    );
}

#[test]
fn without_the_completion_msi_the_guest_never_finishes() {
    // The interrupt check is real: a device that does not raise it leaves the guest
    // waiting in hlt, and the run fails (the watchdog stops it) instead of passing.
    if !kvm("without_the_completion_msi_the_guest_never_finishes") {
        return;
    }
    let (_vm, _dev, r) = run_edu(false, false, Duration::from_secs(3));
    let msg = format!("{:#}", r.expect_err("the run must fail without the MSI"));
    assert!(msg.contains("did not finish"), "{msg}");
    assert!(
        msg.contains("(c, 81)"),
        "the guest got as far as enabling MSI: {msg}"
    );
}

#[test]
fn an_edu_whose_bar_traps_instead_of_using_a_slot_fails_the_checks() {
    // The program works either way (trapped accesses reach the same registers), so only
    // the exit record tells a memory slot from a trapped BAR: the checks must see it.
    if !kvm("an_edu_whose_bar_traps_instead_of_using_a_slot_fails_the_checks") {
        return;
    }
    // BAR0 not mmap-able: every access traps to the VMM, as without a memory slot.
    let dev = Arc::new(
        soft::edu()
            .expect("soft edu")
            .with_mmap_areas(0, Vec::new()),
    );
    let (vm, dev, r) = run_edu_on(dev, false, true, scenarios::TIMEOUT);
    let r = r.expect("the program still runs with a trapped BAR");
    assert!(
        !dev.bar_accesses().is_empty(),
        "BAR0 accesses should have trapped"
    );
    let err = scenarios::check_edu(&vm, &r, false).expect_err("a trapped BAR must fail");
    assert!(
        format!("{err:#}").contains("instead of going through the memory slot"),
        "{err:#}"
    );
}

#[test]
fn msix_through_the_emulated_table_a_masked_vector_is_pending_and_delivered_on_unmask() {
    if !kvm("msix_through_the_emulated_table_a_masked_vector_is_pending_and_delivered_on_unmask") {
        return;
    }
    let dev = soft::msix_device().expect("soft MSI-X device");
    let (mut vm, mut attached) = attach(dev.clone());
    let r = scenarios::msix(&mut vm, &mut attached, &Fire::Soft(dev.clone())).expect("MSI-X run");
    assert_eq!(r.get(key::MSIX_SIZE), Some(u64::from(soft::MSIX_VECTORS)));
    // The guest's table writes were emulated: the device's table was never written.
    let table_writes: Vec<_> = dev
        .bar_accesses()
        .into_iter()
        .filter(|&(bar, off, _, write)| bar == 0 && off >= 0x2000 && write)
        .collect();
    assert!(
        table_writes.is_empty(),
        "table writes reached the device: {table_writes:x?}"
    );
    let stats = attached.interrupt_stats();
    detach(attached);
    assert!(stats.gsis >= guest::MSIX_USED as usize, "{stats:?}");
    assert!(
        dev.routed_vectors(vm_vfio::access::IrqIndex::Msix)
            .is_empty(),
        "vectors left routed after detach"
    );
}

#[test]
fn the_far_end_of_a_64_gib_bar_through_its_slot() {
    // The H200-size path: a 64-bit prefetchable 64 GiB BAR2 (NORESERVE memory, only the
    // touched pages are real), placed by the guest above 4 GiB, read and written at its end.
    let test = "the_far_end_of_a_64_gib_bar_through_its_slot";
    if !kvm(test) {
        return;
    }
    // The BAR ends at 128 GiB: the vCPU needs 38 physical address bits.
    let bits = kvm_ioctls::Kvm::new()
        .and_then(|k| k.get_supported_cpuid(kvm_bindings::KVM_MAX_CPUID_ENTRIES))
        .ok()
        .and_then(|c| {
            c.as_slice()
                .iter()
                .find(|e| e.function == 0x8000_0008)
                .map(|e| e.eax & 0xff)
        });
    if bits.is_none_or(|b| b < 38) {
        vm_accel_tests::hw::skip(
            test,
            &format!("KVM offers {bits:?} physical address bits, 38 needed"),
        );
        return;
    }
    let size = 64u64 << 30;
    let dev = soft::large_bar_device(size).expect("soft device");
    let (mut vm, mut attached) = attach(dev.clone());
    let r = scenarios::large_bar(&mut vm, &mut attached, 2).expect("large BAR run");
    assert_eq!(r.get(key::BAR_ADDR), Some(guest::HIGH_BAR_BASE));
    let mut far = [0u8; 8];
    dev.bar_read(2, size - 8, &mut far).expect("host read");
    assert_eq!(u64::from_le_bytes(far), guest::FAR_PATTERN);
    detach(attached);
}

#[test]
fn the_checks_fail_on_wrong_reports() {
    // check_edu and check_msix compare against the real values, so other values fail.
    let found = [
        (key::DEVICE, 1),
        (key::ID, 0x11e8_1234),
        (key::BAR_SIZE, 1 << 20),
        (key::BAR_REG, 0xe000_0000),
        (key::BAR_ADDR, 0xe000_0000),
    ];
    let mut values = found.to_vec();
    values.push((key::EDU_ID, 0xdead));
    let r = vmm::Report {
        values,
        status: Some(0),
        mmio_exits: Vec::new(),
    };
    if kvm("the_checks_fail_on_wrong_reports") {
        let vm = vmm::Vm::new().expect("VM");
        let err = scenarios::check_edu(&vm, &r, false).expect_err("a wrong ID must fail");
        assert!(
            format!("{err:#}").contains("edu ID register 0xdead"),
            "{err:#}"
        );
    }
    // A masked vector that was delivered anyway (counts 0x010201 before unmask) fails.
    let r = vmm::Report {
        values: vec![
            (key::MSIX_SIZE, 8),
            (key::MSIX_COUNTS_MASKED, 0x01_02_01),
            (key::MSIX_PBA_MASKED, 0),
        ],
        status: Some(0),
        mmio_exits: Vec::new(),
    };
    let err = scenarios::check_msix(&r).expect_err("a delivered masked vector must fail");
    assert!(format!("{err:#}").contains("while masked"), "{err:#}");
}

//! The mini VMM (examples/mini_vmm) on this host's /dev/kvm with a software edu
//! (`SoftDevice`): the guest finds the device through config mechanism #1, sizes and
//! places BAR0 (config-space emulation: the device never sees the BAR writes), reads the
//! ID register through the BAR's memory slot (no trapped access), runs DMA both ways and
//! takes the completion MSI as a real interrupt (KVM MSI route + irqfd, its handler runs).
//! No VFIO needed; skipped with the reason when /dev/kvm is missing.

#[allow(dead_code)]
#[path = "../examples/mini_vmm/guest.rs"]
mod guest;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/local.rs"]
mod local;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/scenarios.rs"]
mod scenarios;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/soft_edu.rs"]
mod soft_edu;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/vmm.rs"]
mod vmm;

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, Result};
use guest::{key, Scenario};
use vm_accel::attach::SoftDevice;

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

/// Runs `scenario` against a fresh soft edu; returns the VM, the device and the report.
fn run_soft(
    scenario: Scenario,
    fire_irq: bool,
    timeout: Duration,
) -> Result<(vmm::Vm, Arc<SoftDevice>, vmm::Report)> {
    let mut vm = vmm::Vm::new()?;
    let dev = soft_edu::device()?;
    let _engine = soft_edu::Engine::start(dev.clone(), vm.mem.clone(), fire_irq)?;
    let mut attached = local::LocalAttach::new(dev.clone(), Arc::clone(&vm.fd))?;
    let r = scenarios::run_within(
        &mut vm,
        &mut attached,
        scenario,
        &mut |a| bail!("unexpected host action {a:#x}"),
        timeout,
    )?;
    Ok((vm, dev, r))
}

#[test]
fn guest_finds_edu_reads_id_through_the_slot_dma_round_trip_and_msi() {
    if !kvm("guest_finds_edu_reads_id_through_the_slot_dma_round_trip_and_msi") {
        return;
    }
    let (vm, dev, r) = run_soft(Scenario::Edu { move_bar: false }, true, scenarios::TIMEOUT)
        .expect("mini VMM run");
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
    let (vm, _dev, r) =
        run_soft(Scenario::Edu { move_bar: true }, true, scenarios::TIMEOUT).expect("mini VMM run");
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
    let err = run_soft(
        Scenario::Edu { move_bar: false },
        false,
        Duration::from_secs(3),
    )
    .expect_err("the run must fail without the MSI");
    let msg = format!("{err:#}");
    assert!(msg.contains("did not finish"), "{msg}");
    assert!(
        msg.contains("(c, 81)"),
        "the guest got as far as enabling MSI: {msg}"
    );
}

#[test]
fn an_edu_id_mismatch_fails_the_checks() {
    // check_edu compares against edu's real values, so a report with another ID fails.
    let r = vmm::Report {
        values: vec![
            (key::DEVICE, 1),
            (key::ID, 0x11e8_1234),
            (key::BAR_SIZE, 1 << 20),
            (key::BAR_REG, 0xe000_0000),
            (key::BAR_ADDR, 0xe000_0000),
            (key::EDU_ID, 0xdead),
        ],
        status: Some(0),
    };
    let Ok(vm) = vmm::Vm::new() else {
        vm_accel_tests::hw::skip(
            "an_edu_id_mismatch_fails_the_checks",
            "/dev/kvm cannot be opened",
        );
        return;
    };
    let err = scenarios::check_edu(&vm, &r, false).expect_err("a wrong ID must fail");
    assert!(
        format!("{err:#}").contains("edu ID register 0xdead"),
        "{err:#}"
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
    use vm_accel::attach::{DeviceBackend, SoftBar};
    let size = 64u64 << 30;
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
    let mut c = vec![0u8; 256];
    c[0..4].copy_from_slice(&0x1110_1af4u32.to_le_bytes()); // ivshmem's ids
    c[0xb] = 0x05;
    let bar = SoftBar {
        size,
        is_64bit: true,
        prefetchable: true,
    };
    let dev = Arc::new(SoftDevice::new("soft-ivshmem", c, &[(2, bar)]).expect("soft device"));
    dev.bar_write(2, size - 16, &guest::FAR_MAGIC.to_le_bytes())
        .expect("host write");
    let mut vm = vmm::Vm::new().expect("VM");
    let mut attached = local::LocalAttach::new(dev.clone(), Arc::clone(&vm.fd)).expect("attach");
    let r = scenarios::run(
        &mut vm,
        &mut attached,
        Scenario::LargeBar { bar: 2 },
        &mut |a| bail!("unexpected host action {a:#x}"),
    )
    .expect("mini VMM run");
    let mut far = [0u8; 8];
    dev.bar_read(2, size - 8, &mut far).expect("host read");
    scenarios::check_large_bar(&r, size, u64::from_le_bytes(far)).expect("large BAR checks");
    assert_eq!(r.get(key::BAR_ADDR), Some(guest::HIGH_BAR_BASE));
}

//! Runs a guest program against a device and checks what the guest reported.

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use vm_memory::{Bytes, GuestAddress};

use crate::guest::{self, key, Scenario};
use crate::vmm::{layout, PciFunction, Report, Vm};

/// How long a program may run (nested KVM under TCG is slow; edu's DMA takes 100 ms each).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Loads the program for `scenario` and runs it to its end (at most [`TIMEOUT`]).
pub fn run(
    vm: &mut Vm,
    dev: &mut dyn PciFunction,
    scenario: Scenario,
    host: &mut dyn FnMut(u32) -> Result<()>,
) -> Result<Report> {
    run_within(vm, dev, scenario, host, TIMEOUT)
}

/// [`run`] with another time limit.
pub fn run_within(
    vm: &mut Vm,
    dev: &mut dyn PciFunction,
    scenario: Scenario,
    host: &mut dyn FnMut(u32) -> Result<()>,
    timeout: Duration,
) -> Result<Report> {
    let program = guest::build(scenario).map_err(|e| anyhow::anyhow!("assemble: {e}"))?;
    vm.load(&program)?;
    let report = vm.run(dev, host, timeout)?;
    log::info!("guest report: {report:x?}");
    ensure!(
        report.status == Some(0),
        "the guest failed with status {:x?}; it reported {report:x?}",
        report.status
    );
    Ok(report)
}

fn get(r: &Report, k: u32) -> Result<u64> {
    r.get(k)
        .with_context(|| format!("the guest did not report key {k:#x}; it reported {r:x?}"))
}

/// The common part: the device at 00:01.0, BAR sized and placed where the guest chose.
pub fn check_found(r: &Report, vendor_device: u32, bar_size: u64) -> Result<u64> {
    ensure!(
        get(r, key::ID)? as u32 == vendor_device,
        "vendor:device {:#x}, expected {vendor_device:#x}",
        get(r, key::ID)?
    );
    check_found_bar(r, bar_size)
}

/// edu: ID through the slot, DMA both ways, one MSI taken and acked; the moved BAR.
pub fn check_edu(vm: &Vm, r: &Report, moved: bool) -> Result<()> {
    check_found(r, 0x11e8_1234, 1 << 20)?;
    ensure!(
        get(r, key::EDU_ID)? == 0x0100_00ed,
        "edu ID register {:#x}",
        get(r, key::EDU_ID)?
    );
    ensure!(
        get(r, key::MSI_CONTROL)? & 1 == 1,
        "MSI control {:#x}: not enabled",
        get(r, key::MSI_CONTROL)?
    );
    ensure!(
        get(r, key::IRQ_COUNT)? == 1,
        "the MSI handler ran {} times",
        get(r, key::IRQ_COUNT)?
    );
    ensure!(
        get(r, key::IRQ_STATUS)? & 0x100 != 0,
        "interrupt status {:#x}: no DMA bit",
        get(r, key::IRQ_STATUS)?
    );
    ensure!(
        get(r, key::DMA_MISMATCHES)? == 0,
        "{} qwords differ after the DMA round trip",
        get(r, key::DMA_MISMATCHES)?
    );
    // The host's view of guest RAM agrees (the bytes really crossed the device).
    let mut src = vec![0u8; guest::DMA_LEN as usize];
    let mut dst = vec![0u8; guest::DMA_LEN as usize];
    vm.mem.read_slice(&mut src, GuestAddress(layout::DMA_SRC))?;
    vm.mem.read_slice(&mut dst, GuestAddress(layout::DMA_DST))?;
    ensure!(
        src == dst && src.iter().any(|&b| b != 0),
        "DMA buffers differ in guest RAM"
    );
    if moved {
        let old = get(r, key::BAR_ADDR)?;
        let new = get(r, key::MOVED_ADDR)?;
        ensure!(new != old, "the BAR did not move");
        ensure!(
            get(r, key::MOVED_EDU_ID)? == 0x0100_00ed,
            "edu ID at the moved BAR: {:#x}",
            get(r, key::MOVED_EDU_ID)?
        );
        ensure!(
            get(r, key::OLD_ADDR_READ)? as u32 == u32::MAX,
            "the old BAR address still reads {:#x}",
            get(r, key::OLD_ADDR_READ)?
        );
    }
    Ok(())
}

/// MSI-X: vectors 0 and 2 arrived; vector 1 fired while masked, was pending in the PBA and
/// not delivered, then arrived on unmask and left the PBA.
pub fn check_msix(r: &Report) -> Result<()> {
    ensure!(
        get(r, key::MSIX_SIZE)? >= u64::from(guest::MSIX_USED),
        "MSI-X table of {} entries",
        get(r, key::MSIX_SIZE)?
    );
    let masked = get(r, key::MSIX_COUNTS_MASKED)?;
    ensure!(masked == 0x01_00_01, "interrupt counts (v2 v1 v0 bytes) while vector 1 was masked: {masked:#08x}, expected 0x010001");
    let pba = get(r, key::MSIX_PBA_MASKED)?;
    ensure!(
        pba & 0b111 == 0b010,
        "PBA while vector 1 was masked and had fired: {pba:#x}, expected bit 1 alone"
    );
    let counts = get(r, key::MSIX_COUNTS)?;
    ensure!(
        counts == 0x01_01_01,
        "interrupt counts after unmasking vector 1: {counts:#08x}, expected 0x010101"
    );
    let after = get(r, key::MSIX_PBA_AFTER)?;
    ensure!(
        after & 0b111 == 0,
        "PBA after unmask and delivery: {after:#x}, expected 0"
    );
    Ok(())
}

/// Large BAR: the guest read what the host put at BAR end - 16 and the host reads what the
/// guest wrote at BAR end - 8 (`host_far`, read through VFIO after the run).
pub fn check_large_bar(r: &Report, size: u64, host_far: u64) -> Result<()> {
    let addr = check_found_bar(r, size)?;
    ensure!(
        addr >= 1 << 32,
        "the {size:#x}-byte BAR sits at {addr:#x}, not above 4 GiB"
    );
    ensure!(
        get(r, key::FAR_READ)? == guest::FAR_MAGIC,
        "the guest read {:#x} at BAR end - 16, the host put {:#x}",
        get(r, key::FAR_READ)?,
        guest::FAR_MAGIC
    );
    ensure!(
        get(r, key::FAR_READBACK)? == guest::FAR_PATTERN,
        "the guest read back {:#x} at BAR end - 8",
        get(r, key::FAR_READBACK)?
    );
    ensure!(
        host_far == guest::FAR_PATTERN,
        "the host reads {host_far:#x} at BAR end - 8 after the guest wrote {:#x}",
        guest::FAR_PATTERN
    );
    Ok(())
}

/// The BAR part of [`check_found`] (any device).
fn check_found_bar(r: &Report, bar_size: u64) -> Result<u64> {
    ensure!(
        get(r, key::DEVICE)? == 1,
        "device found at 00:{:02x}.0, not 00:01.0",
        get(r, key::DEVICE)?
    );
    ensure!(
        get(r, key::BAR_SIZE)? == bar_size,
        "BAR size {:#x}, expected {bar_size:#x}",
        get(r, key::BAR_SIZE)?
    );
    let addr = get(r, key::BAR_ADDR)?;
    ensure!(
        get(r, key::BAR_REG)? & !0xf == addr,
        "BAR register reads {:#x} after programming {addr:#x}",
        get(r, key::BAR_REG)?
    );
    Ok(addr)
}

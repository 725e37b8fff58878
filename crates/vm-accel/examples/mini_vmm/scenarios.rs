//! Runs a guest program against a device and checks what the guest reported.

use std::sync::Arc;
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use vm_accel::attach::{AttachedDevice, SoftDevice};
use vm_memory::{Bytes, GuestAddress};
use vm_vfio::access::IrqIndex;

use crate::guest::{self, action, key, Scenario};
use crate::vmm::{layout, PciFunction, Report, Vm};

/// How long a program may run (nested KVM under TCG is slow; edu's DMA takes 100 ms each).
pub const TIMEOUT: Duration = Duration::from_secs(60);

/// Loads the program for `scenario` and runs it to its end (at most `timeout`).
pub fn run<D: PciFunction>(
    vm: &mut Vm,
    dev: &mut D,
    scenario: Scenario,
    host: &mut dyn FnMut(&mut D, u32) -> Result<()>,
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

fn no_host_action<D>(_: &mut D, a: u32) -> Result<()> {
    bail!("unexpected host action {a:#x}")
}

/// The edu program, checked.
pub fn edu(vm: &mut Vm, dev: &mut AttachedDevice, move_bar: bool) -> Result<Report> {
    let r = run(
        vm,
        dev,
        Scenario::Edu { move_bar },
        &mut no_host_action,
        TIMEOUT,
    )?;
    check_edu(vm, &r, move_bar)?;
    Ok(r)
}

/// Who fires MSI-X vectors when the guest asks: VFIO's trigger for a vfio-pci device (the
/// kernel signals the vector's eventfd, as the device's message would), or the stand-in.
pub enum Fire {
    Vfio,
    Soft(Arc<SoftDevice>),
}

impl Fire {
    fn fire(&self, dev: &AttachedDevice, vector: u32) -> Result<()> {
        match self {
            Fire::Vfio => {
                let vfio = dev.vfio().context("not a VFIO device: use Fire::Soft")?;
                Ok(vfio.trigger(IrqIndex::Msix, vector)?)
            }
            Fire::Soft(d) => {
                // false: no eventfd for the vector (masked, or never enabled): the message
                // is lost, as on hardware; the guest's checks tell.
                d.fire(IrqIndex::Msix, vector);
                Ok(())
            }
        }
    }
}

/// The MSI-X program, checked; `fire` raises the vectors the guest asks for.
pub fn msix(vm: &mut Vm, dev: &mut AttachedDevice, fire: &Fire) -> Result<Report> {
    let mut host = |d: &mut AttachedDevice, a: u32| -> Result<()> {
        let v = a
            .checked_sub(action::FIRE_MSIX)
            .context("unknown host action")?;
        fire.fire(d, v)
    };
    let r = run(vm, dev, Scenario::Msix, &mut host, TIMEOUT)?;
    check_msix(&r)?;
    Ok(r)
}

/// The large-BAR program on BAR `bar`, checked from both sides: the host writes the BAR's
/// end - 16 before and reads its end - 8 after, through the device (not the slot).
pub fn large_bar(vm: &mut Vm, dev: &mut AttachedDevice, bar: u8) -> Result<Report> {
    let backend = dev.backend().clone();
    let size = backend.bar_region(bar).context("no such BAR")?.size;
    backend.bar_write(bar, size - 16, &guest::FAR_MAGIC.to_le_bytes())?;
    let r = run(
        vm,
        dev,
        Scenario::LargeBar { bar },
        &mut no_host_action,
        TIMEOUT,
    )?;
    let mut far = [0u8; 8];
    backend.bar_read(bar, size - 8, &mut far)?;
    check_large_bar(&r, size, u64::from_le_bytes(far))?;
    Ok(r)
}

fn get(r: &Report, k: u32) -> Result<u64> {
    r.get(k)
        .with_context(|| format!("the guest did not report key {k:#x}; it reported {r:x?}"))
}

/// The common part: the device at 00:01.0, its ids, the BAR sized and placed where the
/// guest chose.
pub fn check_found(r: &Report, vendor_device: u32, bar_size: u64) -> Result<u64> {
    ensure!(
        get(r, key::ID)? as u32 == vendor_device,
        "vendor:device {:#x}, expected {vendor_device:#x}",
        get(r, key::ID)?
    );
    check_found_bar(r, bar_size)
}

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
    // Everything went through BAR0's memory slot: the only access that may exit is the
    // read of the old address after a move (no slot there any more).
    let old_addr = get(r, key::BAR_ADDR)?;
    ensure!(
        r.mmio_exits
            .iter()
            .all(|&(gpa, write)| moved && !write && gpa == old_addr),
        "BAR accesses trapped to the VMM instead of going through the memory slot: {:x?}",
        r.mmio_exits
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

/// MSI-X: vectors 0, 1, 2 arrived once each; vector 1, fired again while masked, was
/// pending in the PBA and not delivered, then arrived on unmask and left the PBA.
pub fn check_msix(r: &Report) -> Result<()> {
    ensure!(
        get(r, key::MSIX_SIZE)? >= u64::from(guest::MSIX_USED),
        "MSI-X table of {} entries",
        get(r, key::MSIX_SIZE)?
    );
    let masked = get(r, key::MSIX_COUNTS_MASKED)?;
    ensure!(
        masked == 0x01_01_01,
        "interrupt counts (v2 v1 v0 bytes) after vector 1 fired while masked: {masked:#08x}, expected 0x010101"
    );
    let pba = get(r, key::MSIX_PBA_MASKED)?;
    ensure!(
        pba & 0b111 == 0b010,
        "PBA while vector 1 was masked and had fired: {pba:#x}, expected bit 1 alone"
    );
    let counts = get(r, key::MSIX_COUNTS)?;
    ensure!(
        counts == 0x01_02_01,
        "interrupt counts after unmasking vector 1: {counts:#08x}, expected 0x010201"
    );
    // The table and PBA are trapped (emulated by the VMM): their accesses exit, and only
    // theirs, inside the BAR.
    let bar = get(r, key::BAR_ADDR)?;
    let size = get(r, key::BAR_SIZE)?;
    ensure!(
        r.mmio_exits.iter().any(|&(_, w)| w) && r.mmio_exits.iter().any(|&(_, w)| !w),
        "no trapped table write and PBA read: {:x?}",
        r.mmio_exits
    );
    ensure!(
        r.mmio_exits
            .iter()
            .all(|&(gpa, _)| gpa >= bar && gpa < bar + size),
        "MMIO exits outside the BAR: {:x?}",
        r.mmio_exits
    );
    let after = get(r, key::MSIX_PBA_AFTER)?;
    ensure!(
        after & 0b111 == 0,
        "PBA after unmask and delivery: {after:#x}, expected 0"
    );
    Ok(())
}

/// Large BAR: placed above 4 GiB; the guest read what the host put at BAR end - 16, and
/// the host reads what the guest wrote at BAR end - 8 (`host_far`).
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
        r.mmio_exits
            .iter()
            .all(|&(gpa, _)| gpa < addr || gpa >= addr + size),
        "accesses to the large BAR trapped instead of going through its slot: {:x?}",
        r.mmio_exits
    );
    ensure!(
        host_far == guest::FAR_PATTERN,
        "the host reads {host_far:#x} at BAR end - 8 after the guest wrote {:#x}",
        guest::FAR_PATTERN
    );
    Ok(())
}

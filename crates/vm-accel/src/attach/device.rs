//! One device attached to a VM: what the VMM's exit handlers call (config space, trapped
//! MMIO), and detach.

use std::sync::Arc;
use std::time::{Duration, Instant};

use vm_pci::Bdf;
use vm_vfio::access::{BackendChoice, Device, MmapAlign};
use vm_vfio::bind::Paths;

use super::backend::DeviceBackend;
use super::bars::{GuestBarSlots, Slot};
use super::config::{BarKind, ConfigEvent, ConfigOptions, MsixLayout, VirtualConfig};
use super::error::{Error, Result};
use super::interrupts::{InterruptStats, Interrupts};
use super::vm::{human, AttachVm};

/// How to attach.
#[derive(Debug, Clone)]
pub struct AttachOptions {
    /// Config-space options (GPUDirect clique...).
    pub config: ConfigOptions,
    /// Placement of BAR mmaps in the VMM (huge by default, so large BARs use huge pfnmaps).
    pub mmap_align: MmapAlign,
    /// Reset the function before the guest sees it (as Cloud Hypervisor does), when it has
    /// a reset method.
    pub reset_on_attach: bool,
    /// Route INTx to this GSI (an IOAPIC pin route the VMM set up), with a resample irqfd.
    pub intx_gsi: Option<u32>,
}

impl Default for AttachOptions {
    fn default() -> Self {
        AttachOptions {
            config: ConfigOptions::default(),
            mmap_align: MmapAlign::Huge,
            reset_on_attach: true,
            intx_gsi: None,
        }
    }
}

/// Where attach spent its time.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, serde::Serialize)]
pub struct AttachTimings {
    /// Opening the device in the VM's IOMMU context, which registers its group or cdev
    /// with the KVM VFIO device (0 for a non-VFIO backend).
    pub open_and_kvm_vfio_add: Duration,
    /// DMA-mapping guest RAM (only the VM's first VFIO device maps it).
    pub dma_map: Duration,
    /// Mmapping BARs and registering them as memory slots.
    pub memslots: Duration,
    /// Everything.
    pub total: Duration,
}

/// A BAR as the guest has it now.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct BarInfo {
    /// BAR index.
    pub index: u8,
    /// Guest physical address it is served at.
    pub gpa: u64,
    /// Size in bytes.
    pub size: u64,
    /// 64-bit memory BAR.
    pub is_64bit: bool,
    /// Prefetchable.
    pub prefetchable: bool,
    /// The memory slots that give the guest direct access.
    #[serde(skip)]
    pub slots: Vec<Slot>,
}

/// What detach did, step by step (an error in one step does not stop the next ones: the
/// device is given back as completely as possible).
#[derive(Debug, Default)]
pub struct DetachReport {
    /// Failures, in step order, each naming its step.
    pub errors: Vec<Error>,
    /// Whether the function was reset.
    pub reset: bool,
}

struct PlacedBar {
    slots: GuestBarSlots,
    kind: BarKind,
    prefetchable: bool,
    /// The range allocated at attach (kept until detach, even if the guest moves the BAR).
    alloc: Option<vm_allocator::RangeInclusive>,
}

/// A device inside a guest.
pub struct AttachedDevice {
    // Field order is drop order for the fail-safe path; `detach` does it explicitly.
    irqs: Interrupts,
    bars: Vec<PlacedBar>,
    config: VirtualConfig,
    msix: Option<MsixLayout>,
    dev: Arc<dyn DeviceBackend>,
    vfio: Option<Arc<Device>>,
    vm: Arc<AttachVm>,
    name: String,
    timings: AttachTimings,
}

impl std::fmt::Debug for AttachedDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachedDevice")
            .field("name", &self.name)
            .field("bars", &self.bars())
            .finish_non_exhaustive()
    }
}

impl AttachedDevice {
    /// Attaches a vfio-pci device: opens it in the VM's IOMMU context (registering it with
    /// the KVM VFIO device), DMA-maps guest RAM if it is the VM's first, then as
    /// [`AttachedDevice::attach`]. On failure nothing stays behind.
    pub fn attach_vfio(
        vm: &Arc<AttachVm>,
        paths: &Paths,
        bdf: Bdf,
        choice: BackendChoice,
        opts: &AttachOptions,
    ) -> Result<AttachedDevice> {
        let start = Instant::now();
        let kind = Device::pick_backend(paths, bdf, choice)?;
        let ctx = vm.iommu_context(kind)?;
        let dev = Arc::new(Device::open(paths, bdf, &ctx)?);
        let opened = start.elapsed();
        vm.dma_add_device(&ctx, dev.clone())?;
        let mapped = start.elapsed() - opened;
        let backend: Arc<dyn DeviceBackend> = dev.clone();
        match AttachedDevice::attach_backend(vm, backend, Some(dev.clone()), opts) {
            Ok(mut a) => {
                a.timings.open_and_kvm_vfio_add = opened;
                a.timings.dma_map = mapped;
                a.timings.total = start.elapsed();
                log::info!(
                    "{bdf}: attached through the {kind} in {:?} (open + KVM VFIO add {opened:?}, DMA map {mapped:?}, memslots {:?})",
                    a.timings.total,
                    a.timings.memslots
                );
                Ok(a)
            }
            Err(e) => {
                if let Err(u) = vm.dma_remove_device(&dev) {
                    log::error!("{bdf}: undoing DMA maps after a failed attach: {u}");
                }
                Err(e)
            }
        }
    }

    /// Attaches any [`DeviceBackend`] (a [`SoftDevice`](super::SoftDevice) in tests): resets
    /// it when asked, builds its virtual config space, places each memory BAR in the VM's
    /// windows and maps its mmappable parts as memory slots, and prepares its interrupts.
    pub fn attach(
        vm: &Arc<AttachVm>,
        dev: Arc<dyn DeviceBackend>,
        opts: &AttachOptions,
    ) -> Result<AttachedDevice> {
        let start = Instant::now();
        let mut a = AttachedDevice::attach_backend(vm, dev, None, opts)?;
        a.timings.total = start.elapsed();
        Ok(a)
    }

    fn attach_backend(
        vm: &Arc<AttachVm>,
        dev: Arc<dyn DeviceBackend>,
        vfio: Option<Arc<Device>>,
        opts: &AttachOptions,
    ) -> Result<AttachedDevice> {
        let name = dev.name();
        if opts.reset_on_attach && dev.can_reset() {
            dev.reset()?;
        }
        let mut config = VirtualConfig::new(&*dev, &opts.config)?;
        let t = Instant::now();
        let mut bars: Vec<PlacedBar> = Vec::new();
        let placed = (|| -> Result<()> {
            for b in config.bars() {
                let is_64bit = match b.kind {
                    BarKind::Mem32 => false,
                    BarKind::Mem64 => true,
                    BarKind::Io => {
                        log::warn!("{name}: BAR{} is an I/O BAR: not passed through", b.index);
                        continue;
                    }
                };
                let range = vm.resources().allocate_mmio(&name, b.size, is_64bit)?;
                let maps = match dev.bar_region(b.index) {
                    Some(r) if !r.mmap_areas.is_empty() => dev.map_bar(b.index, opts.mmap_align)?,
                    _ => Vec::new(),
                };
                let mut slots = GuestBarSlots::new(b.index, b.size, maps);
                if let Err(e) = slots.map_at(vm, &name, range.start()) {
                    vm.resources().free_mmio(&range, is_64bit);
                    return Err(e);
                }
                bars.push(PlacedBar {
                    slots,
                    kind: b.kind,
                    prefetchable: b.prefetchable,
                    alloc: Some(range),
                });
                config.set_bar_address(b.index, range.start());
                log::debug!(
                    "{name}: BAR{} ({}, {}) at {:#x}",
                    b.index,
                    human(b.size),
                    if is_64bit { "64-bit" } else { "32-bit" },
                    range.start()
                );
            }
            Ok(())
        })();
        let memslots = t.elapsed();
        let irqs = placed.and_then(|()| {
            Interrupts::new(
                dev.clone(),
                vm.routes().clone(),
                config.msi(),
                config.msix(),
            )
        });
        let mut irqs = match irqs {
            Ok(i) => i,
            Err(e) => {
                release_bars(vm, bars);
                return Err(e);
            }
        };
        if let Some(gsi) = opts.intx_gsi {
            if let Err(e) = irqs.enable_intx(gsi) {
                let _ = irqs.teardown();
                release_bars(vm, bars);
                return Err(e);
            }
        }
        Ok(AttachedDevice {
            irqs,
            bars,
            msix: config.msix(),
            config,
            dev,
            vfio,
            vm: vm.clone(),
            name,
            timings: AttachTimings {
                memslots,
                ..Default::default()
            },
        })
    }

    /// The device's name (BDF).
    pub fn name(&self) -> &str {
        &self.name
    }

    /// The vm-vfio device (`None` for a non-VFIO backend), e.g. to fire a vector from
    /// software in a test.
    pub fn vfio(&self) -> Option<&Device> {
        self.vfio.as_deref()
    }

    /// The backend.
    pub fn backend(&self) -> &Arc<dyn DeviceBackend> {
        &self.dev
    }

    /// Where attach spent its time.
    pub fn timings(&self) -> AttachTimings {
        self.timings
    }

    /// Interrupt resources held now (GSIs, irqfds, VFIO vectors).
    pub fn interrupt_stats(&self) -> InterruptStats {
        self.irqs.stats()
    }

    /// The memory BARs, where the guest has them now.
    pub fn bars(&self) -> Vec<BarInfo> {
        self.bars
            .iter()
            .map(|b| BarInfo {
                index: b.slots.bar,
                gpa: b.slots.gpa,
                size: b.slots.size,
                is_64bit: b.kind == BarKind::Mem64,
                prefetchable: b.prefetchable,
                slots: b.slots.slots().to_vec(),
            })
            .collect()
    }

    /// A guest config-space read (1, 2 or 4 bytes). A failure is logged and the guest reads
    /// all-ones, as from a device that went away.
    pub fn config_read(&self, off: u16, data: &mut [u8]) {
        if let Err(e) = self.config.read(&*self.dev, off, data) {
            log::warn!("{}: config read {off:#x}: {e}", self.name);
            data.fill(0xff);
            return;
        }
        self.overlay_msi_pending(off, data);
    }

    /// MSI Pending Bits come from the interrupt emulation (vectors that fired while
    /// masked), not from the config emulation.
    fn overlay_msi_pending(&self, off: u16, data: &mut [u8]) {
        let Some(msi) = self.config.msi().filter(|m| m.per_vector_mask) else {
            return;
        };
        let reg = msi.offset + if msi.is_64bit { 0x14 } else { 0x10 };
        let pending = self.irqs.msi_pending().to_le_bytes();
        for (i, b) in data.iter_mut().enumerate() {
            let at = off as usize + i;
            if (usize::from(reg)..usize::from(reg) + 4).contains(&at) {
                *b = pending[at - usize::from(reg)];
            }
        }
    }

    /// A guest config-space write. BAR moves and MSI/MSI-X changes are applied here; a
    /// BAR move that fails is rolled back (the guest reads the old address) and returned.
    pub fn config_write(&mut self, off: u16, data: &[u8]) -> Result<()> {
        let events = self.config.write(&*self.dev, off, data)?;
        let mut first = None;
        for ev in events {
            let r = match ev {
                ConfigEvent::BarMove { bar, to } => self.move_bar(bar, to),
                other => self.irqs.on_config_event(&other),
            };
            if let Err(e) = r {
                log::warn!("{}: {e}", self.name);
                first.get_or_insert(e);
            }
        }
        first.map_or(Ok(()), Err)
    }

    fn move_bar(&mut self, bar: u8, to: u64) -> Result<()> {
        let Some(b) = self.bars.iter_mut().find(|b| b.slots.bar == bar) else {
            return Ok(());
        };
        match b.slots.move_to(&self.vm, &self.name, to) {
            Ok(()) => {
                self.config.bar_applied(bar);
                Ok(())
            }
            Err(e) => {
                self.config.rollback_bar(bar);
                Err(e)
            }
        }
    }

    /// The BAR and offset a guest access at `gpa` hits, if it is this device's.
    fn locate(&self, gpa: u64, len: usize) -> Option<(u8, u64)> {
        self.bars.iter().find_map(|b| {
            let off = gpa.checked_sub(b.slots.gpa)?;
            (off.checked_add(len as u64)? <= b.slots.size).then_some((b.slots.bar, off))
        })
    }

    fn in_table(&self, bar: u8, off: u64, len: usize) -> Option<(bool, u64)> {
        let m = self.msix?;
        let hit = |b: u8, start: u64, n: u64| {
            (b == bar && off >= start && off + len as u64 <= start + n).then(|| off - start)
        };
        if let Some(o) = hit(m.table_bar, u64::from(m.table_offset), m.table_len()) {
            return Some((true, o));
        }
        hit(m.pba_bar, u64::from(m.pba_offset), m.pba_len()).map(|o| (false, o))
    }

    /// A trapped guest MMIO read. Returns false when `gpa` is not this device's.
    pub fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> Result<bool> {
        let Some((bar, off)) = self.locate(gpa, data.len()) else {
            return Ok(false);
        };
        match self.in_table(bar, off, data.len()) {
            Some((true, o)) => self.irqs.msix_table_read(o, data),
            Some((false, o)) => self.irqs.pba_read(o, data),
            None => self.dev.bar_read(bar, off, data)?,
        }
        Ok(true)
    }

    /// A trapped guest MMIO write. Returns false when `gpa` is not this device's.
    pub fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Result<bool> {
        let Some((bar, off)) = self.locate(gpa, data.len()) else {
            return Ok(false);
        };
        match self.in_table(bar, off, data.len()) {
            Some((true, o)) => self.irqs.msix_table_write(o, data)?,
            // The PBA is read-only.
            Some((false, _)) => {}
            None => self.dev.bar_write(bar, off, data)?,
        }
        Ok(true)
    }

    /// Takes the device out of the guest, in this order: interrupts (irqfds, then routes,
    /// then MSI/MSI-X/INTx off in VFIO), memory slots, reset, DMA unmap (when it is the
    /// VM's last VFIO device), and finally the VFIO device closed (which removes its
    /// group or cdev from the KVM VFIO device). Every step runs even if one before failed.
    pub fn detach(mut self) -> DetachReport {
        let mut report = DetachReport::default();
        let name = self.name.clone();
        if let Err(e) = self.irqs.teardown() {
            report.errors.push(e);
        }
        let bars = std::mem::take(&mut self.bars);
        for b in bars {
            if let Some(r) = &b.alloc {
                self.vm.resources().free_mmio(r, b.kind == BarKind::Mem64);
            }
            if let Err(e) = b.slots.release(&self.vm) {
                report.errors.push(e);
            }
        }
        if self.dev.can_reset() {
            match self.dev.reset() {
                Ok(()) => report.reset = true,
                Err(e) => report.errors.push(e.into()),
            }
        }
        if let Some(v) = self.vfio.take() {
            if let Err(e) = self.vm.dma_remove_device(&v) {
                report.errors.push(e);
            }
            // Closing: vfio-ioctls sends KVM_DEV_VFIO_FILE_DEL as the last reference goes.
            drop(v);
        }
        log::info!("{name}: detached ({} errors)", report.errors.len());
        report
    }
}

fn release_bars(vm: &AttachVm, bars: Vec<PlacedBar>) {
    for b in bars {
        if let Some(r) = &b.alloc {
            vm.resources().free_mmio(r, b.kind == BarKind::Mem64);
        }
        if let Err(e) = b.slots.release(vm) {
            log::error!("undoing BAR slots: {e}");
        }
    }
}

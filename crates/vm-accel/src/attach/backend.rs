//! What attach needs from a passed-through device, as one trait: config space, BAR
//! regions and their mmaps, interrupt eventfds, reset.
//!
//! [`vm_vfio::access::Device`] implements it for real devices. Tests implement it with a
//! software stand-in, so config-space emulation, memory slots, GSI routes and irqfds are
//! tested on any host with /dev/kvm, without VFIO.

use std::any::Any;
use std::os::fd::AsRawFd;

use vm_vfio::access::{
    page_size, Area, BarMapping, Device, Error, IrqIndex, IrqSet, MmapAlign, RegionIndex,
};
use vmm_sys_util::eventfd::EventFd;

/// The result of backend calls (vm-vfio's error: device, operation, errno).
pub type BackendResult<T> = std::result::Result<T, Error>;

/// One BAR as the device exposes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BarRegion {
    /// Size in bytes (a power of two for memory BARs).
    pub size: u64,
    /// The parts that can be mmapped for direct guest access (page aligned, MSI-X table
    /// and PBA pages already cut out). Empty: every access traps to the VMM.
    pub mmap_areas: Vec<Area>,
}

/// One mmapped part of a BAR, ready to be a KVM memory slot. Unmapped when dropped.
pub struct BarMap {
    /// Offset of this part inside the BAR.
    pub offset: u64,
    /// Length in bytes (page multiple).
    pub len: u64,
    /// Host virtual address of the part.
    pub host: *mut u8,
    /// Owns the mapping (vm-vfio's [`BarMapping`], or a test's memory).
    pub owner: Box<dyn Any + Send + Sync>,
}

impl std::fmt::Debug for BarMap {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BarMap")
            .field("offset", &format_args!("{:#x}", self.offset))
            .field("len", &format_args!("{:#x}", self.len))
            .field("host", &self.host)
            .finish_non_exhaustive()
    }
}

// SAFETY: `host` points into the mapping `owner` keeps alive; accesses through it are
// volatile MMIO done by KVM on the guest's behalf, never Rust references.
unsafe impl Send for BarMap {}
// SAFETY: as above.
unsafe impl Sync for BarMap {}

/// What attach does with a device. Offsets are relative to the config space or the BAR.
pub trait DeviceBackend: Send + Sync {
    /// The device's name for messages (its BDF).
    fn name(&self) -> String;
    /// Reads the device's config space (as vfio-pci presents it).
    fn config_read(&self, off: u64, buf: &mut [u8]) -> BackendResult<()>;
    /// Writes the device's config space.
    fn config_write(&self, off: u64, buf: &[u8]) -> BackendResult<()>;
    /// BAR `bar` (0..=5), or `None` when the device does not implement it.
    fn bar_region(&self, bar: u8) -> Option<BarRegion>;
    /// Reads a BAR through the VMM (for the parts that are not mmapped).
    fn bar_read(&self, bar: u8, off: u64, buf: &mut [u8]) -> BackendResult<()>;
    /// Writes a BAR through the VMM.
    fn bar_write(&self, bar: u8, off: u64, buf: &[u8]) -> BackendResult<()>;
    /// Maps every area of [`BarRegion::mmap_areas`].
    fn map_bar(&self, bar: u8, align: MmapAlign) -> BackendResult<Vec<BarMap>>;
    /// Vectors the device offers for `index` (0: none).
    fn irq_count(&self, index: IrqIndex) -> u32;
    /// Whether vectors can be added after the index is enabled (no `VFIO_IRQ_INFO_NORESIZE`).
    fn irq_resizable(&self, index: IrqIndex) -> bool;
    /// Routes vectors `start..start+fds.len()` to the eventfds; `None` detaches a vector.
    /// The first call on a disabled index enables it.
    fn set_irq_eventfds(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> BackendResult<()>;
    /// Turns every vector of `index` off.
    fn disable_irqs(&self, index: IrqIndex) -> BackendResult<()>;
    /// INTx: unmask the line when `fd` is signalled (KVM's resample eventfd).
    fn intx_unmask_on(&self, fd: &EventFd) -> BackendResult<()>;
    /// Resets the function (`VFIO_DEVICE_RESET`); an error when it has no reset.
    fn reset(&self) -> BackendResult<()>;
    /// Whether [`DeviceBackend::reset`] can work.
    fn can_reset(&self) -> bool;
}

impl DeviceBackend for Device {
    fn name(&self) -> String {
        self.bdf().to_string()
    }
    fn config_read(&self, off: u64, buf: &mut [u8]) -> BackendResult<()> {
        self.read_config(off, buf)
    }
    fn config_write(&self, off: u64, buf: &[u8]) -> BackendResult<()> {
        self.write_config(off, buf)
    }
    fn bar_region(&self, bar: u8) -> Option<BarRegion> {
        let r = self.region(RegionIndex::Bar(bar)).ok()?;
        if r.size == 0 {
            return None;
        }
        let mmap_areas = if r.mmappable() {
            let holes = self.msix_holes(bar).ok()?;
            let page = page_size();
            // A memory slot is whole pages: a sub-page BAR (vfio-pci lets it be mmapped
            // when it is page aligned) stays trapped instead.
            r.mmap_areas(&holes, page)
                .into_iter()
                .filter(|a| a.offset.is_multiple_of(page) && a.size.is_multiple_of(page))
                .collect()
        } else {
            Vec::new()
        };
        Some(BarRegion {
            size: r.size,
            mmap_areas,
        })
    }
    fn bar_read(&self, bar: u8, off: u64, buf: &mut [u8]) -> BackendResult<()> {
        self.read_region(RegionIndex::Bar(bar), off, buf)
    }
    fn bar_write(&self, bar: u8, off: u64, buf: &[u8]) -> BackendResult<()> {
        self.write_region(RegionIndex::Bar(bar), off, buf)
    }
    fn map_bar(&self, bar: u8, align: MmapAlign) -> BackendResult<Vec<BarMap>> {
        let page = page_size();
        Ok(self
            .mmap_bar_aligned(bar, align)?
            .into_iter()
            // As in `bar_region`: only whole pages become slots.
            .filter(|m| m.offset.is_multiple_of(page) && (m.len() as u64).is_multiple_of(page))
            .map(|m: BarMapping| BarMap {
                offset: m.offset,
                len: m.len() as u64,
                host: m.as_ptr(),
                owner: Box::new(m),
            })
            .collect())
    }
    fn irq_count(&self, index: IrqIndex) -> u32 {
        self.irq(index).map_or(0, |i| i.count)
    }
    fn irq_resizable(&self, index: IrqIndex) -> bool {
        self.irq(index)
            .is_ok_and(|i| i.flags & vm_vfio::access::irq::INFO_NORESIZE == 0)
    }
    fn set_irq_eventfds(
        &self,
        index: IrqIndex,
        start: u32,
        fds: &[Option<&EventFd>],
    ) -> BackendResult<()> {
        self.set_irqs(
            index,
            &IrqSet::Eventfds {
                start,
                fds: fds.iter().map(|f| f.map(|f| f.as_raw_fd())).collect(),
            },
        )
    }
    fn disable_irqs(&self, index: IrqIndex) -> BackendResult<()> {
        Device::disable_irqs(self, index)
    }
    fn intx_unmask_on(&self, fd: &EventFd) -> BackendResult<()> {
        self.set_irqs(
            IrqIndex::Intx,
            &IrqSet::UnmaskEventfd {
                vector: 0,
                fd: fd.as_raw_fd(),
            },
        )
    }
    fn reset(&self) -> BackendResult<()> {
        Device::reset(self)
    }
    fn can_reset(&self) -> bool {
        self.info().reset
    }
}

//! A vfio-pci device opened for a VMM: info, regions, config space, BAR mmap, DMA, interrupts
//! and reset. Opening goes through vfio-ioctls; the queries and controls whose errors
//! vfio-ioctls would only log (region I/O) or flatten (SET_IRQS, reset) are done here so
//! that every failure carries the device, the operation and the errno.

use std::any::Any;
use std::os::fd::{AsRawFd, RawFd};
use std::path::PathBuf;
use std::sync::Arc;

use vm_memory::{Address, GuestMemoryBackend, GuestMemoryRegion, MemoryRegionAddress};
use vm_pci::Bdf;
use vmm_sys_util::eventfd::EventFd;

use super::backend::{Availability, BackendChoice, BackendKind, IommuContext};
use super::dma::{check_against_live, Gpa, Iova, IovaSpace, Reserved};
use super::error::{Error, Result};
use super::irq::{IrqIndex, IrqInfo, IrqSet};
use super::region::{msix_holes, Area, RegionIndex, RegionInfo};
use super::sys::{self, HotResetDep};
use crate::bind::Paths;

/// What `VFIO_DEVICE_GET_INFO` and the per-index queries report.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceInfo {
    /// `VFIO_DEVICE_FLAGS_*`.
    pub flags: u32,
    /// Regions the device has.
    pub num_regions: u32,
    /// Interrupt indexes the device has.
    pub num_irqs: u32,
    /// `VFIO_DEVICE_RESET` is available (the kernel found a reset method).
    pub reset: bool,
    /// Every region, by index.
    pub regions: Vec<RegionInfo>,
    /// Every interrupt index.
    pub irqs: Vec<IrqInfo>,
}

/// A vfio-pci device opened through a [`IommuContext`].
pub struct Device {
    bdf: Bdf,
    dev: vfio_ioctls::VfioDevice,
    ctx: Arc<IommuContext>,
    info: DeviceInfo,
    iommu_group: Option<u32>,
    reserved: Vec<Reserved>,
}

impl std::fmt::Debug for Device {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Device")
            .field("bdf", &self.bdf)
            .field("backend", &self.ctx.kind())
            .field("info", &self.info)
            .finish_non_exhaustive()
    }
}

impl Device {
    fn os(&self, op: impl Into<String>, source: std::io::Error) -> Error {
        Error::Os {
            device: self.bdf.to_string(),
            op: op.into(),
            source,
        }
    }
    fn invalid(&self, op: impl Into<String>, reason: impl Into<String>) -> Error {
        Error::Invalid {
            device: self.bdf.to_string(),
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// Opens `bdf` (bound to vfio-pci) with the path `choice` picks, in a new context.
    pub fn open_new(paths: &Paths, bdf: Bdf, choice: BackendChoice) -> Result<Device> {
        let kind = Device::pick_backend(paths, bdf, choice)?;
        let ctx = IommuContext::open(kind).map_err(|e| match e {
            Error::Vfio { op, source, .. } => Error::Vfio {
                device: bdf.to_string(),
                op,
                source,
            },
            other => other,
        })?;
        Device::open(paths, bdf, &ctx)
    }

    /// Which path `choice` gives for `bdf` on this host.
    pub fn pick_backend(paths: &Paths, bdf: Bdf, choice: BackendChoice) -> Result<BackendKind> {
        let no = |reason: String| Error::NoBackend {
            device: bdf.to_string(),
            reason,
        };
        let dir = paths.device_dir(bdf).map_err(|e| no(format!("{e}")))?;
        let group = paths.iommu_group(bdf).ok().flatten().map(|(g, _)| g);
        Availability::probe(&dir, group).pick(choice).map_err(no)
    }

    /// Opens `bdf` in an existing context (several devices of one VM share one).
    pub fn open(paths: &Paths, bdf: Bdf, ctx: &Arc<IommuContext>) -> Result<Device> {
        let device = bdf.to_string();
        let sysfs: PathBuf = paths.device(bdf);
        let vfio_err = |op: &str, source| Error::Vfio {
            device: device.clone(),
            op: op.into(),
            source,
        };
        let start = std::time::Instant::now();
        let dev =
            vfio_ioctls::VfioDevice::new(&sysfs, ctx.ops(), ctx.kind() == BackendKind::Iommufd)
                .map_err(|e| vfio_err(&format!("open through the {}", ctx.kind()), e))?;
        log::debug!(
            "{bdf}: opened through the {} in {:?}",
            ctx.kind(),
            start.elapsed()
        );
        let fd = dev.as_raw_fd();
        let os = |op: &str, source| Error::Os {
            device: device.clone(),
            op: op.into(),
            source,
        };
        let (flags, num_regions, num_irqs) =
            sys::device_info(fd).map_err(|e| os("VFIO_DEVICE_GET_INFO", e))?;
        if flags & sys::DEVICE_FLAGS_PCI == 0 {
            return Err(Error::Invalid {
                device,
                op: "VFIO_DEVICE_GET_INFO".into(),
                reason: format!("not a PCI device (flags {flags:#x})"),
            });
        }
        let mut regions = Vec::new();
        for i in 0..num_regions {
            match sys::region_info(fd, i) {
                Ok(r) => regions.push(r),
                // vfio-pci reports EINVAL for the VGA region of non-VGA devices.
                Err(sys::InfoError::Os(e)) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::debug!("{bdf}: region {i}: {e}")
                }
                Err(sys::InfoError::Os(e)) => {
                    return Err(os(&format!("VFIO_DEVICE_GET_REGION_INFO({i})"), e))
                }
                Err(sys::InfoError::Parse(e)) => {
                    return Err(Error::Invalid {
                        device,
                        op: format!("VFIO_DEVICE_GET_REGION_INFO({i})"),
                        reason: e.to_string(),
                    })
                }
            }
        }
        let mut irqs = Vec::new();
        for idx in IrqIndex::ALL.into_iter().filter(|i| i.raw() < num_irqs) {
            match sys::irq_info(fd, idx) {
                Ok(i) => irqs.push(i),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {
                    log::debug!("{bdf}: no info for {idx} interrupts: {e}")
                }
                Err(e) => return Err(os(&format!("VFIO_DEVICE_GET_IRQ_INFO({idx})"), e)),
            }
        }
        let iommu_group = paths.iommu_group(bdf).ok().flatten().map(|(g, _)| g);
        let reserved = iommu_group
            .map(|g| {
                let p = paths
                    .root()
                    .join("kernel/iommu_groups")
                    .join(g.to_string())
                    .join("reserved_regions");
                match std::fs::read_to_string(&p) {
                    Ok(t) => vm_pci::iommu::parse_reserved_regions(&p, &t)
                        .map(|v| v.iter().map(Reserved::from).collect())
                        .map_err(|e| Error::Invalid {
                            device: device.clone(),
                            op: "read reserved_regions".into(),
                            reason: e.to_string(),
                        }),
                    Err(e) => Err(os(&format!("read {}", p.display()), e)),
                }
            })
            .transpose()?
            .unwrap_or_default();
        Ok(Device {
            bdf,
            dev,
            ctx: ctx.clone(),
            info: DeviceInfo {
                flags,
                num_regions,
                num_irqs,
                reset: flags & sys::DEVICE_FLAGS_RESET != 0,
                regions,
                irqs,
            },
            iommu_group,
            reserved,
        })
    }

    /// The device's address.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }
    /// Which VFIO path opened it.
    pub fn backend(&self) -> BackendKind {
        self.ctx.kind()
    }
    /// The IOMMU context it is attached to (shared by the devices of one VM).
    pub fn context(&self) -> &Arc<IommuContext> {
        &self.ctx
    }
    /// What the kernel reported when it was opened.
    pub fn info(&self) -> &DeviceInfo {
        &self.info
    }
    /// Its IOMMU group number, when sysfs names one.
    pub fn iommu_group(&self) -> Option<u32> {
        self.iommu_group
    }
    /// The underlying vfio-ioctls device (for what this wrapper does not cover, e.g.
    /// registering with the KVM VFIO device).
    pub fn vfio(&self) -> &vfio_ioctls::VfioDevice {
        &self.dev
    }
    /// The device file descriptor (for KVM's VFIO device, say).
    pub fn raw_fd(&self) -> RawFd {
        self.dev.as_raw_fd()
    }

    /// The region at `index`, or an error naming the device when it has none.
    pub fn region(&self, index: RegionIndex) -> Result<&RegionInfo> {
        self.info
            .regions
            .iter()
            .find(|r| r.index == index)
            .ok_or_else(|| self.invalid(format!("{index}"), "the device has no such region"))
    }

    /// The interrupt index `index`, or an error naming the device when it has none.
    pub fn irq(&self, index: IrqIndex) -> Result<&IrqInfo> {
        self.info
            .irqs
            .iter()
            .find(|i| i.index == index)
            .ok_or_else(|| self.invalid(format!("{index} interrupts"), "not offered by the device"))
    }

    // ---- region I/O (checked: vfio-ioctls' region_read/write only log failures) ----

    fn region_bounds(&self, index: RegionIndex, off: u64, len: usize, write: bool) -> Result<u64> {
        let r = self.region(index)?;
        let op = format!(
            "{} {len} bytes at {index}+{off:#x}",
            if write { "write" } else { "read" }
        );
        let allowed = if write { r.writable() } else { r.readable() };
        if !allowed {
            return Err(self.invalid(op, "the region does not allow it"));
        }
        if off.checked_add(len as u64).is_none_or(|e| e > r.size) {
            return Err(self.invalid(op, format!("past the end of the {:#x}-byte region", r.size)));
        }
        Ok(r.offset + off)
    }

    /// Reads `buf.len()` bytes at `off` of a region; a short read is an error.
    pub fn read_region(&self, index: RegionIndex, off: u64, buf: &mut [u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let at = self.region_bounds(index, off, buf.len(), false)?;
        self.file()
            .read_exact_at(buf, at)
            .map_err(|e| self.os(format!("read {} bytes at {index}+{off:#x}", buf.len()), e))
    }

    /// Writes all of `buf` at `off` of a region; a short write is an error.
    pub fn write_region(&self, index: RegionIndex, off: u64, buf: &[u8]) -> Result<()> {
        use std::os::unix::fs::FileExt;
        let at = self.region_bounds(index, off, buf.len(), true)?;
        self.file()
            .write_all_at(buf, at)
            .map_err(|e| self.os(format!("write {} bytes at {index}+{off:#x}", buf.len()), e))
    }

    /// A non-owning `File` view of the device fd.
    fn file(&self) -> std::mem::ManuallyDrop<std::fs::File> {
        use std::os::fd::FromRawFd;
        // SAFETY: the fd stays open for as long as `self.dev` lives, which outlives this
        // view; ManuallyDrop keeps the view from closing it.
        std::mem::ManuallyDrop::new(unsafe { std::fs::File::from_raw_fd(self.dev.as_raw_fd()) })
    }

    /// Reads config space at `off` into `buf`; a short read is an error.
    pub fn read_config(&self, off: u64, buf: &mut [u8]) -> Result<()> {
        self.read_region(RegionIndex::Config, off, buf)
    }
    /// Writes `buf` to config space at `off`; a short write is an error.
    pub fn write_config(&self, off: u64, buf: &[u8]) -> Result<()> {
        self.write_region(RegionIndex::Config, off, buf)
    }
    /// The little-endian word at config offset `off`.
    pub fn config_u16(&self, off: u64) -> Result<u16> {
        let mut b = [0u8; 2];
        self.read_config(off, &mut b)?;
        Ok(u16::from_le_bytes(b))
    }
    /// The little-endian dword at config offset `off`.
    pub fn config_u32(&self, off: u64) -> Result<u32> {
        let mut b = [0u8; 4];
        self.read_config(off, &mut b)?;
        Ok(u32::from_le_bytes(b))
    }
    /// Writes a little-endian word at config offset `off`.
    pub fn set_config_u16(&self, off: u64, v: u16) -> Result<()> {
        self.write_config(off, &v.to_le_bytes())
    }

    /// The whole config space as vfio-pci presents it (virtualised where vfio-pci does).
    pub fn config_space(&self) -> Result<vm_pci::ConfigSpace> {
        let size = self.region(RegionIndex::Config)?.size.min(4096) as usize;
        let mut b = vec![0u8; size];
        self.read_config(0, &mut b)?;
        Ok(vm_pci::ConfigSpace::new(b))
    }

    /// Sets memory-space decoding and bus mastering in the command register (vfio-pci
    /// leaves bus mastering off; a device cannot DMA without it).
    pub fn enable_bus_master(&self) -> Result<()> {
        let cmd = self.config_u16(4)?;
        self.set_config_u16(4, cmd | 0x2 | 0x4)?;
        let now = self.config_u16(4)?;
        if now & 0x6 != 0x6 {
            return Err(self.invalid(
                "enable bus mastering",
                format!("command register reads {now:#06x} after setting bits 1-2"),
            ));
        }
        Ok(())
    }

    // ---- BAR mmap ----

    /// The MSI-X table/PBA ranges in BAR `bar`, from the device's MSI-X capability.
    pub fn msix_holes(&self, bar: u8) -> Result<Vec<Area>> {
        let caps = self.config_space()?.capabilities();
        Ok(caps.msix().map(|m| msix_holes(m, bar)).unwrap_or_default())
    }

    /// Maps every mmap'able part of a BAR (sparse areas, minus the MSI-X table and PBA
    /// pages). Parts not mapped must be accessed with [`Device::read_region`].
    pub fn mmap_bar(&self, bar: u8) -> Result<Vec<BarMapping>> {
        self.mmap_bar_aligned(bar, MmapAlign::Page)
    }

    /// Like [`Device::mmap_bar`], with each part placed at a host address congruent to its
    /// BAR offset modulo `align`'s alignment: with [`MmapAlign::Huge`] the kernel can map a
    /// large BAR with PMD/PUD-sized pfnmap entries (Linux 6.12+ huge pfnmap) instead of
    /// millions of 4 KiB PTEs, and KVM can map it into the guest with large pages.
    pub fn mmap_bar_aligned(&self, bar: u8, align: MmapAlign) -> Result<Vec<BarMapping>> {
        let index = RegionIndex::Bar(bar);
        let r = self.region(index)?.clone();
        if !r.mmappable() {
            return Err(self.invalid(format!("mmap {index}"), "the region is not mmap'able"));
        }
        let page = page_size();
        let holes = self.msix_holes(bar)?;
        let mut out = Vec::new();
        for a in r.mmap_areas(&holes, page) {
            let mut prot = 0;
            if r.readable() {
                prot |= libc::PROT_READ;
            }
            if r.writable() {
                prot |= libc::PROT_WRITE;
            }
            let len = usize::try_from(a.size)
                .map_err(|_| self.invalid(format!("mmap {index}"), "area too large"))?;
            let alignment = align.bytes(r.size, page);
            let what = || format!("mmap {index}+{:#x} ({:#x} bytes)", a.offset, a.size);
            let hint = if alignment > page {
                aligned_hint(len, alignment, a.offset).map_err(|e| self.os(what(), e))?
            } else {
                None
            };
            let flags = libc::MAP_SHARED | if hint.is_some() { libc::MAP_FIXED } else { 0 };
            // SAFETY: a shared mapping of the device fd at the region's offset; the kernel
            // validates offset and length. With MAP_FIXED the target is the PROT_NONE
            // reservation `aligned_hint` made for exactly this length, which nothing else uses.
            let p = unsafe {
                libc::mmap(
                    hint.unwrap_or(std::ptr::null_mut()),
                    len,
                    prot,
                    flags,
                    self.dev.as_raw_fd(),
                    (r.offset + a.offset) as libc::off_t,
                )
            };
            if p == libc::MAP_FAILED {
                let e = std::io::Error::last_os_error();
                if let Some(h) = hint {
                    // SAFETY: releases the reservation made above (still ours after a failed
                    // MAP_FIXED mmap).
                    unsafe { libc::munmap(h, len) };
                }
                return Err(self.os(what(), e));
            }
            log::debug!(
                "{}: {index}+{:#x} ({:#x} bytes) mmapped at {p:p} (alignment {alignment:#x})",
                self.bdf,
                a.offset,
                a.size
            );
            out.push(BarMapping {
                bar,
                offset: a.offset,
                ptr: p.cast(),
                len,
            });
        }
        Ok(out)
    }

    // ---- DMA ----

    /// The IOMMU's usable ranges for this device's context, and its group's reserved regions.
    pub fn iova_space(&self) -> Result<IovaSpace> {
        let (alignment, ranges) = self
            .ctx
            .iova_ranges()
            .map_err(|e| self.os(format!("query IOVA ranges ({})", self.ctx.kind()), e))?;
        Ok(IovaSpace {
            ranges,
            reserved: self.reserved.clone(),
            alignment,
        })
    }

    /// Maps every region of `mem` at IOVA = GPA, one map per region, after checking them all
    /// against [`Device::iova_space`]. The returned [`DmaMapping`] keeps `mem` alive and
    /// unmaps exactly what it mapped when dropped (or on [`DmaMapping::unmap`]). If a map
    /// fails, the ones already made are undone before the error is returned.
    ///
    /// # Safety
    /// While mapped, the device may read and write the memory at any time: no Rust
    /// reference to it may exist (vm-memory's volatile accessors are fine).
    pub unsafe fn map_guest_memory<M>(&self, mem: &M) -> Result<DmaMapping>
    where
        M: GuestMemoryBackend + Clone + Send + Sync + 'static,
    {
        let mut plan = Vec::new();
        for region in mem.iter() {
            let gpa = Gpa(region.start_addr().raw_value());
            let host = region
                .get_host_address(MemoryRegionAddress(0))
                .map_err(|e| self.invalid(format!("map {gpa}"), format!("no host address: {e}")))?;
            plan.push((Iova::from_gpa(gpa), region.len(), host));
        }
        let space = self.iova_space()?;
        let maps: Vec<(Iova, u64)> = plan.iter().map(|&(i, l, _)| (i, l)).collect();
        let refused = |source| Error::MapRefused {
            device: self.bdf.to_string(),
            op: "map guest memory".into(),
            source,
        };
        space.check_all(&maps).map_err(refused)?;
        let mut live = self.ctx.live();
        check_against_live(&live, &maps).map_err(refused)?;
        let mut mapping = DmaMapping {
            ctx: self.ctx.clone(),
            device: self.bdf.to_string(),
            maps: Vec::new(),
            _keep: Some(Box::new(mem.clone())),
        };
        for (iova, len, host) in plan {
            // SAFETY: the region stays mapped while `mapping` holds the clone of `mem`;
            // reference rules are the caller's contract.
            if let Err(source) = unsafe { self.ctx.dma_map(iova.raw(), len, host) } {
                // Release the list first: dropping `mapping` undoes the maps made so far
                // and takes the lock to forget them.
                drop(live);
                drop(mapping);
                return Err(Error::Vfio {
                    device: self.bdf.to_string(),
                    op: format!("DMA map {iova} + {len:#x}"),
                    source,
                });
            }
            mapping.maps.push((iova, len));
            live.push((iova, len));
        }
        drop(live);
        Ok(mapping)
    }

    /// Maps one host range at `iova` (buffers that are not guest RAM).
    ///
    /// # Safety
    /// `[host, host+len)` must stay mapped and unreferenced by Rust until the returned
    /// mapping is dropped.
    pub unsafe fn map_dma(&self, iova: Iova, len: u64, host: *mut u8) -> Result<DmaMapping> {
        let refused = |source| Error::MapRefused {
            device: self.bdf.to_string(),
            op: "DMA map".into(),
            source,
        };
        self.iova_space()?.check(iova, len).map_err(refused)?;
        let mut live = self.ctx.live();
        check_against_live(&live, &[(iova, len)]).map_err(refused)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.ctx.dma_map(iova.raw(), len, host) }.map_err(|source| Error::Vfio {
            device: self.bdf.to_string(),
            op: format!("DMA map {iova} + {len:#x}"),
            source,
        })?;
        live.push((iova, len));
        drop(live);
        Ok(DmaMapping {
            ctx: self.ctx.clone(),
            device: self.bdf.to_string(),
            maps: vec![(iova, len)],
            _keep: None,
        })
    }

    // ---- interrupts ----

    /// Sends one `VFIO_DEVICE_SET_IRQS` after checking it against the index's info.
    pub fn set_irqs(&self, index: IrqIndex, set: &IrqSet) -> Result<()> {
        let op = format!("VFIO_DEVICE_SET_IRQS({index}, {set:?})");
        if !matches!(set, IrqSet::Disable) {
            let info = *self.irq(index)?;
            set.check(&info).map_err(|r| self.invalid(op.clone(), r))?;
        }
        sys::set_irqs(self.dev.as_raw_fd(), &set.to_bytes(index)).map_err(|e| self.os(op, e))
    }

    /// Routes vectors `0..fds.len()` of `index` to the eventfds (one per vector).
    pub fn enable_irqs(&self, index: IrqIndex, fds: &[&EventFd]) -> Result<()> {
        self.set_irqs(
            index,
            &IrqSet::Eventfds {
                start: 0,
                fds: fds.iter().map(|f| Some(f.as_raw_fd())).collect(),
            },
        )
    }
    /// Routes INTx to `fd` (unmask it with [`Device::unmask`] after each interrupt).
    pub fn enable_intx(&self, fd: &EventFd) -> Result<()> {
        self.enable_irqs(IrqIndex::Intx, &[fd])
    }
    /// Routes MSI vector N to `fds[N]`.
    pub fn enable_msi(&self, fds: &[&EventFd]) -> Result<()> {
        self.enable_irqs(IrqIndex::Msi, fds)
    }
    /// Routes MSI-X vector N to `fds[N]`.
    pub fn enable_msix(&self, fds: &[&EventFd]) -> Result<()> {
        self.enable_irqs(IrqIndex::Msix, fds)
    }
    /// Tears down every vector of `index`.
    pub fn disable_irqs(&self, index: IrqIndex) -> Result<()> {
        self.set_irqs(index, &IrqSet::Disable)
    }
    /// Masks one vector (INTx on vfio-pci; MSI/MSI-X vectors are masked by detaching
    /// their eventfd with [`Device::detach_vector`]).
    pub fn mask(&self, index: IrqIndex, vector: u32) -> Result<()> {
        self.set_irqs(
            index,
            &IrqSet::Mask {
                start: vector,
                count: 1,
            },
        )
    }
    /// Unmasks `vector` of `index` (INTx after each interrupt; MSI/MSI-X cannot be masked this way).
    pub fn unmask(&self, index: IrqIndex, vector: u32) -> Result<()> {
        self.set_irqs(
            index,
            &IrqSet::Unmask {
                start: vector,
                count: 1,
            },
        )
    }
    /// Detaches one vector's eventfd, leaving the others routed.
    pub fn detach_vector(&self, index: IrqIndex, vector: u32) -> Result<()> {
        self.set_irqs(
            index,
            &IrqSet::Eventfds {
                start: vector,
                fds: vec![None],
            },
        )
    }
    /// Fires a vector from software: tests the eventfd route without the device.
    pub fn trigger(&self, index: IrqIndex, vector: u32) -> Result<()> {
        self.set_irqs(
            index,
            &IrqSet::Trigger {
                start: vector,
                count: 1,
            },
        )
    }

    // ---- reset ----

    /// `VFIO_DEVICE_RESET` (function-level; the kernel picks FLR, PM or bus reset).
    pub fn reset(&self) -> Result<()> {
        if !self.info.reset {
            return Err(self.invalid(
                "VFIO_DEVICE_RESET",
                "the device offers no reset (no FLR, PM reset or usable bus reset)",
            ));
        }
        sys::reset(self.dev.as_raw_fd()).map_err(|e| self.os("VFIO_DEVICE_RESET", e))
    }

    /// The devices a hot (secondary bus) reset of this one would also reset: all of them
    /// must be owned by the caller for `VFIO_DEVICE_PCI_HOT_RESET` to be allowed.
    pub fn hot_reset_dependencies(&self) -> Result<Vec<HotResetDep>> {
        sys::hot_reset_info(self.dev.as_raw_fd())
            .map_err(|e| self.os("VFIO_DEVICE_GET_PCI_HOT_RESET_INFO", e))
    }
}

/// How BAR mmaps are placed in the host's address space.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum MmapAlign {
    /// Wherever the kernel puts them (page aligned).
    Page,
    /// Aligned to 1 GiB, or to the largest power of two not above the BAR's size when that
    /// is smaller, so huge pfnmap entries can be used.
    #[default]
    Huge,
}

impl MmapAlign {
    /// The alignment for a BAR of `bar_size` bytes.
    pub fn bytes(self, bar_size: u64, page: u64) -> u64 {
        match self {
            MmapAlign::Page => page,
            MmapAlign::Huge => {
                let pow2 = if bar_size == 0 {
                    page
                } else {
                    1u64 << (63 - bar_size.leading_zeros())
                };
                pow2.clamp(page, 1 << 30)
            }
        }
    }
}

/// Reserves `len` bytes of address space at an address `a` with `a ≡ offset (mod align)`
/// and returns it (PROT_NONE, to be replaced by a MAP_FIXED mapping of the same length).
fn aligned_hint(len: usize, align: u64, offset: u64) -> std::io::Result<Option<*mut libc::c_void>> {
    let align_us = usize::try_from(align).map_err(|_| std::io::Error::other("alignment"))?;
    let span = len
        .checked_add(align_us)
        .ok_or_else(|| std::io::Error::other("mapping too large to align"))?;
    // SAFETY: a fresh anonymous PROT_NONE reservation; nothing can access it.
    let base = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            span,
            libc::PROT_NONE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE,
            -1,
            0,
        )
    };
    if base == libc::MAP_FAILED {
        return Err(std::io::Error::last_os_error());
    }
    let b = base as usize;
    let want = (offset % align) as usize;
    // The first address >= b that is ≡ want (mod align).
    let start = b + ((want + align_us - (b % align_us)) % align_us);
    let end = start + len;
    // SAFETY: trims the parts of our own reservation outside [start, end).
    unsafe {
        if start > b {
            libc::munmap(base, start - b);
        }
        if b + span > end {
            libc::munmap(end as *mut libc::c_void, b + span - end);
        }
    }
    Ok(Some(start as *mut libc::c_void))
}

/// The host page size (what BAR mmaps and their MSI-X holes are cut to).
pub fn page_size() -> u64 {
    // SAFETY: sysconf has no memory effects.
    let p = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    u64::try_from(p).ok().filter(|&p| p > 0).unwrap_or(4096)
}

/// DMA mappings made by one call; unmapped exactly, in reverse, when dropped.
///
/// The mappings belong to the [`IommuContext`], not to one device: they serve every device
/// of the context. Drop them before the context's last legacy device: closing the last
/// group tears the type1 IOMMU down with its mappings, and a later unmap can only fail
/// (logged). An iommufd IOAS lives as long as the context.
pub struct DmaMapping {
    ctx: Arc<IommuContext>,
    device: String,
    maps: Vec<(Iova, u64)>,
    /// Keeps the mapped memory alive as long as the IOMMU may reach it.
    _keep: Option<Box<dyn Any + Send + Sync>>,
}

impl std::fmt::Debug for DmaMapping {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DmaMapping")
            .field("device", &self.device)
            .field("maps", &self.maps)
            .finish_non_exhaustive()
    }
}

impl DmaMapping {
    /// The (IOVA, length) pairs mapped, in map order.
    pub fn maps(&self) -> &[(Iova, u64)] {
        &self.maps
    }

    fn unmap_all(&mut self) -> Vec<Error> {
        let mut errs = Vec::new();
        while let Some((iova, len)) = self.maps.pop() {
            // Forgotten even when the unmap fails: the kernel no longer has it either (a torn
            // down container) or it is unrecoverable here; the error is reported.
            self.ctx.live().retain(|m| *m != (iova, len));
            if let Err(source) = self.ctx.dma_unmap(iova.raw(), len) {
                errs.push(Error::Vfio {
                    device: self.device.clone(),
                    op: format!("DMA unmap {iova} + {len:#x}"),
                    source,
                });
            }
        }
        errs
    }

    /// Unmaps everything now, reporting the first failure (all are attempted).
    pub fn unmap(mut self) -> Result<()> {
        let mut errs = self.unmap_all();
        if errs.is_empty() {
            Ok(())
        } else {
            Err(errs.remove(0))
        }
    }
}

impl Drop for DmaMapping {
    fn drop(&mut self) {
        for e in self.unmap_all() {
            log::error!("{e}");
        }
    }
}

/// One mmap'ed part of a BAR; unmapped on drop.
#[derive(Debug)]
pub struct BarMapping {
    /// The BAR index.
    pub bar: u8,
    /// Offset of this part within the BAR.
    pub offset: u64,
    ptr: *mut u8,
    len: usize,
}

// SAFETY: the mapping is plain device memory; access is through volatile reads/writes.
unsafe impl Send for BarMapping {}
// SAFETY: as above; concurrent volatile MMIO accesses are the device's business.
unsafe impl Sync for BarMapping {}

impl BarMapping {
    /// Bytes mapped.
    pub fn len(&self) -> usize {
        self.len
    }
    /// Nothing is mapped.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }
    /// The host address (to register as KVM user memory for direct guest access).
    pub fn as_ptr(&self) -> *mut u8 {
        self.ptr
    }
    /// Whether BAR offset `off` (4 bytes) falls in this part.
    pub fn covers(&self, off: u64, len: u64) -> bool {
        off >= self.offset && off + len <= self.offset + self.len as u64
    }
    fn at(&self, off: u64, len: usize) -> Option<*mut u8> {
        let rel = off.checked_sub(self.offset)? as usize;
        if !rel.is_multiple_of(len) || rel + len > self.len {
            return None;
        }
        // SAFETY: in bounds of the mapping (checked above).
        Some(unsafe { self.ptr.add(rel) })
    }
    /// A 32-bit MMIO read at BAR offset `off` (aligned, inside this part).
    pub fn read_u32(&self, off: u64) -> Option<u32> {
        // SAFETY: aligned and in bounds; volatile because this is device memory.
        self.at(off, 4)
            .map(|p| unsafe { std::ptr::read_volatile(p.cast::<u32>()) })
    }
    /// A 32-bit MMIO write at BAR offset `off` (aligned, inside this part).
    pub fn write_u32(&self, off: u64, v: u32) -> Option<()> {
        // SAFETY: aligned and in bounds; volatile because this is device memory.
        self.at(off, 4)
            .map(|p| unsafe { std::ptr::write_volatile(p.cast::<u32>(), v) })
    }
    /// A 64-bit MMIO read at BAR offset `off` (aligned, inside this part).
    pub fn read_u64(&self, off: u64) -> Option<u64> {
        // SAFETY: aligned and in bounds; volatile because this is device memory.
        self.at(off, 8)
            .map(|p| unsafe { std::ptr::read_volatile(p.cast::<u64>()) })
    }
    /// A 64-bit MMIO write at BAR offset `off` (aligned, inside this part).
    pub fn write_u64(&self, off: u64, v: u64) -> Option<()> {
        // SAFETY: aligned and in bounds; volatile because this is device memory.
        self.at(off, 8)
            .map(|p| unsafe { std::ptr::write_volatile(p.cast::<u64>(), v) })
    }
}

impl Drop for BarMapping {
    fn drop(&mut self) {
        // SAFETY: unmapping exactly the mapping made in mmap_bar.
        if unsafe { libc::munmap(self.ptr.cast(), self.len) } != 0 {
            log::error!(
                "munmap BAR{}+{:#x}: {}",
                self.bar,
                self.offset,
                std::io::Error::last_os_error()
            );
        }
    }
}

#[cfg(test)]
mod align_tests {
    use super::*;

    #[test]
    fn huge_alignment_follows_the_bar_size_up_to_1_gib() {
        let page = 4096;
        assert_eq!(MmapAlign::Huge.bytes(256 << 30, page), 1 << 30);
        assert_eq!(MmapAlign::Huge.bytes(1 << 30, page), 1 << 30);
        assert_eq!(MmapAlign::Huge.bytes(16 << 20, page), 16 << 20);
        assert_eq!(MmapAlign::Huge.bytes(24 << 20, page), 16 << 20);
        assert_eq!(MmapAlign::Huge.bytes(256, page), page);
        assert_eq!(MmapAlign::Page.bytes(256 << 30, page), page);
    }

    #[test]
    fn aligned_hints_are_congruent_to_the_offset() {
        for (align, offset) in [(2u64 << 20, 0u64), (2 << 20, 0x3000), (1 << 30, 0x10_0000)] {
            let len = 0x4000;
            let p = aligned_hint(len, align, offset).unwrap().unwrap();
            assert_eq!((p as u64) % align, offset % align, "align {align:#x}");
            // SAFETY: releases the reservation just made.
            assert_eq!(unsafe { libc::munmap(p, len) }, 0);
        }
    }
}

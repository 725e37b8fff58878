//! Guest RAM in the IOMMU, once per VM: every region mapped at IOVA = GPA in the VM's one
//! container or IOAS, shared by all its devices (a second device must not map it again:
//! that is the EEXIST multi-GPU users of other VMMs hit), kept in step with memory hotplug,
//! and unmapped exactly.

use std::any::Any;
use std::sync::Arc;

use vm_memory::{GuestAddress, GuestMemoryRegion, GuestRegionMmap, MemoryRegionAddress};
use vm_vfio::access::{Device, DmaMapping, Gpa, IommuContext, Iova};

use super::error::{Error, Result};

/// One guest RAM region and, while a device is attached, its IOMMU mapping. `mapping` is
/// declared first so it is dropped (unmapped) before the memory can go away.
struct Region {
    mapping: Option<DmaMapping>,
    gpa: Gpa,
    len: u64,
    host: *mut u8,
    /// Keeps the memory mapped (the region's Arc, or the whole guest memory's).
    keep: Arc<dyn Any + Send + Sync>,
}

// SAFETY: `host` is an address inside memory `keep` owns; it is only handed to the IOMMU.
unsafe impl Send for Region {}

impl Region {
    fn of(region: &GuestRegionMmap, keep: Arc<dyn Any + Send + Sync>) -> Result<Region> {
        Ok(Region {
            mapping: None,
            gpa: Gpa(region.start_addr().0),
            len: region.len(),
            host: host_of(region)?,
            keep,
        })
    }
}

/// The VM's guest RAM as the IOMMU sees it.
#[derive(Default)]
pub(crate) struct VmDma {
    ctx: Option<Arc<IommuContext>>,
    /// The VFIO devices attached in `ctx` (maps are made and checked through one of them).
    devices: Vec<Arc<Device>>,
    regions: Vec<Region>,
}

impl std::fmt::Debug for VmDma {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VmDma")
            .field("ctx", &self.ctx)
            .field("devices", &self.devices.len())
            .field("mapped", &self.mapped())
            .finish()
    }
}

fn host_of(region: &GuestRegionMmap) -> Result<*mut u8> {
    region
        .get_host_address(MemoryRegionAddress(0))
        .map_err(|e| {
            Error::invalid(
                "(vm)",
                format!("map guest RAM at GPA {:#x}", region.start_addr().0),
                format!("no host address: {e}"),
            )
        })
}

impl VmDma {
    /// Guest RAM as the VMM registered it; `keep` holds its memory alive.
    pub(crate) fn new<'a>(
        regions: impl Iterator<Item = &'a GuestRegionMmap>,
        keep: Arc<dyn Any + Send + Sync>,
    ) -> Result<VmDma> {
        Ok(VmDma {
            ctx: None,
            devices: Vec::new(),
            regions: regions
                .map(|r| Region::of(r, keep.clone()))
                .collect::<Result<_>>()?,
        })
    }

    /// The context devices of this VM open in (`None` before the first VFIO device).
    pub(crate) fn context(&self) -> Option<&Arc<IommuContext>> {
        self.ctx.as_ref()
    }

    /// What is mapped now: (IOVA, length) per region, in GPA order.
    pub(crate) fn mapped(&self) -> Vec<(Iova, u64)> {
        let mut v: Vec<(Iova, u64)> = self
            .regions
            .iter()
            .filter_map(|r| r.mapping.as_ref())
            .flat_map(|m| m.maps().to_vec())
            .collect();
        v.sort();
        v
    }

    fn map_region(dev: &Device, r: &mut Region) -> Result<()> {
        if r.mapping.is_some() {
            return Ok(());
        }
        let start = std::time::Instant::now();
        // SAFETY: the memory stays mapped while `r.keep` holds it, and `r.mapping` is
        // dropped before `r.keep` (field order, `remove_region`). Guest RAM is accessed by
        // the VMM through vm-memory's volatile accessors only.
        let m = unsafe { dev.map_dma(Iova::from_gpa(r.gpa), r.len, r.host) }?;
        log::debug!("DMA map {} + {:#x} in {:?}", r.gpa, r.len, start.elapsed());
        r.mapping = Some(m);
        Ok(())
    }

    /// Registers a VFIO device opened in `ctx`: the first one maps all guest RAM (one
    /// ioctl per region); later ones are checked against what is mapped (their IOMMU
    /// group's reserved regions must not overlap guest RAM).
    pub(crate) fn add_device(&mut self, ctx: &Arc<IommuContext>, dev: Arc<Device>) -> Result<()> {
        match &self.ctx {
            Some(c) if !Arc::ptr_eq(c, ctx) => {
                return Err(Error::invalid(
                    dev.bdf().to_string(),
                    "attach",
                    "the device was opened in another IOMMU context than the VM's",
                ))
            }
            _ => {}
        }
        if self.devices.is_empty() {
            for i in 0..self.regions.len() {
                if let Err(e) = Self::map_region(&dev, &mut self.regions[i]) {
                    // Loses nothing: the regions mapped so far are unmapped again.
                    for r in &mut self.regions {
                        r.mapping = None;
                    }
                    return Err(e);
                }
            }
        } else {
            let space = dev.iova_space()?;
            for (iova, len) in self.mapped() {
                space.check(iova, len).map_err(|source| {
                    Error::Vfio(vm_vfio::access::Error::MapRefused {
                        device: dev.bdf().to_string(),
                        op: "attach next to the VM's guest RAM mappings".into(),
                        source,
                    })
                })?;
            }
        }
        self.ctx = Some(ctx.clone());
        self.devices.push(dev);
        Ok(())
    }

    /// Forgets a device. The last one takes the mappings with it: a legacy container's
    /// type1 IOMMU goes away with its last group, so they are unmapped before it closes.
    pub(crate) fn remove_device(&mut self, dev: &Arc<Device>) -> Result<()> {
        self.devices.retain(|d| !Arc::ptr_eq(d, dev));
        if !self.devices.is_empty() {
            return Ok(());
        }
        let mut first = None;
        for r in &mut self.regions {
            if let Some(m) = r.mapping.take() {
                if let Err(e) = m.unmap() {
                    first.get_or_insert(e);
                }
            }
        }
        self.ctx = None;
        first.map_or(Ok(()), |e| Err(e.into()))
    }

    /// Hot-plugged RAM: mapped now when a device is attached, else with the first one.
    pub(crate) fn add_region(&mut self, region: Arc<GuestRegionMmap>) -> Result<()> {
        let (start, len) = (region.start_addr().0, region.len());
        if let Some(r) = self
            .regions
            .iter()
            .find(|r| start < r.gpa.0 + r.len && r.gpa.0 < start + len)
        {
            return Err(Error::invalid(
                "(vm)",
                format!("add guest RAM {start:#x} + {len:#x}"),
                format!("overlaps the region at {} + {:#x}", r.gpa, r.len),
            ));
        }
        let mut r = Region::of(&region, region.clone())?;
        if let Some(dev) = self.devices.first() {
            Self::map_region(dev, &mut r)?;
        }
        self.regions.push(r);
        Ok(())
    }

    /// Unplugged RAM: unmapped exactly (the region that starts at `gpa`, whole).
    pub(crate) fn remove_region(&mut self, gpa: GuestAddress) -> Result<()> {
        let i = self
            .regions
            .iter()
            .position(|r| r.gpa.0 == gpa.0)
            .ok_or_else(|| {
                Error::invalid(
                    "(vm)",
                    format!("remove guest RAM at {:#x}", gpa.0),
                    "no region starts there",
                )
            })?;
        let mut r = self.regions.remove(i);
        if let Some(m) = r.mapping.take() {
            if let Err(e) = m.unmap() {
                // Keep the memory alive: the IOMMU may still reach it.
                self.regions.insert(i, r);
                return Err(e.into());
            }
        }
        drop(r.keep);
        Ok(())
    }
}

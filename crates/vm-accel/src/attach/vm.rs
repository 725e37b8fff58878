//! The per-VM half of attach: the KVM VFIO device, the one IOMMU context and guest RAM
//! mappings all devices share, the guest address ranges BARs are placed in, memory slot
//! ids, and the VM's GSI routing table.

use std::ops::RangeInclusive;
use std::os::fd::{AsRawFd, FromRawFd};
use std::sync::{Arc, Mutex, MutexGuard};

use kvm_bindings::{kvm_create_device, kvm_device_attr, kvm_device_type_KVM_DEV_TYPE_VFIO};
use kvm_ioctls::{DeviceFd, VmFd};
use vfio_ioctls::VfioDeviceFd;
use vm_allocator::{AddressAllocator, AllocPolicy, IdAllocator, RangeInclusive as Range};
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap, GuestRegionMmap};
use vm_vfio::access::{BackendKind, Device, IommuContext, Iova};

use super::dma::VmDma;
use super::error::{Error, Result};
use super::lock;
use super::routes::GsiRoutes;

/// `KVM_DEV_VFIO_FILE` / `KVM_DEV_VFIO_FILE_ADD` (linux/kvm.h; "GROUP" in older headers).
const KVM_DEV_VFIO_FILE: u32 = 1;
const KVM_DEV_VFIO_FILE_ADD: u64 = 1;

/// Where a VM's passed-through devices live in its physical address space, and which
/// GSIs and memory slots they may use. The VMM owns the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct VmLayout {
    /// Window for 32-bit BARs (below 4 GiB, clear of RAM, the IOAPIC and the LAPIC).
    pub mmio32: RangeInclusive<u64>,
    /// Window for 64-bit BARs: must hold the largest BAR at its natural alignment (an
    /// H200's 256 GiB BAR2 needs a 256 GiB-aligned 256 GiB range) and fit in the guest's
    /// physical address width.
    pub mmio64: RangeInclusive<u64>,
    /// GSIs for MSI/MSI-X routes (KVM allows 4096 routes; 0-23 are IOAPIC pins).
    pub gsis: RangeInclusive<u32>,
    /// KVM memory slot ids for BAR mappings (the VMM's RAM slots must be outside).
    pub memslots: RangeInclusive<u32>,
}

impl Default for VmLayout {
    /// 32-bit BARs in [3 GiB, 0xfec0_0000); 64-bit BARs in [512 GiB, 1 TiB), room for two
    /// 256 GiB BARs below a 40-bit physical address width (QEMU's default); GSIs 24-4095;
    /// memory slots 32-508.
    fn default() -> Self {
        VmLayout {
            mmio32: 0xc000_0000..=0xfebf_ffff,
            mmio64: (512 << 30)..=((1u64 << 40) - 1),
            gsis: 24..=4095,
            memslots: 32..=508,
        }
    }
}

/// Guest address space and ids handed out to devices.
#[derive(Debug)]
pub(crate) struct Resources {
    mmio32: AddressAllocator,
    mmio64: AddressAllocator,
    slots: IdAllocator,
}

impl Resources {
    fn new(layout: &VmLayout) -> Result<Resources> {
        let bad = |what: &str, reason: String| {
            Error::invalid("(vm)", format!("VmLayout: {what}"), reason)
        };
        let window = |r: &RangeInclusive<u64>, what: &str| {
            AddressAllocator::new(
                *r.start(),
                r.end().saturating_sub(*r.start()).saturating_add(1),
            )
            .map_err(|e| bad(what, format!("{:#x}..={:#x}: {e}", r.start(), r.end())))
        };
        Ok(Resources {
            mmio32: window(&layout.mmio32, "mmio32")?,
            mmio64: window(&layout.mmio64, "mmio64")?,
            slots: IdAllocator::new(*layout.memslots.start(), *layout.memslots.end())
                .map_err(|e| bad("memslots", e.to_string()))?,
        })
    }

    /// A naturally aligned MMIO range for a BAR of `size` bytes.
    pub(crate) fn allocate_mmio(
        &mut self,
        device: &str,
        size: u64,
        is_64bit: bool,
    ) -> Result<Range> {
        let (alloc, kind) = if is_64bit {
            (&mut self.mmio64, "64-bit")
        } else {
            (&mut self.mmio32, "32-bit")
        };
        // Natural alignment, and at least a page so a memory slot can cover it.
        let len = size.max(vm_vfio::access::page_size());
        alloc
            .allocate(len, len, AllocPolicy::FirstMatch)
            .map_err(|e| Error::Allocate {
                device: device.into(),
                what: format!("a {} {kind} MMIO range", human(size)),
                reason: format!("{e} (window {:#x}..={:#x})", alloc.base(), alloc.end()),
            })
    }

    pub(crate) fn free_mmio(&mut self, r: &Range, is_64bit: bool) {
        let alloc = if is_64bit {
            &mut self.mmio64
        } else {
            &mut self.mmio32
        };
        if let Err(e) = alloc.free(r) {
            log::warn!("freeing MMIO {:#x}..={:#x}: {e}", r.start(), r.end());
        }
    }

    pub(crate) fn allocate_slot(&mut self, device: &str) -> Result<u32> {
        self.slots.allocate_id().map_err(|e| Error::Allocate {
            device: device.into(),
            what: "a KVM memory slot".into(),
            reason: e.to_string(),
        })
    }

    pub(crate) fn free_slot(&mut self, slot: u32) {
        if let Err(e) = self.slots.free_id(slot) {
            log::warn!("freeing memory slot {slot}: {e}");
        }
    }
}

/// `256 GiB`, `1 MiB`, `16 KiB`, `12 B`.
pub(crate) fn human(bytes: u64) -> String {
    for (shift, unit) in [(40, "TiB"), (30, "GiB"), (20, "MiB"), (10, "KiB")] {
        if bytes >= 1 << shift && bytes.is_multiple_of(1 << shift) {
            return format!("{} {unit}", bytes >> shift);
        }
    }
    format!("{bytes} B")
}

/// One VM as attach sees it. Create it once per VM, after the VMM created the VM's
/// in-kernel irqchip and registered guest RAM with KVM; attach devices through it.
pub struct AttachVm {
    vm: Arc<VmFd>,
    kvm_vfio: Arc<VfioDeviceFd>,
    /// A dup of the KVM VFIO device fd for queries (`check_file_registered`).
    kvm_vfio_query: DeviceFd,
    routes: Arc<GsiRoutes>,
    resources: Mutex<Resources>,
    dma: Mutex<VmDma>,
    layout: VmLayout,
}

impl std::fmt::Debug for AttachVm {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AttachVm")
            .field("layout", &self.layout)
            .field("dma", &self.dma)
            .finish_non_exhaustive()
    }
}

impl AttachVm {
    /// Creates the VM's KVM VFIO device and takes `memory` as its guest RAM (mapped for DMA
    /// when the first VFIO device is attached).
    pub fn new(vm: Arc<VmFd>, memory: &GuestMemoryMmap, layout: VmLayout) -> Result<Arc<AttachVm>> {
        // A bad layout is refused before KVM is asked (a VM can have one KVM VFIO device).
        Resources::new(&layout)?;
        let mut create = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let fd = vm
            .create_device(&mut create)
            .map_err(|e| Error::kvm("KVM_CREATE_DEVICE(KVM_DEV_TYPE_VFIO)", e))?;
        AttachVm::with_kvm_vfio_device(vm, fd, memory, layout)
    }

    /// Like [`AttachVm::new`] with a KVM VFIO device the VMM already created (there can be
    /// one per VM).
    pub fn with_kvm_vfio_device(
        vm: Arc<VmFd>,
        kvm_vfio: DeviceFd,
        memory: &GuestMemoryMmap,
        layout: VmLayout,
    ) -> Result<Arc<AttachVm>> {
        let resources = Resources::new(&layout)?;
        let routes = GsiRoutes::new(vm.clone(), layout.gsis.clone())?;
        // SAFETY: dup of a valid fd we own; the new fd is owned by the DeviceFd below.
        let dup = unsafe { libc::dup(kvm_vfio.as_raw_fd()) };
        if dup < 0 {
            return Err(Error::invalid(
                "(vm)",
                "dup the KVM VFIO device fd",
                std::io::Error::last_os_error().to_string(),
            ));
        }
        // SAFETY: `dup` is a fresh fd for the same KVM device, owned from here on.
        let kvm_vfio_query = unsafe { DeviceFd::from_raw_fd(dup) };
        let dma = VmDma::new(memory.iter(), Arc::new(memory.clone()))?;
        Ok(Arc::new(AttachVm {
            vm,
            kvm_vfio: Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio)),
            kvm_vfio_query,
            routes,
            resources: Mutex::new(resources),
            dma: Mutex::new(dma),
            layout,
        }))
    }

    /// The VM.
    pub fn vm(&self) -> &Arc<VmFd> {
        &self.vm
    }

    /// The VM's GSI routing table (route the VMM's own interrupts through it too:
    /// `KVM_SET_GSI_ROUTING` replaces the whole table).
    pub fn routes(&self) -> &Arc<GsiRoutes> {
        &self.routes
    }

    /// The layout devices are placed in.
    pub fn layout(&self) -> &VmLayout {
        &self.layout
    }

    pub(crate) fn resources(&self) -> MutexGuard<'_, Resources> {
        lock(&self.resources)
    }

    /// The IOMMU context devices of this VM share, opened (and registered with the KVM
    /// VFIO device) by the first VFIO device. Later devices must use the same path.
    pub(crate) fn iommu_context(&self, kind: BackendKind) -> Result<Arc<IommuContext>> {
        let dma = lock(&self.dma);
        if let Some(ctx) = dma.context() {
            if ctx.kind() != kind {
                return Err(Error::invalid(
                    "(vm)",
                    format!("attach through the {kind}"),
                    format!(
                        "this VM's devices use the {} (one IOMMU context per VM)",
                        ctx.kind()
                    ),
                ));
            }
            return Ok(ctx.clone());
        }
        Ok(IommuContext::open_for_kvm(
            kind,
            Some(self.kvm_vfio.clone()),
        )?)
    }

    pub(crate) fn dma_add_device(&self, ctx: &Arc<IommuContext>, dev: Arc<Device>) -> Result<()> {
        lock(&self.dma).add_device(ctx, dev)
    }

    pub(crate) fn dma_remove_device(&self, dev: &Arc<Device>) -> Result<()> {
        lock(&self.dma).remove_device(dev)
    }

    /// Guest RAM plugged in: DMA-mapped now if a VFIO device is attached.
    pub fn add_region(&self, region: Arc<GuestRegionMmap>) -> Result<()> {
        lock(&self.dma).add_region(region)
    }

    /// Guest RAM unplugged: the region starting at `gpa` is unmapped exactly (and no longer
    /// kept alive by attach).
    pub fn remove_region(&self, gpa: GuestAddress) -> Result<()> {
        lock(&self.dma).remove_region(gpa)
    }

    /// What guest RAM is DMA-mapped now (IOVA = GPA), in address order.
    pub fn dma_mappings(&self) -> Vec<(Iova, u64)> {
        lock(&self.dma).mapped()
    }

    /// Whether `dev`'s file is registered with this VM's KVM VFIO device: its cdev
    /// (iommufd), or its group (legacy; found among this process's open files, since
    /// vfio-ioctls does not hand out the group fd). See [`AttachVm::check_file_registered`].
    pub fn check_device_registered(&self, dev: &Device) -> Result<bool> {
        let fd = match dev.backend() {
            BackendKind::Iommufd => dev.raw_fd(),
            BackendKind::Legacy => {
                let device = dev.bdf().to_string();
                let op = "find the VFIO group fd";
                let group = dev
                    .iommu_group()
                    .ok_or_else(|| Error::invalid(&device, op, "no IOMMU group"))?;
                let want = format!("/dev/vfio/{group}");
                std::fs::read_dir("/proc/self/fd")
                    .map_err(|e| Error::invalid(&device, op, format!("/proc/self/fd: {e}")))?
                    .filter_map(|e| e.ok())
                    .find(|e| {
                        std::fs::read_link(e.path()).is_ok_and(|t| t.to_string_lossy() == want)
                    })
                    .and_then(|e| e.file_name().to_string_lossy().parse().ok())
                    .ok_or_else(|| Error::invalid(&device, op, format!("no open fd for {want}")))?
            }
        };
        // SAFETY: `fd` is the device's cdev or its group, open while `dev` lives.
        let file = unsafe { std::os::fd::BorrowedFd::borrow_raw(fd) };
        self.check_file_registered(&file)
    }

    /// Asks KVM whether `file` (a VFIO group or device cdev fd) is registered with this
    /// VM's KVM VFIO device: adding it again must fail with EEXIST. Returns true when it
    /// was registered; an unregistered file is added by the probe, so it is removed again.
    pub fn check_file_registered(&self, file: &impl AsRawFd) -> Result<bool> {
        let fd: i32 = file.as_raw_fd();
        let attr = |op| kvm_device_attr {
            flags: 0,
            group: KVM_DEV_VFIO_FILE,
            attr: op,
            addr: &fd as *const i32 as u64,
        };
        match self
            .kvm_vfio_query
            .set_device_attr(&attr(KVM_DEV_VFIO_FILE_ADD))
        {
            Err(e) if e.errno() == libc::EEXIST => Ok(true),
            Err(e) => Err(Error::kvm("KVM_SET_DEVICE_ATTR(KVM_DEV_VFIO_FILE_ADD)", e)),
            Ok(()) => {
                // It was not there: undo the probe's registration.
                self.kvm_vfio_query
                    .set_device_attr(&attr(2))
                    .map_err(|e| Error::kvm("KVM_SET_DEVICE_ATTR(KVM_DEV_VFIO_FILE_DEL)", e))?;
                Ok(false)
            }
        }
    }
}

//! A real device through VFIO: the KVM VFIO device, one IOMMU context for the VM
//! (`KVM_DEV_VFIO_FILE_ADD` of the group or cdev), guest RAM mapped at IOVA = GPA, and the
//! device's config space / BARs / MSI through [`LocalAttach`].

use std::sync::Arc;

use anyhow::{Context, Result};
use kvm_bindings::{kvm_create_device, kvm_device_type_KVM_DEV_TYPE_VFIO};
use vfio_ioctls::VfioDeviceFd;
use vm_pci::Bdf;
use vm_vfio::access::{BackendKind, Device, DmaMapping, IommuContext};
use vm_vfio::bind::Paths;

use crate::local::LocalAttach;
use crate::vmm::{PciFunction, Vm};

/// A device attached to the mini VMM's VM; dropping it detaches (slots, irqfds, MSI off,
/// DMA unmapped, device closed, KVM VFIO file removed).
pub struct VfioAttach {
    // Field order is drop order: the attach (slots, routes) before the DMA maps, the
    // device before the context that holds the KVM VFIO device.
    attach: LocalAttach,
    _dma: DmaMapping,
    device: Arc<Device>,
}

impl std::fmt::Debug for VfioAttach {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VfioAttach")
            .field("device", &self.device.bdf())
            .finish_non_exhaustive()
    }
}

impl VfioAttach {
    pub fn new(vm: &Vm, bdf: Bdf, kind: BackendKind) -> Result<VfioAttach> {
        let mut spec = kvm_create_device {
            type_: kvm_device_type_KVM_DEV_TYPE_VFIO,
            fd: 0,
            flags: 0,
        };
        let kvm_vfio = vm
            .fd
            .create_device(&mut spec)
            .context("KVM_CREATE_DEVICE (VFIO)")?;
        let ctx =
            IommuContext::open_for_kvm(kind, Some(Arc::new(VfioDeviceFd::new_from_kvm(kvm_vfio))))
                .with_context(|| format!("open the {kind} IOMMU context"))?;
        let device = Arc::new(
            Device::open(&Paths::new("/sys"), bdf, &ctx).with_context(|| format!("open {bdf}"))?,
        );
        // SAFETY: the VMM never holds Rust references into guest RAM (vm-memory's volatile
        // accessors only), and `_dma` keeps the memory alive until it is unmapped.
        let dma = unsafe { device.map_guest_memory(&vm.mem) }.context("map guest RAM for DMA")?;
        let attach = LocalAttach::new(device.clone(), Arc::clone(&vm.fd))?;
        Ok(VfioAttach {
            attach,
            _dma: dma,
            device,
        })
    }

    /// The VFIO device (to fire vectors, or read BARs from the host side).
    pub fn vfio(&self) -> &Device {
        &self.device
    }
}

impl PciFunction for VfioAttach {
    fn config_read(&self, off: u16, data: &mut [u8]) {
        self.attach.config_read(off, data)
    }
    fn config_write(&mut self, off: u16, data: &[u8]) -> Result<()> {
        self.attach.config_write(off, data)
    }
    fn mmio_read(&self, gpa: u64, data: &mut [u8]) -> Result<bool> {
        self.attach.mmio_read(gpa, data)
    }
    fn mmio_write(&mut self, gpa: u64, data: &[u8]) -> Result<bool> {
        self.attach.mmio_write(gpa, data)
    }
}

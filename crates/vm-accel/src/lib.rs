//! The vm-accel facade for VMMs: one place to discover, prepare, attach, detach and
//! health-check accelerators.
//!
//! The work is done by the layers below, re-exported here so a VMM depends on one crate:
//! [`vm_pci`] (discovery, readiness), [`vm_vfio`] (binding lifecycle, VFIO access) and
//! [`vm_cuda`] (GPU health checks). What this crate adds is the join between them: a PCI
//! function and the CUDA device that is the same hardware, matched by PCI bus id.

#![deny(missing_docs)]

pub mod attach;
#[cfg(feature = "cli")]
pub mod cli;
pub mod gpu_check;
pub mod lifecycle;

pub use vm_cuda;
pub use vm_pci;
pub use vm_vfio;

use serde::Serialize;
use vm_cuda::DeviceInfo as CudaInfo;
use vm_pci::{Inventory, PciDevice, SysfsRoot};

/// Errors of the facade: whichever layer failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// Discovery (sysfs) failed.
    #[error(transparent)]
    /// Discovery or readiness failed.
    Pci(#[from] vm_pci::Error),
    /// CUDA failed (or is not available).
    #[error(transparent)]
    /// The CUDA driver failed.
    Cuda(#[from] vm_cuda::Error),
    /// Binding to vfio-pci or giving the device back failed.
    #[error(transparent)]
    Bind(#[from] vm_vfio::bind::BindError),
    /// Attaching failed: VFIO or KVM refused, or a guest resource ran out.
    #[error(transparent)]
    Attach(#[from] attach::Error),
    /// What was asked for does not exist.
    #[error("{0}")]
    NotFound(String),
}

pub use lifecycle::{prepare, Attached, Prepared, Refused, Released};

/// An accelerator as the host sees it: its PCI function and, when the CUDA driver owns it,
/// the CUDA device.
#[derive(Debug, Clone, Serialize)]
pub struct Accelerator {
    /// The PCI function.
    pub pci: PciDevice,
    /// The CUDA device on it, when the CUDA driver owns it.
    pub cuda: Option<CudaInfo>,
}

/// The host's accelerators, and why CUDA devices are missing when they are.
#[derive(Debug, Clone, Serialize)]
pub struct Discovery {
    /// Every PCI accelerator, in address order.
    pub accelerators: Vec<Accelerator>,
    /// CUDA devices whose PCI address matched no accelerator (a capture of another host, or a
    /// device hidden from this sysfs root).
    pub unmatched_cuda: Vec<CudaInfo>,
    /// Why no CUDA information is attached (`None` when CUDA was queried successfully).
    pub cuda_unavailable: Option<String>,
}

/// Matches CUDA devices to PCI functions by domain:bus:device (CUDA reports no function
/// number; a GPU is function 0).
pub fn join_cuda(inventory: &Inventory, cuda: Vec<CudaInfo>) -> Discovery {
    let mut accelerators: Vec<Accelerator> = inventory
        .devices
        .iter()
        .filter(|d| d.is_accelerator())
        .map(|d| Accelerator {
            pci: d.clone(),
            cuda: None,
        })
        .collect();
    let mut unmatched_cuda = Vec::new();
    for info in cuda {
        let bdf = gpu_check::bdf_of(&info.pci);
        match accelerators.iter_mut().find(|a| Some(a.pci.bdf) == bdf) {
            Some(a) => a.cuda = Some(info),
            None => unmatched_cuda.push(info),
        }
    }
    Discovery {
        accelerators,
        unmatched_cuda,
        cuda_unavailable: None,
    }
}

/// Scans `root` and asks the CUDA driver for its devices. A host without CUDA (or a build
/// without the `cuda` feature) still gets its PCI accelerators, with the reason in
/// [`Discovery::cuda_unavailable`].
pub fn discover(root: &SysfsRoot) -> Result<Discovery, Error> {
    let inventory = Inventory::scan(root)?;
    match cuda_devices() {
        Ok(cuda) => Ok(join_cuda(&inventory, cuda)),
        Err(e) => {
            log::info!("no CUDA information: {e}");
            let mut d = join_cuda(&inventory, Vec::new());
            d.cuda_unavailable = Some(e.to_string());
            Ok(d)
        }
    }
}

fn cuda_devices() -> Result<Vec<CudaInfo>, vm_cuda::Error> {
    vm_cuda::Device::all()?.iter().map(|d| d.info()).collect()
}

// The README is the crate page on crates.io: its examples are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

//! The health-check step for a GPU named by its PCI address: the CUDA check of
//! [`vm_cuda::health`], under the GPU's lock and with its other users taken into account.
//! It is the lock `vm-accel cuda check` takes, so a VMM checking the GPU it just released
//! and an operator checking the same GPU queue instead of measuring each other (two
//! unlocked checks of one H200 both failed the bandwidth bar: docs/cuda.md).

use vm_pci::Bdf;

pub use vm_cuda::health::{Exclusive, HealthOptions, HealthReport};

use crate::Error;

/// The PCI function of a CUDA device: CUDA reports domain, bus and device, and a GPU is
/// function 0.
pub fn bdf_of(p: &vm_cuda::PciLocation) -> Option<Bdf> {
    Bdf::new(p.domain, p.bus, p.device, 0)
}

/// The CUDA ordinal of the GPU at `bdf` (matched by PCI domain, bus and device; CUDA
/// numbers GPUs in its own order, not in PCI order).
pub fn cuda_ordinal(bdf: Bdf) -> Result<u32, Error> {
    for d in vm_cuda::Device::all()? {
        if bdf_of(&d.pci_location()?) == Some(bdf) {
            return Ok(d.ordinal());
        }
    }
    Err(Error::NotFound(format!(
        "{bdf}: the CUDA driver does not see this device (is it on the NVIDIA driver?)"
    )))
}

/// Runs the health check of the GPU at `bdf` under its lock in `ex.run_dir` (queueing
/// behind another check, or `busy` at once with [`vm_cuda::sharing::Wait::No`]).
pub fn check(bdf: Bdf, opts: &HealthOptions, ex: &Exclusive) -> Result<HealthReport, Error> {
    let ordinal = cuda_ordinal(bdf)?;
    Ok(vm_cuda::health::run_exclusive(ordinal, opts, ex)?)
}

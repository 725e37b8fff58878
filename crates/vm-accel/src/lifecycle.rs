//! The device lifecycle as types: [`prepare`] gives a [`Prepared`] device (its IOMMU group on
//! vfio-pci), [`Prepared::attach`] an [`Attached`] one (inside a VM), [`Attached::detach`] the
//! [`Prepared`] device back, [`Prepared::release`] a [`Released`] one (on its original
//! drivers again), which [`Released::health_check`] can prove good before the next tenant.
//!
//! Each step consumes the state it needs, so steps cannot run out of order (no attach of an
//! unbound device, no release of an attached one). A step that fails hands back the state it
//! was given ([`Refused`]), with the host as it was.

use std::sync::Arc;

use vm_pci::Bdf;
use vm_vfio::access::BackendChoice;
use vm_vfio::bind::{BindError, Binder, Kernel, Outcome};

use crate::attach::{AttachOptions, AttachVm, AttachedDevice, DetachReport};
use crate::Error;

/// A failed step: the error, and the state the step was given, unchanged (boxed in the
/// step's `Result`: a state carries the binding outcome).
#[derive(Debug)]
pub struct Refused<T> {
    /// What failed.
    pub error: Error,
    /// The state to go on from (retry, or take another path).
    pub state: T,
}

impl<T: std::fmt::Debug> std::fmt::Display for Refused<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        self.error.fmt(f)
    }
}

impl<T: std::fmt::Debug> std::error::Error for Refused<T> {
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        Some(&self.error)
    }
}

/// A device whose IOMMU group is on vfio-pci, recorded so it can be given back.
#[derive(Debug)]
pub struct Prepared {
    bdf: Bdf,
    outcome: Outcome,
    paths: vm_vfio::bind::Paths,
}

/// A device inside a VM.
#[derive(Debug)]
pub struct Attached {
    prepared: Prepared,
    device: AttachedDevice,
}

/// A device given back to its original drivers.
#[derive(Debug)]
pub struct Released {
    bdf: Bdf,
    outcome: Outcome,
}

/// Moves `bdf` and its IOMMU group to vfio-pci (refusing on failed readiness checks,
/// rolling back on any failure, recording what it changed). Binding is all this step does,
/// so its error is the binding error (it converts into [`Error`] with `?`).
pub fn prepare<K: Kernel>(binder: &mut Binder<K>, bdf: Bdf) -> Result<Prepared, BindError> {
    let outcome = binder.prepare(bdf)?;
    Ok(Prepared {
        bdf,
        outcome,
        paths: binder.paths().clone(),
    })
}

impl Prepared {
    /// The device.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// What binding did (per device of the group: driver before and after).
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// What binding did, keeping nothing else (a CLI that reports and exits).
    pub fn into_outcome(self) -> Outcome {
        self.outcome
    }

    /// Attaches the device to `vm` through the VFIO path `choice` picks.
    pub fn attach(
        self,
        vm: &Arc<AttachVm>,
        choice: BackendChoice,
        opts: &AttachOptions,
    ) -> Result<Attached, Box<Refused<Prepared>>> {
        match AttachedDevice::attach_vfio(vm, &self.paths, self.bdf, choice, opts) {
            Ok(device) => Ok(Attached {
                prepared: self,
                device,
            }),
            Err(e) => Err(Box::new(Refused {
                error: e.into(),
                state: self,
            })),
        }
    }

    /// Gives the group back to the drivers it had before [`prepare`].
    pub fn release<K: Kernel>(
        self,
        binder: &mut Binder<K>,
    ) -> Result<Released, Box<Refused<Prepared>>> {
        match binder.release(self.bdf) {
            Ok(outcome) => Ok(Released {
                bdf: self.bdf,
                outcome,
            }),
            Err(e) => Err(Box::new(Refused {
                error: e.into(),
                state: self,
            })),
        }
    }
}

impl Attached {
    /// The attached device (read access for the VMM's exit handlers).
    pub fn device(&self) -> &AttachedDevice {
        &self.device
    }

    /// The attached device (config and MMIO writes).
    pub fn device_mut(&mut self) -> &mut AttachedDevice {
        &mut self.device
    }

    /// Takes the device out of the VM (see [`AttachedDevice::detach`] for the order). The
    /// device stays on vfio-pci, ready to be attached again or released.
    pub fn detach(self) -> (Prepared, DetachReport) {
        let report = self.device.detach();
        (self.prepared, report)
    }
}

impl Released {
    /// The device.
    pub fn bdf(&self) -> Bdf {
        self.bdf
    }

    /// What releasing did.
    pub fn outcome(&self) -> &Outcome {
        &self.outcome
    }

    /// Runs the GPU health check on the device, now that its own driver has it again, under
    /// the GPU's lock in `/run/vm-accel` (the lock `vm-accel cuda check` takes: concurrent
    /// checks queue instead of measuring each other). An error when CUDA does not see the
    /// device or the lock directory cannot be created; [`Released::health_check_with`] takes
    /// another directory.
    pub fn health_check(
        &self,
        opts: &vm_cuda::health::HealthOptions,
    ) -> Result<vm_cuda::health::HealthReport, Error> {
        self.health_check_with(opts, &vm_cuda::health::Exclusive::default())
    }

    /// [`Released::health_check`] with the lock directory, /proc and queueing of `ex`.
    pub fn health_check_with(
        &self,
        opts: &vm_cuda::health::HealthOptions,
        ex: &vm_cuda::health::Exclusive,
    ) -> Result<vm_cuda::health::HealthReport, Error> {
        crate::gpu_check::check(self.bdf, opts, ex)
    }
}

//! Attach: a VFIO device inside a KVM guest. A VMM creates one [`AttachVm`] per VM and
//! attaches devices to it ([`AttachedDevice::attach_vfio`]); its vCPU exit handlers call the
//! device's `config_read`/`config_write`/`mmio_read`/`mmio_write`; [`AttachedDevice::detach`]
//! takes it out again. docs/embedding.md is the guide; `examples/mini_vmm.rs` the example.
//!
//! - [`vm`]: the per-VM half: the KVM VFIO device, guest address windows, memory slot ids,
//!   the shared IOMMU context ([`AttachVm`]).
//! - `dma`: guest RAM in the IOMMU, once per VM, kept in step with hotplug.
//! - [`device`]: one attached device and its detach ([`AttachedDevice`]).
//! - [`bars`]: BARs as KVM memory slots, moved when the guest moves them.
//! - [`config`]: the guest's view of config space (shadow BARs, MSI/MSI-X emulation).
//! - [`routes`]: the VM-wide KVM GSI routing table ([`GsiRoutes`]).
//! - [`interrupts`]: a device's MSI/MSI-X/INTx as routes + irqfds, the emulated MSI-X
//!   table and PBA ([`Interrupts`]).
//! - [`backend`]: what attach needs from a device (vm-vfio's `Device`, or [`soft`]'s
//!   software stand-in for tests without VFIO).
//! - [`error`]: one error for VFIO and KVM failures.

pub mod backend;
pub mod bars;
pub mod config;
pub mod device;
pub(crate) mod dma;
pub mod error;
pub mod interrupts;
pub mod routes;
pub mod soft;
pub mod vm;

pub use backend::{BarMap, BarRegion, DeviceBackend};
pub use config::{
    BarKind, ConfigEvent, ConfigOptions, GuestBar, MsiLayout, MsiState, MsixLayout, VirtualConfig,
};
pub use device::{AttachOptions, AttachTimings, AttachedDevice, BarInfo, DetachReport};
pub use error::{Error, Result};
pub use interrupts::{InterruptStats, Interrupts};
pub use routes::GsiRoutes;
pub use soft::{SoftBar, SoftDevice};
pub use vm::{AttachVm, VmLayout};

/// Locks attach's state even if a thread panicked while holding it: every update is made
/// whole before the guard drops, so the state behind a poisoned lock is still consistent.
pub(crate) fn lock<T>(m: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

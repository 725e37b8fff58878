//! Attach: a VFIO device inside a KVM guest.
//!
//! - [`backend`]: what attach needs from a device (vm-vfio's `Device`, or [`soft`]'s
//!   software stand-in for tests without VFIO).
//! - [`config`]: the guest's view of config space (shadow BARs, MSI/MSI-X emulation).
//! - [`error`]: one error for VFIO and KVM failures.
//! - [`routes`]: the VM-wide KVM GSI routing table ([`GsiRoutes`]).
//! - [`interrupts`]: a device's MSI/MSI-X/INTx as routes + irqfds, the emulated MSI-X
//!   table and PBA ([`Interrupts`]).

pub mod backend;
pub mod config;
pub mod error;
pub mod interrupts;
pub mod routes;
pub mod soft;

pub use backend::{BarMap, BarRegion, DeviceBackend};
pub use config::{
    BarKind, ConfigEvent, ConfigOptions, GuestBar, MsiLayout, MsiState, MsixLayout, VirtualConfig,
};
pub use error::{Error, Result};
pub use interrupts::{InterruptStats, Interrupts};
pub use routes::GsiRoutes;
pub use soft::{SoftBar, SoftDevice};

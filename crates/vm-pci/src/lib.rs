//! PCIe and IOMMU discovery from sysfs.
//!
//! Everything is read below a [`SysfsRoot`] (default `/sys`), so a captured tree works as a
//! fixture. Nothing here writes to sysfs.
//!
//! ```no_run
//! let root = vm_pci::SysfsRoot::default();
//! let inv = vm_pci::Inventory::scan(&root)?;
//! for dev in inv.devices_accelerators_first() {
//!     println!("{} {:04x}:{:04x} {}", dev.bdf, dev.vendor_id, dev.device_id, dev.class_name);
//! }
//! # Ok::<(), vm_pci::Error>(())
//! ```

#![deny(missing_docs)]

pub mod bar;
mod bdf;
pub mod config;
mod device;
mod error;
pub mod fixture;
pub mod ids;
mod inventory;
pub mod iommu;
mod json;
pub mod readiness;
mod sysfs;
pub mod usage;

pub use bar::{Bar, BarSpace};
pub use bdf::{Bdf, BdfParseError};
pub use config::{CapabilityList, ConfigSpace};
pub use device::{read_device, ConfigRead, LinkInfo, PciDevice, SriovInfo};
pub use error::{Error, Result};
pub use ids::{ClassCode, ClassKind};
pub use inventory::{GroupMember, Inventory, Unreadable, Viability};
pub use iommu::{InterruptRemapping, IommuGroup, IommuInfo, ReservedRegion};
pub use readiness::{Check, Level, Readiness};
pub use sysfs::{open_regular, read_bounded, read_prefix, read_text, SysfsRoot, MAX_ATTR_LEN};
pub use usage::{HostUsage, InUse, ProcRoot, UsageKind};

/// The driver VFIO passthrough needs.
pub const VFIO_PCI_DRIVER: &str = "vfio-pci";

// The README is the crate page on crates.io: its examples are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

//! PCIe and IOMMU discovery from sysfs.
//!
//! Everything is read below a [`SysfsRoot`] (default `/sys`), so a captured tree works as a
//! fixture. Nothing here writes to sysfs.

mod bdf;

pub use bdf::{Bdf, BdfParseError};

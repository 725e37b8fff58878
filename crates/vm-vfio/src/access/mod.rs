//! VFIO device access for a VMM, on vfio-ioctls: the legacy container and the iommufd/cdev
//! paths ([`backend`]), regions and BAR mmap with MSI-X holes ([`region`]), DMA mapping of
//! vm-memory guest RAM at IOVA = GPA with IOVA-range checks ([`dma`]), interrupts through
//! eventfds ([`irq`]), reset and hot-reset dependencies ([`Device`]).

pub mod backend;
pub mod device;
pub mod dma;
pub mod error;
pub mod irq;
pub mod region;
mod sys;

pub use backend::{Availability, BackendChoice, BackendKind, IommuContext};
pub use device::{page_size, BarMapping, Device, DeviceInfo, DmaMapping, MmapAlign};
pub use dma::{Gpa, Iova, IovaRange, IovaSpace, MapRefused, Reserved};
pub use error::{Error, Result};
pub use irq::{IrqIndex, IrqInfo, IrqSet};
pub use region::{Area, RegionIndex, RegionInfo};
pub use sys::HotResetDep;

//! vfio-pci for rust-vmm hosts: the binding lifecycle (hand a device and its IOMMU group to
//! vfio-pci, give it back exactly as it was) and VFIO device access for a VMM (legacy
//! container or iommufd, regions, config space, BAR mmap, DMA mapping of guest RAM,
//! interrupts, reset).
//!
//! - [`bind`]: `prepare` / `release` / `restore` with rollback, a write-ahead record and a
//!   host-wide lock; every sysfs write goes through [`bind::Kernel`], so the lifecycle is
//!   tested against a simulated kernel ([`bind::sim`]) with faults injected at every step.

pub mod bind;

//! vfio-pci for rust-vmm hosts: the binding lifecycle (hand a device and its IOMMU group to
//! vfio-pci, give it back exactly as it was) and VFIO device access for a VMM (legacy
//! container or iommufd, regions, config space, BAR mmap, DMA mapping of guest RAM,
//! interrupts, reset).
//!
//! - [`bind`]: `prepare` / `release` / `restore` with rollback, a write-ahead record and a
//!   host-wide lock; every sysfs write goes through [`bind::Kernel`], so the lifecycle is
//!   tested against a simulated kernel ([`bind::sim`]) with faults injected at every step.
//! - [`access`]: open a bound device through the legacy container or iommufd (auto-picked,
//!   or forced), query regions and interrupts, read/write config space with checked results,
//!   mmap BARs around the MSI-X table, DMA-map guest RAM at IOVA = GPA (refusing maps outside
//!   the IOMMU's ranges or into reserved regions, unmapping exactly on drop), route
//!   INTx/MSI/MSI-X to eventfds, reset.

#![deny(missing_docs)]

pub mod access;
pub mod bind;

// The README is the crate page on crates.io: its examples are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

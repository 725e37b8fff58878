//! The whole host: every PCI function, the IOMMU and its groups.

use std::collections::BTreeMap;

use serde::Serialize;

use crate::device::{read_device_dir, ConfigRead, PciDevice};
use crate::error::{Error, Result};
use crate::iommu::{read_groups, read_iommu_info, InterruptRemapping, IommuGroup, IommuInfo};
use crate::sysfs::SysfsRoot;
use crate::{Bdf, ClassCode};

/// A snapshot of a host's PCI topology.
#[derive(Debug, Clone, Serialize)]
pub struct Inventory {
    /// Sorted by address.
    pub devices: Vec<PciDevice>,
    /// Devices whose sysfs entries could not be read or decoded: listed, not fatal.
    pub unreadable: Vec<Unreadable>,
    /// The host's IOMMU: units, kernel parameters, interrupt remapping.
    pub iommu: IommuInfo,
    /// IOMMU groups by number.
    pub groups: BTreeMap<u32, IommuGroup>,
    /// Kernel release (`uname -r`, or the capture's `kernel-release`).
    pub kernel_release: Option<String>,
    #[serde(skip)]
    /// The sysfs root that was scanned.
    pub root: SysfsRoot,
}

/// A device entry that exists but could not be read.
#[derive(Debug, Clone, Serialize)]
pub struct Unreadable {
    /// The `bus/pci/devices` entry name.
    pub entry: String,
    /// Why it could not be read.
    pub error: String,
    /// Whether its class says accelerator (`None`: the class itself could not be read, so
    /// it may be one).
    pub accelerator: Option<bool>,
}

impl Unreadable {
    /// Could be an accelerator: what `check` must not pass over.
    pub fn maybe_accelerator(&self) -> bool {
        self.accelerator != Some(false)
    }
}

impl Inventory {
    /// Reads everything below `root`. A device that cannot be read lands in
    /// [`Inventory::unreadable`]; the scan fails when the device list or an IOMMU group
    /// cannot be read (a group's reserved regions decide what may be DMA-mapped, so a
    /// malformed one is not skipped).
    pub fn scan(root: &SysfsRoot) -> Result<Inventory> {
        Self::scan_with(root, ConfigRead::Full)
    }

    /// [`Inventory::scan`], reading only as much config space as `how` says.
    pub fn scan_with(root: &SysfsRoot, how: ConfigRead) -> Result<Inventory> {
        let dir = root.pci_devices_dir();
        log::debug!("scanning {} ({how:?})", dir.display());
        let entries = std::fs::read_dir(&dir).map_err(|e| Error::io(&dir, e))?;
        let mut devices = Vec::new();
        let mut unreadable = Vec::new();
        for entry in entries {
            let entry = entry.map_err(|e| Error::io(&dir, e))?;
            let name = entry.file_name().to_string_lossy().into_owned();
            let mut dir = None;
            let result = name
                .parse::<Bdf>()
                .map_err(|e| e.to_string())
                .and_then(|bdf| {
                    let d = root.read_link(&entry.path()).map_err(|e| e.to_string())?;
                    dir = Some(d.clone());
                    read_device_dir(root, bdf, &d, how).map_err(|e| e.to_string())
                });
            match result {
                Ok(d) => {
                    log::debug!(
                        "{}: read {}: {:04x}:{:04x} class {}, driver {}, group {}, {} bytes of config space",
                        d.bdf,
                        d.sysfs_dir.display(),
                        d.vendor_id,
                        d.device_id,
                        d.class,
                        d.driver.as_deref().unwrap_or("none"),
                        d.iommu_group.map_or("none".to_string(), |g| g.to_string()),
                        d.config_len
                    );
                    devices.push(d)
                }
                Err(error) => {
                    log::warn!("skipping {name}: {error}");
                    let accelerator = dir
                        .and_then(|d| crate::sysfs::read_hex::<u32>(&d, "class").ok())
                        .and_then(ClassCode::new)
                        .map(|c| c.is_accelerator());
                    unreadable.push(Unreadable {
                        entry: name,
                        error,
                        accelerator,
                    });
                }
            }
        }
        devices.sort_by_key(|d| d.bdf);
        if how == ConfigRead::Summary {
            log::debug!(
                "{} devices, {} unreadable (a summary: IOMMU groups and host IOMMU state not read)",
                devices.len(),
                unreadable.len()
            );
            return Ok(Inventory {
                devices,
                unreadable,
                iommu: IommuInfo {
                    units: Vec::new(),
                    group_count: 0,
                    cmdline_flags: Vec::new(),
                    interrupt_remapping: InterruptRemapping::Unknown(
                        "not read: a summary scan".into(),
                    ),
                },
                groups: BTreeMap::new(),
                kernel_release: None,
                root: root.clone(),
            });
        }
        let groups = read_groups(root)?;
        let iommu = read_iommu_info(root, groups.len(), how == ConfigRead::Full)?;
        log::debug!(
            "{} devices, {} unreadable, {} IOMMU groups, IOMMU units {:?}, IOMMU kernel parameters {:?}, interrupt remapping {:?}",
            devices.len(),
            unreadable.len(),
            groups.len(),
            iommu.units,
            iommu.cmdline_flags,
            iommu.interrupt_remapping
        );
        Ok(Inventory {
            devices,
            unreadable,
            iommu,
            groups,
            kernel_release: root.kernel_release(),
            root: root.clone(),
        })
    }

    /// The device at `bdf`, if scanned.
    pub fn device(&self, bdf: Bdf) -> Option<&PciDevice> {
        self.devices
            .binary_search_by_key(&bdf, |d| d.bdf)
            .ok()
            .map(|i| &self.devices[i])
    }

    /// The device, or why not: [`Error::Unreadable`] (with the file and error) for one that
    /// exists but could not be read, else [`Error::NoDevice`] naming the root.
    pub fn require(&self, bdf: Bdf) -> Result<&PciDevice> {
        if let Some(d) = self.device(bdf) {
            return Ok(d);
        }
        let name = bdf.to_string();
        if let Some(u) = self.unreadable.iter().find(|u| u.entry == name) {
            return Err(Error::Unreadable {
                bdf,
                error: u.error.clone(),
            });
        }
        Err(Error::NoDevice {
            bdf,
            root: self.root.path().to_path_buf(),
        })
    }

    /// The IOMMU group of `bdf`, if it has one.
    pub fn group_of(&self, bdf: Bdf) -> Option<&IommuGroup> {
        self.groups.get(&self.device(bdf)?.iommu_group?)
    }

    /// Accelerators first (by address), then everything else (by address).
    pub fn devices_accelerators_first(&self) -> Vec<&PciDevice> {
        let mut v: Vec<&PciDevice> = self.devices.iter().collect();
        v.sort_by_key(|d| (!d.is_accelerator(), d.bdf));
        v
    }

    /// Whether the group can be handed to VFIO as it is now: every endpoint unbound or on
    /// vfio-pci (bridges stay on their drivers). The error lists what blocks it.
    pub fn group_viability(&self, group: &IommuGroup) -> Viability {
        let blockers: Vec<GroupMember> = group
            .devices
            .iter()
            .filter_map(|b| self.device(*b))
            .filter(|d| !d.is_bridge())
            .filter(|d| {
                !matches!(
                    d.driver.as_deref(),
                    None | Some(crate::VFIO_PCI_DRIVER) | Some("pci-stub")
                )
            })
            .map(|d| GroupMember {
                bdf: d.bdf,
                driver: d.driver.clone(),
            })
            .collect();
        if blockers.is_empty() {
            Viability::Viable
        } else {
            Viability::NotViable {
                bound_to_host: blockers,
            }
        }
    }

    /// The other endpoints in `bdf`'s group (what prepare must bind along with it).
    pub fn group_companions(&self, bdf: Bdf) -> Vec<&PciDevice> {
        self.group_of(bdf)
            .map(|g| {
                g.devices
                    .iter()
                    .filter(|b| **b != bdf)
                    .filter_map(|b| self.device(*b))
                    .filter(|d| !d.is_bridge())
                    .collect()
            })
            .unwrap_or_default()
    }
}

/// A device and the driver it is bound to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct GroupMember {
    /// The member's address.
    pub bdf: Bdf,
    /// Its host driver (`None`: unbound).
    pub driver: Option<String>,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", rename_all = "snake_case")]
/// Whether VFIO can use an IOMMU group now (every endpoint on vfio-pci or unbound).
pub enum Viability {
    /// Every endpoint is on vfio-pci or has no driver.
    Viable,
    /// Some endpoints are still bound to host drivers.
    NotViable {
        /// Those endpoints, with their drivers.
        bound_to_host: Vec<GroupMember>,
    },
}

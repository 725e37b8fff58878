//! One PCI function as sysfs describes it.

use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::bar::{parse_resource, Bar, ROM_INDEX};
use crate::config::{CapabilityList, ConfigSpace};
use crate::error::{Error, Result};
use crate::ids::{self, ClassCode, ClassKind};
use crate::sysfs::{read_attr, read_hex, read_opt, SysfsRoot};
use crate::Bdf;

/// Everything vm-accel knows about a PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PciDevice {
    /// The function's address.
    pub bdf: Bdf,
    #[serde(serialize_with = "crate::json::hex4")]
    /// Vendor id (`vendor`).
    pub vendor_id: u16,
    #[serde(serialize_with = "crate::json::hex4")]
    /// Device id (`device`).
    pub device_id: u16,
    /// Vendor name from the PCI ID database (`None` when unknown).
    pub vendor_name: Option<&'static str>,
    /// Device name from the PCI ID database (`None` when unknown).
    pub device_name: Option<&'static str>,
    #[serde(serialize_with = "crate::json::opt_hex4")]
    /// Subsystem vendor id, when sysfs has one.
    pub subsystem_vendor_id: Option<u16>,
    #[serde(serialize_with = "crate::json::opt_hex4")]
    /// Subsystem device id, when sysfs has one.
    pub subsystem_device_id: Option<u16>,
    /// Subsystem name from the PCI ID database.
    pub subsystem_name: Option<&'static str>,
    /// The 24-bit class code.
    pub class: ClassCode,
    /// What the class code means to vm-accel.
    pub class_kind: ClassKind,
    /// Class name as lspci prints it.
    pub class_name: &'static str,
    #[serde(serialize_with = "crate::json::opt_hex2")]
    /// Revision id, when readable.
    pub revision: Option<u8>,
    /// Kernel driver bound now (`None`: unbound).
    pub driver: Option<String>,
    /// `driver_override` (`None` when unset, which the kernel prints as `(null)`).
    pub driver_override: Option<String>,
    /// IOMMU group number (`None`: no IOMMU, or the device is not isolated by one).
    pub iommu_group: Option<u32>,
    /// NUMA node (`None` when the kernel reports -1: no affinity).
    pub numa_node: Option<u32>,
    /// CPUs local to the device's NUMA node (`local_cpulist`).
    pub local_cpus: Option<String>,
    /// PCIe link state (`None` for conventional PCI).
    pub link: Option<LinkInfo>,
    /// Reset methods the kernel can use, in its order of preference (`flr`, `pm`, `bus`...).
    pub reset_methods: Vec<String>,
    /// The firmware's boot display device (its framebuffer backs the console).
    pub boot_vga: bool,
    /// SR-IOV state of a physical function.
    pub sriov: Option<SriovInfo>,
    /// For an SR-IOV VF: its physical function.
    pub physfn: Option<Bdf>,
    /// Standard BARs 0-5 (assigned ones only).
    pub bars: Vec<Bar>,
    /// The expansion ROM BAR, when assigned.
    pub rom: Option<Bar>,
    /// SR-IOV VF BARs of a PF (resource lines 7-12).
    pub vf_bars: Vec<Bar>,
    /// Power state as sysfs names it (`D0`, `D3hot`...).
    pub power_state: Option<String>,
    /// Legacy interrupt line (`irq`), when the kernel assigned one.
    pub irq: Option<u32>,
    /// Header type (0 endpoint, 1 bridge, 2 CardBus); `None` when config is unreadable.
    pub header_type: Option<u8>,
    /// Bytes of config space read (64 when unprivileged, or with [`ConfigRead::Header`]).
    pub config_len: usize,
    /// Decoded capabilities (empty when only the header could be read).
    pub capabilities: CapabilityList,
    /// The sysfs directory the device was read from (a path under the root).
    #[serde(skip)]
    pub sysfs_dir: PathBuf,
}

/// PCIe link state as sysfs reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LinkInfo {
    /// Current link speed as sysfs prints it (`16.0 GT/s PCIe`).
    pub current_speed: Option<String>,
    /// Current link width (lanes).
    pub current_width: Option<u8>,
    /// Maximum link speed both ends support.
    pub max_speed: Option<String>,
    /// Maximum link width.
    pub max_width: Option<u8>,
}

impl LinkInfo {
    /// The link trained below what both ends can do (a common cause of low bandwidth).
    pub fn is_degraded(&self) -> bool {
        let width = matches!((self.current_width, self.max_width), (Some(c), Some(m)) if c < m);
        let speed = matches!((&self.current_speed, &self.max_speed), (Some(c), Some(m)) if speed_value(c) < speed_value(m));
        width || speed
    }
}

fn speed_value(s: &str) -> f64 {
    s.split_whitespace()
        .next()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0.0)
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
/// SR-IOV state of a physical function, from sysfs and its SR-IOV capability.
pub struct SriovInfo {
    /// VFs the device supports (`sriov_totalvfs`).
    pub total_vfs: u16,
    /// VFs enabled now (`sriov_numvfs`).
    pub num_vfs: u16,
    /// Routing-id offset of the first VF (`sriov_offset`).
    pub vf_offset: Option<u16>,
    /// Routing-id distance between VFs (`sriov_stride`).
    pub vf_stride: Option<u16>,
    #[serde(serialize_with = "crate::json::opt_hex4")]
    /// Device id of the VFs (`sriov_vf_device`).
    pub vf_device_id: Option<u16>,
    /// The VFs that exist now (from the `virtfnN` links).
    pub vfs: Vec<Bdf>,
}

impl PciDevice {
    /// Display, 3D, processing-accelerator or co-processor class.
    pub fn is_accelerator(&self) -> bool {
        self.class.is_accelerator()
    }
    /// A bridge by class or by header type.
    pub fn is_bridge(&self) -> bool {
        self.class.is_bridge() || self.header_type == Some(1)
    }
    /// The largest assigned standard BAR (the one a VMM must find MMIO room for).
    pub fn largest_bar(&self) -> Option<&Bar> {
        self.bars.iter().max_by_key(|b| b.size)
    }
    /// Whether this device is bound to vfio-pci now.
    pub fn is_vfio_bound(&self) -> bool {
        self.driver.as_deref() == Some(crate::VFIO_PCI_DRIVER)
    }
    /// The BDFs of the bridges above this device, nearest first, from its sysfs path
    /// (`.../pci0000:00/0000:00:01.0/0000:01:00.0`).
    pub fn upstream_path(&self) -> Vec<Bdf> {
        let mut out: Vec<Bdf> = self
            .sysfs_dir
            .ancestors()
            .skip(1)
            .filter_map(|p| p.file_name()?.to_str()?.parse().ok())
            .collect();
        out.dedup();
        out
    }
}

/// How much of each device to read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum ConfigRead {
    /// All of config space (capabilities decoded). Each config read can trap to firmware or
    /// a hypervisor, so 4 KiB per device is the expensive part of a scan.
    #[default]
    Full,
    /// Only the 64-byte header (what `lspci` without `-v` reads): no capabilities. A quick
    /// listing: [`crate::Inventory::scan_with`] then also skips /proc/interrupts, so
    /// interrupt remapping is judged from sysfs alone.
    Header,
    /// What a listing shows and nothing more: ids, class, driver, IOMMU group number, NUMA
    /// node and BARs, from sysfs attributes; no config space (a trap to the hypervisor per
    /// dword on a VM), no other attributes (subsystem, revision, link, reset methods,
    /// SR-IOV... stay empty), and [`crate::Inventory::scan_with`] reads neither the IOMMU
    /// groups nor the host's IOMMU state. The cost of `vm-accel list` (docs/benchmarks.md).
    Summary,
}

/// Reads one device below `root`, all of its config space included.
pub fn read_device(root: &SysfsRoot, bdf: Bdf) -> Result<PciDevice> {
    let dir = root.resolve_device_dir(bdf)?;
    read_device_dir(root, bdf, &dir, ConfigRead::Full)
}

fn read_config(path: &Path, how: ConfigRead) -> Result<ConfigSpace> {
    let limit = match how {
        ConfigRead::Full => crate::config::PCIE_LEN as u64,
        ConfigRead::Header => 64,
        ConfigRead::Summary => 0,
    };
    match crate::sysfs::read_prefix(path, limit) {
        Ok(bytes) => Ok(ConfigSpace::new(bytes)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(ConfigSpace::new(Vec::new())),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// An optional hex attribute: missing, unreadable or malformed all read as `None` (logged),
/// so one bad optional value never drops the whole device.
fn opt_hex<T: TryFrom<u64>>(dir: &Path, name: &str) -> Option<T> {
    match read_hex(dir, name) {
        Ok(v) => Some(v),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            log::warn!("ignoring {e}");
            None
        }
    }
}

fn opt_dec<T: std::str::FromStr>(dir: &Path, name: &str) -> Option<T> {
    read_attr(dir, name).and_then(|s| s.parse().ok())
}

/// Vendor, device and class: what every read of a device needs.
fn read_identity(dir: &Path) -> Result<(u16, u16, ClassCode)> {
    let vendor_id: u16 = read_hex(dir, "vendor")?;
    let device_id: u16 = read_hex(dir, "device")?;
    let class_raw: u32 = read_hex(dir, "class")?;
    let class = ClassCode::new(class_raw).ok_or_else(|| {
        Error::malformed(
            dir.join("class"),
            format!("{class_raw:#x} is wider than 24 bits"),
        )
    })?;
    Ok((vendor_id, device_id, class))
}

/// The group number from the `iommu_group` link (`None` without an IOMMU).
fn read_iommu_group(root: &SysfsRoot, dir: &Path) -> Result<Option<u32>> {
    match root.link_name(&dir.join("iommu_group"))? {
        Some(name) => Ok(Some(name.parse().map_err(|_| {
            Error::malformed(
                dir.join("iommu_group"),
                format!("group name {name:?} is not a number"),
            )
        })?)),
        None => Ok(None),
    }
}

/// `numa_node`, where the kernel knows one (it writes -1 otherwise).
fn read_numa_node(dir: &Path) -> Option<u32> {
    opt_dec::<i64>(dir, "numa_node").and_then(|n| u32::try_from(n).ok())
}

/// [`ConfigRead::Summary`]: the attributes a listing shows, the rest left empty.
pub(crate) fn read_device_summary(root: &SysfsRoot, bdf: Bdf, dir: &Path) -> Result<PciDevice> {
    let (vendor_id, device_id, class) = read_identity(dir)?;
    let resource_path = dir.join("resource");
    let bars = match read_opt(&resource_path)? {
        Some(text) => parse_resource(&resource_path, &text)?
            .into_iter()
            .filter(|b| b.is_standard())
            .collect(),
        None => Vec::new(),
    };
    let iommu_group = read_iommu_group(root, dir)?;
    Ok(PciDevice {
        bdf,
        vendor_id,
        device_id,
        vendor_name: ids::vendor_name(vendor_id),
        device_name: ids::device_name(vendor_id, device_id),
        subsystem_vendor_id: None,
        subsystem_device_id: None,
        subsystem_name: None,
        class,
        class_kind: class.kind(),
        class_name: class.name(),
        revision: None,
        driver: root.link_name(&dir.join("driver"))?,
        driver_override: None,
        iommu_group,
        numa_node: read_numa_node(dir),
        local_cpus: None,
        link: None,
        reset_methods: Vec::new(),
        boot_vga: false,
        sriov: None,
        physfn: None,
        bars,
        rom: None,
        vf_bars: Vec::new(),
        power_state: None,
        irq: None,
        header_type: None,
        config_len: 0,
        capabilities: CapabilityList::default(),
        sysfs_dir: dir.to_path_buf(),
    })
}

pub(crate) fn read_device_dir(
    root: &SysfsRoot,
    bdf: Bdf,
    dir: &Path,
    how: ConfigRead,
) -> Result<PciDevice> {
    if how == ConfigRead::Summary {
        return read_device_summary(root, bdf, dir);
    }
    let (vendor_id, device_id, class) = read_identity(dir)?;
    let subsystem_vendor_id: Option<u16> = opt_hex(dir, "subsystem_vendor");
    let subsystem_device_id: Option<u16> = opt_hex(dir, "subsystem_device");
    let revision: Option<u8> = opt_hex(dir, "revision");

    let config = read_config(&dir.join("config"), how)?;
    if !config.is_empty() {
        if let (Some(v), Some(d)) = (config.vendor_id(), config.device_id()) {
            if (v, d) != (vendor_id, device_id) && v != 0xffff {
                log::warn!("{bdf}: config space ids {v:04x}:{d:04x} differ from sysfs {vendor_id:04x}:{device_id:04x}");
            }
        }
    }
    let capabilities = config.capabilities();

    let resource_path = dir.join("resource");
    let all_bars = match read_opt(&resource_path)? {
        Some(text) => parse_resource(&resource_path, &text)?,
        None => Vec::new(),
    };
    let bars = all_bars
        .iter()
        .filter(|b| b.is_standard())
        .cloned()
        .collect();
    let rom = all_bars.iter().find(|b| b.index == ROM_INDEX).cloned();
    let vf_bars = all_bars
        .iter()
        .filter(|b| (7..=12).contains(&b.index))
        .cloned()
        .collect();

    let driver = root.link_name(&dir.join("driver"))?;
    let driver_override = read_attr(dir, "driver_override").filter(|s| s != "(null)");
    let iommu_group = read_iommu_group(root, dir)?;
    let numa_node = read_numa_node(dir);
    let link = read_link_info(dir);
    let reset_methods = read_attr(dir, "reset_method")
        .map(|s| s.split_whitespace().map(str::to_string).collect())
        .unwrap_or_default();
    let sriov = read_sriov(root, dir)?;
    let physfn = match root.read_link(&dir.join("physfn")) {
        Ok(p) => p
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok()),
        Err(e) if e.is_not_found() => None,
        Err(e) => {
            log::warn!("ignoring {e}");
            None
        }
    };

    Ok(PciDevice {
        bdf,
        vendor_id,
        device_id,
        vendor_name: ids::vendor_name(vendor_id),
        device_name: ids::device_name(vendor_id, device_id),
        subsystem_vendor_id,
        subsystem_device_id,
        subsystem_name: match (subsystem_vendor_id, subsystem_device_id) {
            (Some(sv), Some(sd)) => ids::subsystem_name(vendor_id, device_id, sv, sd),
            _ => None,
        },
        class,
        class_kind: class.kind(),
        class_name: class.name(),
        revision,
        driver,
        driver_override,
        iommu_group,
        numa_node,
        local_cpus: read_attr(dir, "local_cpulist"),
        link,
        reset_methods,
        boot_vga: read_attr(dir, "boot_vga").as_deref() == Some("1"),
        sriov,
        physfn,
        bars,
        rom,
        vf_bars,
        power_state: read_attr(dir, "power_state"),
        irq: opt_dec(dir, "irq"),
        header_type: config.header_type(),
        config_len: config.len(),
        capabilities,
        sysfs_dir: dir.to_path_buf(),
    })
}

fn read_link_info(dir: &Path) -> Option<LinkInfo> {
    let speed = |name| read_attr(dir, name).filter(|s| !s.starts_with("Unknown"));
    let width = |name| opt_dec::<u8>(dir, name).filter(|w| *w != 0);
    let link = LinkInfo {
        current_speed: speed("current_link_speed"),
        current_width: width("current_link_width"),
        max_speed: speed("max_link_speed"),
        max_width: width("max_link_width"),
    };
    let any = link.current_speed.is_some()
        || link.current_width.is_some()
        || link.max_speed.is_some()
        || link.max_width.is_some();
    any.then_some(link)
}

fn read_sriov(root: &SysfsRoot, dir: &Path) -> Result<Option<SriovInfo>> {
    let Some(total_vfs) = opt_dec::<u16>(dir, "sriov_totalvfs") else {
        return Ok(None);
    };
    let mut vfs = Vec::new();
    let entries = match std::fs::read_dir(dir) {
        Ok(e) => e,
        Err(e) => return Err(Error::io(dir, e)),
    };
    let mut links: Vec<(u32, PathBuf)> = entries
        .filter_map(|e| e.ok())
        .filter_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let n = name.strip_prefix("virtfn")?.parse().ok()?;
            Some((n, e.path()))
        })
        .collect();
    links.sort();
    for (_, link) in links {
        let target = match root.read_link(&link) {
            Ok(t) => t,
            Err(e) => {
                log::warn!("ignoring {e}");
                continue;
            }
        };
        if let Some(bdf) = target
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse().ok())
        {
            vfs.push(bdf);
        }
    }
    Ok(Some(SriovInfo {
        total_vfs,
        num_vfs: opt_dec(dir, "sriov_numvfs").unwrap_or(0),
        vf_offset: opt_dec(dir, "sriov_offset"),
        vf_stride: opt_dec(dir, "sriov_stride"),
        vf_device_id: opt_hex(dir, "sriov_vf_device"),
        vfs,
    }))
}

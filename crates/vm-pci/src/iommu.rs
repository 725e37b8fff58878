//! IOMMU state and groups.

use std::collections::BTreeMap;
use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::sysfs::{parse_hex, read_attr, read_opt, SysfsRoot};
use crate::Bdf;

/// What the host's IOMMU looks like.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IommuInfo {
    /// Hardware units registered with the kernel (`dmar0`, `ivhd0`, ...).
    pub units: Vec<String>,
    /// Number of IOMMU groups; zero means DMA isolation is off for every device.
    pub group_count: usize,
    /// IOMMU-related kernel parameters seen on the command line.
    pub cmdline_flags: Vec<String>,
    /// Whether interrupt remapping is on, with the evidence.
    pub interrupt_remapping: InterruptRemapping,
}

impl IommuInfo {
    /// The IOMMU is on: the kernel made groups (what VFIO needs).
    pub fn enabled(&self) -> bool {
        self.group_count > 0
    }
}

/// Whether MSIs are remapped by the IOMMU (else a device could forge interrupts, and VFIO
/// refuses to attach without `allow_unsafe_interrupts`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "state", content = "evidence", rename_all = "snake_case")]
pub enum InterruptRemapping {
    /// Seen in use (`IR-` interrupt domains in /proc/interrupts).
    Enabled(String),
    /// The hardware offers it; whether the kernel uses it was not visible.
    Supported(String),
    /// Turned off on the kernel command line.
    Disabled(String),
    /// The IOMMU hardware lacks it.
    Unsupported(String),
    /// No evidence either way (no IOMMU, or a capture without it).
    Unknown(String),
}

/// One IOMMU group: the smallest set of devices the IOMMU can isolate from the rest.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct IommuGroup {
    /// The group number (`/sys/kernel/iommu_groups/<n>`); in JSON `iommu_group`, the name
    /// the number has everywhere else.
    #[serde(rename = "iommu_group")]
    pub id: u32,
    /// Every function in the group.
    pub devices: Vec<Bdf>,
    /// Default domain type (`DMA`, `DMA-FQ`, `identity`, `blocked`), if the kernel says.
    pub kind: Option<String>,
    /// IOVA ranges the IOMMU reserves for this group.
    pub reserved_regions: Vec<ReservedRegion>,
}

/// An IOVA range the IOMMU reserves (MSI window, RMRRs...): never map guest RAM there.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ReservedRegion {
    /// First reserved IOVA.
    pub start: u64,
    /// Inclusive end, as the kernel prints it.
    pub end: u64,
    /// What the range is for (`msi`, `direct`, `reserved`...).
    pub kind: String,
}

impl ReservedRegion {
    /// Whether `[start, start + len)` touches this region.
    pub fn overlaps(&self, start: u64, len: u64) -> bool {
        len > 0 && start <= self.end && start.saturating_add(len - 1) >= self.start
    }
}

/// Parses a group's `reserved_regions` file (`start end type` per line, hex).
pub fn parse_reserved_regions(path: &Path, text: &str) -> Result<Vec<ReservedRegion>> {
    text.lines()
        .filter(|l| !l.trim().is_empty())
        .map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            let [start, end, kind] = f.as_slice() else {
                return Err(Error::malformed(
                    path,
                    format!("expected `start end type`, found {line:?}"),
                ));
            };
            let (start, end) = (parse_hex(path, start)?, parse_hex(path, end)?);
            if end < start {
                return Err(Error::malformed(
                    path,
                    format!("end {end:#x} below start {start:#x}"),
                ));
            }
            Ok(ReservedRegion {
                start,
                end,
                kind: kind.to_string(),
            })
        })
        .collect()
}

fn dir_names(dir: &Path) -> Result<Vec<String>> {
    match std::fs::read_dir(dir) {
        Ok(entries) => {
            let mut v: Vec<String> = entries
                .filter_map(|e| e.ok())
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect();
            v.sort();
            Ok(v)
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(Vec::new()),
        Err(e) => Err(Error::io(dir, e)),
    }
}

/// Reads every IOMMU group below `root`.
pub fn read_groups(root: &SysfsRoot) -> Result<BTreeMap<u32, IommuGroup>> {
    let base = root.iommu_groups_dir();
    let mut groups = BTreeMap::new();
    for name in dir_names(&base)? {
        let Ok(id) = name.parse::<u32>() else {
            log::warn!("{}: ignoring non-numeric group {name:?}", base.display());
            continue;
        };
        let gdir = base.join(&name);
        let mut devices: Vec<Bdf> = dir_names(&gdir.join("devices"))?
            .iter()
            .filter_map(|n| match n.parse() {
                Ok(b) => Some(b),
                Err(e) => {
                    log::warn!("{}: {e}", gdir.display());
                    None
                }
            })
            .collect();
        devices.sort();
        let rr_path = gdir.join("reserved_regions");
        let reserved_regions = match read_opt(&rr_path)? {
            Some(t) => parse_reserved_regions(&rr_path, &t)?,
            None => Vec::new(),
        };
        groups.insert(
            id,
            IommuGroup {
                id,
                devices,
                kind: read_attr(&gdir, "type"),
                reserved_regions,
            },
        );
    }
    Ok(groups)
}

/// Kernel parameters that decide IOMMU and interrupt-remapping behaviour.
fn iommu_cmdline_flags(cmdline: &str) -> Vec<String> {
    cmdline
        .split_whitespace()
        .filter(|w| {
            let key = w.split('=').next().unwrap_or("");
            matches!(
                key,
                "intel_iommu"
                    | "amd_iommu"
                    | "iommu"
                    | "iommu.passthrough"
                    | "iommu.strict"
                    | "intremap"
                    | "vfio_iommu_type1.allow_unsafe_interrupts"
            )
        })
        .map(str::to_string)
        .collect()
}

/// Reads IOMMU units, groups count and interrupt-remapping evidence. `probe_interrupts`:
/// also look for remapped interrupt domains in the live /proc/interrupts, which can be
/// megabytes on a many-CPU host (a quick listing skips it).
pub fn read_iommu_info(
    root: &SysfsRoot,
    group_count: usize,
    probe_interrupts: bool,
) -> Result<IommuInfo> {
    let units = dir_names(&root.iommu_class_dir())?;
    let cmdline = root.kernel_cmdline().unwrap_or_default();
    let cmdline_flags = iommu_cmdline_flags(&cmdline);
    let interrupt_remapping = detect_ir(root, &units, &cmdline_flags, probe_interrupts);
    Ok(IommuInfo {
        units,
        group_count,
        cmdline_flags,
        interrupt_remapping,
    })
}

fn detect_ir(
    root: &SysfsRoot,
    units: &[String],
    flags: &[String],
    probe_interrupts: bool,
) -> InterruptRemapping {
    use InterruptRemapping::*;
    if let Some(f) = flags
        .iter()
        .find(|f| *f == "intremap=off" || *f == "intel_iommu=off" || *f == "amd_iommu=off")
    {
        return Disabled(format!("kernel command line has {f}"));
    }
    // Only the live /proc tells whether remapping is in use; a capture cannot.
    if probe_interrupts && root.is_live() {
        // Megabytes on a many-CPU host, so capped well above that rather than at an
        // attribute's size; the first IR- domain is near the top anyway.
        if let Ok(bytes) = crate::sysfs::read_prefix(Path::new("/proc/interrupts"), 16 << 20) {
            if bytes.windows(3).any(|w| w == b"IR-") {
                return Enabled("IR- interrupt domains in /proc/interrupts".into());
            }
        }
    }
    for unit in units {
        let vtd = root.iommu_class_dir().join(unit).join("intel-iommu");
        if let Some(ecap) = read_attr(&vtd, "ecap") {
            let ecap_path = vtd.join("ecap");
            // Intel VT-d extended capability bit 3: interrupt remapping.
            return match parse_hex(&ecap_path, &ecap) {
                Ok(v) if v & 0x8 != 0 => Supported(format!("{unit} ecap {ecap} has IR")),
                Ok(_) => Unsupported(format!("{unit} ecap {ecap} lacks IR")),
                Err(e) => Unknown(e.to_string()),
            };
        }
        if unit.starts_with("ivhd") {
            return Supported(format!("AMD IOMMU {unit} (always offers remapping)"));
        }
    }
    if units.is_empty() {
        Unknown("no IOMMU units in class/iommu".into())
    } else {
        Unknown(format!("units {units:?} do not report remapping"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reserved_regions_parse() {
        let p = Path::new("rr");
        let r = parse_reserved_regions(p, "0x00000000fee00000 0x00000000feefffff msi\n").unwrap();
        assert_eq!(
            r,
            vec![ReservedRegion {
                start: 0xfee0_0000,
                end: 0xfeef_ffff,
                kind: "msi".into()
            }]
        );
        assert!(r[0].overlaps(0xfe00_0000, 0x100_0000));
        assert!(!r[0].overlaps(0, 0x1000));
        assert!(!r[0].overlaps(0xfee0_0000, 0));
        assert!(parse_reserved_regions(p, "0x2 0x1 msi").is_err());
        assert!(parse_reserved_regions(p, "0x1 0x2").is_err());
    }

    #[test]
    fn cmdline_flags() {
        let f = iommu_cmdline_flags("BOOT_IMAGE=/vmlinuz intel_iommu=on iommu=pt quiet");
        assert_eq!(f, vec!["intel_iommu=on", "iommu=pt"]);
    }
}

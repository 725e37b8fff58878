//! What the binding lifecycle reads back from sysfs: a device's driver and driver_override,
//! and the other members of its IOMMU group.

use std::io;
use std::path::{Path, PathBuf};

use vm_pci::Bdf;

/// The driver name vfio-pci registers under.
pub const VFIO_PCI: &str = "vfio-pci";

/// Who owns a device, and who it asked for: the two things a binding changes and a restore
/// puts back.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
pub struct DriverState {
    /// The bound driver (`<dev>/driver` link), `None` when unbound.
    pub driver: Option<String>,
    /// `<dev>/driver_override`, `None` when it reads `(null)`.
    pub driver_override: Option<String>,
}

impl std::fmt::Display for DriverState {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "driver {}, driver_override {}",
            self.driver.as_deref().unwrap_or("(none)"),
            self.driver_override.as_deref().unwrap_or("(null)")
        )
    }
}

/// The sysfs paths binding writes to and reads from, below a root (`/sys` live).
#[derive(Debug, Clone)]
pub struct Paths {
    root: PathBuf,
}

impl Paths {
    /// Paths below the sysfs root `root`.
    pub fn new(root: impl Into<PathBuf>) -> Paths {
        Paths { root: root.into() }
    }
    /// The sysfs root.
    pub fn root(&self) -> &Path {
        &self.root
    }
    /// `<root>/bus/pci/devices/<bdf>`: a link to the device directory on a live host; writes
    /// go through it, as the kernel documents them.
    pub fn device(&self, bdf: Bdf) -> PathBuf {
        self.root.join("bus/pci/devices").join(bdf.to_string())
    }
    /// `<dev>/driver_override`.
    pub fn driver_override(&self, bdf: Bdf) -> PathBuf {
        self.device(bdf).join("driver_override")
    }
    /// `bus/pci/drivers`.
    pub fn drivers(&self) -> PathBuf {
        self.root.join("bus/pci/drivers")
    }
    /// `bus/pci/drivers/<driver>`.
    pub fn driver_dir(&self, driver: &str) -> PathBuf {
        self.drivers().join(driver)
    }
    /// `bus/pci/drivers/<driver>/unbind`.
    pub fn unbind(&self, driver: &str) -> PathBuf {
        self.driver_dir(driver).join("unbind")
    }
    /// `bus/pci/drivers/<driver>/bind`.
    pub fn bind(&self, driver: &str) -> PathBuf {
        self.driver_dir(driver).join("bind")
    }
    /// `bus/pci/drivers_probe`.
    pub fn drivers_probe(&self) -> PathBuf {
        self.root.join("bus/pci/drivers_probe")
    }
    /// Whether a driver is registered (its module loaded or built in).
    pub fn driver_loaded(&self, driver: &str) -> bool {
        self.driver_dir(driver).is_dir()
    }

    /// Resolves `<root>/bus/pci/devices/<bdf>` to the device directory. Captures store links
    /// as small files holding the target; both forms are accepted.
    pub fn device_dir(&self, bdf: Bdf) -> io::Result<PathBuf> {
        let link = self.device(bdf);
        resolve_link(&link)
    }

    /// Reads a device's driver and driver_override. Names that are not one plain path
    /// component are an error: they end up in paths that are written to.
    pub fn driver_state(&self, bdf: Bdf) -> io::Result<DriverState> {
        let dir = self.device_dir(bdf)?;
        let driver = link_name(&dir.join("driver"))?;
        let override_path = dir.join("driver_override");
        let driver_override = match vm_pci::read_text(&override_path) {
            Ok(s) => parse_override(&s),
            // Kernels before 3.16 have no driver_override; binding needs it.
            Err(e) => {
                return Err(io::Error::new(
                    e.kind(),
                    format!("{}: {e}", dir.join("driver_override").display()),
                ))
            }
        };
        let st = DriverState {
            driver,
            driver_override,
        };
        st.validate().map_err(|reason| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: {reason}", dir.display()),
            )
        })?;
        Ok(st)
    }

    /// The device's PCI class code (24 bits), from `<dev>/class`.
    pub fn class(&self, bdf: Bdf) -> io::Result<u32> {
        let path = self.device_dir(bdf)?.join("class");
        let s = vm_pci::read_text(&path)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", path.display())))?;
        let t = s.trim();
        u32::from_str_radix(t.trim_start_matches("0x"), 16).map_err(|_| {
            io::Error::new(
                io::ErrorKind::InvalidData,
                format!("{}: not a class code: {t:?}", path.display()),
            )
        })
    }

    /// The device's IOMMU group and all its members (sorted), `None` without an IOMMU.
    pub fn iommu_group(&self, bdf: Bdf) -> io::Result<Option<(u32, Vec<Bdf>)>> {
        let dir = self.device_dir(bdf)?;
        let link = dir.join("iommu_group");
        let group_dir = match resolve_link(&link) {
            Ok(p) => p,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(e),
        };
        let id = group_dir
            .file_name()
            .and_then(|n| n.to_str())
            .and_then(|n| n.parse::<u32>().ok())
            .ok_or_else(|| {
                io::Error::new(
                    io::ErrorKind::InvalidData,
                    format!("{}: not an IOMMU group link", link.display()),
                )
            })?;
        // Members are named by the group's own devices/ directory under the root, which is
        // where a capture keeps it even when the link text is absolute.
        let devices = self
            .root
            .join("kernel/iommu_groups")
            .join(id.to_string())
            .join("devices");
        let mut members = Vec::new();
        for entry in std::fs::read_dir(&devices)
            .map_err(|e| io::Error::new(e.kind(), format!("{}: {e}", devices.display())))?
        {
            let name = entry?.file_name();
            if let Some(b) = name.to_str().and_then(|s| s.parse::<Bdf>().ok()) {
                members.push(b);
            }
        }
        members.sort();
        // A device its own group does not list is an inconsistent tree, not a group of
        // other devices to bind in its place.
        if members.binary_search(&bdf).is_err() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!(
                    "{bdf} names IOMMU group {id}, but {} does not list it",
                    devices.display()
                ),
            ));
        }
        Ok(Some((id, members)))
    }
}

impl DriverState {
    /// Both names must be usable as one path component (see [`valid_driver_name`]).
    pub fn validate(&self) -> Result<(), String> {
        for (what, v) in [
            ("driver", &self.driver),
            ("driver_override", &self.driver_override),
        ] {
            if let Some(name) = v {
                if !valid_driver_name(name) {
                    return Err(format!(
                        "{what} {name:?} is not a driver name (one path component of printable characters)"
                    ));
                }
            }
        }
        Ok(())
    }
}

/// A driver name as the kernel registers them: one path component (no `/`, not `.` or
/// `..`), printable, no whitespace or backslash, at most 255 bytes. Anything else read from a record or
/// a tree would let a path built from it (`drivers/<name>/bind`) point somewhere else.
pub fn valid_driver_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 255
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| !c.is_control() && !c.is_whitespace() && c != '/' && c != '\\')
}

/// `(null)` (the kernel's "no override") and an empty file both mean none.
pub fn parse_override(s: &str) -> Option<String> {
    let t = s.trim();
    (!t.is_empty() && t != "(null)").then(|| t.to_string())
}

fn to_io(e: vm_pci::Error) -> io::Error {
    let kind = if e.is_not_found() {
        io::ErrorKind::NotFound
    } else {
        io::ErrorKind::InvalidData
    };
    io::Error::new(kind, e.to_string())
}

/// Resolves a sysfs link with vm-pci's reader (symlinks, and captures' link-as-file).
fn resolve_link(link: &Path) -> io::Result<PathBuf> {
    vm_pci::SysfsRoot::new("/").read_link(link).map_err(to_io)
}

/// The last component of a link's target; `None` when the link is absent.
fn link_name(link: &Path) -> io::Result<Option<String>> {
    vm_pci::SysfsRoot::new("/").link_name(link).map_err(to_io)
}

/// Bridges (base class 0x06: host, ISA, PCI-to-PCI...) stay with their drivers when a group
/// is handed to vfio-pci, as the kernel's viability rules allow.
pub fn is_bridge_class(class: u32) -> bool {
    vm_pci::ClassCode::new(class).is_some_and(|c| c.is_bridge())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn override_parsing() {
        assert_eq!(parse_override("(null)\n"), None);
        assert_eq!(parse_override("\n"), None);
        assert_eq!(parse_override("vfio-pci\n").as_deref(), Some("vfio-pci"));
    }

    #[test]
    fn reads_captured_links_stored_as_files() {
        // Captures keep links as small files holding the target text.
        let t = tempfile::tempdir().unwrap();
        let dev = t.path().join("devices/pci0000:00/0000:00:06.0");
        std::fs::create_dir_all(&dev).unwrap();
        std::fs::create_dir_all(t.path().join("bus/pci/devices")).unwrap();
        std::fs::write(
            t.path().join("bus/pci/devices/0000:00:06.0"),
            "../../../devices/pci0000:00/0000:00:06.0\n",
        )
        .unwrap();
        std::fs::write(dev.join("driver"), "../../../bus/pci/drivers/nvidia\n").unwrap();
        std::fs::write(dev.join("driver_override"), "(null)\n").unwrap();
        std::fs::write(dev.join("class"), "0x030200\n").unwrap();
        let p = Paths::new(t.path());
        let bdf: Bdf = "0000:00:06.0".parse().unwrap();
        let st = p.driver_state(bdf).unwrap();
        assert_eq!(st.driver.as_deref(), Some("nvidia"));
        assert_eq!(st.driver_override, None);
        assert_eq!(p.class(bdf).unwrap(), 0x030200);
        assert_eq!(p.iommu_group(bdf).unwrap(), None);
        std::fs::write(dev.join("iommu_group"), "../../../kernel/iommu_groups/7\n").unwrap();
        let g = t.path().join("kernel/iommu_groups/7/devices");
        std::fs::create_dir_all(&g).unwrap();
        std::fs::write(g.join("0000:00:06.0"), "x").unwrap();
        std::fs::write(g.join("0000:00:05.0"), "x").unwrap();
        let (id, members) = p.iommu_group(bdf).unwrap().unwrap();
        assert_eq!(id, 7);
        assert_eq!(members.len(), 2);
        assert_eq!(members[0].to_string(), "0000:00:05.0");
        assert!(p.driver_state("0000:00:07.0".parse().unwrap()).is_err());
    }
}

//! Reading sysfs below a configurable root.
//!
//! All paths the crate touches are built here, from a [`SysfsRoot`], so that a captured tree
//! (a fixture) and the live `/sys` are read by the same code.

use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::Bdf;

/// The directory sysfs is read from: `/sys` on a live host, any directory for a capture.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SysfsRoot {
    path: PathBuf,
}

impl Default for SysfsRoot {
    fn default() -> Self {
        SysfsRoot::new("/sys")
    }
}

/// Links longer than this are not links stored as files (see [`SysfsRoot::read_link`]).
const MAX_LINK_FILE: u64 = 4096;

impl SysfsRoot {
    /// A root at `path` (`/sys` for the live host).
    pub fn new(path: impl Into<PathBuf>) -> Self {
        SysfsRoot { path: path.into() }
    }
    /// The root directory.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// `<root>/bus/pci/devices`.
    pub fn pci_devices_dir(&self) -> PathBuf {
        self.path.join("bus/pci/devices")
    }
    /// `<root>/bus/pci/devices/<bdf>` (a link to the device's directory on a live system).
    pub fn device_dir(&self, bdf: Bdf) -> PathBuf {
        self.pci_devices_dir().join(bdf.to_string())
    }
    /// `<root>/bus/pci/drivers`.
    pub fn pci_drivers_dir(&self) -> PathBuf {
        self.path.join("bus/pci/drivers")
    }
    /// `<root>/kernel/iommu_groups`.
    pub fn iommu_groups_dir(&self) -> PathBuf {
        self.path.join("kernel/iommu_groups")
    }
    /// `<root>/class/iommu`.
    pub fn iommu_class_dir(&self) -> PathBuf {
        self.path.join("class/iommu")
    }
    /// `<root>/module`.
    pub fn module_dir(&self) -> PathBuf {
        self.path.join("module")
    }

    /// Whether this root is the live `/sys` (so /proc describes the same host).
    pub fn is_live(&self) -> bool {
        self.path == Path::new("/sys")
    }

    /// Host facts that live outside sysfs: a capture keeps them as `<root>/<captured>`
    /// (preferred when present); the live `/sys` reads them from `live` (under /proc).
    fn host_fact(&self, captured: &str, live: &str) -> Option<String> {
        let captured = self.path.join(captured);
        let path = if captured.exists() || !self.is_live() {
            captured
        } else {
            PathBuf::from(live)
        };
        std::fs::read_to_string(path)
            .ok()
            .map(|s| s.trim().to_string())
    }

    /// The kernel command line (`<root>/cmdline` in a capture, else `/proc/cmdline`).
    pub fn kernel_cmdline(&self) -> Option<String> {
        self.host_fact("cmdline", "/proc/cmdline")
    }

    /// The kernel release (`<root>/kernel-release` in a capture, else
    /// `/proc/sys/kernel/osrelease`).
    pub fn kernel_release(&self) -> Option<String> {
        self.host_fact("kernel-release", "/proc/sys/kernel/osrelease")
    }

    /// Resolves a sysfs link to the directory it names.
    ///
    /// Real sysfs links are symlinks. Some captures (and file stores that do not keep
    /// symlinks) hold the link's target text in a small regular file instead; both are
    /// accepted, and a relative target is resolved against the link's directory. The
    /// result is normalised lexically (no `..`), never by following further links.
    pub fn read_link(&self, link: &Path) -> Result<PathBuf> {
        let meta = std::fs::symlink_metadata(link).map_err(|e| Error::io(link, e))?;
        let target = if meta.file_type().is_symlink() {
            std::fs::read_link(link).map_err(|e| Error::io(link, e))?
        } else if meta.is_file() && meta.len() <= MAX_LINK_FILE {
            let text = std::fs::read_to_string(link).map_err(|e| Error::io(link, e))?;
            let text = text.trim();
            if text.is_empty() || text.contains('\n') || text.contains('\0') {
                return Err(Error::malformed(
                    link,
                    "neither a symlink nor a link target",
                ));
            }
            PathBuf::from(text)
        } else if meta.is_dir() {
            // Some filesystems (and `cp -rL` captures) turn links into directories.
            return Ok(link.to_path_buf());
        } else {
            return Err(Error::malformed(
                link,
                "neither a symlink nor a link target",
            ));
        };
        let base = link.parent().unwrap_or(Path::new("/"));
        Ok(normalize(&base.join(target)))
    }

    /// The last path component a link points to, e.g. the driver name of `.../driver`.
    /// `Ok(None)` when the link does not exist.
    pub fn link_name(&self, link: &Path) -> Result<Option<String>> {
        match self.read_link(link) {
            Ok(p) => Ok(p.file_name().map(|n| n.to_string_lossy().into_owned())),
            Err(e) if e.is_not_found() => Ok(None),
            Err(e) => Err(e),
        }
    }

    /// The device directory a `bus/pci/devices/<bdf>` entry resolves to.
    pub fn resolve_device_dir(&self, bdf: Bdf) -> Result<PathBuf> {
        let link = self.device_dir(bdf);
        match self.read_link(&link) {
            Ok(p) => Ok(p),
            Err(e) if e.is_not_found() => Err(Error::NoDevice {
                bdf,
                root: self.path.clone(),
            }),
            Err(e) => Err(e),
        }
    }
}

/// Lexical normalisation: drops `.` and folds `..` (sysfs links never need more).
fn normalize(p: &Path) -> PathBuf {
    let mut out = PathBuf::new();
    for c in p.components() {
        match c {
            Component::CurDir => {}
            Component::ParentDir => {
                out.pop();
            }
            other => out.push(other.as_os_str()),
        }
    }
    out
}

/// Reads a whole attribute file; `Ok(None)` when it does not exist.
pub(crate) fn read_opt(path: &Path) -> Result<Option<String>> {
    match std::fs::read_to_string(path) {
        Ok(s) => Ok(Some(s)),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(e) => Err(Error::io(path, e)),
    }
}

/// Reads an attribute, trimmed; `None` when missing, empty or unreadable (logged): optional
/// attributes must not make a whole device unreadable.
pub(crate) fn read_attr(dir: &Path, name: &str) -> Option<String> {
    let path = dir.join(name);
    match read_opt(&path) {
        Ok(Some(s)) => {
            let t = s.trim();
            (!t.is_empty()).then(|| t.to_string())
        }
        Ok(None) => None,
        Err(e) => {
            log::debug!("{e}");
            None
        }
    }
}

/// Parses `0x10de`-style hex (the kernel's format for ids and class).
pub(crate) fn parse_hex(path: &Path, s: &str) -> Result<u64> {
    let digits = s
        .strip_prefix("0x")
        .or_else(|| s.strip_prefix("0X"))
        .unwrap_or(s);
    u64::from_str_radix(digits, 16)
        .map_err(|_| Error::malformed(path, format!("expected a hex number, found {s:?}")))
}

/// Reads a required hex attribute that must fit `T` (vendor, device, class...).
pub(crate) fn read_hex<T: TryFrom<u64>>(dir: &Path, name: &str) -> Result<T> {
    let path = dir.join(name);
    let s = read_opt(&path)?
        .ok_or_else(|| Error::io(&path, std::io::Error::from(std::io::ErrorKind::NotFound)))?;
    let v = parse_hex(&path, s.trim())?;
    T::try_from(v).map_err(|_| Error::malformed(&path, format!("value {v:#x} out of range")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn link_as_symlink_and_as_file() {
        let t = tempfile::tempdir().unwrap();
        let root = SysfsRoot::new(t.path());
        std::fs::create_dir_all(t.path().join("bus/pci/drivers/nvidia")).unwrap();
        std::fs::create_dir_all(t.path().join("devices/pci0000:00/0000:00:06.0")).unwrap();
        let dev = t.path().join("devices/pci0000:00/0000:00:06.0");
        std::os::unix::fs::symlink("../../../bus/pci/drivers/nvidia", dev.join("driver")).unwrap();
        assert_eq!(
            root.link_name(&dev.join("driver")).unwrap().as_deref(),
            Some("nvidia")
        );
        std::fs::write(dev.join("iommu_group"), "../../../kernel/iommu_groups/7\n").unwrap();
        assert_eq!(
            root.read_link(&dev.join("iommu_group")).unwrap(),
            t.path().join("kernel/iommu_groups/7")
        );
        assert_eq!(root.link_name(&dev.join("missing")).unwrap(), None);
        std::fs::write(dev.join("bad"), "a\nb").unwrap();
        assert!(root.read_link(&dev.join("bad")).is_err());
    }

    #[test]
    fn hex() {
        let p = Path::new("x");
        assert_eq!(parse_hex(p, "0x10de").unwrap(), 0x10de);
        assert!(parse_hex(p, "0xzz").is_err());
        assert!(parse_hex(p, "").is_err());
    }
}

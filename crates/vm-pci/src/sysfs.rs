//! Reading sysfs below a configurable root.
//!
//! All paths the crate touches are built here, from a [`SysfsRoot`], so that a captured tree
//! (a fixture) and the live `/sys` are read by the same code.

use std::io::{self, Read};
use std::path::{Component, Path, PathBuf};

use crate::error::{Error, Result};
use crate::Bdf;

/// The most any sysfs or /proc attribute read takes. Real attributes are at most a page; a
/// bigger file is not an attribute (a capture gone wrong, or `vendor` linked to /dev/zero).
pub const MAX_ATTR_LEN: u64 = 64 << 10;

/// Opens `path` for reading without blocking and only if it is a regular file.
///
/// `O_NONBLOCK` makes opening a FIFO return at once (a blocking open waits for a writer that
/// may never come); `fstat` on the opened descriptor then refuses it, and character devices
/// (`/dev/zero`), sockets and directories, before a single byte is read. Checking the
/// descriptor, not the path, leaves no window for the file to be swapped in between.
pub fn open_regular(path: &Path) -> io::Result<std::fs::File> {
    use std::os::unix::fs::OpenOptionsExt;
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    let ft = file.metadata()?.file_type();
    if !ft.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("not a regular file ({})", file_kind(&ft)),
        ));
    }
    Ok(file)
}

fn file_kind(ft: &std::fs::FileType) -> &'static str {
    use std::os::unix::fs::FileTypeExt;
    if ft.is_dir() {
        "a directory"
    } else if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else {
        "not a file"
    }
}

/// Reads a whole regular file of at most `cap` bytes; a longer one is an error, not a
/// silently cut value. The one reader every sysfs and /proc read of the workspace goes
/// through (see [`open_regular`]).
pub fn read_bounded(path: &Path, cap: u64) -> io::Result<Vec<u8>> {
    let mut bytes = read_prefix(path, cap.saturating_add(1))?;
    if bytes.len() as u64 > cap {
        bytes.clear();
        return Err(io::Error::new(
            io::ErrorKind::InvalidData,
            format!("larger than {cap} bytes: not a sysfs attribute"),
        ));
    }
    Ok(bytes)
}

/// Reads at most the first `limit` bytes of a regular file (config space: the rest, if a
/// file has more, is not config space).
pub fn read_prefix(path: &Path, limit: u64) -> io::Result<Vec<u8>> {
    let file = open_regular(path)?;
    let mut bytes = Vec::new();
    file.take(limit).read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// [`read_bounded`] with [`MAX_ATTR_LEN`], as text (invalid UTF-8 is replaced, never fatal:
/// the callers parse the text and say what is wrong with it).
pub fn read_text(path: &Path) -> io::Result<String> {
    let bytes = read_bounded(path, MAX_ATTR_LEN)?;
    Ok(String::from_utf8(bytes)
        .unwrap_or_else(|e| String::from_utf8_lossy(e.as_bytes()).into_owned()))
}

/// sysfs's filesystem magic (`SYSFS_MAGIC` in linux/magic.h).
const SYSFS_MAGIC: u64 = 0x6265_6572;

/// Whether `path` is on a sysfs filesystem.
fn on_sysfs(path: &Path) -> bool {
    use std::os::unix::ffi::OsStrExt;
    let Ok(c) = std::ffi::CString::new(path.as_os_str().as_bytes()) else {
        return false;
    };
    let mut st = std::mem::MaybeUninit::<libc::statfs>::zeroed();
    // SAFETY: `c` is a NUL-terminated path and `st` a buffer of the type statfs fills; it
    // is read only when the call succeeds.
    let rc = unsafe { libc::statfs(c.as_ptr(), st.as_mut_ptr()) };
    if rc != 0 {
        return false;
    }
    // SAFETY: statfs returned 0, so it initialised the buffer.
    let st = unsafe { st.assume_init() };
    // f_type's width differs between architectures; the magic fits 32 bits on all.
    #[allow(clippy::unnecessary_cast)]
    let magic = st.f_type as u64;
    magic & 0xffff_ffff == SYSFS_MAGIC
}

/// Whether two paths are the same directory (device and inode, after following links).
fn same_file(a: &Path, b: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    match (std::fs::metadata(a), std::fs::metadata(b)) {
        (Ok(a), Ok(b)) => a.dev() == b.dev() && a.ino() == b.ino(),
        _ => false,
    }
}

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

    /// Whether this root is the live kernel's sysfs (so /proc describes the same host, and
    /// writes below it change the host). Decided by what the directory is, never by its
    /// name: `/sys/../sys` or a symlink to /sys are live, a copy of /sys is not.
    pub fn is_live(&self) -> bool {
        on_sysfs(&self.path) || same_file(&self.path, Path::new("/sys"))
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
        read_text(&path).ok().map(|s| s.trim().to_string())
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
        } else if meta.is_file() {
            let bytes = read_bounded(link, MAX_LINK_FILE).map_err(|e| Error::io(link, e))?;
            let text = String::from_utf8_lossy(&bytes);
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
    match read_text(path) {
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

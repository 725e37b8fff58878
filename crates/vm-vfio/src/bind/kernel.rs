//! The one interface every change to the host's driver bindings goes through.
//!
//! Binding is a handful of writes to sysfs attributes plus, at most, one module load. Keeping
//! them behind [`Kernel`] lets the same lifecycle code run against the live kernel
//! ([`SysfsKernel`]), print itself ([`KernelOp`]'s `Display`, for `--dry-run`), or run against
//! a simulated kernel that can fail at any step ([`super::sim::SimKernel`]).

use std::fmt;
use std::io;
use std::path::{Path, PathBuf};

/// One change to the kernel's state.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum KernelOp {
    /// Write `value` to the sysfs attribute at `path`.
    Write {
        /// The attribute file.
        path: PathBuf,
        /// What is written to it.
        value: String,
    },
    /// Load a kernel module (`modprobe NAME`).
    LoadModule {
        /// The module name.
        module: String,
    },
}

impl KernelOp {
    /// A write of `value` to `path`.
    pub fn write(path: impl Into<PathBuf>, value: impl Into<String>) -> KernelOp {
        KernelOp::Write {
            path: path.into(),
            value: value.into(),
        }
    }
}

/// One shell word: quoted only when it needs to be, so that replaying a printed command
/// writes exactly `s`, whatever a path or name contains.
fn shell_word(s: &str) -> String {
    match shlex::try_quote(s) {
        Ok(q) => q.into_owned(),
        // A NUL cannot be passed through a shell at all; show it, unusable on purpose.
        Err(_) => format!("'{}'", s.escape_default()),
    }
}

impl fmt::Display for KernelOp {
    /// Shell form, so a dry run can be read (and replayed) by a person; every word is
    /// quoted as the shell needs.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelOp::Write { path, value } if value.trim().is_empty() => {
                write!(f, "echo > {}", shell_word(&path.to_string_lossy()))
            }
            KernelOp::Write { path, value } => {
                write!(
                    f,
                    "echo {} > {}",
                    shell_word(value),
                    shell_word(&path.to_string_lossy())
                )
            }
            KernelOp::LoadModule { module } => write!(f, "modprobe {}", shell_word(module)),
        }
    }
}

/// Refuses a write whose path resolves outside `root` (through an absolute or `..`
/// symlink anywhere on the way), before anything is opened for writing.
pub fn confine(root: &Path, path: &Path) -> io::Result<PathBuf> {
    let root = std::fs::canonicalize(root)
        .map_err(|e| io::Error::new(e.kind(), format!("sysfs root {}: {e}", root.display())))?;
    let real = std::fs::canonicalize(path)?;
    if !real.starts_with(&root) {
        return Err(io::Error::new(
            io::ErrorKind::PermissionDenied,
            format!(
                "refusing to write {}: it resolves to {}, outside the sysfs root {}",
                path.display(),
                real.display(),
                root.display()
            ),
        ));
    }
    Ok(real)
}

/// Applies [`KernelOp`]s. Implementations must either apply an op or return an error; the
/// caller verifies the outcome by reading sysfs back, never by trusting `Ok`.
pub trait Kernel {
    /// Performs `op`; an error leaves the kernel as it was.
    fn apply(&mut self, op: &KernelOp) -> io::Result<()>;
}

impl<K: Kernel + ?Sized> Kernel for &mut K {
    fn apply(&mut self, op: &KernelOp) -> io::Result<()> {
        (**self).apply(op)
    }
}

/// The live kernel: sysfs writes are `write(2)` to existing attribute files, modules are
/// loaded with `modprobe`.
#[derive(Debug)]
pub struct SysfsKernel {
    /// The `modprobe` program (default: `modprobe` from `PATH`); `None` refuses module
    /// loads (a fixture root: loading a module would change the live kernel, not the tree).
    pub modprobe: Option<PathBuf>,
}

impl SysfsKernel {
    /// For the live `/sys`: loads modules with `modprobe` from `PATH`.
    pub fn live() -> SysfsKernel {
        SysfsKernel {
            modprobe: Some(PathBuf::from("modprobe")),
        }
    }
    /// For a sysfs root that is not the live kernel's: writes files, never loads modules.
    pub fn for_tree() -> SysfsKernel {
        SysfsKernel { modprobe: None }
    }
}

impl Kernel for SysfsKernel {
    fn apply(&mut self, op: &KernelOp) -> io::Result<()> {
        match op {
            KernelOp::Write { path, value } => write_attr(path, value),
            KernelOp::LoadModule { module } => {
                let Some(prog) = self.modprobe.clone() else {
                    return Err(io::Error::new(
                        io::ErrorKind::Unsupported,
                        format!("not loading {module}: the sysfs root is not the live kernel's"),
                    ));
                };
                let out = std::process::Command::new(&prog).arg(module).output()?;
                if out.status.success() {
                    Ok(())
                } else {
                    Err(io::Error::other(format!(
                        "{} {module} failed ({}): {}",
                        prog.display(),
                        out.status,
                        String::from_utf8_lossy(&out.stderr).trim()
                    )))
                }
            }
        }
    }
}

/// One `write(2)` of the whole value to an attribute that must already exist, opened as the
/// shell's `echo value > attr` opens it (sysfs ignores the truncation; a plain-file tree
/// needs it). Attributes are never created; a short or failed write is the kernel refusing.
fn write_attr(path: &Path, value: &str) -> io::Result<()> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    // Non-blocking: opening a FIFO for writing would wait for a reader forever. The
    // descriptor must be a regular file (every sysfs attribute is) before a byte goes out.
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)?;
    if !f.metadata()?.is_file() {
        return Err(io::Error::new(
            io::ErrorKind::InvalidInput,
            format!("{} is not a regular file", path.display()),
        ));
    }
    let n = f.write(value.as_bytes())?;
    if n != value.len() {
        return Err(io::Error::other(format!(
            "short write ({n} of {} bytes)",
            value.len()
        )));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn display_is_shell() {
        let op = KernelOp::write("/sys/bus/pci/drivers_probe", "0000:00:03.0");
        assert_eq!(
            op.to_string(),
            "echo 0000:00:03.0 > /sys/bus/pci/drivers_probe"
        );
        let op = KernelOp::write("/sys/x/driver_override", "\n");
        assert_eq!(op.to_string(), "echo > /sys/x/driver_override");
        let op = KernelOp::LoadModule {
            module: "vfio-pci".into(),
        };
        assert_eq!(op.to_string(), "modprobe vfio-pci");
    }

    #[test]
    fn printed_commands_are_quoted_for_replay() {
        let op = KernelOp::write("/tmp/a b/$(reboot)/driver_override", "x; rm -rf /");
        assert_eq!(
            op.to_string(),
            "echo 'x; rm -rf /' > '/tmp/a b/$(reboot)/driver_override'"
        );
        let op = KernelOp::write("/sys/x/`id`", "a b");
        assert_eq!(op.to_string(), "echo 'a b' > '/sys/x/`id`'");
    }

    #[test]
    fn writes_outside_the_root_are_refused() {
        let t = tempfile::tempdir().unwrap();
        let root = t.path().join("sys");
        let outside = t.path().join("outside");
        std::fs::create_dir_all(root.join("bus")).unwrap();
        std::fs::create_dir_all(&outside).unwrap();
        std::fs::write(outside.join("bind"), "").unwrap();
        std::os::unix::fs::symlink("../../outside", root.join("bus/escape")).unwrap();
        std::os::unix::fs::symlink(&outside, root.join("bus/abs")).unwrap();
        std::fs::write(root.join("bus/ok"), "").unwrap();
        assert!(confine(&root, &root.join("bus/ok")).is_ok());
        for p in ["bus/escape/bind", "bus/abs/bind", "bus/../../outside/bind"] {
            let e = confine(&root, &root.join(p)).unwrap_err();
            assert_eq!(e.kind(), io::ErrorKind::PermissionDenied, "{p}: {e}");
        }
    }

    #[test]
    fn a_fifo_attribute_is_refused_without_blocking() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("driver_override");
        let c = std::ffi::CString::new(path.to_str().unwrap()).unwrap();
        // SAFETY: valid NUL-terminated path.
        assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
        let e = SysfsKernel::for_tree()
            .apply(&KernelOp::write(&path, "vfio-pci"))
            .unwrap_err();
        // No reader: ENXIO at open, or refused as not a regular file; either way at once.
        assert!(
            e.raw_os_error() == Some(libc::ENXIO) || e.kind() == io::ErrorKind::InvalidInput,
            "{e}"
        );
    }

    #[test]
    fn sysfs_kernel_never_creates_attributes() {
        let t = tempfile::tempdir().unwrap();
        let path = t.path().join("driver_override");
        let e = SysfsKernel::for_tree()
            .apply(&KernelOp::write(&path, "vfio-pci"))
            .unwrap_err();
        assert_eq!(e.kind(), io::ErrorKind::NotFound);
        assert!(!path.exists());
        std::fs::write(&path, "").unwrap();
        SysfsKernel::for_tree()
            .apply(&KernelOp::write(&path, "vfio-pci"))
            .unwrap();
        assert_eq!(std::fs::read_to_string(&path).unwrap(), "vfio-pci");
    }
}

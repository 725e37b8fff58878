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

impl fmt::Display for KernelOp {
    /// Shell form, so a dry run can be read (and replayed) by a person.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            KernelOp::Write { path, value } if value.trim().is_empty() => {
                write!(f, "echo > {}", path.display())
            }
            KernelOp::Write { path, value } => {
                write!(f, "echo {value} > {}", path.display())
            }
            KernelOp::LoadModule { module } => write!(f, "modprobe {module}"),
        }
    }
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
    let mut f = std::fs::OpenOptions::new()
        .write(true)
        .truncate(true)
        .open(path)?;
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

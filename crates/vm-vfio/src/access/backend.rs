//! Which VFIO path opens a device: the legacy group/container or iommufd with the device's
//! cdev; the choice, and the IOMMU context (container or IOAS) devices share.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use vfio_ioctls::{VfioContainer, VfioDeviceFd, VfioOps};

use super::dma::IovaRange;
use super::error::{Error, Result};
use super::sys;

/// A VFIO path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BackendKind {
    /// `/dev/vfio/vfio` + `/dev/vfio/<group>` (type1 IOMMU).
    Legacy,
    /// `/dev/iommu` + `/dev/vfio/devices/vfioN`.
    Iommufd,
}

impl std::fmt::Display for BackendKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            BackendKind::Legacy => "legacy container",
            BackendKind::Iommufd => "iommufd",
        })
    }
}

/// How to pick the path.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum BackendChoice {
    /// iommufd where it is available (no 65535-mapping limit), else legacy.
    #[default]
    Auto,
    /// This backend, or an error when the host cannot provide it.
    Force(BackendKind),
}

/// What this host offers for one device (all paths below `/dev` and the device's sysfs dir).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Availability {
    /// This build has the iommufd path (`iommufd` feature).
    pub iommufd_built: bool,
    /// `/dev/iommu` exists (the iommufd path is possible).
    pub dev_iommu: bool,
    /// `/dev/vfio/devices/vfioN` for the device (from `<dev>/vfio-dev/vfioN`).
    pub cdev: Option<PathBuf>,
    /// `/dev/vfio/vfio` exists (the legacy container path is possible).
    pub container: bool,
    /// `/dev/vfio/<group>`.
    pub group_dev: Option<PathBuf>,
}

impl Availability {
    /// Looks at `/dev` and at the device's sysfs directory.
    pub fn probe(dev_dir: &Path, group: Option<u32>) -> Availability {
        let cdev = std::fs::read_dir(dev_dir.join("vfio-dev"))
            .ok()
            .and_then(|mut d| d.next())
            .and_then(|e| e.ok())
            .map(|e| Path::new("/dev/vfio/devices").join(e.file_name()))
            .filter(|p| p.exists());
        Availability {
            iommufd_built: cfg!(feature = "iommufd"),
            dev_iommu: Path::new("/dev/iommu").exists(),
            cdev,
            container: Path::new("/dev/vfio/vfio").exists(),
            group_dev: group
                .map(|g| Path::new("/dev/vfio").join(g.to_string()))
                .filter(|p| p.exists()),
        }
    }

    fn iommufd_missing(&self) -> Option<String> {
        if !self.iommufd_built {
            return Some("vm-vfio was built without the `iommufd` feature".into());
        }
        if !self.dev_iommu {
            return Some(
                "/dev/iommu is missing (kernel without CONFIG_IOMMUFD, or iommufd not loaded)"
                    .into(),
            );
        }
        if self.cdev.is_none() {
            return Some("the device has no /dev/vfio/devices/vfioN (kernel without CONFIG_VFIO_DEVICE_CDEV, or not bound to vfio-pci)".into());
        }
        None
    }

    fn legacy_missing(&self) -> Option<String> {
        if !self.container {
            return Some("/dev/vfio/vfio is missing (vfio module not loaded, or a kernel without the legacy container: CONFIG_VFIO_CONTAINER)".into());
        }
        if self.group_dev.is_none() {
            return Some("the device's /dev/vfio/<group> is missing (not bound to vfio-pci, or no IOMMU group)".into());
        }
        None
    }

    /// Picks the path, or says why none (or not the forced one) can be used.
    pub fn pick(&self, choice: BackendChoice) -> std::result::Result<BackendKind, String> {
        match choice {
            BackendChoice::Force(BackendKind::Iommufd) => self
                .iommufd_missing()
                .map_or(Ok(BackendKind::Iommufd), |r| {
                    Err(format!("iommufd forced but {r}"))
                }),
            BackendChoice::Force(BackendKind::Legacy) => {
                self.legacy_missing().map_or(Ok(BackendKind::Legacy), |r| {
                    Err(format!("legacy container forced but {r}"))
                })
            }
            BackendChoice::Auto => match (self.iommufd_missing(), self.legacy_missing()) {
                (None, _) => Ok(BackendKind::Iommufd),
                (Some(_), None) => Ok(BackendKind::Legacy),
                (Some(a), Some(b)) => Err(format!("iommufd: {a}; legacy: {b}")),
            },
        }
    }
}

/// The IOMMU address space devices are attached to: a type1 container or an iommufd IOAS.
/// Every device opened with the same context shares its DMA mappings.
pub struct IommuContext {
    kind: BackendKind,
    /// (IOVA, length) of every live mapping made through vm-vfio in this context.
    live: std::sync::Mutex<Vec<(super::dma::Iova, u64)>>,
    container: Option<Arc<VfioContainer>>,
    #[cfg(feature = "iommufd")]
    iommufd: Option<Arc<vfio_ioctls::VfioIommufd>>,
}

impl std::fmt::Debug for IommuContext {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("IommuContext")
            .field("kind", &self.kind)
            .finish_non_exhaustive()
    }
}

impl IommuContext {
    /// Opens a container (legacy) or an iommufd with a fresh IOAS, not registered with KVM
    /// (for host-side users: tests, benchmarks, user-space drivers).
    pub fn open(kind: BackendKind) -> Result<Arc<IommuContext>> {
        IommuContext::open_for_kvm(kind, None)
    }

    /// Opens a container or IOAS whose devices are registered with a VM's KVM VFIO device
    /// (`KVM_DEV_VFIO_FILE_ADD` of each group or cdev as it is opened, `FILE_DEL` when it is
    /// closed). KVM needs this to know the VM does non-coherent DMA and, on some platforms,
    /// to let the guest use the device's interrupts and MMIO properly.
    pub fn open_for_kvm(
        kind: BackendKind,
        kvm: Option<Arc<VfioDeviceFd>>,
    ) -> Result<Arc<IommuContext>> {
        let err = |op: &str, source| Error::Vfio {
            device: "(iommu)".into(),
            op: op.into(),
            source,
        };
        match kind {
            BackendKind::Legacy => {
                let c = VfioContainer::new(kvm).map_err(|e| err("open /dev/vfio/vfio", e))?;
                Ok(Arc::new(IommuContext {
                    kind,
                    live: Default::default(),
                    container: Some(Arc::new(c)),
                    #[cfg(feature = "iommufd")]
                    iommufd: None,
                }))
            }
            #[cfg(feature = "iommufd")]
            BackendKind::Iommufd => {
                let fd = iommufd_ioctls::IommuFd::new().map_err(|e| Error::Invalid {
                    device: "(iommu)".into(),
                    op: "open /dev/iommu".into(),
                    reason: super::error::chain(&e),
                })?;
                let v = vfio_ioctls::VfioIommufd::new(Arc::new(fd), None, kvm)
                    .map_err(|e| err("allocate an IOAS", e))?;
                Ok(Arc::new(IommuContext {
                    kind,
                    live: Default::default(),
                    container: None,
                    iommufd: Some(Arc::new(v)),
                }))
            }
            #[cfg(not(feature = "iommufd"))]
            BackendKind::Iommufd => Err(Error::Invalid {
                device: "(iommu)".into(),
                op: "open iommufd".into(),
                reason: "vm-vfio was built without the `iommufd` feature".into(),
            }),
        }
    }

    /// Which VFIO path this context uses.
    pub fn kind(&self) -> BackendKind {
        self.kind
    }

    /// The vfio-ioctls view of this context.
    pub fn ops(&self) -> Arc<dyn VfioOps> {
        #[cfg(feature = "iommufd")]
        if let Some(i) = &self.iommufd {
            return i.clone();
        }
        match &self.container {
            Some(c) => c.clone(),
            None => unreachable!("an IommuContext always holds a container or an iommufd"),
        }
    }

    /// The usable IOVA ranges and the map alignment. Legacy containers report them only
    /// once a group is attached (the IOMMU type is set by the first device).
    pub fn iova_ranges(&self) -> std::io::Result<(u64, Vec<IovaRange>)> {
        use std::os::fd::AsRawFd;
        #[cfg(feature = "iommufd")]
        if let Some(i) = &self.iommufd {
            return sys::ioas_iova_ranges(i.iommufd().as_raw_fd(), i.ioas().id());
        }
        match &self.container {
            Some(c) => {
                let (pgsizes, ranges) = sys::type1_info(c.as_raw_fd())?;
                // The smallest supported page is the alignment every map must keep.
                let align = if pgsizes == 0 {
                    4096
                } else {
                    1u64 << pgsizes.trailing_zeros()
                };
                Ok((align, ranges))
            }
            None => Err(std::io::Error::other("no container")),
        }
    }

    /// Maps `[iova, iova+len)` to host memory at `host`.
    ///
    /// # Safety
    /// See `vfio_ioctls::VfioOps::vfio_dma_map`: the host range must stay mapped and must not
    /// be accessed through Rust references while the IOMMU mapping exists.
    pub(crate) unsafe fn dma_map(
        &self,
        iova: u64,
        len: u64,
        host: *mut u8,
    ) -> vfio_ioctls::Result<()> {
        let len = usize::try_from(len).map_err(|_| vfio_ioctls::VfioError::InvalidDmaUnmapSize)?;
        // SAFETY: forwarded from the caller.
        unsafe { self.ops().vfio_dma_map(iova, len, host) }
    }

    pub(crate) fn dma_unmap(&self, iova: u64, len: u64) -> vfio_ioctls::Result<()> {
        let len = usize::try_from(len).map_err(|_| vfio_ioctls::VfioError::InvalidDmaUnmapSize)?;
        self.ops().vfio_dma_unmap(iova, len)
    }

    /// The live-mapping list (held across check + map so two threads cannot both pass).
    pub(crate) fn live(&self) -> std::sync::MutexGuard<'_, Vec<(super::dma::Iova, u64)>> {
        self.live.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// What vm-vfio has mapped in this context and not unmapped yet.
    pub fn live_mappings(&self) -> Vec<(super::dma::Iova, u64)> {
        self.live().clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Availability {
        Availability {
            iommufd_built: true,
            dev_iommu: true,
            cdev: Some("/dev/vfio/devices/vfio0".into()),
            container: true,
            group_dev: Some("/dev/vfio/3".into()),
        }
    }

    #[test]
    fn auto_prefers_iommufd_and_falls_back() {
        assert_eq!(all().pick(BackendChoice::Auto), Ok(BackendKind::Iommufd));
        let debian = Availability {
            dev_iommu: false,
            cdev: None,
            ..all()
        };
        assert_eq!(debian.pick(BackendChoice::Auto), Ok(BackendKind::Legacy));
        let e = debian
            .pick(BackendChoice::Force(BackendKind::Iommufd))
            .unwrap_err();
        assert!(e.contains("/dev/iommu is missing"), "{e}");
        let nothing = Availability::default();
        let e = nothing.pick(BackendChoice::Auto).unwrap_err();
        assert!(e.contains("iommufd:") && e.contains("legacy:"), "{e}");
        let iommufd_only = Availability {
            container: false,
            ..all()
        };
        assert!(iommufd_only
            .pick(BackendChoice::Force(BackendKind::Legacy))
            .unwrap_err()
            .contains("CONFIG_VFIO_CONTAINER"));
    }

    #[test]
    fn probing_this_host_never_panics() {
        let a = Availability::probe(Path::new("/nonexistent"), Some(1));
        assert_eq!(a.cdev, None);
        assert_eq!(a.iommufd_built, cfg!(feature = "iommufd"));
    }
}

//! The error of VFIO device access: every variant names the device, the operation and, for
//! kernel failures, the errno.

use std::io;

use super::dma::MapRefused;

/// Formats an error with its whole `source()` chain (vfio-ioctls keeps the errno there).
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[derive(Debug, thiserror::Error)]
/// Errors of VFIO device access; each names the device and the operation.
pub enum Error {
    /// A system call failed (the io::Error carries the errno).
    #[error("{device}: {op}: {source}")]
    Os {
        /// The device (its BDF).
        device: String,
        /// The operation.
        op: String,
        #[source]
        /// The OS error.
        source: io::Error,
    },
    /// vfio-ioctls reported a failure.
    #[error("{device}: {op}: {}", chain(source))]
    Vfio {
        /// The device (its BDF).
        device: String,
        /// The operation.
        op: String,
        #[source]
        /// vfio-ioctls' error.
        source: vfio_ioctls::VfioError,
    },
    /// The request is not valid for this device (out of range, unsupported...).
    #[error("{device}: {op}: {reason}")]
    Invalid {
        /// The device (its BDF).
        device: String,
        /// The operation.
        op: String,
        /// Why it is not valid.
        reason: String,
    },
    /// A DMA map refused before reaching the IOMMU.
    #[error("{device}: {op}: {source}")]
    MapRefused {
        /// The device (its BDF).
        device: String,
        /// The operation.
        op: String,
        #[source]
        /// Why the map was refused.
        source: MapRefused,
    },
    /// Neither VFIO path can open the device.
    #[error("{device}: no usable VFIO backend: {reason}")]
    NoBackend {
        /// The device (its BDF).
        device: String,
        /// Why each path is unusable.
        reason: String,
    },
}

impl Error {
    /// The errno of a failed system call, when there is one.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Os { source, .. } => source.raw_os_error(),
            Error::Vfio { source, .. } => {
                let mut cur: Option<&(dyn std::error::Error + 'static)> = Some(source);
                while let Some(c) = cur {
                    if let Some(e) = c.downcast_ref::<vmm_sys_util::errno::Error>() {
                        return Some(e.errno());
                    }
                    if let Some(e) = c.downcast_ref::<io::Error>() {
                        return e.raw_os_error();
                    }
                    cur = c.source();
                }
                None
            }
            _ => None,
        }
    }
}

/// The result type of VFIO access.
pub type Result<T, E = Error> = std::result::Result<T, E>;

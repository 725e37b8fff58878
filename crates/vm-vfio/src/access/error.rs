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
pub enum Error {
    /// A system call failed (the io::Error carries the errno).
    #[error("{device}: {op}: {source}")]
    Os {
        device: String,
        op: String,
        #[source]
        source: io::Error,
    },
    /// vfio-ioctls reported a failure.
    #[error("{device}: {op}: {}", chain(source))]
    Vfio {
        device: String,
        op: String,
        #[source]
        source: vfio_ioctls::VfioError,
    },
    /// The request is not valid for this device (out of range, unsupported...).
    #[error("{device}: {op}: {reason}")]
    Invalid {
        device: String,
        op: String,
        reason: String,
    },
    /// A DMA map refused before reaching the IOMMU.
    #[error("{device}: {op}: {source}")]
    MapRefused {
        device: String,
        op: String,
        #[source]
        source: MapRefused,
    },
    /// Neither VFIO path can open the device.
    #[error("{device}: no usable VFIO backend: {reason}")]
    NoBackend { device: String, reason: String },
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

pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The error of attaching a device to a VM: every variant names what failed, with the
//! errno kept where the kernel refused.

/// Why an attach step (or a guest access it serves) failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// VFIO refused (open, region I/O, interrupts, DMA, reset).
    #[error(transparent)]
    Vfio(#[from] vm_vfio::access::Error),
    /// A KVM ioctl failed; `op` names it and what it was for.
    #[error("{op}: {source}")]
    Kvm {
        /// The ioctl and its argument, e.g. `KVM_SET_USER_MEMORY_REGION slot 12`.
        op: String,
        /// The errno KVM returned.
        #[source]
        source: kvm_ioctls::Error,
    },
    /// A guest resource (MMIO range, GSI, memory slot) could not be allocated.
    #[error("{device}: cannot allocate {what}: {reason}")]
    Allocate {
        /// The device it was for (`(vm)` for VM-wide resources).
        device: String,
        /// What was asked for, e.g. `a 256 GiB 64-bit MMIO range`.
        what: String,
        /// Why the allocator refused.
        reason: String,
    },
    /// The device or the request is not something attach can serve.
    #[error("{device}: {op}: {reason}")]
    Invalid {
        /// The device (`(vm)` for VM-wide requests).
        device: String,
        /// The operation.
        op: String,
        /// Why.
        reason: String,
    },
}

impl Error {
    /// A failed KVM ioctl.
    pub fn kvm(op: impl Into<String>, source: kvm_ioctls::Error) -> Error {
        Error::Kvm {
            op: op.into(),
            source,
        }
    }

    /// A request attach cannot serve.
    pub fn invalid(
        device: impl Into<String>,
        op: impl Into<String>,
        reason: impl Into<String>,
    ) -> Error {
        Error::Invalid {
            device: device.into(),
            op: op.into(),
            reason: reason.into(),
        }
    }

    /// The errno behind the failure, when the kernel refused.
    pub fn errno(&self) -> Option<i32> {
        match self {
            Error::Vfio(e) => e.errno(),
            Error::Kvm { source, .. } => Some(source.errno()),
            _ => None,
        }
    }
}

/// The result of attach operations.
pub type Result<T, E = Error> = std::result::Result<T, E>;

//! The one error type of vm-pci: every variant names the path and what was wrong with it.

use std::path::PathBuf;

use crate::Bdf;

/// Errors from reading and decoding sysfs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read.
    #[error("cannot read {path}: {source}")]
    Io {
        /// The file or directory.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: std::io::Error,
    },
    /// A file was read but its contents are not what the kernel writes there.
    #[error("malformed {path}: {reason}")]
    Malformed {
        /// The file.
        path: PathBuf,
        /// What is wrong with its contents.
        reason: String,
    },
    /// The function exists under the root but could not be read (the file and error).
    #[error("PCI device {bdf} exists but cannot be read: {error}")]
    Unreadable {
        /// The address asked for.
        bdf: Bdf,
        /// Why it could not be read, naming the file.
        error: String,
    },
    /// No such PCI function under this sysfs root.
    #[error("no PCI device {bdf} under {root}")]
    NoDevice {
        /// The address asked for.
        bdf: Bdf,
        /// The sysfs root searched.
        root: PathBuf,
    },
}

impl Error {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        Error::Io {
            path: path.into(),
            source,
        }
    }
    pub(crate) fn malformed(path: impl Into<PathBuf>, reason: impl Into<String>) -> Self {
        Error::Malformed {
            path: path.into(),
            reason: reason.into(),
        }
    }
    /// True when the underlying cause is a missing file (an attribute this kernel lacks).
    pub fn is_not_found(&self) -> bool {
        matches!(self, Error::Io { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

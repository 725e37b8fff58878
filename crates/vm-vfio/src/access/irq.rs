//! Interrupt indexes and the `VFIO_DEVICE_SET_IRQS` argument, built as bytes so its layout
//! is tested without a device.

use std::fmt;
use std::os::fd::RawFd;

/// vfio-pci's interrupt indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum IrqIndex {
    /// Legacy line interrupt.
    Intx,
    /// MSI.
    Msi,
    /// MSI-X.
    Msix,
    /// AER error notification.
    Err,
    /// Device request (the host wants the device back).
    Req,
}

impl IrqIndex {
    /// Every index, in kernel order.
    pub const ALL: [IrqIndex; 5] = [
        IrqIndex::Intx,
        IrqIndex::Msi,
        IrqIndex::Msix,
        IrqIndex::Err,
        IrqIndex::Req,
    ];
    /// The kernel's index number.
    pub fn raw(self) -> u32 {
        match self {
            IrqIndex::Intx => 0,
            IrqIndex::Msi => 1,
            IrqIndex::Msix => 2,
            IrqIndex::Err => 3,
            IrqIndex::Req => 4,
        }
    }
}

impl fmt::Display for IrqIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IrqIndex::Intx => "INTx",
            IrqIndex::Msi => "MSI",
            IrqIndex::Msix => "MSI-X",
            IrqIndex::Err => "ERR",
            IrqIndex::Req => "REQ",
        })
    }
}

/// `VFIO_IRQ_INFO_*`.
pub const INFO_EVENTFD: u32 = 1;
/// `VFIO_IRQ_INFO_MASKABLE`.
pub const INFO_MASKABLE: u32 = 2;
/// `VFIO_IRQ_INFO_AUTOMASKED`.
pub const INFO_AUTOMASKED: u32 = 4;
/// `VFIO_IRQ_INFO_NORESIZE`.
pub const INFO_NORESIZE: u32 = 8;

/// What `VFIO_DEVICE_GET_IRQ_INFO` reports for one index.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct IrqInfo {
    /// The interrupt index.
    pub index: IrqIndex,
    /// `VFIO_IRQ_INFO_*` flags.
    pub flags: u32,
    /// Vectors offered (0: the device has none of this kind).
    pub count: u32,
}

impl IrqInfo {
    /// Vectors can be masked through `VFIO_DEVICE_SET_IRQS`.
    pub fn maskable(&self) -> bool {
        self.flags & INFO_MASKABLE != 0
    }
    /// The kernel masks the line when it fires (INTx): unmask after handling.
    pub fn automasked(&self) -> bool {
        self.flags & INFO_AUTOMASKED != 0
    }
}

/// `VFIO_IRQ_SET_*`.
pub const SET_DATA_NONE: u32 = 1;
/// `VFIO_IRQ_SET_DATA_BOOL`.
pub const SET_DATA_BOOL: u32 = 2;
/// `VFIO_IRQ_SET_DATA_EVENTFD`.
pub const SET_DATA_EVENTFD: u32 = 4;
/// `VFIO_IRQ_SET_ACTION_MASK`.
pub const SET_ACTION_MASK: u32 = 8;
/// `VFIO_IRQ_SET_ACTION_UNMASK`.
pub const SET_ACTION_UNMASK: u32 = 16;
/// `VFIO_IRQ_SET_ACTION_TRIGGER`.
pub const SET_ACTION_TRIGGER: u32 = 32;
/// `sizeof(struct vfio_irq_set)` without data.
pub const IRQ_SET_LEN: usize = 20;

/// One `VFIO_DEVICE_SET_IRQS` request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IrqSet {
    /// Attach eventfds to vectors `start..`; `None` detaches that vector (fd -1).
    Eventfds {
        /// First vector.
        start: u32,
        /// One eventfd per vector from `start`.
        fds: Vec<Option<RawFd>>,
    },
    /// Tear down every vector of the index.
    Disable,
    /// Mask / unmask `count` vectors from `start`.
    Mask {
        /// First vector.
        start: u32,
        /// Number of vectors.
        count: u32,
    },
    /// Unmask `count` vectors from `start`.
    Unmask {
        /// First vector.
        start: u32,
        /// Number of vectors.
        count: u32,
    },
    /// Fire `count` vectors from `start` from software (loopback test of the eventfd path).
    Trigger {
        /// First vector.
        start: u32,
        /// Number of vectors.
        count: u32,
    },
    /// Unmask vector `vector` whenever `fd` is signalled (INTx: KVM's resample eventfd
    /// unmasks the line after the guest's EOI without a VMM round trip).
    UnmaskEventfd {
        /// The vector to unmask.
        vector: u32,
        /// The eventfd whose signal unmasks it.
        fd: RawFd,
    },
}

impl IrqSet {
    /// The `struct vfio_irq_set` bytes for `index`.
    pub fn to_bytes(&self, index: IrqIndex) -> Vec<u8> {
        let (flags, start, count, data): (u32, u32, u32, Vec<u8>) = match self {
            IrqSet::Eventfds { start, fds } => (
                SET_DATA_EVENTFD | SET_ACTION_TRIGGER,
                *start,
                fds.len() as u32,
                fds.iter()
                    .flat_map(|f| f.unwrap_or(-1).to_ne_bytes())
                    .collect(),
            ),
            IrqSet::Disable => (SET_DATA_NONE | SET_ACTION_TRIGGER, 0, 0, Vec::new()),
            IrqSet::Mask { start, count } => {
                (SET_DATA_NONE | SET_ACTION_MASK, *start, *count, Vec::new())
            }
            IrqSet::Unmask { start, count } => (
                SET_DATA_NONE | SET_ACTION_UNMASK,
                *start,
                *count,
                Vec::new(),
            ),
            IrqSet::Trigger { start, count } => (
                SET_DATA_NONE | SET_ACTION_TRIGGER,
                *start,
                *count,
                Vec::new(),
            ),
            IrqSet::UnmaskEventfd { vector, fd } => (
                SET_DATA_EVENTFD | SET_ACTION_UNMASK,
                *vector,
                1,
                fd.to_ne_bytes().to_vec(),
            ),
        };
        let argsz = (IRQ_SET_LEN + data.len()) as u32;
        let mut b = Vec::with_capacity(argsz as usize);
        for v in [argsz, flags, index.raw(), start, count] {
            b.extend_from_slice(&v.to_ne_bytes());
        }
        b.extend_from_slice(&data);
        b
    }

    /// Checks the request against what the index offers, before the ioctl.
    pub fn check(&self, info: &IrqInfo) -> Result<(), String> {
        let (start, count) = match self {
            IrqSet::Eventfds { start, fds } => (*start, fds.len() as u32),
            IrqSet::Disable => return Ok(()),
            IrqSet::Mask { start, count }
            | IrqSet::Unmask { start, count }
            | IrqSet::Trigger { start, count } => (*start, *count),
            IrqSet::UnmaskEventfd { vector, .. } => (*vector, 1),
        };
        if info.count == 0 {
            return Err(format!("the device offers no {} interrupts", info.index));
        }
        if count == 0 || start.checked_add(count).is_none_or(|e| e > info.count) {
            return Err(format!(
                "vectors {start}..{} out of the {} {} vectors offered",
                start.saturating_add(count),
                info.count,
                info.index
            ));
        }
        if matches!(
            self,
            IrqSet::Mask { .. } | IrqSet::Unmask { .. } | IrqSet::UnmaskEventfd { .. }
        ) && !info.maskable()
        {
            return Err(format!(
                "{} is not maskable through VFIO (vfio-pci masks only INTx; mask MSI/MSI-X vectors by detaching their eventfd)",
                info.index
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u32s(b: &[u8]) -> Vec<u32> {
        b.chunks(4)
            .map(|c| u32::from_ne_bytes(c.try_into().unwrap()))
            .collect()
    }

    #[test]
    fn unmask_eventfd_layout_and_check() {
        let b = IrqSet::UnmaskEventfd { vector: 0, fd: 11 }.to_bytes(IrqIndex::Intx);
        assert_eq!(
            u32s(&b),
            vec![24, SET_DATA_EVENTFD | SET_ACTION_UNMASK, 0, 0, 1, 11]
        );
        let intx = IrqInfo {
            index: IrqIndex::Intx,
            flags: INFO_EVENTFD | INFO_MASKABLE | INFO_AUTOMASKED,
            count: 1,
        };
        IrqSet::UnmaskEventfd { vector: 0, fd: 3 }
            .check(&intx)
            .unwrap();
        let msi = IrqInfo {
            index: IrqIndex::Msi,
            flags: INFO_EVENTFD,
            count: 1,
        };
        assert!(IrqSet::UnmaskEventfd { vector: 0, fd: 3 }
            .check(&msi)
            .is_err());
    }

    #[test]
    fn layouts() {
        let b = IrqSet::Eventfds {
            start: 0,
            fds: vec![Some(7), None, Some(9)],
        }
        .to_bytes(IrqIndex::Msix);
        assert_eq!(
            u32s(&b),
            vec![
                32,
                SET_DATA_EVENTFD | SET_ACTION_TRIGGER,
                2,
                0,
                3,
                7,
                u32::MAX,
                9
            ]
        );
        let b = IrqSet::Disable.to_bytes(IrqIndex::Msi);
        assert_eq!(
            u32s(&b),
            vec![20, SET_DATA_NONE | SET_ACTION_TRIGGER, 1, 0, 0]
        );
        let b = IrqSet::Unmask { start: 0, count: 1 }.to_bytes(IrqIndex::Intx);
        assert_eq!(
            u32s(&b),
            vec![20, SET_DATA_NONE | SET_ACTION_UNMASK, 0, 0, 1]
        );
    }

    #[test]
    fn checks_against_info() {
        let msi = IrqInfo {
            index: IrqIndex::Msi,
            flags: INFO_EVENTFD | INFO_NORESIZE,
            count: 1,
        };
        IrqSet::Eventfds {
            start: 0,
            fds: vec![Some(3)],
        }
        .check(&msi)
        .unwrap();
        let e = IrqSet::Eventfds {
            start: 0,
            fds: vec![Some(3), Some(4)],
        }
        .check(&msi)
        .unwrap_err();
        assert!(e.contains("out of the 1 MSI vectors"), "{e}");
        let e = IrqSet::Mask { start: 0, count: 1 }.check(&msi).unwrap_err();
        assert!(e.contains("not maskable"), "{e}");
        let none = IrqInfo {
            index: IrqIndex::Msix,
            flags: 0,
            count: 0,
        };
        assert!(IrqSet::Trigger { start: 0, count: 1 }
            .check(&none)
            .unwrap_err()
            .contains("no MSI-X"));
        let intx = IrqInfo {
            index: IrqIndex::Intx,
            flags: INFO_EVENTFD | INFO_MASKABLE | INFO_AUTOMASKED,
            count: 1,
        };
        IrqSet::Mask { start: 0, count: 1 }.check(&intx).unwrap();
        assert!(IrqSet::Trigger {
            start: u32::MAX,
            count: 2
        }
        .check(&intx)
        .is_err());
    }
}

//! The raw VFIO and iommufd ioctls vfio-ioctls does not expose with their errno (or at all):
//! device/region/IRQ info, SET_IRQS, reset, hot-reset info, IOVA ranges. Buffers are
//! `u64`-aligned byte vectors; layouts are checked by the parsers' unit tests.

use std::io;
use std::os::fd::RawFd;

use super::dma::IovaRange;
use super::irq::{IrqIndex, IrqInfo};
use super::region::{cap_chain, parse_region_info, RegionInfo, RegionParseError, REGION_INFO_LEN};

const VFIO_TYPE: u64 = b';' as u64;
const fn io(nr: u64) -> u64 {
    (VFIO_TYPE << 8) | nr
}
const VFIO_DEVICE_GET_INFO: u64 = io(100 + 7);
const VFIO_DEVICE_GET_REGION_INFO: u64 = io(100 + 8);
const VFIO_DEVICE_GET_IRQ_INFO: u64 = io(100 + 9);
const VFIO_DEVICE_SET_IRQS: u64 = io(100 + 10);
const VFIO_DEVICE_RESET: u64 = io(100 + 11);
const VFIO_DEVICE_GET_PCI_HOT_RESET_INFO: u64 = io(100 + 12);
const VFIO_IOMMU_GET_INFO: u64 = io(100 + 12);
#[cfg(feature = "iommufd")]
const IOMMU_IOAS_IOVA_RANGES: u64 = io(0x84);

/// `VFIO_DEVICE_FLAGS_RESET`.
pub const DEVICE_FLAGS_RESET: u32 = 1;
pub const DEVICE_FLAGS_PCI: u32 = 2;

/// A zeroed, 8-byte aligned buffer of at least `len` bytes.
struct Buf(Vec<u64>);

impl Buf {
    fn new(len: usize) -> Buf {
        Buf(vec![0u64; len.div_ceil(8)])
    }
    fn bytes(&self) -> &[u8] {
        // SAFETY: a u64 slice reinterpreted as bytes: same memory, alignment 1 <= 8.
        unsafe { std::slice::from_raw_parts(self.0.as_ptr().cast(), self.0.len() * 8) }
    }
    fn bytes_mut(&mut self) -> &mut [u8] {
        // SAFETY: as above, with exclusive access through &mut self.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_mut_ptr().cast(), self.0.len() * 8) }
    }
    fn put_u32(&mut self, at: usize, v: u32) {
        self.bytes_mut()[at..at + 4].copy_from_slice(&v.to_ne_bytes());
    }
    fn u32(&self, at: usize) -> u32 {
        let mut b = [0u8; 4];
        b.copy_from_slice(&self.bytes()[at..at + 4]);
        u32::from_ne_bytes(b)
    }
    fn u64(&self, at: usize) -> u64 {
        let mut b = [0u8; 8];
        b.copy_from_slice(&self.bytes()[at..at + 8]);
        u64::from_ne_bytes(b)
    }
}

/// One ioctl with a pointer argument.
///
/// # Safety
/// `arg` must point to a buffer laid out as `req` expects, large enough for what the kernel
/// reads and writes (its `argsz`).
unsafe fn ioctl(fd: RawFd, req: u64, arg: *mut u8) -> io::Result<i32> {
    // SAFETY: the caller guarantees the buffer; the fd is only used by the kernel.
    let r = unsafe { libc::ioctl(fd, req as _, arg) };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// `VFIO_DEVICE_GET_INFO`: (flags, num_regions, num_irqs).
pub fn device_info(fd: RawFd) -> io::Result<(u32, u32, u32)> {
    let mut b = Buf::new(24);
    b.put_u32(0, 24);
    // SAFETY: a 24-byte vfio_device_info with argsz set.
    unsafe { ioctl(fd, VFIO_DEVICE_GET_INFO, b.bytes_mut().as_mut_ptr())? };
    Ok((b.u32(4), b.u32(8), b.u32(12)))
}

/// Errors of [`region_info`]: the ioctl, or a buffer the parser rejects.
#[derive(Debug)]
pub enum InfoError {
    Os(io::Error),
    Parse(RegionParseError),
}

/// `VFIO_DEVICE_GET_REGION_INFO`, twice when the region has capabilities (the kernel
/// reports the size it needs in `argsz`).
pub fn region_info(fd: RawFd, index: u32) -> Result<RegionInfo, InfoError> {
    let mut len = REGION_INFO_LEN;
    for _ in 0..3 {
        let mut b = Buf::new(len);
        b.put_u32(0, len as u32);
        b.put_u32(8, index);
        // SAFETY: a vfio_region_info of `len` bytes with argsz = len.
        unsafe { ioctl(fd, VFIO_DEVICE_GET_REGION_INFO, b.bytes_mut().as_mut_ptr()) }
            .map_err(InfoError::Os)?;
        let need = b.u32(0) as usize;
        if need > len {
            len = need;
            continue;
        }
        return parse_region_info(&b.bytes()[..len]).map_err(InfoError::Parse);
    }
    Err(InfoError::Parse(RegionParseError(
        "argsz kept growing".into(),
    )))
}

/// `VFIO_DEVICE_GET_IRQ_INFO`.
pub fn irq_info(fd: RawFd, index: IrqIndex) -> io::Result<IrqInfo> {
    let mut b = Buf::new(16);
    b.put_u32(0, 16);
    b.put_u32(8, index.raw());
    // SAFETY: a 16-byte vfio_irq_info with argsz set.
    unsafe { ioctl(fd, VFIO_DEVICE_GET_IRQ_INFO, b.bytes_mut().as_mut_ptr())? };
    Ok(IrqInfo {
        index,
        flags: b.u32(4),
        count: b.u32(12),
    })
}

/// `VFIO_DEVICE_SET_IRQS` with a prepared `vfio_irq_set` (see `IrqSet::to_bytes`).
pub fn set_irqs(fd: RawFd, set: &[u8]) -> io::Result<()> {
    let mut b = Buf::new(set.len());
    b.bytes_mut()[..set.len()].copy_from_slice(set);
    // SAFETY: the bytes are a vfio_irq_set whose argsz is set.len().
    unsafe { ioctl(fd, VFIO_DEVICE_SET_IRQS, b.bytes_mut().as_mut_ptr())? };
    Ok(())
}

/// `VFIO_DEVICE_RESET`.
pub fn reset(fd: RawFd) -> io::Result<()> {
    // SAFETY: VFIO_DEVICE_RESET takes no argument.
    unsafe { ioctl(fd, VFIO_DEVICE_RESET, std::ptr::null_mut())? };
    Ok(())
}

/// One device a hot (bus) reset would also reset.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct HotResetDep {
    /// `domain:bus:dev.fn`.
    pub bdf: String,
    /// IOMMU group (legacy) or iommufd device id (cdev, with `devid` true).
    pub id: u32,
    /// `id` is an iommufd device id rather than a group.
    pub devid: bool,
}

/// Parses `vfio_pci_hot_reset_info` (flags, count, then {id u32, segment u16, bus u8,
/// devfn u8} × count).
pub fn parse_hot_reset(b: &[u8]) -> Option<Vec<HotResetDep>> {
    let u32_at = |at: usize| Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?));
    let flags = u32_at(4)?;
    let count = u32_at(8)? as usize;
    let devid = flags & 1 != 0;
    let mut v = Vec::new();
    for i in 0..count {
        let at = 12 + i * 8;
        let id = u32_at(at)?;
        let seg = u16::from_ne_bytes(b.get(at + 4..at + 6)?.try_into().ok()?);
        let bus = *b.get(at + 6)?;
        let devfn = *b.get(at + 7)?;
        v.push(HotResetDep {
            bdf: format!("{seg:04x}:{bus:02x}:{:02x}.{:x}", devfn >> 3, devfn & 7),
            id,
            devid,
        });
    }
    Some(v)
}

/// `VFIO_DEVICE_GET_PCI_HOT_RESET_INFO`: the devices a bus reset would take along.
pub fn hot_reset_info(fd: RawFd) -> io::Result<Vec<HotResetDep>> {
    let mut count = 0usize;
    for _ in 0..3 {
        let len = 12 + count * 8;
        let mut b = Buf::new(len);
        b.put_u32(0, len as u32);
        // SAFETY: a vfio_pci_hot_reset_info with room for `count` devices, argsz = len.
        match unsafe {
            ioctl(
                fd,
                VFIO_DEVICE_GET_PCI_HOT_RESET_INFO,
                b.bytes_mut().as_mut_ptr(),
            )
        } {
            Ok(_) => {
                return parse_hot_reset(&b.bytes()[..len])
                    .ok_or_else(|| io::Error::other("malformed hot-reset info"))
            }
            Err(e) if e.raw_os_error() == Some(libc::ENOSPC) => {
                count = b.u32(8) as usize;
                if count > 4096 {
                    return Err(io::Error::other(format!("implausible count {count}")));
                }
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("hot-reset device count kept changing"))
}

/// `VFIO_IOMMU_GET_INFO` on a type1 container: (IOVA page sizes, IOVA ranges).
pub fn type1_info(container: RawFd) -> io::Result<(u64, Vec<IovaRange>)> {
    let mut len = 24usize;
    for _ in 0..3 {
        let mut b = Buf::new(len);
        b.put_u32(0, len as u32);
        // SAFETY: a vfio_iommu_type1_info of `len` bytes with argsz = len.
        unsafe { ioctl(container, VFIO_IOMMU_GET_INFO, b.bytes_mut().as_mut_ptr())? };
        let need = b.u32(0) as usize;
        if need > len {
            len = need;
            continue;
        }
        let flags = b.u32(4);
        let pgsizes = if flags & 1 != 0 { b.u64(8) } else { 0 };
        let mut ranges = Vec::new();
        if flags & 2 != 0 {
            let bytes = &b.bytes()[..len];
            let chain = cap_chain(bytes, b.u32(16))
                .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()))?;
            for (id, at) in chain {
                if id == 1 {
                    ranges =
                        super::dma::parse_type1_iova_ranges(&bytes[at..]).ok_or_else(|| {
                            io::Error::new(
                                io::ErrorKind::InvalidData,
                                "malformed IOVA range capability",
                            )
                        })?;
                }
            }
        }
        return Ok((pgsizes, ranges));
    }
    Err(io::Error::other("argsz kept growing"))
}

/// `IOMMU_IOAS_IOVA_RANGES`: (alignment, allowed ranges) of an IOAS.
#[cfg(feature = "iommufd")]
pub fn ioas_iova_ranges(iommufd: RawFd, ioas_id: u32) -> io::Result<(u64, Vec<IovaRange>)> {
    let mut n = 8usize;
    for _ in 0..4 {
        let mut ranges = vec![0u64; n * 2];
        let mut b = Buf::new(32);
        b.put_u32(0, 32);
        b.put_u32(4, ioas_id);
        b.put_u32(8, n as u32);
        b.bytes_mut()[16..24].copy_from_slice(&(ranges.as_mut_ptr() as u64).to_ne_bytes());
        // SAFETY: iommu_ioas_iova_ranges pointing at room for `n` {start,last} pairs.
        match unsafe { ioctl(iommufd, IOMMU_IOAS_IOVA_RANGES, b.bytes_mut().as_mut_ptr()) } {
            Ok(_) => {
                let got = (b.u32(8) as usize).min(n);
                let v = (0..got)
                    .map(|i| IovaRange {
                        start: ranges[2 * i],
                        last: ranges[2 * i + 1],
                    })
                    .collect();
                return Ok((b.u64(24), v));
            }
            Err(e) if e.raw_os_error() == Some(libc::EMSGSIZE) => {
                n = (b.u32(8) as usize).clamp(n + 1, 4096);
            }
            Err(e) => return Err(e),
        }
    }
    Err(io::Error::other("IOVA range count kept changing"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ioctl_numbers_match_the_uapi() {
        // From linux/vfio.h and linux/iommufd.h (_IO(';', n)).
        assert_eq!(VFIO_DEVICE_GET_INFO, 0x3b6b);
        assert_eq!(VFIO_DEVICE_GET_REGION_INFO, 0x3b6c);
        assert_eq!(VFIO_DEVICE_SET_IRQS, 0x3b6e);
        assert_eq!(VFIO_DEVICE_RESET, 0x3b6f);
        assert_eq!(VFIO_DEVICE_GET_PCI_HOT_RESET_INFO, 0x3b70);
        #[cfg(feature = "iommufd")]
        assert_eq!(IOMMU_IOAS_IOVA_RANGES, 0x3b84);
        assert_eq!(VFIO_DEVICE_GET_IRQ_INFO, 0x3b6d);
        assert_eq!(VFIO_IOMMU_GET_INFO, 0x3b70);
    }

    #[test]
    fn hot_reset_parsing() {
        let mut b = vec![0u8; 12];
        b[4..8].copy_from_slice(&0u32.to_ne_bytes());
        b[8..12].copy_from_slice(&2u32.to_ne_bytes());
        for (g, bus, devfn) in [(3u32, 0u8, 0x18u8), (4, 0x41, 0x01)] {
            b.extend_from_slice(&g.to_ne_bytes());
            b.extend_from_slice(&0u16.to_ne_bytes());
            b.push(bus);
            b.push(devfn);
        }
        let v = parse_hot_reset(&b).unwrap();
        assert_eq!(v[0].bdf, "0000:00:03.0");
        assert_eq!(v[1].bdf, "0000:41:00.1");
        assert_eq!(v[1].id, 4);
        assert!(parse_hot_reset(&b[..20]).is_none());
    }

    #[test]
    fn bad_fd_reports_errno() {
        let e = device_info(-1).unwrap_err();
        assert_eq!(e.raw_os_error(), Some(libc::EBADF));
    }
}

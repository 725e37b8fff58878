//! Shared by the lab tests (`tests/lab_*.rs`): finding the lab's device, opening it through
//! vfio-ioctls (legacy container or iommufd), and driving QEMU's `edu` device.
//!
//! The edu register map and its quirks are in docs/hardware-testing.md. In short: BAR0 is
//! 1 MiB of MMIO, 0x00 reads 0x010000ed, DMA registers at 0x80..0x98 with a 4 KiB device
//! buffer at 0x40000, completion interrupt 0x100, DMA mask 28 bits.
#![allow(dead_code, unused_imports)] // each test binary uses a different part

use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_ioctls::{VfioContainer, VfioDevice, VfioIommufd, VfioOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};

pub mod checks;

/// `VFIO_PCI_BAR0_REGION_INDEX`.
pub const BAR0: u32 = 0;
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
pub const CONFIG: u32 = 7;

pub use vm_accel_tests::edu::{
    Bar0, Direction, BUF as EDU_BUF, ID as EDU_ID, REG_DMA_CMD, REG_DMA_COUNT, REG_DMA_DST,
    REG_DMA_SRC, REG_ID, REG_LIVENESS,
};
pub use vm_accel_tests::lab::{edu_bdfs as lab_edu_bdfs, report, wait_eventfd};

/// The device the lab bound to vfio-pci, or `None` after reporting the skip.
pub fn lab_device(test: &str) -> Option<(String, PathBuf)> {
    let _ = env_logger::builder().is_test(true).try_init();
    let Ok(bdf) = std::env::var("VM_ACCEL_TEST_BDF") else {
        vm_accel_tests::hw::skip(
            test,
            "VM_ACCEL_TEST_BDF is not set (runs inside `cargo xtask lab`)",
        );
        return None;
    };
    if !std::path::Path::new("/dev/vfio").exists() {
        vm_accel_tests::hw::skip(test, "no /dev/vfio (no vfio-pci device on this host)");
        return None;
    }
    let sysfs = PathBuf::from(format!("/sys/bus/pci/devices/{bdf}"));
    Some((bdf, sysfs))
}

/// How the device was opened.
pub enum Backend {
    Container(Arc<VfioContainer>),
    Iommufd(Arc<VfioIommufd>),
}

impl Backend {
    pub fn ops(&self) -> Arc<dyn VfioOps> {
        match self {
            Backend::Container(c) => c.clone(),
            Backend::Iommufd(i) => i.clone(),
        }
    }
}

/// An edu device opened through VFIO.
pub struct Edu {
    pub device: VfioDevice,
    pub backend: Backend,
}

impl Edu {
    /// Legacy path: /dev/vfio/vfio + /dev/vfio/<group>.
    pub fn open_container(sysfs: &std::path::Path) -> Edu {
        let container = Arc::new(VfioContainer::new(None).expect("open /dev/vfio/vfio"));
        let device = VfioDevice::new(sysfs, container.clone(), false)
            .expect("open the VFIO device through its group");
        Edu {
            device,
            backend: Backend::Container(container),
        }
    }

    /// iommufd path: /dev/iommu + /dev/vfio/devices/vfioN, attached to a fresh IOAS.
    pub fn open_iommufd(sysfs: &std::path::Path) -> Edu {
        let iommufd = Arc::new(iommufd_ioctls::IommuFd::new().expect("open /dev/iommu"));
        let ioas = Arc::new(VfioIommufd::new(iommufd, None, None).expect("allocate an IOAS"));
        let device = VfioDevice::new(sysfs, ioas.clone(), true)
            .expect("open the VFIO cdev and attach it to the IOAS");
        Edu {
            device,
            backend: Backend::Iommufd(ioas),
        }
    }

    /// Reads `buf.len()` bytes of region `index` at `off` with pread on the device fd, the
    /// way vfio-ioctls' `region_read` does, but failing loudly: `region_read` only logs.
    pub fn pread(&self, index: u32, buf: &mut [u8], off: u64) {
        let pos = self.device.get_region_offset(index) + off;
        // SAFETY: `buf` is valid for writes of `buf.len()` bytes during the call.
        let n = unsafe {
            libc::pread(
                self.device.as_raw_fd(),
                buf.as_mut_ptr().cast(),
                buf.len(),
                pos as libc::off_t,
            )
        };
        assert_eq!(
            n,
            buf.len() as isize,
            "pread region {index} at {off:#x}: {}",
            std::io::Error::last_os_error()
        );
    }

    pub fn pwrite(&self, index: u32, buf: &[u8], off: u64) {
        let pos = self.device.get_region_offset(index) + off;
        // SAFETY: `buf` is valid for reads of `buf.len()` bytes during the call.
        let n = unsafe {
            libc::pwrite(
                self.device.as_raw_fd(),
                buf.as_ptr().cast(),
                buf.len(),
                pos as libc::off_t,
            )
        };
        assert_eq!(
            n,
            buf.len() as isize,
            "pwrite region {index} at {off:#x}: {}",
            std::io::Error::last_os_error()
        );
    }

    /// Enables memory decoding and bus mastering (vfio-pci leaves bus master off).
    pub fn enable_bus_master(&self) {
        let mut cmd = [0u8; 2];
        self.pread(CONFIG, &mut cmd, 4);
        let v = u16::from_le_bytes(cmd) | 0x2 | 0x4;
        self.pwrite(CONFIG, &v.to_le_bytes(), 4);
        self.pread(CONFIG, &mut cmd, 4);
        assert_eq!(
            u16::from_le_bytes(cmd) & 0x6,
            0x6,
            "PCI command register did not take memory+bus master"
        );
    }

    /// DMA-maps every region of `mem` at IOVA = guest physical address.
    pub fn map(&self, mem: &GuestMemoryMmap) {
        let ops = self.backend.ops();
        for r in mem.iter() {
            let host = r
                .get_host_address(MemoryRegionAddress(0))
                .expect("host address of a region");
            // SAFETY: `mem` outlives the mapping: every test unmaps (or drops the device
            // and its container/IOAS, which removes all mappings) before dropping `mem`,
            // and the tests touch the memory only through vm-memory's volatile accessors.
            unsafe { ops.vfio_dma_map(r.start_addr().0, r.len() as usize, host) }
                .expect("VFIO DMA map");
        }
    }

    pub fn unmap(&self, mem: &GuestMemoryMmap) {
        let ops = self.backend.ops();
        for r in mem.iter() {
            ops.vfio_dma_unmap(r.start_addr().0, r.len() as usize)
                .expect("VFIO DMA unmap");
        }
    }
}

/// BAR0 through region reads and writes on the device fd.
impl Bar0 for Edu {
    fn read32(&self, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        self.pread(BAR0, &mut b, reg);
        u32::from_le_bytes(b)
    }

    fn write32(&self, reg: u64, v: u32) {
        self.pwrite(BAR0, &v.to_le_bytes(), reg);
    }

    fn read64(&self, reg: u64) -> u64 {
        let mut b = [0u8; 8];
        self.pread(BAR0, &mut b, reg);
        u64::from_le_bytes(b)
    }

    fn write64(&self, reg: u64, v: u64) {
        self.pwrite(BAR0, &v.to_le_bytes(), reg);
    }
}

/// Kernel log lines (from /dev/kmsg) containing `needle`, waiting up to `limit` for one.
pub fn kmsg_lines(needle: &str, limit: Duration) -> Vec<String> {
    let start = Instant::now();
    loop {
        let found: Vec<String> = read_kmsg()
            .into_iter()
            .filter(|l| l.contains(needle))
            .collect();
        if !found.is_empty() || start.elapsed() >= limit {
            return found;
        }
        std::thread::sleep(Duration::from_millis(100));
    }
}

fn read_kmsg() -> Vec<String> {
    use std::io::Read;
    use std::os::unix::fs::OpenOptionsExt;
    let Ok(mut f) = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK)
        .open("/dev/kmsg")
    else {
        return Vec::new();
    };
    let mut lines = Vec::new();
    let mut buf = vec![0u8; 8192];
    // Each read returns one record; EAGAIN at the end.
    while let Ok(n) = f.read(&mut buf) {
        if n == 0 {
            break;
        }
        lines.push(String::from_utf8_lossy(&buf[..n]).trim_end().to_string());
    }
    lines
}

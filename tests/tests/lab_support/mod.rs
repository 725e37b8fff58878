//! Shared by the lab tests (`tests/lab_*.rs`): finding the lab's device, opening it through
//! vfio-ioctls (legacy container or iommufd), and driving QEMU's `edu` device.
//!
//! The edu register map and its quirks are in docs/hardware-testing.md. In short: BAR0 is
//! 1 MiB of MMIO, 0x00 reads 0x010000ed, DMA registers at 0x80..0x98 with a 4 KiB device
//! buffer at 0x40000, completion interrupt 0x100, DMA mask 28 bits.
#![allow(dead_code)] // each test binary uses a different part

use std::io::Write;
use std::os::fd::AsRawFd;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, Instant};

use vfio_ioctls::{VfioContainer, VfioDevice, VfioIommufd, VfioOps};
use vm_memory::{GuestMemoryBackend, GuestMemoryMmap, GuestMemoryRegion, MemoryRegionAddress};
use vmm_sys_util::eventfd::EventFd;

pub mod checks;

/// `VFIO_PCI_BAR0_REGION_INDEX`.
pub const BAR0: u32 = 0;
/// `VFIO_PCI_CONFIG_REGION_INDEX`.
pub const CONFIG: u32 = 7;

pub const EDU_ID: u32 = 0x010000ed;
pub const REG_ID: u64 = 0x00;
pub const REG_LIVENESS: u64 = 0x04;
pub const REG_IRQ_STATUS: u64 = 0x24;
pub const REG_IRQ_ACK: u64 = 0x64;
pub const REG_DMA_SRC: u64 = 0x80;
pub const REG_DMA_DST: u64 = 0x88;
pub const REG_DMA_COUNT: u64 = 0x90;
pub const REG_DMA_CMD: u64 = 0x98;
const DMA_START: u64 = 1;
/// Direction bit: set = device buffer to RAM.
const DMA_TO_RAM: u64 = 2;
const DMA_IRQ: u64 = 4;
/// The edu device's internal DMA buffer, as seen on its side of a transfer.
pub const EDU_BUF: u64 = 0x40000;
/// QEMU 7.2 aborts the whole VM on a transfer that reaches the end of the 4 KiB buffer.
pub const EDU_MAX_DMA: u64 = 4095;
/// edu's DMA mask: IOVAs must be below 256 MiB.
pub const EDU_DMA_LIMIT: u64 = 1 << 28;

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

/// Every edu BDF the lab bound (VM_ACCEL_LAB_EDU_BDFS, comma separated).
pub fn lab_edu_bdfs() -> Vec<String> {
    std::env::var("VM_ACCEL_LAB_EDU_BDFS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
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

    pub fn read32(&self, reg: u64) -> u32 {
        let mut b = [0u8; 4];
        self.pread(BAR0, &mut b, reg);
        u32::from_le_bytes(b)
    }

    pub fn write32(&self, reg: u64, v: u32) {
        self.pwrite(BAR0, &v.to_le_bytes(), reg);
    }

    pub fn read64(&self, reg: u64) -> u64 {
        let mut b = [0u8; 8];
        self.pread(BAR0, &mut b, reg);
        u64::from_le_bytes(b)
    }

    pub fn write64(&self, reg: u64, v: u64) {
        self.pwrite(BAR0, &v.to_le_bytes(), reg);
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

    /// Starts one DMA and waits for it to finish (polling the start bit), validating the
    /// request first: an out-of-range edu DMA aborts QEMU.
    pub fn dma(&self, src: u64, dst: u64, count: u64, to_ram: bool, irq: bool) {
        let (dev, ram) = if to_ram { (src, dst) } else { (dst, src) };
        assert!(
            count > 0 && count <= EDU_MAX_DMA,
            "edu DMA of {count} bytes"
        );
        assert!(
            dev >= EDU_BUF && dev + count < EDU_BUF + 4096,
            "edu buffer offset {dev:#x}"
        );
        assert!(
            ram + count <= EDU_DMA_LIMIT,
            "IOVA {ram:#x} beyond edu's 28-bit DMA mask"
        );
        self.write64(REG_DMA_SRC, src);
        self.write64(REG_DMA_DST, dst);
        self.write64(REG_DMA_COUNT, count);
        let cmd = DMA_START | if to_ram { DMA_TO_RAM } else { 0 } | if irq { DMA_IRQ } else { 0 };
        self.write64(REG_DMA_CMD, cmd);
        let start = Instant::now();
        while self.read64(REG_DMA_CMD) & DMA_START != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "edu DMA did not complete in 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Acknowledges every pending edu interrupt.
    pub fn ack_irq(&self) {
        let status = self.read32(REG_IRQ_STATUS);
        self.write32(REG_IRQ_ACK, status);
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

/// Waits until `efd` is signalled (non-blocking reads) and returns its count.
pub fn wait_eventfd(efd: &EventFd, limit: Duration) -> Option<u64> {
    let mut pfd = libc::pollfd {
        fd: efd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n == 1 {
        efd.read().ok()
    } else {
        None
    }
}

/// Prints a result line that libtest does not capture (bench numbers, evidence).
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
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

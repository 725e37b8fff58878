//! Shared by vm-vfio's real-VFIO tests (`lab_*.rs`): which device to test, QEMU `edu`
//! helpers over vm-vfio's own API, and the test bodies both VFIO paths run.
//!
//! The tests take any vfio-pci device from `VM_ACCEL_TEST_BDF`; when it is QEMU's edu
//! (1234:11e8) they also run its DMA engine and completion MSI. Outside the lab (no
//! `/dev/vfio`, no BDF) they report a skip through `vm_accel_tests::hw::skip`.
#![allow(dead_code, unused_imports)] // each test binary uses a different part
#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::{Duration, Instant};

use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vm_pci::Bdf;
use vm_vfio::access::{
    BackendChoice, BackendKind, BarMapping, Device, Error, Iova, IrqIndex, MapRefused, RegionIndex,
};
use vm_vfio::bind::Paths;
use vmm_sys_util::eventfd::EventFd;

pub use vm_accel_tests::edu::{
    Bar0, Direction, DEVICE as EDU_DEVICE, ID as EDU_ID, REG_ID, REG_LIVENESS, VENDOR as EDU_VENDOR,
};
pub use vm_accel_tests::lab::{report, wait_eventfd};

/// The device under test, or `None` after reporting the skip.
pub fn device_under_test(test: &str) -> Option<Bdf> {
    let _ = env_logger::builder().is_test(true).try_init();
    let Ok(bdf) = std::env::var("VM_ACCEL_TEST_BDF") else {
        vm_accel_tests::hw::skip(
            test,
            "VM_ACCEL_TEST_BDF is not set (set it to a vfio-pci device, or run `cargo xtask lab`)",
        );
        return None;
    };
    if !std::path::Path::new("/dev/vfio").exists() {
        vm_accel_tests::hw::skip(test, "no /dev/vfio on this host");
        return None;
    }
    Some(bdf.parse().expect("VM_ACCEL_TEST_BDF is a PCI address"))
}

/// Every edu the lab bound.
pub fn lab_edu_bdfs() -> Vec<Bdf> {
    vm_accel_tests::lab::edu_bdfs()
        .iter()
        .map(|s| s.parse().expect("edu BDF"))
        .collect()
}

pub fn sys() -> Paths {
    Paths::new("/sys")
}

/// Runs the vm-accel binary `bin` with `args`: exit code, stdout as JSON (`Null` when it is
/// not JSON), stderr.
pub fn run(bin: &std::path::Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let out = std::process::Command::new(bin)
        .args(args)
        .output()
        .expect("run vm-accel");
    let stderr = String::from_utf8_lossy(&out.stderr).into_owned();
    let json = serde_json::from_slice(&out.stdout).unwrap_or(serde_json::Value::Null);
    (out.status.code().unwrap_or(-1), json, stderr)
}

/// `echo value > path`, or the test fails naming both.
pub fn write(path: &str, value: &str) {
    std::fs::write(path, value).unwrap_or_else(|e| panic!("echo {value:?} > {path}: {e}"));
}

/// Puts the device back on vfio-pci with override (the lab's state) when the test ends.
pub struct BackToVfio(pub Bdf);

impl Drop for BackToVfio {
    fn drop(&mut self) {
        let b = self.0;
        let st = sys().driver_state(b).unwrap_or_default();
        if st.driver.as_deref() == Some("vfio-pci") {
            return;
        }
        if let Some(d) = st.driver {
            let _ = std::fs::write(format!("/sys/bus/pci/drivers/{d}/unbind"), b.to_string());
        }
        let _ = std::fs::write(
            format!("/sys/bus/pci/devices/{b}/driver_override"),
            "vfio-pci",
        );
        let _ = std::fs::write("/sys/bus/pci/drivers_probe", b.to_string());
    }
}

pub fn open(bdf: Bdf, choice: BackendChoice) -> Device {
    let start = Instant::now();
    let d = Device::open_new(&sys(), bdf, choice).unwrap_or_else(|e| panic!("open {bdf}: {e}"));
    report(&format!(
        "{bdf}: opened through the {} in {:?}",
        d.backend(),
        start.elapsed()
    ));
    d
}

pub fn is_edu(d: &Device) -> bool {
    d.config_u16(0).ok() == Some(EDU_VENDOR) && d.config_u16(2).ok() == Some(EDU_DEVICE)
}

/// The edu's BAR0 through vm-vfio's mmap.
pub struct EduBar {
    pub maps: Vec<BarMapping>,
}

impl EduBar {
    pub fn new(d: &Device) -> EduBar {
        EduBar {
            maps: d.mmap_bar(0).expect("mmap edu BAR0"),
        }
    }
    fn part(&self, off: u64, len: u64) -> &BarMapping {
        self.maps
            .iter()
            .find(|m| m.covers(off, len))
            .unwrap_or_else(|| panic!("BAR0+{off:#x} not mmap'ed"))
    }
}

/// BAR0 through vm-vfio's mmap.
impl Bar0 for EduBar {
    fn read32(&self, off: u64) -> u32 {
        self.part(off, 4).read_u32(off).expect("aligned")
    }
    fn write32(&self, off: u64, v: u32) {
        self.part(off, 4).write_u32(off, v).expect("aligned")
    }
    fn read64(&self, off: u64) -> u64 {
        self.part(off, 8).read_u64(off).expect("aligned")
    }
    fn write64(&self, off: u64, v: u64) {
        self.part(off, 8).write_u64(off, v).expect("aligned")
    }
}

// ---------------------------------------------------------------------------------------
// Test bodies, run by lab_vfio_legacy.rs and lab_vfio_iommufd.rs with their backend.
// ---------------------------------------------------------------------------------------

pub fn opens_with_the_requested_backend(test: &str, kind: BackendKind) {
    let Some(bdf) = device_under_test(test) else {
        return;
    };
    let d = open(bdf, BackendChoice::Force(kind));
    assert_eq!(d.backend(), kind);
    let info = d.info();
    report(&format!(
        "{bdf}: flags {:#x}, {} regions, {} irq indexes, reset {}",
        info.flags, info.num_regions, info.num_irqs, info.reset
    ));
    for r in &info.regions {
        report(&format!(
            "  {:<8} size {:#10x} flags {:#x} sparse {:?} msix_mappable {}",
            r.index.to_string(),
            r.size,
            r.flags,
            r.sparse,
            r.msix_mappable
        ));
    }
    for i in &info.irqs {
        report(&format!(
            "  {:<6} count {} flags {:#x}",
            i.index.to_string(),
            i.count,
            i.flags
        ));
    }
    assert!(info.num_regions >= 9, "vfio-pci has at least 9 regions");
    let cfg = d.region(RegionIndex::Config).expect("config region");
    assert!(cfg.size >= 256 && cfg.readable() && cfg.writable());
    // The config space read through VFIO agrees with sysfs.
    let vendor = std::fs::read_to_string(format!("/sys/bus/pci/devices/{bdf}/vendor")).unwrap();
    let vendor = u16::from_str_radix(vendor.trim().trim_start_matches("0x"), 16).unwrap();
    assert_eq!(d.config_u16(0).unwrap(), vendor);
    assert!(d.iommu_group().is_some());
}

pub fn config_and_region_io_check_their_results(test: &str, kind: BackendKind) {
    let Some(bdf) = device_under_test(test) else {
        return;
    };
    let d = open(bdf, BackendChoice::Force(kind));
    let cmd = d.config_u16(4).unwrap();
    d.set_config_u16(4, cmd).unwrap();
    assert_eq!(d.config_u16(4).unwrap(), cmd);
    let size = d.region(RegionIndex::Config).unwrap().size;
    let mut b = [0u8; 4];
    let e = d.read_config(size - 2, &mut b).unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
    assert!(
        e.to_string().contains(&bdf.to_string()),
        "names the device: {e}"
    );
    assert!(d.read_region(RegionIndex::Other(99), 0, &mut b).is_err());
    // The whole config space parses, and vm-pci finds the capabilities vfio-pci shows.
    let caps = d.config_space().unwrap().capabilities();
    report(&format!(
        "{bdf}: capabilities {:?}",
        caps.standard.iter().map(|c| c.name()).collect::<Vec<_>>()
    ));
}

pub fn bar_mmap_agrees_with_region_reads(test: &str, kind: BackendKind) {
    let Some(bdf) = device_under_test(test) else {
        return;
    };
    let d = open(bdf, BackendChoice::Force(kind));
    let Some(bar) = d
        .info()
        .regions
        .iter()
        .find(|r| matches!(r.index, RegionIndex::Bar(_)) && r.mmappable() && r.size >= 4)
    else {
        report(&format!("{bdf}: no mmap'able BAR; nothing to compare"));
        return;
    };
    let RegionIndex::Bar(n) = bar.index else {
        unreachable!()
    };
    let maps = d.mmap_bar(n).unwrap();
    let holes = d.msix_holes(n).unwrap();
    report(&format!(
        "{bdf}: BAR{n} mmap'ed in {} part(s) around MSI-X holes {holes:?}",
        maps.len()
    ));
    let first = maps.first().expect("at least one part");
    let off = first.offset;
    let mut b = [0u8; 4];
    d.read_region(RegionIndex::Bar(n), off, &mut b).unwrap();
    assert_eq!(
        first.read_u32(off).unwrap(),
        u32::from_le_bytes(b),
        "BAR{n}+{off:#x}"
    );
    if is_edu(&d) {
        assert_eq!(u32::from_le_bytes(b), EDU_ID);
        // Liveness register: reads back the complement of what was written.
        first.write_u32(REG_LIVENESS, 0x1234_5678).unwrap();
        assert_eq!(first.read_u32(REG_LIVENESS).unwrap(), !0x1234_5678u32);
        let _ = REG_ID;
    }
}

pub fn iova_space_refuses_reserved_and_out_of_range_maps(test: &str, kind: BackendKind) {
    let Some(bdf) = device_under_test(test) else {
        return;
    };
    let d = open(bdf, BackendChoice::Force(kind));
    let space = d.iova_space().unwrap();
    report(&format!(
        "{bdf}: IOVA ranges {:?}, alignment {:#x}, reserved {:?}",
        space.ranges, space.alignment, space.reserved
    ));
    assert!(!space.ranges.is_empty(), "the kernel reports usable ranges");
    #[cfg(target_arch = "x86_64")]
    assert!(
        space.reserved.iter().any(|r| r.range.start == 0xfee0_0000),
        "x86 MSI window reserved"
    );
    let mut buf = vec![0u8; 4096 * 2];
    let host = buf.as_mut_ptr();
    // SAFETY: refused before any map is made; `buf` is not touched meanwhile.
    let e = unsafe { d.map_dma(Iova(0xfee0_0000), 4096, host) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::MapRefused {
                source: MapRefused::Reserved { .. } | MapRefused::OutsideRanges { .. },
                ..
            }
        ),
        "{e}"
    );
    let last = space.ranges.iter().map(|r| r.last).max().unwrap();
    if last < u64::MAX - 8192 {
        // SAFETY: as above.
        let e = unsafe { d.map_dma(Iova((last + 1) & !0xfff), 4096, host) }.unwrap_err();
        assert!(
            matches!(
                e,
                Error::MapRefused {
                    source: MapRefused::OutsideRanges { .. },
                    ..
                }
            ),
            "{e}"
        );
    }
    drop(buf);
}

/// Guest RAM in several regions, all below edu's 256 MiB DMA limit.
pub fn guest_memory() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[
        (GuestAddress(0), 1 << 20),
        (GuestAddress(16 << 20), 2 << 20),
        (GuestAddress(64 << 20), 1 << 20),
    ])
    .unwrap()
}

pub fn guest_memory_maps_once_and_unmaps_exactly(test: &str, kind: BackendKind) {
    let Some(bdf) = device_under_test(test) else {
        return;
    };
    let d = open(bdf, BackendChoice::Force(kind));
    let mem = guest_memory();
    let start = Instant::now();
    // SAFETY: the memory is only touched through vm-memory's volatile accessors.
    let m = unsafe { d.map_guest_memory(&mem) }.unwrap();
    report(&format!(
        "{bdf}: mapped {} regions in {:?}",
        m.maps().len(),
        start.elapsed()
    ));
    assert_eq!(m.maps().len(), 3);
    assert_eq!(m.maps()[1], (Iova(16 << 20), 2 << 20));
    assert_eq!(d.context().live_mappings().len(), 3);
    // The same IOVAs again: refused before the kernel is asked (it would say EEXIST).
    // SAFETY: as above.
    let e = unsafe { d.map_guest_memory(&mem) }.unwrap_err();
    report(&format!("second map: {e}"));
    assert!(
        matches!(
            e,
            Error::MapRefused {
                source: MapRefused::AlreadyMapped { .. },
                ..
            }
        ),
        "{e}"
    );
    // A kernel refusal carries its errno: a host address with nothing mapped behind it.
    // SAFETY: the kernel rejects the range while pinning it; nothing is dereferenced here.
    let e = unsafe { d.map_dma(Iova(200 << 20), 4096, 0x1000 as *mut u8) }.unwrap_err();
    report(&format!(
        "map of an unmapped host page: {e} (errno {:?})",
        e.errno()
    ));
    assert_eq!(e.errno(), Some(libc::EFAULT), "{e}");
    // Dropping unmaps exactly: the same map succeeds again.
    drop(m);
    assert!(d.context().live_mappings().is_empty());
    // SAFETY: as above.
    let m = unsafe { d.map_guest_memory(&mem) }.unwrap();
    m.unmap().unwrap();
}

pub fn interrupts_reach_their_eventfds(test: &str, kind: BackendKind) {
    let Some(bdf) = device_under_test(test) else {
        return;
    };
    let d = open(bdf, BackendChoice::Force(kind));
    let mut tried = 0;
    for index in [IrqIndex::Intx, IrqIndex::Msi, IrqIndex::Msix] {
        let Ok(info) = d.irq(index).copied() else {
            continue;
        };
        if info.count == 0 {
            continue;
        }
        tried += 1;
        let fds: Vec<EventFd> = (0..info.count.min(4))
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).unwrap())
            .collect();
        let refs: Vec<&EventFd> = fds.iter().collect();
        d.enable_irqs(index, &refs)
            .unwrap_or_else(|e| panic!("{index}: {e}"));
        for (v, fd) in fds.iter().enumerate() {
            d.trigger(index, v as u32).unwrap();
            assert_eq!(
                wait_eventfd(fd, Duration::from_secs(2)),
                Some(1),
                "{index} vector {v}"
            );
        }
        if index == IrqIndex::Intx {
            d.mask(index, 0).unwrap();
            d.unmask(index, 0).unwrap();
        } else {
            let e = d.mask(index, 0).unwrap_err();
            assert!(e.to_string().contains("not maskable"), "{e}");
            // Detach vector 0: a trigger no longer reaches its eventfd.
            d.detach_vector(index, 0).unwrap();
            let _ = d.trigger(index, 0);
            assert_eq!(
                wait_eventfd(&fds[0], Duration::from_millis(200)),
                None,
                "{index} vector 0 detached"
            );
        }
        d.disable_irqs(index).unwrap();
        report(&format!(
            "{bdf}: {index}: {} vector(s) delivered to eventfds",
            fds.len()
        ));
    }
    assert!(tried > 0, "the device offers no INTx, MSI or MSI-X");
    let e = d.trigger(IrqIndex::Msi, 1000).unwrap_err();
    assert!(matches!(e, Error::Invalid { .. }), "{e}");
}

pub fn reset_and_hot_reset_info(test: &str, kind: BackendKind) {
    let Some(bdf) = device_under_test(test) else {
        return;
    };
    let d = open(bdf, BackendChoice::Force(kind));
    let vendor = d.config_u16(0).unwrap();
    match d.reset() {
        Ok(()) => {
            assert!(d.info().reset);
            // The device answers after the reset (not 0xffff: gone from the bus).
            assert_eq!(d.config_u16(0).unwrap(), vendor, "config space after reset");
            report(&format!("{bdf}: VFIO_DEVICE_RESET ok"));
        }
        Err(e) => {
            assert!(!d.info().reset, "reset offered but failed: {e}");
            assert!(e.to_string().contains("offers no reset"), "{e}");
            report(&format!("{bdf}: {e}"));
        }
    }
    match d.hot_reset_dependencies() {
        Ok(deps) => report(&format!("{bdf}: a bus reset would also reset {deps:?}")),
        Err(e) => {
            assert!(e.errno().is_some(), "an OS error with errno: {e}");
            report(&format!("{bdf}: no hot reset: {e}"));
        }
    }
}

/// edu only: DMA both ways through guest memory mapped by vm-vfio, completion MSI on an
/// eventfd, and the IOMMU blocking a DMA once the memory is unmapped.
pub fn edu_dma_and_msi(test: &str, kind: BackendKind) {
    let Some(bdf) = device_under_test(test) else {
        return;
    };
    let d = open(bdf, BackendChoice::Force(kind));
    if !is_edu(&d) {
        report(&format!(
            "{bdf} is not QEMU's edu: DMA engine test not applicable"
        ));
        return;
    }
    d.enable_bus_master().unwrap();
    let bar = EduBar::new(&d);
    let msi = EventFd::new(libc::EFD_NONBLOCK).unwrap();
    d.enable_msi(&[&msi]).unwrap();
    let mem = guest_memory();
    // SAFETY: guest memory is only accessed through vm-memory's volatile accessors.
    let mapping = unsafe { d.map_guest_memory(&mem) }.unwrap();
    let pattern: Vec<u8> = (0..1024u32).map(|i| (i * 7 + 3) as u8).collect();
    let src = GuestAddress((16 << 20) + 0x1000);
    let dst = GuestAddress((64 << 20) + 0x2000);
    mem.write_slice(&pattern, src).unwrap();
    bar.dma(src.0, 0, pattern.len() as u64, Direction::ToDevice, true);
    assert!(
        wait_eventfd(&msi, Duration::from_secs(5)).is_some(),
        "completion MSI (RAM to device)"
    );
    bar.ack_irq();
    bar.dma(dst.0, 0, pattern.len() as u64, Direction::ToRam, true);
    assert!(
        wait_eventfd(&msi, Duration::from_secs(5)).is_some(),
        "completion MSI (device to RAM)"
    );
    bar.ack_irq();
    let mut back = vec![0u8; pattern.len()];
    mem.read_slice(&mut back, dst).unwrap();
    assert_eq!(back, pattern, "bytes through the edu DMA engine");
    // Unmapped: the IOMMU must block the device's write; the RAM stays as it was.
    mapping.unmap().unwrap();
    let blocked = GuestAddress(0x3000);
    mem.write_slice(&[0x5a; 256], blocked).unwrap();
    bar.dma(blocked.0, 0, 256, Direction::ToRam, false);
    let mut after = [0u8; 256];
    mem.read_slice(&mut after, blocked).unwrap();
    assert_eq!(after, [0x5a; 256], "DMA to an unmapped IOVA reached RAM");
    d.disable_irqs(IrqIndex::Msi).unwrap();
    report(&format!(
        "{bdf}: edu DMA both ways + MSI through the {}; unmapped DMA blocked",
        d.backend()
    ));
}

/// Two devices in one context (one container or IOAS): guest memory mapped once serves
/// both, and a second map of it through the other device is refused (EEXIST), not doubled.
pub fn two_devices_share_one_context(test: &str, kind: BackendKind) {
    let Some(_) = device_under_test(test) else {
        return;
    };
    let edus = lab_edu_bdfs();
    if edus.len() < 2 {
        report("fewer than two devices: nothing to share");
        return;
    }
    let ctx = vm_vfio::access::IommuContext::open(kind).unwrap();
    let a = Device::open(&sys(), edus[0], &ctx).unwrap();
    let b = Device::open(&sys(), edus[1], &ctx).unwrap();
    assert_ne!(
        a.iommu_group(),
        b.iommu_group(),
        "two groups in one context"
    );
    let mem = guest_memory();
    // SAFETY: guest memory is only accessed through vm-memory's volatile accessors.
    let mapping = unsafe { a.map_guest_memory(&mem) }.unwrap();
    // SAFETY: as above.
    let e = unsafe { b.map_guest_memory(&mem) }.unwrap_err();
    assert!(
        matches!(
            e,
            Error::MapRefused {
                source: MapRefused::AlreadyMapped { .. },
                ..
            }
        ),
        "mapped once per context, not per device: {e}"
    );
    if is_edu(&b) {
        b.enable_bus_master().unwrap();
        let bar = EduBar::new(&b);
        let src = GuestAddress(0x4000);
        let dst = GuestAddress((16 << 20) + 0x8000);
        mem.write_slice(&[0xc3; 512], src).unwrap();
        bar.dma(src.0, 0x100, 512, Direction::ToDevice, false);
        bar.dma(dst.0, 0x100, 512, Direction::ToRam, false);
        let mut back = [0u8; 512];
        mem.read_slice(&mut back, dst).unwrap();
        assert_eq!(
            back, [0xc3; 512],
            "device B used the mapping made through device A"
        );
    }
    mapping.unmap().unwrap();
    report(&format!(
        "{} and {} shared one {} context",
        edus[0], edus[1], kind
    ));
}

/// Generates the suite for one backend.
#[macro_export]
macro_rules! vfio_suite {
    ($kind:expr) => {
        #[test]
        fn opens_with_the_requested_backend() {
            lab_common::opens_with_the_requested_backend("opens_with_the_requested_backend", $kind)
        }
        #[test]
        fn config_and_region_io_check_their_results() {
            lab_common::config_and_region_io_check_their_results(
                "config_and_region_io_check_their_results",
                $kind,
            )
        }
        #[test]
        fn bar_mmap_agrees_with_region_reads() {
            lab_common::bar_mmap_agrees_with_region_reads(
                "bar_mmap_agrees_with_region_reads",
                $kind,
            )
        }
        #[test]
        fn iova_space_refuses_reserved_and_out_of_range_maps() {
            lab_common::iova_space_refuses_reserved_and_out_of_range_maps(
                "iova_space_refuses_reserved_and_out_of_range_maps",
                $kind,
            )
        }
        #[test]
        fn guest_memory_maps_once_and_unmaps_exactly() {
            lab_common::guest_memory_maps_once_and_unmaps_exactly(
                "guest_memory_maps_once_and_unmaps_exactly",
                $kind,
            )
        }
        #[test]
        fn interrupts_reach_their_eventfds() {
            lab_common::interrupts_reach_their_eventfds("interrupts_reach_their_eventfds", $kind)
        }
        #[test]
        fn reset_and_hot_reset_info() {
            lab_common::reset_and_hot_reset_info("reset_and_hot_reset_info", $kind)
        }
        #[test]
        fn two_devices_share_one_context() {
            lab_common::two_devices_share_one_context("two_devices_share_one_context", $kind)
        }
        #[test]
        fn edu_dma_and_msi() {
            lab_common::edu_dma_and_msi("edu_dma_and_msi", $kind)
        }
    };
}

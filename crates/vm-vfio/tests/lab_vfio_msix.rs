//! MSI-X through vm-vfio on a real vfio-pci device that has it (`VM_ACCEL_LAB_MSIX_BDF`; in
//! the lab, QEMU's NVMe controller, whose MSI-X table and PBA sit inside BAR0 after its
//! registers, as on GPUs): the table/PBA hole in BAR0's mmap, one eventfd per vector,
//! software triggers, per-vector masking by detaching the eventfd, disable.
//!
//! Every test runs on each VFIO path the kernel offers: the legacy container always, iommufd
//! too where the kernel has it (required on the lab's `--kernel iommufd`). Skips without
//! `/dev/vfio` or the variable.

mod lab_common;

use std::io::ErrorKind;
use std::os::fd::AsRawFd;
use std::time::Duration;

use lab_common::{open, report, sys, wait_eventfd};
use vm_pci::config::MsixCap;
use vm_pci::{Bdf, SysfsRoot};
use vm_vfio::access::irq::INFO_NORESIZE;
use vm_vfio::access::region::msix_holes;
use vm_vfio::access::{
    page_size, Area, BackendChoice, BackendKind, Device, Error, IrqIndex, IrqSet, RegionIndex,
};
use vmm_sys_util::eventfd::EventFd;

/// `VFIO_DEVICE_SET_IRQS` = `_IO(';', 100 + 10)` = 0x3b6e, for asking the kernel directly what
/// vm-vfio refuses before the ioctl.
const VFIO_DEVICE_SET_IRQS: libc::Ioctl = 0x3b6e;
const QEMU_NVME: (u16, u16) = (0x1b36, 0x0010);
/// Vectors the tests route (the device offers more; a VMM enables what the guest uses).
const VECTORS: u32 = 4;

/// The MSI-X device, or `None` after reporting the skip.
fn msix_device(test: &str) -> Option<Bdf> {
    let _ = env_logger::builder().is_test(true).try_init();
    vm_accel_tests::lab::vfio_device_from_env(
        test,
        "VM_ACCEL_LAB_MSIX_BDF",
        "a vfio-pci device with MSI-X",
    )
    .map(|b| b.parse().expect("VM_ACCEL_LAB_MSIX_BDF is a PCI address"))
}

/// The VFIO paths to run: legacy always; iommufd where the kernel has it, and always on
/// the lab's iommufd kernel (so that a broken iommufd path cannot pass as "not offered").
fn backends(bdf: Bdf) -> Vec<BackendKind> {
    let mut v = Vec::new();
    for kind in [BackendKind::Legacy, BackendKind::Iommufd] {
        match Device::pick_backend(&sys(), bdf, BackendChoice::Force(kind)) {
            Ok(_) => v.push(kind),
            Err(e)
                if kind == BackendKind::Iommufd
                    && std::env::var("VM_ACCEL_LAB_KERNEL").as_deref() != Ok("iommufd") =>
            {
                report(&format!("{bdf}: not on the {kind} path: {e}"))
            }
            Err(e) => panic!("{bdf}: the {kind} path must work here: {e}"),
        }
    }
    v
}

/// The MSI-X capability as the host decodes it from sysfs (vm-pci), not through VFIO.
fn host_msix(bdf: Bdf) -> MsixCap {
    let dev = vm_pci::read_device(&SysfsRoot::default(), bdf).expect("vm-pci reads the device");
    dev.capabilities
        .msix()
        .cloned()
        .unwrap_or_else(|| panic!("{bdf} has no MSI-X capability"))
}

#[test]
fn bar_mmap_leaves_out_the_msix_table_and_pba() {
    let Some(bdf) = msix_device("bar_mmap_leaves_out_the_msix_table_and_pba") else {
        return;
    };
    let host = host_msix(bdf);
    for kind in backends(bdf) {
        let d = open(bdf, BackendChoice::Force(kind));
        // VFIO's view of the capability (its virtualised config space) matches the host's.
        let cfg = d.config_space().expect("config space");
        let seen = cfg
            .capabilities()
            .msix()
            .cloned()
            .expect("MSI-X through VFIO");
        assert_eq!(
            (seen.table_size, seen.table, seen.pba),
            (host.table_size, host.table, host.pba),
            "{kind}: MSI-X capability through VFIO vs sysfs"
        );
        let bar = host.table.bar;
        let index = RegionIndex::Bar(bar);
        let r = d.region(index).expect("the MSI-X BAR region").clone();
        report(&format!(
            "{bdf} ({kind}): MSI-X {} vectors, table {index}+{:#x}, PBA BAR{}+{:#x}; {index} size {:#x} flags {:#x} sparse {:?} msix_mappable {}",
            host.table_size, host.table.offset, host.pba.bar, host.pba.offset, r.size, r.flags, r.sparse, r.msix_mappable
        ));
        let sysfs_bar = vm_pci::read_device(&SysfsRoot::default(), bdf)
            .expect("vm-pci")
            .bars
            .into_iter()
            .find(|b| b.index == usize::from(bar))
            .expect("the BAR in sysfs");
        assert_eq!(r.size, sysfs_bar.size, "{index} size: VFIO vs sysfs");
        assert!(r.mmappable() && r.readable() && r.writable());
        // What vfio-pci does since Linux 4.16: the whole BAR may be mmap'ed, table included
        // (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE, no sparse areas). Trapping the table is
        // therefore the VMM's decision; vm-vfio makes it in mmap_areas.
        assert!(
            r.msix_mappable,
            "{kind}: the kernel reports CAP_MSIX_MAPPABLE"
        );
        assert_eq!(r.sparse, None, "{kind}: no sparse-mmap areas");

        // The holes come from the capability...
        let holes = d.msix_holes(bar).expect("holes");
        let table = Area {
            offset: u64::from(host.table.offset),
            size: u64::from(host.table_size) * 16,
        };
        let pba = Area {
            offset: u64::from(host.pba.offset),
            size: u64::from(host.table_size).div_ceil(64) * 8,
        };
        let mut expected = vec![table];
        if host.pba.bar == bar {
            expected.push(pba);
        }
        assert_eq!(holes, expected, "{kind}: holes from the capability");
        assert_eq!(holes, msix_holes(&host, bar));
        // ...and the mmap'able areas are exactly the BAR less those holes, widened to pages.
        let page = page_size();
        let areas = r.mmap_areas(&holes, page);
        report(&format!(
            "  mmap'able areas of {index}: {}",
            areas
                .iter()
                .map(|a| format!("{:#x}..{:#x}", a.offset, a.end()))
                .collect::<Vec<_>>()
                .join(", ")
        ));
        assert!(
            !areas.is_empty(),
            "{kind}: the lab's device has registers outside the MSI-X pages"
        );
        // Computed here page by page: every page no hole touches, runs merged.
        let mut expected_areas: Vec<Area> = Vec::new();
        for off in (0..r.size).step_by(page as usize) {
            if holes.iter().any(|h| off < h.end() && off + page > h.offset) {
                continue;
            }
            match expected_areas.last_mut() {
                Some(a) if a.end() == off => a.size += page,
                _ => expected_areas.push(Area {
                    offset: off,
                    size: page,
                }),
            }
        }
        assert_eq!(areas, expected_areas, "{kind}: mmap'able areas of {index}");

        // The mmap covers those areas, and reads through it agree with pread.
        let maps = d.mmap_bar(bar).expect("mmap the MSI-X BAR");
        let got: Vec<Area> = maps
            .iter()
            .map(|m| Area {
                offset: m.offset,
                size: m.len() as u64,
            })
            .collect();
        assert_eq!(got, areas, "{kind}: mapped parts");
        for m in &maps {
            for off in [m.offset, m.offset + 8] {
                let mut b = [0u8; 4];
                d.read_region(index, off, &mut b).expect("pread");
                let via_mmap = m.read_u32(off).expect("inside the mapping");
                assert_eq!(
                    via_mmap,
                    u32::from_le_bytes(b),
                    "{kind}: {index}+{off:#x} mmap vs pread"
                );
            }
        }
        let id = (d.config_u16(0).unwrap(), d.config_u16(2).unwrap());
        if id == QEMU_NVME {
            // NVMe VS register (BAR0+0x8): major version in bits 31:16.
            let vs = maps
                .iter()
                .find(|m| m.covers(0x8, 4))
                .and_then(|m| m.read_u32(0x8))
                .expect("NVMe registers are mmap'ed");
            report(&format!("  NVMe version register via mmap: {vs:#010x}"));
            assert!(vs >> 16 >= 1, "{kind}: NVMe VS {vs:#x}");
        }
        // The kernel itself keeps the table out of region reads and writes: a read returns
        // all-ones (vfio-pci fills it), so a VMM must emulate the table from its own state.
        let mut t = [0u8; 16];
        d.read_region(index, table.offset, &mut t)
            .expect("pread of the table");
        assert_eq!(
            t, [0xff; 16],
            "{kind}: the table reads as all-ones through VFIO"
        );
    }
}

/// Drains every eventfd (non-blocking), returning the counts.
fn drain(fds: &[EventFd]) -> Vec<u64> {
    fds.iter()
        .map(|f| match f.read() {
            Ok(n) => n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => 0,
            Err(e) => panic!("eventfd read: {e}"),
        })
        .collect()
}

/// Signals `vector` and checks that exactly its eventfd (once) was signalled.
fn trigger_hits_only(d: &Device, fds: &[EventFd], vector: usize, what: &str) {
    d.trigger(IrqIndex::Msix, vector as u32)
        .unwrap_or_else(|e| panic!("{what}: trigger vector {vector}: {e}"));
    assert_eq!(
        wait_eventfd(&fds[vector], Duration::from_secs(2)),
        Some(1),
        "{what}: eventfd {vector} after triggering vector {vector}"
    );
    let rest = drain(fds);
    assert!(
        rest.iter().all(|&n| n == 0),
        "{what}: triggering vector {vector} also signalled {rest:?}"
    );
}

#[test]
fn msix_vectors_signal_their_own_eventfd_mask_and_disable() {
    let Some(bdf) = msix_device("msix_vectors_signal_their_own_eventfd_mask_and_disable") else {
        return;
    };
    let host = host_msix(bdf);
    assert!(!host.enabled, "MSI-X starts disabled on the host");
    for kind in backends(bdf) {
        let d = open(bdf, BackendChoice::Force(kind));
        let info = *d.irq(IrqIndex::Msix).expect("MSI-X interrupt info");
        report(&format!(
            "{bdf} ({kind}): MSI-X count {} flags {:#x}",
            info.count, info.flags
        ));
        assert_eq!(info.count, u32::from(host.table_size), "{kind}: vectors");
        // vfio-pci documents MASK/UNMASK only for indexes flagged MASKABLE; MSI-X is not.
        assert!(
            !info.maskable(),
            "{kind}: MSI-X is not MASKABLE in vfio-pci"
        );
        assert!(info.count >= VECTORS, "{kind}: the device offers {VECTORS}");

        let fds: Vec<EventFd> = (0..VECTORS)
            .map(|_| EventFd::new(libc::EFD_NONBLOCK).expect("eventfd"))
            .collect();
        let refs: Vec<&EventFd> = fds.iter().collect();
        d.enable_msix(&refs).expect("enable MSI-X");
        // The host kernel really enabled MSI-X on the device (sysfs config, not VFIO's
        // virtualised view).
        assert!(
            host_msix(bdf).enabled,
            "{kind}: MSI-X enabled on the device"
        );
        assert_eq!(
            drain(&fds),
            vec![0; VECTORS as usize],
            "{kind}: quiet start"
        );

        // Vector N signals eventfd N and no other.
        for v in 0..VECTORS as usize {
            trigger_hits_only(&d, &fds, v, &format!("{kind}"));
        }

        // One vector more while enabled. The kernel documents both answers through
        // NORESIZE: set, new vectors need the whole index disabled first (6.1); clear
        // (dynamic MSI-X, 6.2+ where the MSI domain allows it), a vector joins alone.
        let extra = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
        let grow = d.set_irqs(
            IrqIndex::Msix,
            &IrqSet::Eventfds {
                start: VECTORS,
                fds: vec![Some(extra.as_raw_fd())],
            },
        );
        if info.flags & INFO_NORESIZE != 0 {
            assert!(
                matches!(&grow, Err(Error::Os { source, .. }) if source.raw_os_error() == Some(libc::EINVAL)),
                "{kind}: NORESIZE, yet vector {VECTORS} was added: {grow:?}"
            );
            report(&format!(
                "  NORESIZE: adding vector {VECTORS} refused (EINVAL)"
            ));
        } else {
            grow.unwrap_or_else(|e| panic!("{kind}: no NORESIZE, adding a vector: {e}"));
            d.trigger(IrqIndex::Msix, VECTORS)
                .expect("trigger the added vector");
            assert_eq!(
                wait_eventfd(&extra, Duration::from_secs(2)),
                Some(1),
                "{kind}: added vector {VECTORS}"
            );
            assert_eq!(
                drain(&fds),
                vec![0; VECTORS as usize],
                "{kind}: others quiet"
            );
            trigger_hits_only(&d, &fds, 0, &format!("{kind}, after adding a vector"));
            d.detach_vector(IrqIndex::Msix, VECTORS)
                .expect("detach the added vector");
            report(&format!(
                "  no NORESIZE: vector {VECTORS} added and removed alone"
            ));
        }

        // Masking: VFIO has no MASK action for MSI-X. vm-vfio refuses it before the ioctl,
        // and the kernel agrees when asked directly (ENOTTY).
        let e = d.mask(IrqIndex::Msix, 1).unwrap_err();
        assert!(
            matches!(e, Error::Invalid { .. }) && e.to_string().contains("not maskable"),
            "{kind}: {e}"
        );
        let raw = IrqSet::Mask { start: 1, count: 1 }.to_bytes(IrqIndex::Msix);
        // SAFETY: a complete vfio_irq_set (no data) the kernel only reads.
        let rc = unsafe { libc::ioctl(d.raw_fd(), VFIO_DEVICE_SET_IRQS, raw.as_ptr()) };
        let errno = std::io::Error::last_os_error().raw_os_error();
        assert_eq!(
            (rc, errno),
            (-1, Some(libc::ENOTTY)),
            "{kind}: raw ACTION_MASK on MSI-X"
        );

        // The way to mask one vector (what the kernel documents): detach its eventfd with
        // -1. The others stay routed; a trigger of the detached vector reaches nobody.
        d.detach_vector(IrqIndex::Msix, 1).expect("detach vector 1");
        d.trigger(IrqIndex::Msix, 1)
            .expect("a trigger of a detached vector is accepted");
        assert_eq!(
            drain(&fds),
            vec![0; VECTORS as usize],
            "{kind}: masked vector 1 signalled"
        );
        trigger_hits_only(&d, &fds, 0, &format!("{kind}, vector 1 masked"));
        trigger_hits_only(&d, &fds, 2, &format!("{kind}, vector 1 masked"));
        // Unmask: reattach. VFIO latched nothing while the vector was detached (MSI-X has
        // no pending state in VFIO; emulating the PBA is the VMM's job), so the eventfd
        // stays quiet until the next interrupt.
        d.set_irqs(
            IrqIndex::Msix,
            &IrqSet::Eventfds {
                start: 1,
                fds: vec![Some(fds[1].as_raw_fd())],
            },
        )
        .expect("reattach vector 1");
        assert_eq!(
            wait_eventfd(&fds[1], Duration::from_millis(200)),
            None,
            "{kind}: a trigger while masked was delivered on unmask"
        );
        trigger_hits_only(&d, &fds, 1, &format!("{kind}, vector 1 unmasked"));

        // Disable: the index is torn down, a trigger is refused and signals nothing.
        d.disable_irqs(IrqIndex::Msix).expect("disable MSI-X");
        assert!(
            !host_msix(bdf).enabled,
            "{kind}: MSI-X disabled on the device"
        );
        for v in 0..VECTORS {
            let e = d.trigger(IrqIndex::Msix, v).unwrap_err();
            assert!(
                matches!(&e, Error::Os { source, .. } if source.raw_os_error() == Some(libc::EINVAL)),
                "{kind}: trigger after disable: {e}"
            );
        }
        assert_eq!(
            drain(&fds),
            vec![0; VECTORS as usize],
            "{kind}: signalled after disable"
        );
    }
}

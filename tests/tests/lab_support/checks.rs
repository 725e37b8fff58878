//! The VFIO checks both access paths run (legacy container in lab_raw_vfio.rs, iommufd in
//! lab_iommufd.rs): same device, same expectations.

use std::time::Duration;

use super::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vmm_sys_util::eventfd::EventFd;

/// Guest RAM for the DMA tests: 1 MiB at 1 MiB (below edu's 28-bit DMA mask).
const RAM_BASE: u64 = 0x10_0000;
const RAM_SIZE: usize = 0x10_0000;
const XFER: usize = 2048;

fn ram() -> GuestMemoryMmap {
    GuestMemoryMmap::from_ranges(&[(GuestAddress(RAM_BASE), RAM_SIZE)]).expect("guest RAM")
}

fn pattern(seed: u8) -> Vec<u8> {
    (0..XFER)
        .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
        .collect()
}

pub fn bar0_identification_by_region_read_and_mmap(edu: &Edu, bdf: &str) {
    // vfio-ioctls' own region read (it only logs failures: the buffer starts as zeros, so a
    // failed read cannot pass).
    let mut id = [0u8; 4];
    edu.device.region_read(BAR0, &mut id, REG_ID);
    assert_eq!(
        u32::from_le_bytes(id),
        EDU_ID,
        "{bdf} BAR0 id by region_read"
    );
    assert_eq!(edu.read32(REG_ID), EDU_ID, "{bdf} BAR0 id by pread");
    // The liveness register returns the bitwise NOT of what was written: a real device
    // answering, not a cached value.
    edu.write32(REG_LIVENESS, 0x1234_5678);
    assert_eq!(edu.read32(REG_LIVENESS), !0x1234_5678);

    const VFIO_REGION_INFO_FLAG_MMAP: u32 = 1 << 2;
    assert_ne!(
        edu.device.get_region_flags(BAR0) & VFIO_REGION_INFO_FLAG_MMAP,
        0,
        "BAR0 is mmap-able"
    );
    let size = edu.device.get_region_size(BAR0) as usize;
    assert_eq!(size, 1 << 20, "edu BAR0 is 1 MiB");
    // SAFETY: a fresh shared mapping of the device fd at BAR0's region offset; unmapped
    // below, accessed only with volatile reads/writes inside its size.
    let bar = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            size,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_SHARED,
            std::os::fd::AsRawFd::as_raw_fd(&edu.device),
            edu.device.get_region_offset(BAR0) as libc::off_t,
        )
    };
    assert_ne!(
        bar,
        libc::MAP_FAILED,
        "mmap BAR0: {}",
        std::io::Error::last_os_error()
    );
    let regs = bar.cast::<u32>();
    // SAFETY: offsets 0x00 and 0x04 are inside the 1 MiB mapping, 4-byte aligned.
    let (mmap_id, live) = unsafe {
        let id = regs.read_volatile();
        regs.add(1).write_volatile(0x0bad_cafe);
        (id, regs.add(1).read_volatile())
    };
    // SAFETY: unmapping exactly what was mapped above; `regs` is not used afterwards.
    unsafe { libc::munmap(bar, size) };
    assert_eq!(mmap_id, EDU_ID, "{bdf} BAR0 id through mmap");
    assert_eq!(live, !0x0bad_cafe, "liveness through mmap");
}

pub fn dma_both_ways_with_completion_msi(edu: &Edu, bdf: &str) {
    let mem = ram();
    edu.map(&mem);
    edu.enable_bus_master();
    let efd = EventFd::new(libc::EFD_NONBLOCK).expect("eventfd");
    edu.device
        .enable_msi(vec![&efd])
        .expect("enable MSI through VFIO");

    let src = RAM_BASE + 0x1000;
    let dst = RAM_BASE + 0x8_0000;
    let data = pattern(7);
    mem.write_slice(&data, GuestAddress(src))
        .expect("fill source");
    mem.write_slice(&vec![0u8; XFER], GuestAddress(dst))
        .expect("clear destination");

    // RAM -> device buffer, then device buffer -> elsewhere in RAM: both directions cross
    // the IOMMU; the bytes only match if both translated to the right pages.
    edu.dma(src, 0, XFER as u64, Direction::ToDevice, true);
    let n = wait_eventfd(&efd, Duration::from_secs(5)).expect("completion MSI for RAM -> device");
    assert!(n >= 1);
    edu.ack_irq();
    edu.dma(dst, 0, XFER as u64, Direction::ToRam, true);
    wait_eventfd(&efd, Duration::from_secs(5)).expect("completion MSI for device -> RAM");
    edu.ack_irq();

    let mut back = vec![0u8; XFER];
    mem.read_slice(&mut back, GuestAddress(dst))
        .expect("read destination");
    assert!(back == data, "{bdf}: DMA round trip changed the bytes");

    edu.device.disable_msi().expect("disable MSI");
    edu.unmap(&mem);
}

pub fn iommu_blocks_dma_to_an_unmapped_iova(edu: &Edu, bdf: &str) {
    let mem = ram();
    edu.map(&mem);
    edu.enable_bus_master();
    let target = RAM_BASE + 0x4_0000;

    // Positive control: while mapped, the same DMA does land.
    let first = pattern(1);
    mem.write_slice(&first, GuestAddress(RAM_BASE))
        .expect("fill");
    edu.dma(RAM_BASE, 0, XFER as u64, Direction::ToDevice, false);
    edu.dma(target, 0, XFER as u64, Direction::ToRam, false);
    let mut got = vec![0u8; XFER];
    mem.read_slice(&mut got, GuestAddress(target))
        .expect("read");
    assert!(got == first, "control DMA did not land while mapped");

    // Load new bytes into the device, poison the target, unmap, and DMA again.
    mem.write_slice(&pattern(99), GuestAddress(RAM_BASE))
        .expect("fill");
    edu.dma(RAM_BASE, 0, XFER as u64, Direction::ToDevice, false);
    let poison = vec![0xeeu8; XFER];
    mem.write_slice(&poison, GuestAddress(target))
        .expect("poison");
    edu.unmap(&mem);
    edu.dma(target, 0, XFER as u64, Direction::ToRam, false);

    mem.read_slice(&mut got, GuestAddress(target))
        .expect("read");
    assert!(
        got == poison,
        "{bdf}: DMA reached memory that was unmapped from the IOMMU"
    );
    // And the IOMMU (not luck) stopped it: the guest kernel logged a DMA remapping fault.
    let faults = kmsg_lines("DMAR: [DMA Write", Duration::from_secs(3));
    assert!(!faults.is_empty(), "no DMAR write fault in the kernel log");
    report(&format!(
        "{bdf}: fault logged: {}",
        faults[faults.len() - 1]
    ));
}

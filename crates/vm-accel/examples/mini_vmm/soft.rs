//! Software stand-ins ([`SoftDevice`]) for the lab's devices, so the mini VMM runs on any
//! host with /dev/kvm:
//! - edu: BAR0 (1 MiB) is plain memory the guest reaches through its memory slot, so a
//!   small engine thread watches the registers there like the device would: it runs a DMA
//!   when the guest sets the command's start bit, clears the bit when done and, when asked,
//!   raises the completion interrupt by firing the MSI vector's eventfd. Same registers,
//!   same program as the real edu.
//! - an MSI-X function laid out like the lab's nvme: 16 KiB 64-bit BAR0, table at 0x2000
//!   and PBA at 0x3000 (trapped; only the first 8 KiB is mmap-able).
//! - a large-BAR function like the lab's ivshmem: a 64-bit prefetchable BAR2 (NORESERVE
//!   memory: only the pages touched are real).

use std::sync::atomic::{fence, AtomicBool, Ordering};
use std::sync::Arc;
use std::thread::JoinHandle;
use std::time::Duration;

use anyhow::Result;
use vm_accel::attach::{SoftBar, SoftDevice};
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};
use vm_vfio::access::{Area, IrqIndex};

/// edu's identification register value (version 1.0, 0xed).
pub const EDU_ID: u32 = 0x0100_00ed;
const BUF: u64 = 0x40000;
const BUF_LEN: u64 = 0x1000;
const DMA_IRQ: u32 = 0x100;

/// The software edu: 1234:11e8, class ff, a 1 MiB BAR0, an MSI capability (64-bit, one
/// vector).
pub fn device() -> Result<Arc<SoftDevice>> {
    Ok(Arc::new(edu()?))
}

/// [`device`] before it is shared (for a test to adjust it).
pub fn edu() -> Result<SoftDevice> {
    let mut c = vec![0u8; 256];
    c[0..4].copy_from_slice(&0x11e8_1234u32.to_le_bytes());
    c[6] = 0x10; // status: capability list
    c[0xb] = 0xff;
    c[0x34] = 0x40;
    c[0x40] = 0x05;
    c[0x42] = 0x80; // 64-bit address, 1 vector
    let bar = SoftBar {
        size: 1 << 20,
        is_64bit: false,
        prefetchable: false,
    };
    Ok(SoftDevice::new("soft-edu", c, &[(0, bar)])?.with_irqs(IrqIndex::Msi, 1))
}

/// MSI-X vectors the stand-in offers (the nvme has 65).
pub const MSIX_VECTORS: u16 = 8;

/// A function with MSI-X like the lab's nvme (1b36:0010).
pub fn msix_device() -> Result<Arc<SoftDevice>> {
    let mut c = vec![0u8; 256];
    c[0..4].copy_from_slice(&0x0010_1b36u32.to_le_bytes());
    c[6] = 0x10;
    c[0x9..0xc].copy_from_slice(&[0x02, 0x08, 0x01]); // NVMe class
    c[0x34] = 0x40;
    c[0x40] = 0x11;
    c[0x42..0x44].copy_from_slice(&(MSIX_VECTORS - 1).to_le_bytes());
    c[0x44..0x48].copy_from_slice(&0x2000u32.to_le_bytes()); // table: BAR0 + 0x2000
    c[0x48..0x4c].copy_from_slice(&0x3000u32.to_le_bytes()); // PBA: BAR0 + 0x3000
    let bar = SoftBar {
        size: 0x4000,
        is_64bit: true,
        prefetchable: false,
    };
    let areas = vec![Area {
        offset: 0,
        size: 0x2000,
    }];
    let dev = SoftDevice::new("soft-msix", c, &[(0, bar)])?
        .with_irqs(IrqIndex::Msix, u32::from(MSIX_VECTORS))
        .with_mmap_areas(0, areas);
    Ok(Arc::new(dev))
}

/// A function with a `size`-byte 64-bit prefetchable BAR2, like the lab's ivshmem-plain.
pub fn large_bar_device(size: u64) -> Result<Arc<SoftDevice>> {
    let mut c = vec![0u8; 256];
    c[0..4].copy_from_slice(&0x1110_1af4u32.to_le_bytes());
    c[0xb] = 0x05; // memory controller
    let bar = SoftBar {
        size,
        is_64bit: true,
        prefetchable: true,
    };
    Ok(Arc::new(SoftDevice::new("soft-ivshmem", c, &[(2, bar)])?))
}

/// The engine thread; stops when dropped.
#[derive(Debug)]
pub struct Engine {
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

struct Regs(usize);

impl Regs {
    fn read(&self, off: u64) -> u64 {
        // SAFETY: off + 8 is inside the 1 MiB BAR memory the SoftDevice keeps alive.
        unsafe { std::ptr::read_volatile((self.0 + off as usize) as *const u64) }
    }
    fn write(&self, off: u64, v: u64) {
        // SAFETY: as in `read`.
        unsafe { std::ptr::write_volatile((self.0 + off as usize) as *mut u64, v) }
    }
}

impl Engine {
    /// Starts the engine; `fire_irq: false` makes a broken device that never raises the
    /// completion interrupt (for a test that proves the guest waits for a real one).
    pub fn start(dev: Arc<SoftDevice>, mem: GuestMemoryMmap, fire_irq: bool) -> Result<Engine> {
        let base = dev
            .bar_host(0)
            .ok_or_else(|| anyhow::anyhow!("soft edu has no BAR0"))?;
        let regs = Regs(base as usize);
        regs.write(0, u64::from(EDU_ID));
        let stop = Arc::new(AtomicBool::new(false));
        let flag = stop.clone();
        let thread = std::thread::spawn(move || {
            while !flag.load(Ordering::Relaxed) {
                step(&regs, &dev, &mem, fire_irq);
                std::thread::sleep(Duration::from_micros(100));
            }
        });
        Ok(Engine {
            stop,
            thread: Some(thread),
        })
    }
}

fn step(regs: &Regs, dev: &SoftDevice, mem: &GuestMemoryMmap, fire_irq: bool) {
    let ack = regs.read(0x60) >> 32;
    if ack != 0 {
        regs.write(0x60, 0);
        let status = regs.read(0x20) & !(ack << 32);
        regs.write(0x20, status);
    }
    let cmd = regs.read(0x98);
    if cmd & 1 == 0 {
        return;
    }
    fence(Ordering::SeqCst);
    let (src, dst, cnt) = (regs.read(0x80), regs.read(0x88), regs.read(0x90));
    let to_ram = cmd & 2 != 0;
    let (dev_addr, ram) = if to_ram { (src, dst) } else { (dst, src) };
    let in_buf = dev_addr >= BUF && dev_addr + cnt <= BUF + BUF_LEN;
    let mut buf = vec![0u8; cnt as usize];
    let ok = in_buf
        && if to_ram {
            for (i, b) in buf.iter_mut().enumerate() {
                // SAFETY: inside the BAR memory (range checked above).
                *b = unsafe {
                    std::ptr::read_volatile((regs.0 + (dev_addr + i as u64) as usize) as *const u8)
                };
            }
            mem.write_slice(&buf, GuestAddress(ram)).is_ok()
        } else {
            let r = mem.read_slice(&mut buf, GuestAddress(ram)).is_ok();
            for (i, b) in buf.iter().enumerate() {
                // SAFETY: inside the BAR memory (range checked above).
                unsafe {
                    std::ptr::write_volatile(
                        (regs.0 + (dev_addr + i as u64) as usize) as *mut u8,
                        *b,
                    )
                };
            }
            r
        };
    if !ok {
        log::warn!("soft edu: DMA {src:#x} -> {dst:#x} ({cnt} bytes) out of range");
    }
    fence(Ordering::SeqCst);
    regs.write(0x98, cmd & !1);
    if cmd & 4 != 0 {
        let status = regs.read(0x20) | u64::from(DMA_IRQ) << 32;
        regs.write(0x20, status);
        if fire_irq && !dev.fire(IrqIndex::Msi, 0) {
            log::info!("soft edu: MSI not enabled, completion interrupt lost");
        }
    }
}

impl Drop for Engine {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

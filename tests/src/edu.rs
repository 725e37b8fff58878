//! QEMU's `edu` teaching device (PCI 1234:11e8), as the emulated VFIO lab drives it.
//!
//! One register map and one validated DMA sequence, over whatever BAR0 access a test has
//! (raw vfio-ioctls region I/O, or vm-vfio's BAR mmap): implement [`Bar0`] and the rest
//! comes with it. Quirks are in docs/hardware-testing.md; the ones that matter here: QEMU
//! 7.2 aborts the whole VM on an out-of-range DMA, so every request is checked first.

use std::time::{Duration, Instant};

pub const VENDOR: u16 = 0x1234;
pub const DEVICE: u16 = 0x11e8;
/// What BAR0 offset 0 reads.
pub const ID: u32 = 0x010000ed;

pub const REG_ID: u64 = 0x00;
/// Reads back the bitwise NOT of what was written.
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

/// The device's internal 4 KiB DMA buffer, as addressed on its side of a transfer.
pub const BUF: u64 = 0x40000;
/// QEMU 7.2 aborts on a transfer that reaches the end of the buffer.
pub const MAX_DMA: u64 = 4095;
/// edu's DMA mask: IOVAs must be below 256 MiB.
pub const DMA_LIMIT: u64 = 1 << 28;

/// Which way a DMA goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    ToDevice,
    ToRam,
}

/// 32- and 64-bit access to the edu's BAR0.
pub trait Bar0 {
    fn read32(&self, off: u64) -> u32;
    fn write32(&self, off: u64, v: u32);
    fn read64(&self, off: u64) -> u64;
    fn write64(&self, off: u64, v: u64);

    /// One DMA of `count` bytes between IOVA `ram` and offset `dev_off` of the device
    /// buffer, validated first, then polled until the device clears its start bit.
    fn dma(&self, ram: u64, dev_off: u64, count: u64, dir: Direction, irq: bool) {
        assert!(count > 0 && count <= MAX_DMA, "edu DMA of {count} bytes");
        assert!(
            dev_off + count < 4096,
            "edu buffer offset {dev_off:#x} + {count}"
        );
        assert!(
            ram + count <= DMA_LIMIT,
            "IOVA {ram:#x} beyond edu's 28-bit DMA mask"
        );
        let dev = BUF + dev_off;
        let (src, dst) = match dir {
            Direction::ToDevice => (ram, dev),
            Direction::ToRam => (dev, ram),
        };
        self.write64(REG_DMA_SRC, src);
        self.write64(REG_DMA_DST, dst);
        self.write64(REG_DMA_COUNT, count);
        let to_ram = if dir == Direction::ToRam {
            DMA_TO_RAM
        } else {
            0
        };
        self.write64(
            REG_DMA_CMD,
            DMA_START | to_ram | if irq { DMA_IRQ } else { 0 },
        );
        let start = Instant::now();
        while self.read64(REG_DMA_CMD) & DMA_START != 0 {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "edu DMA did not finish in 10 s"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Acknowledges every pending edu interrupt.
    fn ack_irq(&self) {
        let status = self.read32(REG_IRQ_STATUS);
        self.write32(REG_IRQ_ACK, status);
    }
}

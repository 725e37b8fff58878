//! BARs from the sysfs `resource` file.
//!
//! Each line is `start end flags` in hex: lines 0-5 are the BARs, 6 the expansion ROM,
//! 7-12 the SR-IOV VF BARs (on a PF), the rest bridge windows. The sizes are exact
//! (`end - start + 1`): a 256 GiB BAR must read as 256 GiB.

use std::path::Path;

use serde::Serialize;

use crate::error::{Error, Result};
use crate::sysfs::parse_hex;

// Kernel IORESOURCE_* flags (include/linux/ioport.h).
const IORESOURCE_IO: u64 = 0x0000_0100;
const IORESOURCE_MEM: u64 = 0x0000_0200;
const IORESOURCE_PREFETCH: u64 = 0x0000_2000;
const IORESOURCE_MEM_64: u64 = 0x0010_0000;
const IORESOURCE_DISABLED: u64 = 0x1000_0000;

/// Index of the expansion ROM line in `resource`.
pub const ROM_INDEX: usize = 6;

/// Where a BAR decodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum BarSpace {
    /// I/O port space.
    Io,
    /// Memory space (MMIO).
    Memory,
}

/// One assigned resource of a PCI function.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Bar {
    /// Line number in `resource`: 0-5 BARs, 6 ROM, 7-12 SR-IOV VF BARs.
    pub index: usize,
    /// Bus address the BAR is assigned (from `resource`).
    pub address: u64,
    /// Size in bytes.
    pub size: u64,
    /// Memory or I/O space.
    pub space: BarSpace,
    /// A 64-bit memory BAR (it takes two BAR slots).
    pub is_64bit: bool,
    /// Prefetchable memory (may be mapped write-combined).
    pub prefetchable: bool,
    /// Assigned but disabled (a ROM BAR whose enable bit is clear).
    pub disabled: bool,
}

impl Bar {
    /// True for the standard BARs 0-5 (not the ROM or VF BARs).
    pub fn is_standard(&self) -> bool {
        self.index < ROM_INDEX
    }
}

/// Parses a whole `resource` file; unassigned (all-zero) lines are left out.
pub fn parse_resource(path: &Path, text: &str) -> Result<Vec<Bar>> {
    let mut bars = Vec::new();
    for (index, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() {
            continue;
        }
        let fields: Vec<&str> = line.split_whitespace().collect();
        let [start, end, flags] = fields.as_slice() else {
            return Err(Error::malformed(
                path,
                format!("line {index}: expected 3 fields, found {}", fields.len()),
            ));
        };
        let (start, end, flags) = (
            parse_hex(path, start)?,
            parse_hex(path, end)?,
            parse_hex(path, flags)?,
        );
        if start == 0 && end == 0 {
            continue;
        }
        if end < start {
            return Err(Error::malformed(
                path,
                format!("line {index}: end {end:#x} < start {start:#x}"),
            ));
        }
        let space = if flags & IORESOURCE_IO != 0 {
            BarSpace::Io
        } else if flags & IORESOURCE_MEM != 0 {
            BarSpace::Memory
        } else {
            log::debug!(
                "{}: line {index} has neither IO nor MEM flags ({flags:#x})",
                path.display()
            );
            continue;
        };
        bars.push(Bar {
            index,
            address: start,
            // end - start + 1 cannot overflow except for a whole-address-space window.
            size: (end - start).saturating_add(1),
            space,
            is_64bit: flags & IORESOURCE_MEM_64 != 0,
            prefetchable: flags & IORESOURCE_PREFETCH != 0,
            disabled: flags & IORESOURCE_DISABLED != 0,
        });
    }
    Ok(bars)
}

/// Human size with binary units, exact when it divides evenly (`256G`, `16M`, `4K`).
pub fn format_size(size: u64) -> String {
    const UNITS: [(u64, &str); 5] = [
        (1 << 50, "P"),
        (1 << 40, "T"),
        (1 << 30, "G"),
        (1 << 20, "M"),
        (1 << 10, "K"),
    ];
    for (unit, suffix) in UNITS {
        if size >= unit && size % unit == 0 {
            return format!("{}{suffix}", size / unit);
        }
    }
    format!("{size}")
}

#[cfg(test)]
mod tests {
    use super::*;

    const H200: &str = "0x0000104002000000 0x0000104002ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000100000000000 0x0000103fffffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000104000000000 0x0000104001ffffff 0x000000000014220c
0x0000000000000000 0x0000000000000000 0x0000000000000000
0x0000000000000000 0x0000000000000000 0x0000000000000000
";

    #[test]
    fn h200_bars_are_exact() {
        let bars = parse_resource(Path::new("resource"), H200).unwrap();
        let got: Vec<(usize, u64, u64)> =
            bars.iter().map(|b| (b.index, b.address, b.size)).collect();
        assert_eq!(
            got,
            vec![
                (0, 0x1040_0200_0000, 16 << 20),
                (2, 0x1000_0000_0000, 256 << 30),
                (4, 0x1040_0000_0000, 32 << 20)
            ]
        );
        assert!(bars
            .iter()
            .all(|b| b.is_64bit && b.space == BarSpace::Memory));
        assert!(bars[1].prefetchable);
        assert_eq!(format_size(bars[1].size), "256G");
    }

    #[test]
    fn io_and_malformed() {
        let bars = parse_resource(Path::new("r"), "0xc000 0xc03f 0x40101\n").unwrap();
        assert_eq!(bars[0].space, BarSpace::Io);
        assert_eq!(bars[0].size, 64);
        assert!(parse_resource(Path::new("r"), "0x1 0x2\n").is_err());
        assert!(parse_resource(Path::new("r"), "0x10 0x1 0x200\n").is_err());
        assert!(parse_resource(Path::new("r"), "zz 0x1 0x200\n").is_err());
        assert_eq!(format_size(4095), "4095");
    }
}

//! Typed DMA addresses and the checks a map must pass before it reaches the IOMMU.
//!
//! A VMM maps guest RAM at IOVA = guest physical address, so the two are easy to confuse
//! with each other and with host virtual addresses; the types keep them apart, and
//! [`Iova::from_gpa`] is the one place where they meet.

use std::fmt;

/// A guest physical address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Gpa(pub u64);

/// An I/O virtual address: what the device puts on the bus, translated by the IOMMU.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
pub struct Iova(pub u64);

impl Iova {
    /// The identity mapping a VMM uses for guest RAM (IOVA = GPA).
    pub const fn from_gpa(gpa: Gpa) -> Iova {
        Iova(gpa.0)
    }
    /// The address as a number.
    pub const fn raw(self) -> u64 {
        self.0
    }
}

impl fmt::Display for Iova {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "IOVA {:#x}", self.0)
    }
}
impl fmt::Display for Gpa {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "GPA {:#x}", self.0)
    }
}

/// An inclusive IOVA interval `[start, last]` (the kernel's form: `last` may be u64::MAX).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct IovaRange {
    /// First address.
    pub start: u64,
    /// Last address (inclusive).
    pub last: u64,
}

impl IovaRange {
    /// Whether `[iova, iova + len)` lies inside (a zero-length range never does).
    pub fn contains(&self, iova: Iova, len: u64) -> bool {
        len != 0
            && iova.0 >= self.start
            && iova
                .0
                .checked_add(len - 1)
                .is_some_and(|end| end <= self.last)
    }
    /// Whether `[iova, iova + len)` touches the range (a zero-length range never does).
    pub fn overlaps(&self, iova: Iova, len: u64) -> bool {
        len != 0 && {
            let end = iova.0.saturating_add(len - 1);
            iova.0 <= self.last && end >= self.start
        }
    }
}

impl fmt::Display for IovaRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "[{:#x}, {:#x}]", self.start, self.last)
    }
}

/// A range the IOMMU reserves (MSI doorbells, RMRRs...), from the group's
/// `reserved_regions`; `kind` is the kernel's word (msi, direct, reserved...).
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Reserved {
    /// The addresses reserved.
    pub range: IovaRange,
    /// What for (msi, direct, reserved...).
    pub kind: String,
}

impl From<&vm_pci::ReservedRegion> for Reserved {
    fn from(r: &vm_pci::ReservedRegion) -> Reserved {
        Reserved {
            range: IovaRange {
                start: r.start,
                last: r.end,
            },
            kind: r.kind.clone(),
        }
    }
}

/// What the IOMMU accepts: the usable IOVA ranges (from `VFIO_IOMMU_GET_INFO` or
/// `IOMMU_IOAS_IOVA_RANGES`), the reserved regions, and the smallest page size.
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize)]
pub struct IovaSpace {
    /// Empty when the kernel did not report ranges (then only `reserved` constrains).
    pub ranges: Vec<IovaRange>,
    /// Ranges no map may touch.
    pub reserved: Vec<Reserved>,
    /// Minimum alignment of a map's IOVA and length (1 = any).
    pub alignment: u64,
}

/// Why a map was refused before it reached the kernel.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MapRefused {
    #[error("zero-length map at {0}")]
    /// A map of zero bytes.
    Empty(Iova),
    #[error("{iova} + {len:#x} wraps around the address space")]
    /// The range runs past the end of the address space.
    Wraps {
        /// Start of the refused map.
        iova: Iova,
        /// Its length in bytes.
        len: u64,
    },
    #[error("{iova} + {len:#x} is not aligned to the IOMMU's {alignment:#x}-byte pages")]
    /// Address or length is not a multiple of the IOMMU's page size.
    Unaligned {
        /// Start of the refused map.
        iova: Iova,
        /// Its length in bytes.
        len: u64,
        /// The IOMMU's smallest page size.
        alignment: u64,
    },
    #[error("{iova} + {len:#x} is outside the IOMMU's usable IOVA ranges ({ranges})")]
    /// The range is not inside any usable IOVA range.
    OutsideRanges {
        /// Start of the refused map.
        iova: Iova,
        /// Its length in bytes.
        len: u64,
        /// The usable ranges, as text.
        ranges: String,
    },
    #[error("{iova} + {len:#x} overlaps the reserved {kind} region {range}")]
    /// The range touches a reserved region.
    Reserved {
        /// Start of the refused map.
        iova: Iova,
        /// Its length in bytes.
        len: u64,
        /// What the region is for.
        kind: String,
        /// The reserved region.
        range: IovaRange,
    },
    #[error("{iova} + {len:#x} overlaps {other} + {other_len:#x} of the same request")]
    /// Two maps of one request overlap.
    Overlap {
        /// Start of the refused map.
        iova: Iova,
        /// Its length in bytes.
        len: u64,
        /// Start of the map it overlaps.
        other: Iova,
        /// That map's length.
        other_len: u64,
    },
    #[error("{iova} + {len:#x} overlaps {other} + {other_len:#x}, already mapped in this IOMMU context (map guest memory once per context, not once per device)")]
    /// The range overlaps a map this IOMMU context already holds.
    AlreadyMapped {
        /// Start of the refused map.
        iova: Iova,
        /// Its length in bytes.
        len: u64,
        /// Start of the existing map.
        other: Iova,
        /// That map's length.
        other_len: u64,
    },
}

impl IovaSpace {
    /// Checks one map against the ranges, the reserved regions and the alignment.
    pub fn check(&self, iova: Iova, len: u64) -> Result<(), MapRefused> {
        if len == 0 {
            return Err(MapRefused::Empty(iova));
        }
        if iova.0.checked_add(len - 1).is_none() {
            return Err(MapRefused::Wraps { iova, len });
        }
        let a = self.alignment.max(1);
        if !iova.0.is_multiple_of(a) || !len.is_multiple_of(a) {
            return Err(MapRefused::Unaligned {
                iova,
                len,
                alignment: a,
            });
        }
        if !self.ranges.is_empty() && !self.ranges.iter().any(|r| r.contains(iova, len)) {
            let ranges: Vec<String> = self.ranges.iter().map(|r| r.to_string()).collect();
            return Err(MapRefused::OutsideRanges {
                iova,
                len,
                ranges: ranges.join(", "),
            });
        }
        if let Some(r) = self.reserved.iter().find(|r| r.range.overlaps(iova, len)) {
            return Err(MapRefused::Reserved {
                iova,
                len,
                kind: r.kind.clone(),
                range: r.range,
            });
        }
        Ok(())
    }

    /// Checks a set of maps: each one alone, and no two overlapping (a second map of the
    /// same IOVA is the EEXIST users hit when attaching several devices).
    pub fn check_all(&self, maps: &[(Iova, u64)]) -> Result<(), MapRefused> {
        for &(iova, len) in maps {
            self.check(iova, len)?;
        }
        let mut sorted = maps.to_vec();
        sorted.sort();
        for w in sorted.windows(2) {
            let (a, alen) = w[0];
            let (b, blen) = w[1];
            if a.0 + (alen - 1) >= b.0 {
                return Err(MapRefused::Overlap {
                    iova: b,
                    len: blen,
                    other: a,
                    other_len: alen,
                });
            }
        }
        Ok(())
    }
}

/// Checks new maps against those already live in the same IOMMU context: a second map of an
/// IOVA (the EEXIST users hit when several devices map the same guest RAM) is refused with
/// both ranges named, before the kernel is asked.
pub fn check_against_live(live: &[(Iova, u64)], new: &[(Iova, u64)]) -> Result<(), MapRefused> {
    for &(iova, len) in new {
        let end = iova.0.saturating_add(len.saturating_sub(1));
        if let Some(&(other, other_len)) = live
            .iter()
            .find(|&&(o, ol)| iova.0 <= o.0.saturating_add(ol.saturating_sub(1)) && end >= o.0)
        {
            return Err(MapRefused::AlreadyMapped {
                iova,
                len,
                other,
                other_len,
            });
        }
    }
    Ok(())
}

/// Parses the IOVA-range capability of `VFIO_IOMMU_GET_INFO` out of the info buffer:
/// `vfio_iommu_type1_info_cap_iova_range` = header(8) + nr_iovas(4) + reserved(4) +
/// nr_iovas × {start u64, end u64 (inclusive)}.
pub fn parse_type1_iova_ranges(cap: &[u8]) -> Option<Vec<IovaRange>> {
    let n = u32::from_ne_bytes(cap.get(8..12)?.try_into().ok()?) as usize;
    let mut v = Vec::with_capacity(n.min(64));
    for i in 0..n {
        let at = 16 + i * 16;
        let start = u64::from_ne_bytes(cap.get(at..at + 8)?.try_into().ok()?);
        let last = u64::from_ne_bytes(cap.get(at + 8..at + 16)?.try_into().ok()?);
        if last < start {
            return None;
        }
        v.push(IovaRange { start, last });
    }
    Some(v)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn space() -> IovaSpace {
        IovaSpace {
            ranges: vec![
                IovaRange {
                    start: 0,
                    last: 0xfedf_ffff,
                },
                IovaRange {
                    start: 0xfef0_0000,
                    last: 0x0000_ffff_ffff_ffff,
                },
            ],
            reserved: vec![Reserved {
                range: IovaRange {
                    start: 0xfee0_0000,
                    last: 0xfeef_ffff,
                },
                kind: "msi".into(),
            }],
            alignment: 4096,
        }
    }

    #[test]
    fn checks() {
        let s = space();
        s.check(Iova(0), 1 << 30).unwrap();
        s.check(Iova(0x1_0000_0000), 1 << 30).unwrap();
        assert!(matches!(s.check(Iova(0), 0), Err(MapRefused::Empty(_))));
        assert!(matches!(
            s.check(Iova(0x1001), 4096),
            Err(MapRefused::Unaligned { .. })
        ));
        // Straddles the MSI window: outside the ranges (the ranges exclude it).
        let e = s.check(Iova(0xfe00_0000), 0x20_0000 * 8).unwrap_err();
        assert!(matches!(e, MapRefused::OutsideRanges { .. }), "{e}");
        assert!(e.to_string().contains("[0x0, 0xfedfffff]"), "{e}");
        // Beyond the 48-bit address width.
        assert!(matches!(
            s.check(Iova(1 << 48), 4096),
            Err(MapRefused::OutsideRanges { .. })
        ));
        assert!(matches!(
            s.check(Iova(u64::MAX - 4095), 8192),
            Err(MapRefused::Wraps { .. })
        ));
        // Without reported ranges, reserved regions still refuse.
        let only_reserved = IovaSpace {
            ranges: vec![],
            ..space()
        };
        let e = only_reserved.check(Iova(0xfee0_0000), 4096).unwrap_err();
        assert!(e.to_string().contains("reserved msi region"), "{e}");
    }

    #[test]
    fn overlapping_maps_are_refused() {
        let s = space();
        s.check_all(&[(Iova(0), 0x1000), (Iova(0x1000), 0x1000)])
            .unwrap();
        let e = s
            .check_all(&[(Iova(0x2000), 0x2000), (Iova(0), 0x3000)])
            .unwrap_err();
        assert!(matches!(e, MapRefused::Overlap { .. }), "{e}");
    }

    #[test]
    fn maps_already_live_in_the_context_are_refused() {
        let live = [(Iova(0), 0x10_0000), (Iova(0x100_0000), 0x20_0000)];
        check_against_live(&live, &[(Iova(0x10_0000), 0x1000)]).unwrap();
        let e = check_against_live(
            &live,
            &[(Iova(0x10_0000), 0x1000), (Iova(0x110_0000), 0x1000)],
        )
        .unwrap_err();
        assert!(
            matches!(
                e,
                MapRefused::AlreadyMapped {
                    other: Iova(0x100_0000),
                    ..
                }
            ),
            "{e}"
        );
        assert!(e.to_string().contains("once per context"), "{e}");
        check_against_live(&[], &[(Iova(0), 1)]).unwrap();
    }

    #[test]
    fn type1_cap_parsing() {
        let mut cap = vec![0u8; 16];
        cap[0..2].copy_from_slice(&1u16.to_ne_bytes());
        cap[8..12].copy_from_slice(&2u32.to_ne_bytes());
        for (s, e) in [(0u64, 0xfedf_ffffu64), (0xfef0_0000, 0x7f_ffff_ffff)] {
            cap.extend_from_slice(&s.to_ne_bytes());
            cap.extend_from_slice(&e.to_ne_bytes());
        }
        let r = parse_type1_iova_ranges(&cap).unwrap();
        assert_eq!(r.len(), 2);
        assert_eq!(r[1].last, 0x7f_ffff_ffff);
        assert!(parse_type1_iova_ranges(&cap[..40]).is_none(), "truncated");
        let mut bad = cap.clone();
        bad[16..24].copy_from_slice(&u64::MAX.to_ne_bytes());
        assert!(parse_type1_iova_ranges(&bad).is_none(), "start after end");
    }

    proptest! {
        /// A map that passes the check lies entirely inside one range and touches no
        /// reserved region; one that fails does not.
        #[test]
        fn check_agrees_with_brute_force(page in 0u64..0x200_000, pages in 1u64..1024) {
            let s = space();
            let iova = Iova(page * 4096);
            let len = pages * 4096;
            let end = iova.0 + len - 1;
            let inside = s.ranges.iter().any(|r| iova.0 >= r.start && end <= r.last);
            let reserved = s.reserved.iter().any(|r| iova.0 <= r.range.last && end >= r.range.start);
            prop_assert_eq!(s.check(iova, len).is_ok(), inside && !reserved);
        }
    }
}

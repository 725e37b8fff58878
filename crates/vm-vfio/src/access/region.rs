//! VFIO regions: what `VFIO_DEVICE_GET_REGION_INFO` says about each BAR, the config space
//! and the ROM, and which parts of a BAR may be mmap'ed.
//!
//! The capability chain is parsed here from the raw ioctl buffer (so it is tested without a
//! device), and the MSI-X table and PBA are cut out of the mmap'able areas: a VMM must trap
//! those pages to virtualise MSI-X, whatever the kernel would allow.

use std::fmt;

use vm_pci::config::MsixCap;

/// `VFIO_REGION_INFO_FLAG_*`.
pub const FLAG_READ: u32 = 1;
/// `VFIO_REGION_INFO_FLAG_WRITE`.
pub const FLAG_WRITE: u32 = 2;
/// `VFIO_REGION_INFO_FLAG_MMAP`.
pub const FLAG_MMAP: u32 = 4;
/// `VFIO_REGION_INFO_FLAG_CAPS`.
pub const FLAG_CAPS: u32 = 8;
const CAP_SPARSE_MMAP: u16 = 1;
const CAP_TYPE: u16 = 2;
const CAP_MSIX_MAPPABLE: u16 = 3;
/// `sizeof(struct vfio_region_info)`.
pub const REGION_INFO_LEN: usize = 32;

/// The PCI region indexes of vfio-pci.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub enum RegionIndex {
    /// BAR 0..=5.
    Bar(u8),
    /// The expansion ROM.
    Rom,
    /// PCI config space.
    Config,
    /// Legacy VGA ranges.
    Vga,
    /// Device-specific regions beyond the fixed ones.
    Other(u32),
}

impl RegionIndex {
    /// The config-space region's index number.
    pub const CONFIG: u32 = 7;
    /// The region for the kernel's index number.
    pub fn from_raw(i: u32) -> RegionIndex {
        match i {
            0..=5 => RegionIndex::Bar(i as u8),
            6 => RegionIndex::Rom,
            7 => RegionIndex::Config,
            8 => RegionIndex::Vga,
            n => RegionIndex::Other(n),
        }
    }
    /// The kernel's index number.
    pub fn raw(self) -> u32 {
        match self {
            RegionIndex::Bar(b) => u32::from(b),
            RegionIndex::Rom => 6,
            RegionIndex::Config => 7,
            RegionIndex::Vga => 8,
            RegionIndex::Other(n) => n,
        }
    }
}

impl fmt::Display for RegionIndex {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            RegionIndex::Bar(b) => write!(f, "BAR{b}"),
            RegionIndex::Rom => f.write_str("ROM"),
            RegionIndex::Config => f.write_str("config"),
            RegionIndex::Vga => f.write_str("VGA"),
            RegionIndex::Other(n) => write!(f, "region {n}"),
        }
    }
}

/// A byte range `[offset, offset + size)` within a region.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, serde::Serialize)]
pub struct Area {
    /// Start, from the region's start.
    pub offset: u64,
    /// Length in bytes.
    pub size: u64,
}

impl Area {
    /// First byte past the area.
    pub fn end(&self) -> u64 {
        self.offset + self.size
    }
}

/// One region as the kernel describes it.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct RegionInfo {
    /// Which region.
    pub index: RegionIndex,
    /// `VFIO_REGION_INFO_FLAG_*`.
    pub flags: u32,
    /// Size in bytes.
    pub size: u64,
    /// Offset of the region in the device file (for pread/pwrite/mmap).
    pub offset: u64,
    /// Sparse-mmap areas, when the kernel limits mmap to parts of the region.
    pub sparse: Option<Vec<Area>>,
    /// (type, subtype) of a device-specific region.
    pub region_type: Option<(u32, u32)>,
    /// The kernel allows mmap of the MSI-X table (VFIO_REGION_INFO_CAP_MSIX_MAPPABLE).
    pub msix_mappable: bool,
}

impl RegionInfo {
    /// The region can be read.
    pub fn readable(&self) -> bool {
        self.flags & FLAG_READ != 0
    }
    /// The region can be written.
    pub fn writable(&self) -> bool {
        self.flags & FLAG_WRITE != 0
    }
    /// The region (or parts of it) can be mmap'ed.
    pub fn mmappable(&self) -> bool {
        self.flags & FLAG_MMAP != 0
    }

    /// The parts of the region a VMM may mmap: the sparse areas (or the whole region) less
    /// the `holes` rounded out to `page` boundaries. Empty when the region is not mmap'able.
    pub fn mmap_areas(&self, holes: &[Area], page: u64) -> Vec<Area> {
        if !self.mmappable() || self.size == 0 {
            return Vec::new();
        }
        let base = self.sparse.clone().unwrap_or_else(|| {
            vec![Area {
                offset: 0,
                size: self.size,
            }]
        });
        subtract(&base, holes, page)
    }
}

/// Why a region-info buffer could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed region info: {0}")]
pub struct RegionParseError(pub String);

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(at..at + 2)?.try_into().ok()?))
}
fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}
fn u64_at(b: &[u8], at: usize) -> Option<u64> {
    Some(u64::from_ne_bytes(b.get(at..at + 8)?.try_into().ok()?))
}

/// Walks a VFIO capability chain (`struct vfio_info_cap_header { u16 id; u16 version;
/// u32 next; }`, offsets from the buffer start) and returns `(id, offset)` pairs. Loops and
/// out-of-buffer offsets are errors.
pub fn cap_chain(buf: &[u8], first: u32) -> Result<Vec<(u16, usize)>, RegionParseError> {
    let mut out = Vec::new();
    let mut at = first as usize;
    while at != 0 {
        if out.len() > 64 || out.iter().any(|&(_, o)| o == at) {
            return Err(RegionParseError(format!(
                "capability chain loops at {at:#x}"
            )));
        }
        let id = u16_at(buf, at).ok_or_else(|| {
            RegionParseError(format!(
                "capability at {at:#x} past the buffer ({} bytes)",
                buf.len()
            ))
        })?;
        let next = u32_at(buf, at + 4)
            .ok_or_else(|| RegionParseError(format!("capability at {at:#x} truncated")))?;
        out.push((id, at));
        at = next as usize;
    }
    Ok(out)
}

/// Parses a `VFIO_DEVICE_GET_REGION_INFO` result (the struct plus its capability chain).
pub fn parse_region_info(buf: &[u8]) -> Result<RegionInfo, RegionParseError> {
    let short = || RegionParseError(format!("{} bytes, need {REGION_INFO_LEN}", buf.len()));
    let flags = u32_at(buf, 4).ok_or_else(short)?;
    let index = u32_at(buf, 8).ok_or_else(short)?;
    let cap_offset = u32_at(buf, 12).ok_or_else(short)?;
    let size = u64_at(buf, 16).ok_or_else(short)?;
    let offset = u64_at(buf, 24).ok_or_else(short)?;
    let mut info = RegionInfo {
        index: RegionIndex::from_raw(index),
        flags,
        size,
        offset,
        sparse: None,
        region_type: None,
        msix_mappable: false,
    };
    if flags & FLAG_CAPS == 0 || cap_offset == 0 {
        return Ok(info);
    }
    for (id, at) in cap_chain(buf, cap_offset)? {
        match id {
            CAP_SPARSE_MMAP => {
                let n = u32_at(buf, at + 8)
                    .ok_or_else(|| RegionParseError("sparse-mmap capability truncated".into()))?;
                let mut areas = Vec::new();
                for i in 0..n as usize {
                    let a = at + 16 + i * 16;
                    let (Some(o), Some(s)) = (u64_at(buf, a), u64_at(buf, a + 8)) else {
                        return Err(RegionParseError(format!(
                            "sparse-mmap area {i} of {n} past the buffer"
                        )));
                    };
                    if o.checked_add(s).is_none_or(|e| e > size) {
                        return Err(RegionParseError(format!(
                            "sparse-mmap area {o:#x}+{s:#x} exceeds the {size:#x}-byte region"
                        )));
                    }
                    if s != 0 {
                        areas.push(Area { offset: o, size: s });
                    }
                }
                areas.sort();
                info.sparse = Some(areas);
            }
            CAP_TYPE => {
                let t = u32_at(buf, at + 8);
                let st = u32_at(buf, at + 12);
                if let (Some(t), Some(st)) = (t, st) {
                    info.region_type = Some((t, st));
                }
            }
            CAP_MSIX_MAPPABLE => info.msix_mappable = true,
            other => log::debug!("region {index}: ignoring capability {other}"),
        }
    }
    Ok(info)
}

/// The MSI-X table and PBA ranges inside BAR `bar`, from the device's MSI-X capability.
pub fn msix_holes(msix: &MsixCap, bar: u8) -> Vec<Area> {
    let mut v = Vec::new();
    if msix.table.bar == bar {
        v.push(Area {
            offset: u64::from(msix.table.offset),
            size: msix.table_len(),
        });
    }
    if msix.pba.bar == bar {
        v.push(Area {
            offset: u64::from(msix.pba.offset),
            size: msix.pba_len(),
        });
    }
    v
}

/// `base` minus every hole, each hole widened to whole `page`s; empty pieces dropped.
pub fn subtract(base: &[Area], holes: &[Area], page: u64) -> Vec<Area> {
    let page = page.max(1);
    let mut cut: Vec<(u64, u64)> = holes
        .iter()
        .filter(|h| h.size > 0)
        .map(|h| {
            let s = h.offset / page * page;
            let e = h.end().div_ceil(page).saturating_mul(page);
            (s, e)
        })
        .collect();
    cut.sort();
    let mut out = Vec::new();
    for a in base {
        let mut pieces = vec![(a.offset, a.end())];
        for &(hs, he) in &cut {
            let mut next = Vec::new();
            for (s, e) in pieces {
                if he <= s || hs >= e {
                    next.push((s, e));
                    continue;
                }
                if hs > s {
                    next.push((s, hs));
                }
                if he < e {
                    next.push((he, e));
                }
            }
            pieces = next;
        }
        out.extend(
            pieces
                .into_iter()
                .filter(|(s, e)| e > s)
                .map(|(s, e)| Area {
                    offset: s,
                    size: e - s,
                }),
        );
    }
    out.sort();
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;
    use vm_pci::config::BarLocation;

    /// A region-info buffer as the kernel fills it.
    fn info_buf(
        flags: u32,
        index: u32,
        size: u64,
        offset: u64,
        caps: &[(u16, Vec<u8>)],
    ) -> Vec<u8> {
        let mut b = vec![0u8; REGION_INFO_LEN];
        b[4..8].copy_from_slice(&flags.to_ne_bytes());
        b[8..12].copy_from_slice(&index.to_ne_bytes());
        b[16..24].copy_from_slice(&size.to_ne_bytes());
        b[24..32].copy_from_slice(&offset.to_ne_bytes());
        let mut prev: Option<usize> = None;
        for (id, body) in caps {
            let at = b.len();
            match prev {
                None => b[12..16].copy_from_slice(&(at as u32).to_ne_bytes()),
                Some(p) => b[p + 4..p + 8].copy_from_slice(&(at as u32).to_ne_bytes()),
            }
            b.extend_from_slice(&id.to_ne_bytes());
            b.extend_from_slice(&1u16.to_ne_bytes());
            b.extend_from_slice(&0u32.to_ne_bytes());
            b.extend_from_slice(body);
            prev = Some(at);
        }
        let len = b.len() as u32;
        b[0..4].copy_from_slice(&len.to_ne_bytes());
        b
    }

    fn sparse(areas: &[(u64, u64)]) -> Vec<u8> {
        let mut v = Vec::new();
        v.extend_from_slice(&(areas.len() as u32).to_ne_bytes());
        v.extend_from_slice(&0u32.to_ne_bytes());
        for (o, s) in areas {
            v.extend_from_slice(&o.to_ne_bytes());
            v.extend_from_slice(&s.to_ne_bytes());
        }
        v
    }

    #[test]
    fn parses_plain_and_capability_regions() {
        let r = parse_region_info(&info_buf(7, 0, 1 << 20, 0, &[])).unwrap();
        assert_eq!(r.index, RegionIndex::Bar(0));
        assert!(r.readable() && r.writable() && r.mmappable());
        assert_eq!(r.sparse, None);

        let buf = info_buf(
            FLAG_READ | FLAG_WRITE | FLAG_MMAP | FLAG_CAPS,
            2,
            0x100_0000,
            2 << 40,
            &[
                (CAP_SPARSE_MMAP, sparse(&[(0x1000, 0xfff000), (0, 0)])),
                (
                    CAP_TYPE,
                    [0x8000_10deu32.to_ne_bytes(), 1u32.to_ne_bytes()].concat(),
                ),
                (CAP_MSIX_MAPPABLE, vec![]),
            ],
        );
        let r = parse_region_info(&buf).unwrap();
        assert_eq!(r.index, RegionIndex::Bar(2));
        assert_eq!(r.offset, 2 << 40);
        assert_eq!(
            r.sparse,
            Some(vec![Area {
                offset: 0x1000,
                size: 0xfff000
            }])
        );
        assert_eq!(r.region_type, Some((0x8000_10de, 1)));
        assert!(r.msix_mappable);
    }

    #[test]
    fn malformed_buffers_are_errors_not_panics() {
        assert!(parse_region_info(&[0u8; 16]).is_err());
        let buf = info_buf(
            FLAG_CAPS | FLAG_MMAP,
            0,
            0x1000,
            0,
            &[(CAP_SPARSE_MMAP, sparse(&[(0, 0x2000)]))],
        );
        let e = parse_region_info(&buf).unwrap_err();
        assert!(e.to_string().contains("exceeds"), "{e}");
        // A chain that points at itself.
        let mut buf = info_buf(FLAG_CAPS, 0, 0x1000, 0, &[(CAP_MSIX_MAPPABLE, vec![])]);
        buf[36..40].copy_from_slice(&32u32.to_ne_bytes());
        assert!(parse_region_info(&buf)
            .unwrap_err()
            .to_string()
            .contains("loops"));
        // A count larger than the buffer.
        let mut body = sparse(&[(0, 0x1000)]);
        body[0..4].copy_from_slice(&1000u32.to_ne_bytes());
        let buf = info_buf(
            FLAG_CAPS | FLAG_MMAP,
            0,
            0x1000,
            0,
            &[(CAP_SPARSE_MMAP, body)],
        );
        assert!(parse_region_info(&buf).is_err());
    }

    #[test]
    fn msix_table_and_pba_are_cut_out_page_aligned() {
        // An H100-like BAR0: 16 MiB, MSI-X table at 0xb90000 (2048 entries... here 64) and
        // PBA at 0xba0000.
        let msix = MsixCap {
            enabled: false,
            function_mask: false,
            table_size: 64,
            table: BarLocation {
                bar: 0,
                offset: 0xb9_0000,
            },
            pba: BarLocation {
                bar: 0,
                offset: 0xba_0000,
            },
        };
        let holes = msix_holes(&msix, 0);
        assert_eq!(
            holes,
            vec![
                Area {
                    offset: 0xb9_0000,
                    size: 64 * 16
                },
                Area {
                    offset: 0xba_0000,
                    size: 8
                }
            ]
        );
        assert!(msix_holes(&msix, 2).is_empty());
        let region = RegionInfo {
            index: RegionIndex::Bar(0),
            flags: FLAG_READ | FLAG_WRITE | FLAG_MMAP,
            size: 0x100_0000,
            offset: 0,
            sparse: None,
            region_type: None,
            msix_mappable: true,
        };
        let areas = region.mmap_areas(&holes, 4096);
        assert_eq!(
            areas,
            vec![
                Area {
                    offset: 0,
                    size: 0xb9_0000
                },
                Area {
                    offset: 0xb9_1000,
                    size: 0xf000
                },
                Area {
                    offset: 0xba_1000,
                    size: 0x100_0000 - 0xba_1000
                },
            ]
        );
        let not_mmap = RegionInfo {
            flags: FLAG_READ,
            ..region
        };
        assert!(not_mmap.mmap_areas(&[], 4096).is_empty());
    }

    proptest! {
        /// Every byte of the result is in the base, in no (page-widened) hole, and every
        /// base byte outside the holes is kept.
        #[test]
        fn subtract_is_exact(
            base in prop::collection::vec((0u64..64, 1u64..16), 1..4),
            holes in prop::collection::vec((0u64..80, 0u64..5), 0..4),
        ) {
            let page = 4u64;
            let base: Vec<Area> = base.iter().map(|&(o, s)| Area { offset: o * 4, size: s * 4 }).collect();
            // Base areas must not overlap (sparse areas never do).
            let mut sorted = base.clone();
            sorted.sort();
            prop_assume!(sorted.windows(2).all(|w| w[0].end() <= w[1].offset));
            let holes: Vec<Area> = holes.iter().map(|&(o, s)| Area { offset: o * 3, size: s * 3 }).collect();
            let out = subtract(&base, &holes, page);
            for byte in 0u64..400 {
                let in_base = base.iter().any(|a| byte >= a.offset && byte < a.end());
                let in_hole = holes.iter().filter(|h| h.size > 0).any(|h| {
                    byte >= h.offset / page * page && byte < h.end().div_ceil(page) * page
                });
                let in_out = out.iter().any(|a| byte >= a.offset && byte < a.end());
                prop_assert_eq!(in_out, in_base && !in_hole, "byte {}", byte);
            }
        }
    }
}

//! The guest's view of the device's config space: shadow BARs, emulated MSI and MSI-X
//! capabilities, hidden capabilities, and which guest writes reach the device.
//!
//! [`VirtualConfig`] decides, bit by bit, where each guest access goes. Every config byte has
//! a rule built once from the device's config space (walked with [`vm_pci::ConfigSpace`]):
//! bits served from the emulated copy (BARs, ROM, interrupt line, MSI/MSI-X, hidden and added
//! capabilities), bits the guest may not change (read-only header fields, link control), and
//! the rest, which passes through to the device. docs/embedding.md has the table.

use vm_pci::config::CapDetail;
use vm_pci::ConfigSpace;

use super::backend::DeviceBackend;
use super::error::{Error, Result};

/// Where the device's MSI capability is and what it can do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiLayout {
    /// Config-space offset of the capability.
    pub offset: u16,
    /// Vectors the device can use (1, 2, 4 ... 32).
    pub max_vectors: u32,
    /// 64-bit message address.
    pub is_64bit: bool,
    /// Per-vector mask and pending bits.
    pub per_vector_mask: bool,
}

/// Where the device's MSI-X capability, table and PBA are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsixLayout {
    /// Config-space offset of the capability.
    pub offset: u16,
    /// Number of table entries (1..=2048).
    pub table_size: u16,
    /// BAR holding the table, and its offset there.
    pub table_bar: u8,
    /// Offset of the table inside `table_bar`.
    pub table_offset: u32,
    /// BAR holding the pending-bit array.
    pub pba_bar: u8,
    /// Offset of the PBA inside `pba_bar`.
    pub pba_offset: u32,
}

impl MsixLayout {
    /// Bytes of the table (16 per entry).
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * 16
    }
    /// Bytes of the PBA (one bit per entry, in 64-bit words).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
}

/// The guest's MSI programming, as the emulated capability holds it after a write.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct MsiState {
    /// MSI Enable.
    pub enabled: bool,
    /// Vectors the guest enabled (1 << Multiple Message Enable).
    pub vectors: u32,
    /// Message address (64-bit when the capability is).
    pub address: u64,
    /// Message data of vector 0 (vector n uses `data | n`).
    pub data: u16,
    /// Per-vector mask bits (0 without per-vector masking).
    pub mask: u32,
}

/// What a guest config write changed that the rest of attach must act on.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConfigEvent {
    /// BAR `bar` must be served at `to` from now on (a relocation the guest made while the
    /// BAR's decoding was on, or decoding turned on with a new address). The device moves
    /// its memory slots, then confirms with `VirtualConfig::bar_applied` or undoes the
    /// shadow with `VirtualConfig::rollback_bar`.
    BarMove {
        /// BAR index (the low register of a 64-bit pair).
        bar: u8,
        /// New guest physical address.
        to: u64,
    },
    /// The MSI capability changed.
    Msi(MsiState),
    /// The MSI-X control word changed.
    Msix {
        /// MSI-X Enable.
        enabled: bool,
        /// Function Mask.
        function_mask: bool,
    },
}

/// What a BAR register declares.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BarKind {
    /// 32-bit memory BAR.
    Mem32,
    /// 64-bit memory BAR (this register and the next hold the address).
    Mem64,
    /// I/O port BAR.
    Io,
}

/// One BAR as the guest sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GuestBar {
    /// BAR index (the low register of a 64-bit pair).
    pub index: u8,
    /// Memory (32/64-bit) or I/O.
    pub kind: BarKind,
    /// Size in bytes (a power of two).
    pub size: u64,
    /// Prefetchable memory.
    pub prefetchable: bool,
}

/// Choices the VMM makes about the guest's view of the device.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ConfigOptions {
    /// Add NVIDIA's GPUDirect P2P clique capability with this clique id (0..=15), as QEMU's
    /// `x-nv-gpudirect-clique` does: GPUs of one clique may do P2P in the guest.
    pub gpudirect_clique: Option<u8>,
}

/// Full PCIe config space; accesses must fall inside it.
const CFG_LEN: usize = 0x1000;
/// Conventional config space (standard capabilities live below it).
const LEGACY_LEN: usize = 0x100;
const COMMAND: usize = 0x04;
const CMD_IO: u16 = 1 << 0;
const CMD_MEM: u16 = 1 << 1;
const STATUS: usize = 0x06;
const STATUS_CAP_LIST: u8 = 0x10;
const HEADER_TYPE: usize = 0x0e;
const BAR0: usize = 0x10;
const ROM: usize = 0x30;
const CAP_PTR: usize = 0x34;
const INT_LINE: usize = 0x3c;
const HEADER_LEN: usize = 0x40;

const CAP_PM: u8 = 0x01;
const CAP_MSI: u8 = 0x05;
const CAP_VENDOR: u8 = 0x09;
const CAP_PCIE: u8 = 0x10;
const CAP_MSIX: u8 = 0x11;

const EXT_ARI: u16 = 0x000e;
const EXT_SRIOV: u16 = 0x0010;
const EXT_REBAR: u16 = 0x0015;
const EXT_VF_REBAR: u16 = 0x0024;
/// Extended capabilities the guest must not see: ARI and SR-IOV describe functions that are
/// not passed through, and resizing a BAR would change a region the VMM has mapped (VF
/// Resizable BAR belongs to the hidden SR-IOV capability).
const HIDDEN_EXT: [u16; 4] = [EXT_ARI, EXT_SRIOV, EXT_REBAR, EXT_VF_REBAR];

/// Where QEMU and Cloud Hypervisor put the GPUDirect clique capability; NVIDIA's driver
/// accepts it anywhere in the standard list.
const GPUDIRECT_AT: usize = 0xd4;
const GPUDIRECT_LEN: usize = 8;
const GPUDIRECT_MAX_CLIQUE: u8 = 15;

/// How one config byte is served, bit by bit.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct ByteRule {
    /// Bits read from the emulated copy; never written to the device.
    virt: u8,
    /// Emulated bits a guest write changes (a subset of `virt`).
    wmask: u8,
    /// Pass-through bits the guest may not change: the device's current value is written
    /// back in their place (bits neither here nor in `virt` pass through).
    keep: u8,
}

impl ByteRule {
    const READ_ONLY: ByteRule = ByteRule {
        virt: 0,
        wmask: 0,
        keep: 0xff,
    };
    fn emulated(wmask: u8) -> ByteRule {
        ByteRule {
            virt: 0xff,
            wmask,
            keep: 0,
        }
    }
    /// Whether any bit of a guest write reaches the device.
    fn reaches_device(self) -> bool {
        self.virt | self.keep != 0xff
    }
}

/// A BAR's shadow register and where the device serves it.
#[derive(Debug, Clone, Copy)]
struct BarState {
    kind: BarKind,
    size: u64,
    prefetchable: bool,
    /// The address the guest's BAR registers hold now.
    shadow: u64,
    /// The address the device is served at (memory slots, MMIO dispatch).
    applied: u64,
    /// Per register (low, high): the guest's last write was all ones (BAR sizing), so the
    /// shadow holds the size mask, not an address.
    sizing: [bool; 2],
}

impl BarState {
    /// The address bits the BAR implements.
    fn addr_mask(&self) -> u64 {
        let low_flags: u64 = if self.kind == BarKind::Io { 0x3 } else { 0xf };
        let width = if self.kind == BarKind::Mem64 {
            u64::MAX
        } else {
            0xffff_ffff
        };
        !(self.size - 1) & width & !low_flags
    }
    fn flags(&self) -> u32 {
        let pf = if self.prefetchable { 0x8 } else { 0 };
        match self.kind {
            BarKind::Io => 0x1,
            BarKind::Mem32 => pf,
            BarKind::Mem64 => 0x4 | pf,
        }
    }
    fn register(&self, half: usize) -> u32 {
        let a = self.shadow & self.addr_mask();
        if half == 0 {
            (a as u32) | self.flags()
        } else {
            (a >> 32) as u32
        }
    }
    fn write_register(&mut self, half: usize, raw: u32) {
        self.sizing[half] = raw == u32::MAX;
        let v = if half == 0 {
            (self.shadow & !0xffff_ffff) | u64::from(raw)
        } else {
            (self.shadow & 0xffff_ffff) | u64::from(raw) << 32
        };
        self.shadow = v & self.addr_mask();
    }
    fn decode_bit(&self) -> u16 {
        if self.kind == BarKind::Io {
            CMD_IO
        } else {
            CMD_MEM
        }
    }
}

/// The guest's view of one device's config space (see the module documentation).
///
/// It holds no reference to the device: every access takes the [`DeviceBackend`] whose
/// config space it was built from. Until the guest's first COMMAND write, the decoding
/// bits that gate BAR moves are the device's own (what the guest reads there).
pub struct VirtualConfig {
    name: String,
    /// Bytes of config space the device implements (256 for conventional PCI, else 4096).
    len: usize,
    rules: Vec<ByteRule>,
    emu: Vec<u8>,
    /// Per BAR index: the BAR whose low register it is.
    bars: [Option<BarState>; 6],
    /// Per BAR register: the BAR it belongs to and which half (0 low, 1 high).
    reg_owner: [Option<(usize, usize)>; 6],
    /// COMMAND as the guest last wrote it (the device's value until the first write).
    command: u16,
    msi: Option<(MsiLayout, u16)>,
    msi_state: MsiState,
    msix: Option<MsixLayout>,
    msix_state: (bool, bool),
    gpudirect_at: Option<u16>,
}

impl std::fmt::Debug for VirtualConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("VirtualConfig")
            .field("name", &self.name)
            .field("bars", &self.bars())
            .field("command", &format_args!("{:#06x}", self.command))
            .field("msi", &self.msi)
            .field("msix", &self.msix)
            .field("gpudirect_at", &self.gpudirect_at)
            .finish_non_exhaustive()
    }
}

fn le16(b: &[u8], off: usize) -> u16 {
    b.get(off..off + 2)
        .map_or(0, |s| u16::from_le_bytes([s[0], s[1]]))
}
fn le32(b: &[u8], off: usize) -> u32 {
    b.get(off..off + 4)
        .map_or(0, |s| u32::from_le_bytes([s[0], s[1], s[2], s[3]]))
}

/// Bytes of an MSI capability with these features.
fn msi_len(is_64bit: bool, per_vector_mask: bool) -> usize {
    match (is_64bit, per_vector_mask) {
        (false, false) => 0x0a,
        (true, false) => 0x0e,
        (false, true) => 0x14,
        (true, true) => 0x18,
    }
}

/// The offsets of the MSI fields after the address: data, mask, pending.
fn msi_fields(l: &MsiLayout) -> (usize, usize, usize) {
    let base = usize::from(l.offset);
    if l.is_64bit {
        (base + 0x0c, base + 0x10, base + 0x14)
    } else {
        (base + 0x08, base + 0x0c, base + 0x10)
    }
}

/// Splits `len` bytes at `at` into naturally aligned 1/2/4-byte accesses.
fn aligned_pieces(mut at: usize, mut len: usize) -> Vec<(usize, usize)> {
    let mut out = Vec::new();
    while len > 0 {
        let n = if at.is_multiple_of(4) && len >= 4 {
            4
        } else if at.is_multiple_of(2) && len >= 2 {
            2
        } else {
            1
        };
        out.push((at, n));
        at += n;
        len -= n;
    }
    out
}

impl VirtualConfig {
    /// Builds the guest's view from the device's config space and BAR regions.
    ///
    /// Fails on what cannot be served: a non-endpoint header (vfio-pci binds only type-0
    /// functions), unreadable config space, a BAR that is not a power of two or does not
    /// fit its register, MSI/MSI-X capabilities that run out of config space or point at a
    /// missing BAR, or a GPUDirect clique with no room for its capability.
    pub fn new(dev: &dyn DeviceBackend, opts: &ConfigOptions) -> Result<VirtualConfig> {
        let name = dev.name();
        let invalid = |reason: String| Error::invalid(name.clone(), "virtual config", reason);
        let mut bytes = vec![0u8; LEGACY_LEN];
        dev.config_read(0, &mut bytes)?;
        let mut ext = vec![0u8; CFG_LEN - LEGACY_LEN];
        let len = match dev.config_read(LEGACY_LEN as u64, &mut ext) {
            Ok(()) => {
                bytes.extend_from_slice(&ext);
                CFG_LEN
            }
            Err(e) => {
                log::debug!("{name}: no extended config space ({e}): conventional PCI");
                LEGACY_LEN
            }
        };
        if le16(&bytes, 0) == 0xffff {
            return Err(invalid(
                "vendor id reads 0xffff: the device does not respond".into(),
            ));
        }
        let header = bytes[HEADER_TYPE] & 0x7f;
        if header != 0 {
            return Err(invalid(format!(
                "header type {header}: only type-0 (endpoint) functions can be passed through"
            )));
        }

        let mut vc = VirtualConfig {
            name: name.clone(),
            len,
            rules: vec![ByteRule::default(); CFG_LEN],
            emu: vec![0u8; CFG_LEN],
            bars: [None; 6],
            reg_owner: [None; 6],
            command: le16(&bytes, COMMAND),
            msi: None,
            msi_state: MsiState::default(),
            msix: None,
            msix_state: (false, false),
            gpudirect_at: None,
        };

        // Header. Read-only fields: the guest's writes never reach the device.
        for r in [
            0x00..0x04,
            0x08..0x0c,
            0x0f..0x10,
            0x28..0x30,
            0x34..0x3c,
            0x3d..0x40,
        ] {
            for at in r {
                vc.rules[at] = ByteRule::READ_ONLY;
            }
        }
        vc.emulate(HEADER_TYPE, &[header], 0);
        vc.emulate(ROM, &[0; 4], 0);
        vc.emulate(INT_LINE, &[0], 0xff);
        // BAR registers are emulated whole; `write` runs their logic.
        vc.emulate(BAR0, &[0; 24], 0);
        vc.setup_bars(dev, &bytes)?;

        let caps = ConfigSpace::new(bytes.clone()).capabilities();
        vc.setup_msi(&bytes, &caps)?;
        vc.setup_msix(&bytes, &caps)?;
        vc.setup_pcie(&caps);
        vc.hide_ext_caps(&bytes, &caps);
        if let Some(clique) = opts.gpudirect_clique {
            vc.add_gpudirect(&bytes, &caps, clique)?;
        }
        Ok(vc)
    }

    /// Serves `init.len()` bytes at `at` from the emulated copy, `wmask` guest-writable.
    fn emulate(&mut self, at: usize, init: &[u8], wmask: u8) {
        for (i, &b) in init.iter().enumerate() {
            if let (Some(r), Some(e)) = (self.rules.get_mut(at + i), self.emu.get_mut(at + i)) {
                *r = ByteRule::emulated(wmask);
                *e = b;
            }
        }
    }

    fn setup_bars(&mut self, dev: &dyn DeviceBackend, bytes: &[u8]) -> Result<()> {
        let mut i = 0usize;
        while i < 6 {
            let idx = i as u8;
            let Some(region) = dev.bar_region(idx) else {
                i += 1;
                continue;
            };
            let reg = le32(bytes, BAR0 + 4 * i);
            let kind = if reg & 1 == 1 {
                BarKind::Io
            } else if (reg >> 1) & 3 == 2 {
                BarKind::Mem64
            } else {
                BarKind::Mem32
            };
            let bad = |why: String| Error::invalid(self.name.clone(), "virtual config", why);
            if kind == BarKind::Mem64 && i == 5 {
                return Err(bad("BAR 5 declares 64 bits but has no register pair".into()));
            }
            let size = region.size;
            if !size.is_power_of_two() {
                return Err(bad(format!("BAR {i} size {size:#x} is not a power of two")));
            }
            if kind != BarKind::Mem64 && size > 1 << 32 {
                return Err(bad(format!(
                    "BAR {i} is {size:#x} bytes, too large for a 32-bit register"
                )));
            }
            let min = if kind == BarKind::Io { 4 } else { 16 };
            let bar = BarState {
                kind,
                size: size.max(min),
                prefetchable: kind != BarKind::Io && reg & 0x8 != 0,
                shadow: 0,
                applied: 0,
                sizing: [false; 2],
            };
            self.bars[i] = Some(bar);
            self.reg_owner[i] = Some((i, 0));
            self.sync_bar(i);
            if kind == BarKind::Mem64 {
                self.reg_owner[i + 1] = Some((i, 1));
                if dev.bar_region(idx + 1).is_some() {
                    log::warn!(
                        "{}: BAR {} has a region but is the high half of 64-bit BAR {i}",
                        self.name,
                        i + 1
                    );
                }
                i += 1;
            }
            i += 1;
        }
        Ok(())
    }

    /// Writes BAR `bar`'s registers into the emulated copy.
    fn sync_bar(&mut self, bar: usize) {
        let Some(b) = self.bars.get(bar).copied().flatten() else {
            return;
        };
        let at = BAR0 + 4 * bar;
        self.emu[at..at + 4].copy_from_slice(&b.register(0).to_le_bytes());
        if b.kind == BarKind::Mem64 {
            self.emu[at + 4..at + 8].copy_from_slice(&b.register(1).to_le_bytes());
        }
    }

    fn setup_msi(&mut self, bytes: &[u8], caps: &vm_pci::CapabilityList) -> Result<()> {
        let Some((off, m)) = caps.standard.iter().find_map(|c| match &c.detail {
            CapDetail::Msi(m) if c.id == CAP_MSI => Some((usize::from(c.offset), m.clone())),
            _ => None,
        }) else {
            return Ok(());
        };
        let len = msi_len(m.is_64bit, m.per_vector_mask);
        if off + len > LEGACY_LEN {
            return Err(Error::invalid(
                self.name.clone(),
                "virtual config",
                format!("MSI capability at {off:#x} runs past 0x100"),
            ));
        }
        let layout = MsiLayout {
            offset: off as u16,
            max_vectors: u32::from(m.vectors),
            is_64bit: m.is_64bit,
            per_vector_mask: m.per_vector_mask,
        };
        // Everything starts zero (MSI off, as after reset) except the read-only bits:
        // header, Multiple Message Capable, 64-bit, per-vector masking.
        self.emulate(off, &[0; 0x18][..len], 0);
        self.emulate(off, &bytes[off..off + 2], 0);
        self.emulate(off + 2, &[bytes[off + 2] & 0x8e], 0x71);
        self.emulate(off + 3, &[bytes[off + 3] & 0x01], 0);
        self.emulate(off + 4, &[0; 4], 0xff);
        self.rules[off + 4].wmask = 0xfc;
        if m.is_64bit {
            self.emulate(off + 8, &[0; 4], 0xff);
        }
        let (data, mask, _) = msi_fields(&layout);
        self.emulate(data, &[0; 2], 0xff);
        if m.per_vector_mask {
            let valid = if layout.max_vectors >= 32 {
                u32::MAX
            } else {
                (1u32 << layout.max_vectors) - 1
            };
            for (i, w) in valid.to_le_bytes().into_iter().enumerate() {
                self.rules[mask + i].wmask = w;
            }
        }
        self.msi = Some((layout, len as u16));
        Ok(())
    }

    fn setup_msix(&mut self, bytes: &[u8], caps: &vm_pci::CapabilityList) -> Result<()> {
        let Some((off, m)) = caps.standard.iter().find_map(|c| match &c.detail {
            CapDetail::Msix(m) if c.id == CAP_MSIX => Some((usize::from(c.offset), m.clone())),
            _ => None,
        }) else {
            return Ok(());
        };
        let bad = |why: String| Error::invalid(self.name.clone(), "virtual config", why);
        if off + 12 > LEGACY_LEN {
            return Err(bad(format!("MSI-X capability at {off:#x} runs past 0x100")));
        }
        for (what, loc, len) in [
            ("table", m.table, m.table_len()),
            ("PBA", m.pba, m.pba_len()),
        ] {
            let bar = self.bars.get(usize::from(loc.bar)).copied().flatten();
            let fits = bar.is_some_and(|b| u64::from(loc.offset) + len <= b.size);
            if !fits {
                return Err(bad(format!(
                    "MSI-X {what} ({len:#x} bytes at {:#x} in BAR {}) is outside the device's BARs",
                    loc.offset, loc.bar
                )));
            }
        }
        // The capability reads as the device has it, with MSI-X off; only Enable and
        // Function Mask are writable, and they never reach the device (attach drives VFIO).
        self.emulate(off, &bytes[off..off + 12], 0);
        self.emulate(off + 3, &[bytes[off + 3] & 0x07], 0xc0);
        self.msix = Some(MsixLayout {
            offset: off as u16,
            table_size: m.table_size,
            table_bar: m.table.bar,
            table_offset: m.table.offset,
            pba_bar: m.pba.bar,
            pba_offset: m.pba.offset,
        });
        Ok(())
    }

    /// PCIe Link Control's Link Disable and Retrain Link, and all of Link Control 2 (target
    /// speed, compliance modes): a guest must not take the physical link down or retune it.
    fn setup_pcie(&mut self, caps: &vm_pci::CapabilityList) {
        let Some((off, version)) = caps.standard.iter().find_map(|c| match &c.detail {
            CapDetail::Pcie(p) if c.id == CAP_PCIE => Some((usize::from(c.offset), p.version)),
            _ => None,
        }) else {
            return;
        };
        if off + 0x12 <= LEGACY_LEN {
            self.rules[off + 0x10].keep |= 0x30;
        }
        if version >= 2 && off + 0x32 <= LEGACY_LEN {
            self.rules[off + 0x30] = ByteRule::READ_ONLY;
            self.rules[off + 0x31] = ByteRule::READ_ONLY;
        }
    }

    /// Hidden extended capabilities keep their next pointer (the chain stays walkable) but
    /// read id 0, and their bodies read 0 and drop writes.
    fn hide_ext_caps(&mut self, bytes: &[u8], caps: &vm_pci::CapabilityList) {
        let mut starts: Vec<usize> = caps
            .extended
            .iter()
            .map(|c| usize::from(c.offset))
            .collect();
        starts.sort_unstable();
        for c in caps.extended.iter().filter(|c| HIDDEN_EXT.contains(&c.id)) {
            let off = usize::from(c.offset);
            let body = match c.id {
                EXT_ARI => 8,
                EXT_SRIOV => 0x40,
                // Resizable BAR: one capability/control pair per resizable BAR (1..=6).
                _ => 4 + 8 * ((le32(bytes, off + 8) >> 5) & 7).clamp(1, 6) as usize,
            };
            let hdr = le32(bytes, off) & 0xfff0_0000;
            // Never blank the header the chain goes on to (null capabilities included,
            // which the walker does not list).
            let own_next = (hdr >> 20) as usize & 0xffc;
            let next = starts
                .iter()
                .copied()
                .chain(Some(own_next))
                .filter(|&s| s > off)
                .min()
                .unwrap_or(CFG_LEN);
            let end = (off + body).min(next).min(CFG_LEN);
            self.emulate(off, &vec![0u8; end - off], 0);
            self.emulate(off, &hdr.to_le_bytes(), 0);
            log::debug!("{}: hiding {} at {off:#x}", self.name, c.name());
        }
    }

    /// Adds the GPUDirect clique capability at the end of the standard list.
    fn add_gpudirect(
        &mut self,
        bytes: &[u8],
        caps: &vm_pci::CapabilityList,
        clique: u8,
    ) -> Result<()> {
        let bad = |why: String| Error::invalid(self.name.clone(), "GPUDirect clique", why);
        if clique > GPUDIRECT_MAX_CLIQUE {
            return Err(bad(format!("clique {clique} is not in 0..=15")));
        }
        let mut used = [false; LEGACY_LEN];
        used[..HEADER_LEN].fill(true);
        let mut starts: Vec<usize> = caps
            .standard
            .iter()
            .map(|c| usize::from(c.offset))
            .collect();
        starts.sort_unstable();
        for c in &caps.standard {
            let off = usize::from(c.offset);
            let next = starts
                .iter()
                .copied()
                .find(|&s| s > off)
                .unwrap_or(LEGACY_LEN);
            let len = match (c.id, &c.detail) {
                (CAP_PM, _) => 8,
                (CAP_MSI, CapDetail::Msi(m)) => msi_len(m.is_64bit, m.per_vector_mask),
                (CAP_PCIE, CapDetail::Pcie(p)) => {
                    if p.version >= 2 {
                        0x3c
                    } else {
                        0x24
                    }
                }
                (CAP_MSIX, _) => 12,
                (CAP_VENDOR, _) => usize::from(bytes[off + 2]).max(3),
                // Unknown length: assume it runs up to the next capability.
                _ => next - off,
            };
            let end = (off + len).min(LEGACY_LEN);
            used[off..end].fill(true);
        }
        let free = |at: usize| !used[at..at + GPUDIRECT_LEN].iter().any(|&u| u);
        let at = std::iter::once(GPUDIRECT_AT)
            .chain((HEADER_LEN..=LEGACY_LEN - GPUDIRECT_LEN).step_by(4))
            .find(|&at| free(at))
            .ok_or_else(|| bad("no free 8-byte slot in config space 0x40..0xff".into()))?;
        let mut cap = [0u8; GPUDIRECT_LEN];
        cap[..4].copy_from_slice(&0x5008_0009u32.to_le_bytes());
        cap[4..].copy_from_slice(&(u32::from(clique) << 19 | 0x5032).to_le_bytes());
        self.emulate(at, &cap, 0);
        match caps.standard.last() {
            Some(last) => self.emulate(usize::from(last.offset) + 1, &[at as u8], 0),
            None => {
                self.emulate(CAP_PTR, &[at as u8], 0);
                self.rules[STATUS] = ByteRule {
                    virt: STATUS_CAP_LIST,
                    wmask: 0,
                    keep: 0,
                };
                self.emu[STATUS] = STATUS_CAP_LIST;
            }
        }
        self.gpudirect_at = Some(at as u16);
        log::debug!(
            "{}: GPUDirect clique {clique} capability at {at:#x}",
            self.name
        );
        Ok(())
    }

    /// The BARs the guest sees, in index order.
    pub fn bars(&self) -> Vec<GuestBar> {
        self.bars
            .iter()
            .enumerate()
            .filter_map(|(i, b)| {
                b.map(|b| GuestBar {
                    index: i as u8,
                    kind: b.kind,
                    size: b.size,
                    prefetchable: b.prefetchable,
                })
            })
            .collect()
    }

    /// The device's MSI capability, when it has one.
    pub fn msi(&self) -> Option<MsiLayout> {
        self.msi.map(|(l, _)| l)
    }

    /// The device's MSI-X capability, when it has one.
    pub fn msix(&self) -> Option<MsixLayout> {
        self.msix
    }

    /// Where the GPUDirect clique capability was placed, when one was asked for.
    pub fn gpudirect_offset(&self) -> Option<u16> {
        self.gpudirect_at
    }

    /// The VMM's initial placement of BAR `bar`: the guest reads it, and the device is
    /// served there. Ignored (with a warning) for a BAR the device does not have.
    pub fn set_bar_address(&mut self, bar: u8, gpa: u64) {
        let Some(Some(b)) = self.bars.get_mut(usize::from(bar)) else {
            log::warn!("{}: set_bar_address: no BAR {bar}", self.name);
            return;
        };
        let addr = gpa & b.addr_mask();
        if addr != gpa {
            log::warn!(
                "{}: BAR {bar} address {gpa:#x} is not aligned to its size {:#x}; using {addr:#x}",
                self.name,
                b.size
            );
        }
        b.shadow = addr;
        b.applied = addr;
        b.sizing = [false; 2];
        self.sync_bar(usize::from(bar));
    }

    /// The address BAR `bar` is served at (`None`: no such BAR).
    pub fn bar_address(&self, bar: u8) -> Option<u64> {
        self.bars
            .get(usize::from(bar))
            .copied()
            .flatten()
            .map(|b| b.applied)
    }

    /// The device now serves the [`ConfigEvent::BarMove`] of `bar`: applied := shadow.
    pub fn bar_applied(&mut self, bar: u8) {
        if let Some(Some(b)) = self.bars.get_mut(usize::from(bar)) {
            b.applied = b.shadow;
        }
    }

    /// The move of `bar` failed: the guest's BAR reads the address still served.
    pub fn rollback_bar(&mut self, bar: u8) {
        if let Some(Some(b)) = self.bars.get_mut(usize::from(bar)) {
            b.shadow = b.applied;
            b.sizing = [false; 2];
            self.sync_bar(usize::from(bar));
        }
    }

    fn check_access(&self, off: u16, len: usize, op: &str) -> Result<usize> {
        let at = usize::from(off);
        if !matches!(len, 1 | 2 | 4) || at % len != 0 || at >= CFG_LEN {
            return Err(Error::invalid(
                self.name.clone(),
                format!("config {op} at {off:#x}"),
                format!(
                    "{len}-byte access: must be 1, 2 or 4 bytes, naturally aligned, below 0x1000"
                ),
            ));
        }
        Ok(at)
    }

    /// A guest config read of 1, 2 or 4 naturally aligned bytes at `off` (< 4096).
    pub fn read(&self, dev: &dyn DeviceBackend, off: u16, data: &mut [u8]) -> Result<()> {
        let at = self.check_access(off, data.len(), "read")?;
        if at >= self.len {
            // A conventional device has no extended space: reads as no device there.
            data.fill(0xff);
            return Ok(());
        }
        let rules = &self.rules[at..at + data.len()];
        if rules.iter().any(|r| r.virt != 0xff) {
            dev.config_read(at as u64, data)?;
        } else {
            data.fill(0);
        }
        for (i, b) in data.iter_mut().enumerate() {
            let v = rules[i].virt;
            *b = (*b & !v) | (self.emu[at + i] & v);
        }
        Ok(())
    }

    /// A guest config write of 1, 2 or 4 naturally aligned bytes at `off` (< 4096). The
    /// events say what the rest of attach must do; when the device refuses the write,
    /// nothing of the emulated state changes.
    pub fn write(
        &mut self,
        dev: &dyn DeviceBackend,
        off: u16,
        data: &[u8],
    ) -> Result<Vec<ConfigEvent>> {
        let at = self.check_access(off, data.len(), "write")?;
        if at >= self.len {
            return Ok(Vec::new());
        }
        let n = data.len();
        let rules: Vec<ByteRule> = self.rules[at..at + n].to_vec();

        // 1. The bits that reach the device, the bits it must keep put back as they are.
        let mut out = data.to_vec();
        let send: Vec<bool> = rules.iter().map(|r| r.reaches_device()).collect();
        if rules
            .iter()
            .zip(&send)
            .any(|(r, &s)| s && r.virt | r.keep != 0)
        {
            let mut cur = vec![0u8; n];
            dev.config_read(at as u64, &mut cur)?;
            for i in 0..n {
                let fixed = rules[i].virt | rules[i].keep;
                out[i] = (data[i] & !fixed) | (cur[i] & fixed);
            }
        }
        let mut i = 0;
        while i < n {
            if !send[i] {
                i += 1;
                continue;
            }
            let start = i;
            while i < n && send[i] {
                i += 1;
            }
            for (p, len) in aligned_pieces(at + start, i - start) {
                dev.config_write(p as u64, &out[p - at..p - at + len])?;
            }
        }

        // 2. The emulated bits, then what they mean.
        let mut events = Vec::new();
        let touches = |lo: usize, hi: usize| at < hi && lo < at + n;
        if touches(BAR0, BAR0 + 24) {
            let reg = (at - BAR0) / 4;
            let reg_at = BAR0 + 4 * reg;
            let mut raw = [0u8; 4];
            raw.copy_from_slice(&self.emu[reg_at..reg_at + 4]);
            raw[at - reg_at..at - reg_at + n].copy_from_slice(data);
            if let Some((bar, half)) = self.reg_owner[reg] {
                if let Some(b) = self.bars[bar].as_mut() {
                    b.write_register(half, u32::from_le_bytes(raw));
                }
                self.sync_bar(bar);
                events.extend(self.pending_move(bar));
            }
        } else {
            for (i, r) in rules.iter().enumerate() {
                let e = &mut self.emu[at + i];
                *e = (*e & !r.wmask) | (data[i] & r.wmask);
            }
        }
        if touches(COMMAND, COMMAND + 2) {
            let mut cmd = self.command.to_le_bytes();
            for (i, &b) in data.iter().enumerate() {
                if let Some(c) = (at + i).checked_sub(COMMAND).and_then(|k| cmd.get_mut(k)) {
                    *c = b;
                }
            }
            let old = self.command;
            self.command = u16::from_le_bytes(cmd);
            for bar in 0..6 {
                let Some(b) = self.bars[bar] else { continue };
                let d = b.decode_bit();
                if old & d == 0 && self.command & d != 0 {
                    events.extend(self.pending_move(bar));
                }
            }
        }
        if let Some((l, len)) = self.msi {
            let lo = usize::from(l.offset);
            if touches(lo, lo + usize::from(len)) {
                let s = self.msi_from_emu(&l);
                if s != self.msi_state {
                    self.msi_state = s;
                    events.push(ConfigEvent::Msi(s));
                }
            }
        }
        if let Some(l) = self.msix {
            let ctl = usize::from(l.offset) + 2;
            if touches(ctl, ctl + 2) {
                let c = le16(&self.emu, ctl);
                let s = (c & 0x8000 != 0, c & 0x4000 != 0);
                if s != self.msix_state {
                    self.msix_state = s;
                    events.push(ConfigEvent::Msix {
                        enabled: s.0,
                        function_mask: s.1,
                    });
                }
            }
        }
        Ok(events)
    }

    /// A move of `bar` to its shadow address, when one is due: the guest's registers hold
    /// an address (not a sizing pattern), decoding is on, and the address is new.
    fn pending_move(&self, bar: usize) -> Option<ConfigEvent> {
        let b = self.bars.get(bar).copied().flatten()?;
        let due = !b.sizing.contains(&true)
            && self.command & b.decode_bit() != 0
            && b.shadow != b.applied;
        due.then_some(ConfigEvent::BarMove {
            bar: bar as u8,
            to: b.shadow,
        })
    }

    fn msi_from_emu(&self, l: &MsiLayout) -> MsiState {
        let off = usize::from(l.offset);
        let ctl = le16(&self.emu, off + 2);
        let mme = u32::from((ctl >> 4) & 7);
        let (data, mask, _) = msi_fields(l);
        let hi = if l.is_64bit {
            u64::from(le32(&self.emu, off + 8))
        } else {
            0
        };
        MsiState {
            enabled: ctl & 1 != 0,
            vectors: (1u32 << mme.min(5)).min(l.max_vectors.max(1)),
            address: hi << 32 | u64::from(le32(&self.emu, off + 4)),
            data: le16(&self.emu, data),
            mask: if l.per_vector_mask {
                le32(&self.emu, mask)
            } else {
                0
            },
        }
    }
}

#[cfg(test)]
mod tests {
    //! One test per row of docs/embedding.md's "Config space: what the guest sees" table
    //! (`row_*`), then BAR behaviour, construction errors and a fuzzing property.
    use super::*;
    use crate::attach::backend::{BackendResult, BarMap, BarRegion};
    use crate::attach::soft::{SoftBar, SoftDevice};
    use proptest::prelude::*;
    use vm_pci::fixture::ConfigBuilder;
    use vm_vfio::access::{IrqIndex, MmapAlign};
    use vmm_sys_util::eventfd::EventFd;

    const BAR0_SIZE: u64 = 0x4000;
    const BAR1_SIZE: u64 = 1 << 33; // 8 GiB, 64-bit prefetchable (anonymous NORESERVE)
    const BAR3_SIZE: u64 = 0x10_0000;
    const BAR4_SIZE: u64 = 0x100; // made an I/O BAR by `gpu`

    /// A GPU-like function: multi-function header, PM, MSI (4 vectors, 64-bit), PCIe v2,
    /// MSI-X (16 vectors in BAR 0), and ARI, SR-IOV, Resizable BAR, AER extended caps.
    fn gpu_config() -> ConfigBuilder {
        let mut c = ConfigBuilder::new(0x10de, 0x2335, 0x03_0200, 0x80);
        c.power_management(false)
            .msi(2)
            .pcie(0, true, 5, 16)
            .msix(16, 0, 0x1000, 0, 0x2000)
            .ari()
            .sriov(4, 0, 0x2336)
            .resizable_bar(1, 0xff, 13)
            .aer();
        c
    }

    /// Offsets of `gpu_config`'s capabilities (ConfigBuilder packs them from 0x40).
    const PM: u16 = 0x40;
    const MSI: u16 = 0x48;
    const PCIE: u16 = 0x58;
    const MSIX: u16 = 0x94;
    const ARI: u16 = 0x100;
    const SRIOV: u16 = 0x108;
    const REBAR: u16 = 0x148;
    const AER: u16 = 0x154;

    fn soft(cfg: Vec<u8>) -> SoftDevice {
        let bar = |size, is_64bit, prefetchable| SoftBar {
            size,
            is_64bit,
            prefetchable,
        };
        let d = SoftDevice::new(
            "soft0",
            cfg,
            &[
                (0, bar(BAR0_SIZE, false, false)),
                (1, bar(BAR1_SIZE, true, true)),
                (3, bar(BAR3_SIZE, false, true)),
                (4, bar(BAR4_SIZE, false, false)),
            ],
        )
        .unwrap();
        // SoftBar has no I/O kind: declare BAR 4 as I/O in its register, as a device does.
        d.config_write(0x20, &1u32.to_le_bytes()).unwrap();
        d
    }

    fn gpu() -> (SoftDevice, VirtualConfig) {
        let d = soft(gpu_config().build());
        let vc = VirtualConfig::new(&d, &ConfigOptions::default()).unwrap();
        (d, vc)
    }

    fn rd(vc: &VirtualConfig, d: &SoftDevice, off: u16, n: usize) -> u32 {
        let mut b = [0u8; 4];
        vc.read(d, off, &mut b[..n]).unwrap();
        u32::from_le_bytes(b)
    }

    fn wr(vc: &mut VirtualConfig, d: &SoftDevice, off: u16, n: usize, v: u32) -> Vec<ConfigEvent> {
        vc.write(d, off, &v.to_le_bytes()[..n]).unwrap()
    }

    /// The device's own config bytes (what vfio-pci would hold).
    fn dev_bytes(d: &SoftDevice, off: u16, n: usize) -> u32 {
        let mut b = [0u8; 4];
        d.config_read(u64::from(off), &mut b[..n]).unwrap();
        u32::from_le_bytes(b)
    }

    fn guest_view(vc: &VirtualConfig, d: &SoftDevice) -> Vec<u8> {
        (0..0x1000u16)
            .step_by(4)
            .flat_map(|off| rd(vc, d, off, 4).to_le_bytes())
            .collect()
    }

    /// Writes that reached the device since `from`.
    fn writes_since(d: &SoftDevice, from: usize) -> Vec<(u64, Vec<u8>)> {
        d.config_writes()[from..].to_vec()
    }

    #[test]
    fn row_read_only_header_fields_read_through_and_drop_writes() {
        let (d, mut vc) = gpu();
        let before = d.config_writes().len();
        for (off, n) in [
            (0x00, 4),
            (0x08, 4),
            (0x2c, 4),
            (0x28, 4),
            (0x34, 1),
            (0x3d, 1),
            (0x3e, 2),
        ] {
            let v = rd(&vc, &d, off, n);
            assert_eq!(v, dev_bytes(&d, off, n), "{off:#x} reads the device");
            assert!(wr(&mut vc, &d, off, n, 0x5a5a_5a5a).is_empty());
            assert_eq!(rd(&vc, &d, off, n), v, "{off:#x} unchanged");
        }
        assert_eq!(rd(&vc, &d, 0, 4), 0x2335_10de);
        assert!(
            writes_since(&d, before).is_empty(),
            "{:?}",
            writes_since(&d, before)
        );
    }

    #[test]
    fn row_command_passes_through_and_is_tracked() {
        let (d, mut vc) = gpu();
        let before = d.config_writes().len();
        // Bus master + memory + INTx disable reach the device as written.
        assert!(wr(&mut vc, &d, 0x04, 2, 0x0406).is_empty());
        assert_eq!(writes_since(&d, before), vec![(4, vec![0x06, 0x04])]);
        assert_eq!(rd(&vc, &d, 0x04, 2), 0x0406);
        assert_eq!(vc.command, 0x0406);
        // A byte write to the high half is tracked too.
        wr(&mut vc, &d, 0x05, 1, 0x00);
        assert_eq!(vc.command, 0x0006);
    }

    #[test]
    fn row_status_passes_through() {
        let (d, mut vc) = gpu();
        let before = d.config_writes().len();
        // RW1C error bits: the guest's clear reaches the device.
        wr(&mut vc, &d, 0x06, 2, 0xf900);
        assert_eq!(writes_since(&d, before), vec![(6, vec![0x00, 0xf9])]);
        // A dword write at COMMAND carries STATUS along in one device write.
        wr(&mut vc, &d, 0x04, 4, 0xf900_0002);
        assert_eq!(writes_since(&d, before + 1), vec![(4, vec![2, 0, 0, 0xf9])]);
    }

    #[test]
    fn row_cache_line_and_latency_timer_pass_through() {
        let (d, mut vc) = gpu();
        let before = d.config_writes().len();
        wr(&mut vc, &d, 0x0c, 2, 0x4010);
        assert_eq!(writes_since(&d, before), vec![(0x0c, vec![0x10, 0x40])]);
        assert_eq!(rd(&vc, &d, 0x0c, 2), 0x4010);
    }

    #[test]
    fn row_header_type_hides_multi_function() {
        let (d, mut vc) = gpu();
        assert_eq!(dev_bytes(&d, 0x0e, 1), 0x80, "the device is multi-function");
        assert_eq!(rd(&vc, &d, 0x0e, 1), 0);
        assert_eq!(rd(&vc, &d, 0x0c, 4) >> 16 & 0xff, 0);
        let before = d.config_writes().len();
        wr(&mut vc, &d, 0x0e, 1, 0xff);
        assert_eq!(rd(&vc, &d, 0x0e, 1), 0);
        assert!(writes_since(&d, before).is_empty());
    }

    #[test]
    fn row_bist_writes_are_dropped() {
        let mut c = gpu_config();
        c.bytes_mut()[0x0f] = 0x80; // BIST capable
        let d = soft(c.build());
        let mut vc = VirtualConfig::new(&d, &ConfigOptions::default()).unwrap();
        let before = d.config_writes().len();
        wr(&mut vc, &d, 0x0f, 1, 0x40); // start BIST
        wr(&mut vc, &d, 0x0c, 4, 0x4000_0010); // dword: cache line passes, BIST does not
        assert_eq!(writes_since(&d, before), vec![(0x0c, vec![0x10, 0x00])]);
        assert_eq!(rd(&vc, &d, 0x0f, 1), 0x80);
    }

    #[test]
    fn row_bars_are_emulated() {
        let (d, mut vc) = gpu();
        let before = d.config_writes().len();
        vc.set_bar_address(0, 0xc000_0000);
        assert_eq!(rd(&vc, &d, 0x10, 4), 0xc000_0000);
        wr(&mut vc, &d, 0x10, 4, 0xd000_0000);
        assert_eq!(rd(&vc, &d, 0x10, 4), 0xd000_0000);
        // Nothing reaches the device: its own register still holds what it had.
        assert!(writes_since(&d, before).is_empty());
        assert_eq!(dev_bytes(&d, 0x10, 4), 0);
    }

    #[test]
    fn row_expansion_rom_is_hidden() {
        let mut c = gpu_config();
        c.bytes_mut()[0x30..0x34].copy_from_slice(&0xfeb0_0001u32.to_le_bytes());
        let d = soft(c.build());
        let mut vc = VirtualConfig::new(&d, &ConfigOptions::default()).unwrap();
        assert_eq!(rd(&vc, &d, 0x30, 4), 0);
        let before = d.config_writes().len();
        wr(&mut vc, &d, 0x30, 4, 0xffff_f800); // ROM sizing
        assert_eq!(rd(&vc, &d, 0x30, 4), 0, "no ROM: sizing reads 0");
        assert!(writes_since(&d, before).is_empty());
    }

    #[test]
    fn row_interrupt_line_is_emulated() {
        let (d, mut vc) = gpu();
        let before = d.config_writes().len();
        wr(&mut vc, &d, 0x3c, 1, 0x0b);
        assert_eq!(rd(&vc, &d, 0x3c, 1), 0x0b);
        assert!(writes_since(&d, before).is_empty());
        assert_eq!(dev_bytes(&d, 0x3c, 1), 0);
    }

    #[test]
    fn row_msi_is_emulated() {
        let (d, mut vc) = gpu();
        let l = vc.msi().unwrap();
        assert_eq!(
            l,
            MsiLayout {
                offset: MSI,
                max_vectors: 4,
                is_64bit: true,
                per_vector_mask: false
            }
        );
        let before = d.config_writes().len();
        assert!(wr(&mut vc, &d, MSI + 4, 4, 0xfee0_100f).len() == 1);
        wr(&mut vc, &d, MSI + 8, 4, 0x1);
        wr(&mut vc, &d, MSI + 0xc, 2, 0x4041);
        // Enable with 8 vectors asked (more than the 4 the device can): 4 granted.
        let ev = wr(&mut vc, &d, MSI + 2, 2, 0x0031);
        let want = MsiState {
            enabled: true,
            vectors: 4,
            address: 0x1_fee0_100c,
            data: 0x4041,
            mask: 0,
        };
        assert_eq!(ev, vec![ConfigEvent::Msi(want)]);
        // Read-only bits stay: 64-bit, Multiple Message Capable = 4 vectors.
        assert_eq!(rd(&vc, &d, MSI + 2, 2), 0x00b5);
        assert_eq!(rd(&vc, &d, MSI + 4, 4), 0xfee0_100c);
        // Same values again: no event. Nothing reached the device.
        assert!(wr(&mut vc, &d, MSI + 2, 2, 0x0031).is_empty());
        assert!(writes_since(&d, before).is_empty());
        assert_eq!(dev_bytes(&d, MSI + 2, 2) & 1, 0);
    }

    #[test]
    fn row_msi_per_vector_mask_is_emulated() {
        let mut c = ConfigBuilder::new(0x1af4, 0x1000, 0x01_0000, 0);
        c.msi(3);
        c.bytes_mut()[0x43] = 0x01; // per-vector masking
        let d = soft(c.build());
        let mut vc = VirtualConfig::new(&d, &ConfigOptions::default()).unwrap();
        let l = vc.msi().unwrap();
        assert!(l.per_vector_mask && l.max_vectors == 8);
        let ev = wr(&mut vc, &d, 0x50, 4, 0xffff_ff05);
        assert_eq!(ev.len(), 1);
        let ConfigEvent::Msi(s) = ev[0] else {
            panic!("{ev:?}")
        };
        assert_eq!(s.mask, 0x05);
        assert_eq!(rd(&vc, &d, 0x50, 4), 0x05, "only the 8 implemented bits");
        assert_eq!(rd(&vc, &d, 0x54, 4), 0, "pending reads 0");
    }

    #[test]
    fn row_msix_is_emulated() {
        let (d, mut vc) = gpu();
        let l = vc.msix().unwrap();
        assert_eq!(
            l,
            MsixLayout {
                offset: MSIX,
                table_size: 16,
                table_bar: 0,
                table_offset: 0x1000,
                pba_bar: 0,
                pba_offset: 0x2000
            }
        );
        let before = d.config_writes().len();
        let ev = wr(&mut vc, &d, MSIX + 2, 2, 0xc000);
        assert_eq!(
            ev,
            vec![ConfigEvent::Msix {
                enabled: true,
                function_mask: true
            }]
        );
        assert_eq!(rd(&vc, &d, MSIX + 2, 2), 0xc00f, "table size read-only");
        let ev = wr(&mut vc, &d, MSIX + 2, 2, 0x8000);
        assert_eq!(
            ev,
            vec![ConfigEvent::Msix {
                enabled: true,
                function_mask: false
            }]
        );
        // Table and PBA offsets read as the device has them; writes to them are dropped.
        wr(&mut vc, &d, MSIX + 4, 4, 0x0000_3005);
        assert_eq!(rd(&vc, &d, MSIX + 4, 4), 0x1000);
        assert_eq!(rd(&vc, &d, MSIX + 8, 4), 0x2000);
        assert!(writes_since(&d, before).is_empty());
        assert_eq!(dev_bytes(&d, MSIX + 2, 2), 0x000f, "device MSI-X untouched");
    }

    #[test]
    fn row_link_control_keeps_link_disable_and_retrain() {
        let (d, mut vc) = gpu();
        let before = d.config_writes().len();
        // ASPM L0s|L1 passes; Link Disable (bit 4) and Retrain (bit 5) do not.
        wr(&mut vc, &d, PCIE + 0x10, 2, 0x0033);
        assert_eq!(
            writes_since(&d, before),
            vec![(u64::from(PCIE) + 0x10, vec![0x03, 0x00])]
        );
        assert_eq!(rd(&vc, &d, PCIE + 0x10, 2), 0x0003);
    }

    #[test]
    fn row_link_control_2_writes_are_dropped() {
        let (d, mut vc) = gpu();
        let before = d.config_writes().len();
        wr(&mut vc, &d, PCIE + 0x30, 2, 0x0011); // enter compliance at 2.5 GT/s
        assert!(writes_since(&d, before).is_empty());
        assert_eq!(rd(&vc, &d, PCIE + 0x30, 2), 0);
    }

    #[test]
    fn row_ari_sriov_rebar_are_hidden() {
        let (d, mut vc) = gpu();
        let dev_caps = ConfigSpace::new(d_bytes(&d)).capabilities();
        let ids: Vec<u16> = dev_caps.extended.iter().map(|c| c.id).collect();
        assert_eq!(ids, vec![EXT_ARI, EXT_SRIOV, EXT_REBAR, 0x0001]);
        // The guest walks the chain through null capabilities to AER.
        let caps = ConfigSpace::new(guest_view(&vc, &d)).capabilities();
        let ids: Vec<(u16, u16)> = caps.extended.iter().map(|c| (c.offset, c.id)).collect();
        assert_eq!(ids, vec![(AER, 0x0001)]);
        assert!(caps.warnings.is_empty(), "{:?}", caps.warnings);
        for (off, next) in [(ARI, SRIOV), (SRIOV, REBAR), (REBAR, AER)] {
            assert_eq!(rd(&vc, &d, off, 4), u32::from(next) << 20, "{off:#x}");
        }
        // Bodies read 0 and drop writes (no VF enable, no BAR resize).
        let before = d.config_writes().len();
        assert_eq!(rd(&vc, &d, SRIOV + 0x0e, 2), 0, "TotalVFs hidden");
        wr(&mut vc, &d, SRIOV + 8, 2, 0x0001); // VF Enable
        wr(&mut vc, &d, REBAR + 8, 4, 0x0000_0d01); // resize
        wr(&mut vc, &d, ARI, 4, 0xffff_ffff);
        assert!(writes_since(&d, before).is_empty());
        assert_eq!(rd(&vc, &d, ARI, 4), u32::from(SRIOV) << 20);
    }

    #[test]
    fn hiding_keeps_the_chain_through_null_capabilities() {
        // ReBAR claims 6 BARs (0x34 bytes) but chains on at +0x10 to a null capability,
        // which leads to AER: the guest must still reach AER.
        let mut c = ConfigBuilder::new(0x10de, 0x2335, 0x03_0200, 0);
        let b = c.bytes_mut();
        let hdr = |id: u32, next: u32| (id | 1 << 16 | next << 20).to_le_bytes();
        b[0x100..0x104].copy_from_slice(&hdr(u32::from(EXT_REBAR), 0x110));
        b[0x108..0x10c].copy_from_slice(&(6u32 << 5).to_le_bytes());
        b[0x110..0x114].copy_from_slice(&hdr(0, 0x200));
        b[0x200..0x204].copy_from_slice(&hdr(0x0001, 0));
        let d = soft(c.build());
        let vc = VirtualConfig::new(&d, &ConfigOptions::default()).unwrap();
        let caps = ConfigSpace::new(guest_view(&vc, &d)).capabilities();
        let ids: Vec<(u16, u16)> = caps.extended.iter().map(|c| (c.offset, c.id)).collect();
        assert_eq!(ids, vec![(0x200, 0x0001)], "{:?}", caps.warnings);
        assert_eq!(rd(&vc, &d, 0x108, 4), 0, "ReBAR control hidden");
    }

    fn d_bytes(d: &SoftDevice) -> Vec<u8> {
        let mut b = vec![0u8; 0x1000];
        d.config_read(0, &mut b).unwrap();
        b
    }

    #[test]
    fn row_gpudirect_clique_is_added_and_chained() {
        let d = soft(gpu_config().build());
        let opts = ConfigOptions {
            gpudirect_clique: Some(7),
        };
        let mut vc = VirtualConfig::new(&d, &opts).unwrap();
        assert_eq!(vc.gpudirect_offset(), Some(0xd4));
        assert_eq!(rd(&vc, &d, 0xd4, 4), 0x5008_0009);
        assert_eq!(rd(&vc, &d, 0xd8, 4), 7 << 19 | 0x5032);
        let caps = ConfigSpace::new(guest_view(&vc, &d)).capabilities();
        let std: Vec<(u16, u8)> = caps.standard.iter().map(|c| (c.offset, c.id)).collect();
        assert_eq!(
            std,
            vec![(PM, 1), (MSI, 5), (PCIE, 0x10), (MSIX, 0x11), (0xd4, 9)]
        );
        assert!(caps.warnings.is_empty(), "{:?}", caps.warnings);
        // Read-only, never reaches the device.
        let before = d.config_writes().len();
        wr(&mut vc, &d, 0xd8, 4, 0);
        assert_eq!(rd(&vc, &d, 0xd8, 4), 7 << 19 | 0x5032);
        assert!(writes_since(&d, before).is_empty());
        assert_eq!(dev_bytes(&d, 0xd4, 4), 0);
    }

    #[test]
    fn gpudirect_moves_when_0xd4_is_taken_and_fails_without_room() {
        let mut c = ConfigBuilder::new(0x10de, 0x2335, 0x03_0200, 0);
        // A vendor capability covering 0xd0..0xe0 at the end of the list.
        c.msix(4, 0, 0, 0, 0x100);
        let b = c.bytes_mut();
        b[0x41] = 0xd0;
        b[0xd0..0xd3].copy_from_slice(&[CAP_VENDOR, 0, 0x10]);
        let d = soft(c.build());
        let opts = ConfigOptions {
            gpudirect_clique: Some(0),
        };
        let vc = VirtualConfig::new(&d, &opts).unwrap();
        let at = vc.gpudirect_offset().unwrap();
        assert_eq!(at, 0x4c, "first free dword after MSI-X (0x40..0x4c)");
        let caps = ConfigSpace::new(guest_view(&vc, &d)).capabilities();
        let std: Vec<(u16, u8)> = caps.standard.iter().map(|c| (c.offset, c.id)).collect();
        assert_eq!(std, vec![(0x40, 0x11), (0xd0, 9), (0x4c, 9)]);

        // A vendor capability filling all of 0x40..0x100: no room, a clear error.
        let mut c = ConfigBuilder::new(0x10de, 0x2335, 0x03_0200, 0);
        let b = c.bytes_mut();
        b[0x06] |= 0x10;
        b[0x34] = 0x40;
        b[0x40..0x43].copy_from_slice(&[CAP_VENDOR, 0, 0xc0]);
        let d = soft(c.build());
        let e = VirtualConfig::new(&d, &opts).unwrap_err();
        assert!(e.to_string().contains("no free 8-byte slot"), "{e}");
        // Clique out of range.
        let d = soft(gpu_config().build());
        let opts = ConfigOptions {
            gpudirect_clique: Some(16),
        };
        let e = VirtualConfig::new(&d, &opts).unwrap_err();
        assert!(e.to_string().contains("0..=15"), "{e}");
    }

    #[test]
    fn gpudirect_on_a_function_without_capabilities_starts_the_list() {
        let d = soft(ConfigBuilder::new(0x10de, 0x2335, 0x03_0200, 0).build());
        let opts = ConfigOptions {
            gpudirect_clique: Some(3),
        };
        let vc = VirtualConfig::new(&d, &opts).unwrap();
        assert_eq!(rd(&vc, &d, 0x06, 2) & 0x10, 0x10, "capability list bit");
        assert_eq!(rd(&vc, &d, 0x34, 1), 0xd4);
        let caps = ConfigSpace::new(guest_view(&vc, &d)).capabilities();
        assert_eq!(caps.standard.len(), 1);
        assert_eq!((caps.standard[0].offset, caps.standard[0].id), (0xd4, 9));
    }

    #[test]
    fn row_everything_else_passes_through() {
        let (d, mut vc) = gpu();
        let before = d.config_writes().len();
        let cases = [
            (PM + 4, 2, 0x0003u32),    // PMCSR: D3hot
            (PCIE + 8, 2, 0x8000),     // Device Control: initiate FLR
            (AER + 4, 4, 0xffff_ffff), // AER uncorrectable status (RW1C)
            (0x200, 4, 0x1234_5678),   // outside any capability
        ];
        for (i, &(off, n, v)) in cases.iter().enumerate() {
            wr(&mut vc, &d, off, n, v);
            let w = writes_since(&d, before + i);
            assert_eq!(w, vec![(u64::from(off), v.to_le_bytes()[..n].to_vec())]);
            assert_eq!(rd(&vc, &d, off, n), v, "{off:#x} reads the device");
        }
    }

    /// A conventional PCI function: 256 bytes of config space, as vfio-pci gives it.
    struct Conventional(SoftDevice);
    impl DeviceBackend for Conventional {
        fn name(&self) -> String {
            self.0.name()
        }
        fn config_read(&self, off: u64, buf: &mut [u8]) -> BackendResult<()> {
            if off + buf.len() as u64 > 256 {
                return Err(vm_vfio::access::Error::Invalid {
                    device: self.name(),
                    op: "config read".into(),
                    reason: "beyond 256 bytes".into(),
                });
            }
            self.0.config_read(off, buf)
        }
        fn config_write(&self, off: u64, buf: &[u8]) -> BackendResult<()> {
            self.0.config_write(off, buf)
        }
        fn bar_region(&self, bar: u8) -> Option<BarRegion> {
            self.0.bar_region(bar)
        }
        fn bar_read(&self, bar: u8, off: u64, buf: &mut [u8]) -> BackendResult<()> {
            self.0.bar_read(bar, off, buf)
        }
        fn bar_write(&self, bar: u8, off: u64, buf: &[u8]) -> BackendResult<()> {
            self.0.bar_write(bar, off, buf)
        }
        fn map_bar(&self, bar: u8, align: MmapAlign) -> BackendResult<Vec<BarMap>> {
            self.0.map_bar(bar, align)
        }
        fn irq_count(&self, index: IrqIndex) -> u32 {
            self.0.irq_count(index)
        }
        fn irq_resizable(&self, index: IrqIndex) -> bool {
            self.0.irq_resizable(index)
        }
        fn set_irq_eventfds(
            &self,
            index: IrqIndex,
            start: u32,
            fds: &[Option<&EventFd>],
        ) -> BackendResult<()> {
            self.0.set_irq_eventfds(index, start, fds)
        }
        fn disable_irqs(&self, index: IrqIndex) -> BackendResult<()> {
            self.0.disable_irqs(index)
        }
        fn intx_unmask_on(&self, fd: &EventFd) -> BackendResult<()> {
            self.0.intx_unmask_on(fd)
        }
        fn reset(&self) -> BackendResult<()> {
            self.0.reset()
        }
        fn can_reset(&self) -> bool {
            self.0.can_reset()
        }
    }

    #[test]
    fn row_extended_space_of_a_conventional_function_reads_all_ones() {
        let mut c = ConfigBuilder::new(0x8086, 0x100e, 0x02_0000, 0);
        c.power_management(false);
        let d = Conventional(soft(c.build()));
        let mut vc = VirtualConfig::new(&d, &ConfigOptions::default()).unwrap();
        let mut b = [0u8; 4];
        vc.read(&d, 0x100, &mut b).unwrap();
        assert_eq!(b, [0xff; 4]);
        let before = d.0.config_writes().len();
        assert!(vc.write(&d, 0x100, &[0; 4]).unwrap().is_empty());
        assert_eq!(d.0.config_writes().len(), before);
        vc.read(&d, 0x40, &mut b[..1]).unwrap();
        assert_eq!(b[0], CAP_PM);
    }

    #[test]
    fn bars_report_kind_size_and_prefetch_from_the_device() {
        let (_, vc) = gpu();
        let bar = |index, kind, size, prefetchable| GuestBar {
            index,
            kind,
            size,
            prefetchable,
        };
        assert_eq!(
            vc.bars(),
            vec![
                bar(0, BarKind::Mem32, BAR0_SIZE, false),
                bar(1, BarKind::Mem64, BAR1_SIZE, true),
                bar(3, BarKind::Mem32, BAR3_SIZE, true),
                bar(4, BarKind::Io, BAR4_SIZE, false),
            ]
        );
    }

    #[test]
    fn bar_sizing_reads_size_and_type_bits_and_never_moves() {
        let (d, mut vc) = gpu();
        for bar in [0u8, 1, 3, 4] {
            vc.set_bar_address(bar, if bar == 4 { 0x1000 } else { 0x1_0000_0000 });
        }
        // Decoding on: sizing must still not move anything.
        wr(&mut vc, &d, 0x04, 2, 0x0003);
        let before = d.config_writes().len();
        let mut sized = Vec::new();
        for reg in 0..6u16 {
            let off = 0x10 + 4 * reg;
            let orig = rd(&vc, &d, off, 4);
            assert!(
                wr(&mut vc, &d, off, 4, 0xffff_ffff).is_empty(),
                "BAR reg {reg}"
            );
            sized.push(rd(&vc, &d, off, 4));
            assert!(
                wr(&mut vc, &d, off, 4, orig).is_empty(),
                "restore reg {reg}"
            );
            assert_eq!(rd(&vc, &d, off, 4), orig);
        }
        assert_eq!(
            sized,
            vec![
                0xffff_c000, // BAR 0: 16 KiB, 32-bit
                0x0000_000c, // BAR 1: 8 GiB, no size bits low; 64-bit, prefetchable
                0xffff_fffe, // BAR 1's high half
                0xfff0_0008, // BAR 3: 1 MiB, 32-bit prefetchable
                0xffff_ff01, // BAR 4: 256-byte I/O
                0x0000_0000, // BAR 5: not implemented
            ]
        );
        assert_eq!(rd(&vc, &d, 0x24, 4), 0, "BAR 5 not implemented");
        assert!(
            writes_since(&d, before).is_empty(),
            "BARs never reach the device"
        );
    }

    #[test]
    fn bar_sizing_then_decode_on_does_not_move_to_the_mask() {
        let (d, mut vc) = gpu();
        vc.set_bar_address(0, 0xc000_0000);
        wr(&mut vc, &d, 0x10, 4, 0xffff_ffff);
        assert!(wr(&mut vc, &d, 0x04, 2, 0x0002).is_empty());
        assert_eq!(vc.bar_address(0), Some(0xc000_0000));
    }

    #[test]
    fn bar_moves_only_while_decoding() {
        let (d, mut vc) = gpu();
        vc.set_bar_address(0, 0xc000_0000);
        assert_eq!(vc.bar_address(0), Some(0xc000_0000));
        // Decoding off: the shadow moves, the device does not.
        assert!(wr(&mut vc, &d, 0x10, 4, 0xd000_0000).is_empty());
        assert_eq!(rd(&vc, &d, 0x10, 4), 0xd000_0000);
        assert_eq!(vc.bar_address(0), Some(0xc000_0000));
        // Turning MEM on applies it; IO on alone would not.
        assert!(wr(&mut vc, &d, 0x04, 2, 0x0001).is_empty());
        let ev = wr(&mut vc, &d, 0x04, 2, 0x0003);
        assert_eq!(
            ev,
            vec![ConfigEvent::BarMove {
                bar: 0,
                to: 0xd000_0000
            }]
        );
        vc.bar_applied(0);
        assert_eq!(vc.bar_address(0), Some(0xd000_0000));
        // MEM stays on: a write moves at once; re-writing the same address does not.
        let ev = wr(&mut vc, &d, 0x10, 4, 0xe000_0000);
        assert_eq!(
            ev,
            vec![ConfigEvent::BarMove {
                bar: 0,
                to: 0xe000_0000
            }]
        );
        vc.bar_applied(0);
        assert!(wr(&mut vc, &d, 0x10, 4, 0xe000_0000).is_empty());
        assert!(
            wr(&mut vc, &d, 0x04, 2, 0x0003).is_empty(),
            "MEM did not turn on"
        );
    }

    #[test]
    fn io_bar_moves_with_command_io() {
        let (d, mut vc) = gpu();
        vc.set_bar_address(4, 0x1000);
        wr(&mut vc, &d, 0x20, 4, 0x2001);
        assert!(
            wr(&mut vc, &d, 0x04, 2, 0x0002).is_empty(),
            "MEM does not enable I/O"
        );
        let ev = wr(&mut vc, &d, 0x04, 2, 0x0003);
        assert_eq!(ev, vec![ConfigEvent::BarMove { bar: 4, to: 0x2000 }]);
        assert_eq!(rd(&vc, &d, 0x20, 4), 0x2001);
    }

    #[test]
    fn bar_64bit_pair_moves_as_one() {
        let (d, mut vc) = gpu();
        vc.set_bar_address(1, 0x40_0000_0000);
        assert_eq!(rd(&vc, &d, 0x14, 4), 0x0000_000c);
        assert_eq!(rd(&vc, &d, 0x18, 4), 0x40);
        wr(&mut vc, &d, 0x14, 4, 0x0000_0000);
        wr(&mut vc, &d, 0x18, 4, 0x0000_0080);
        let ev = wr(&mut vc, &d, 0x04, 2, 0x0002);
        assert_eq!(
            ev,
            vec![ConfigEvent::BarMove {
                bar: 1,
                to: 0x80_0000_0000
            }]
        );
        // An address below the BAR's alignment is cut to its size: 8 GiB here.
        vc.rollback_bar(1);
        let ev = wr(&mut vc, &d, 0x14, 4, 0x1234_5678);
        assert!(
            ev.is_empty(),
            "low bits of an 8 GiB BAR are not address bits"
        );
    }

    #[test]
    fn failed_bar_move_rolls_back() {
        let (d, mut vc) = gpu();
        vc.set_bar_address(3, 0xe000_0000);
        wr(&mut vc, &d, 0x04, 2, 0x0002);
        let ev = wr(&mut vc, &d, 0x1c, 4, 0xe010_0000);
        assert_eq!(
            ev,
            vec![ConfigEvent::BarMove {
                bar: 3,
                to: 0xe010_0000
            }]
        );
        vc.rollback_bar(3);
        assert_eq!(
            rd(&vc, &d, 0x1c, 4),
            0xe000_0008,
            "reads the served address"
        );
        assert_eq!(vc.bar_address(3), Some(0xe000_0000));
        // Re-enabling decode does not retry the failed move.
        wr(&mut vc, &d, 0x04, 2, 0);
        assert!(wr(&mut vc, &d, 0x04, 2, 0x0002).is_empty());
    }

    #[test]
    fn set_bar_address_ignores_unknown_bars() {
        let (_, mut vc) = gpu();
        vc.set_bar_address(2, 0x1000); // high half of BAR 1
        vc.set_bar_address(9, 0x1000);
        assert_eq!(vc.bar_address(2), None);
        assert_eq!(vc.bar_address(9), None);
        assert_eq!(vc.bar_address(1), Some(0));
    }

    #[test]
    fn bad_accesses_are_errors() {
        let (d, mut vc) = gpu();
        let mut b = [0u8; 4];
        assert!(vc.read(&d, 0x11, &mut b[..2]).is_err(), "unaligned");
        assert!(vc.read(&d, 0x10, &mut b[..3]).is_err(), "3 bytes");
        assert!(vc.read(&d, 0x1000, &mut b).is_err(), "beyond 4 KiB");
        assert!(vc.read(&d, 0x10, &mut []).is_err(), "empty");
        assert!(vc.write(&d, 0x12, &[0; 4]).is_err());
        let e = vc.write(&d, 0xffff, &[0]).unwrap_err();
        assert!(e.to_string().contains("0xffff"), "{e}");
    }

    #[test]
    fn malformed_functions_are_refused_with_a_reason() {
        let bridge = ConfigBuilder::new(0x8086, 0x1234, 0x06_0400, 1).build();
        let e = VirtualConfig::new(&soft(bridge), &ConfigOptions::default()).unwrap_err();
        assert!(e.to_string().contains("header type 1"), "{e}");
        // MSI-X table in a BAR the device lacks.
        let mut c = ConfigBuilder::new(0x10de, 0x2335, 0x03_0200, 0);
        c.msix(16, 2, 0, 2, 0x800);
        let e = VirtualConfig::new(&soft(c.build()), &ConfigOptions::default()).unwrap_err();
        assert!(e.to_string().contains("BAR 2"), "{e}");
        // MSI-X table beyond its BAR.
        let mut c = ConfigBuilder::new(0x10de, 0x2335, 0x03_0200, 0);
        c.msix(16, 0, 0x3f80, 0, 0x800);
        let e = VirtualConfig::new(&soft(c.build()), &ConfigOptions::default()).unwrap_err();
        assert!(e.to_string().contains("table"), "{e}");
        // A 64-bit BAR 5 has no pair.
        let mut c = ConfigBuilder::new(0x10de, 0x2335, 0x03_0200, 0);
        c.bytes_mut()[0x24] = 0x4;
        let bar = SoftBar {
            size: 0x1000,
            is_64bit: false,
            prefetchable: false,
        };
        let d = SoftDevice::new("soft1", c.build(), &[(5, bar)]).unwrap();
        d.config_write(0x24, &4u32.to_le_bytes()).unwrap();
        let e = VirtualConfig::new(&d, &ConfigOptions::default()).unwrap_err();
        assert!(e.to_string().contains("BAR 5"), "{e}");
        // MSI capability running out of conventional space.
        let mut c = ConfigBuilder::new(0x10de, 0x2335, 0x03_0200, 0);
        let b = c.bytes_mut();
        b[0x06] |= 0x10;
        b[0x34] = 0xf8;
        b[0xf8] = CAP_MSI;
        b[0xfa] = 0x80;
        let e = VirtualConfig::new(&soft(c.build()), &ConfigOptions::default()).unwrap_err();
        assert!(e.to_string().contains("runs past"), "{e}");
    }

    #[derive(Debug, Clone)]
    struct Access {
        off: u16,
        len: usize,
        write: Option<u32>,
    }

    fn access() -> impl Strategy<Value = Access> {
        (
            prop_oneof![0u16..0x100, 0u16..0x1100, Just(0x04u16), 0x10u16..0x28],
            prop_oneof![Just(1usize), Just(2), Just(4), Just(3), Just(0)],
            prop_oneof![
                Just(None),
                any::<u32>().prop_map(Some),
                Just(Some(u32::MAX))
            ],
        )
            .prop_map(|(off, len, write)| Access { off, len, write })
    }

    /// Config bytes: random, or the GPU-like space with random bytes splattered over it.
    fn config_bytes() -> impl Strategy<Value = Vec<u8>> {
        prop_oneof![
            proptest::collection::vec(any::<u8>(), 0x1000).prop_map(|mut b| {
                b[0x0e] &= 0x80;
                b[0x06] |= 0x10;
                b
            }),
            proptest::collection::vec((0usize..0x1000, any::<u8>()), 0..48).prop_map(|edits| {
                let mut b = gpu_config().build();
                for (at, v) in edits {
                    b[at] = v;
                }
                b
            }),
        ]
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(400))]
        #[test]
        fn random_config_and_guest_accesses_never_panic(
            bytes in config_bytes(),
            clique in proptest::option::of(0u8..20),
            accesses in proptest::collection::vec(access(), 1..64),
            moves in proptest::collection::vec((0u8..8, any::<bool>()), 0..8),
        ) {
            let d = soft(bytes);
            let before = d.config_writes().len();
            let Ok(mut vc) = VirtualConfig::new(&d, &ConfigOptions { gpudirect_clique: clique }) else {
                return Ok(());
            };
            for bar in 0..8 {
                vc.set_bar_address(bar, 0xc000_0000);
            }
            let mut moves = moves.into_iter().cycle();
            for a in accesses {
                let mut buf = vec![0u8; a.len];
                match a.write {
                    None => { let _ = vc.read(&d, a.off, &mut buf); }
                    Some(v) => {
                        let data: Vec<u8> = v.to_le_bytes().iter().copied().cycle().take(a.len).collect();
                        if let Ok(events) = vc.write(&d, a.off, &data) {
                            for ev in events {
                                if let (ConfigEvent::BarMove { bar, .. }, Some((_, ok))) = (ev, moves.next()) {
                                    if ok { vc.bar_applied(bar) } else { vc.rollback_bar(bar) }
                                }
                            }
                        }
                    }
                }
            }
            // Invariants: BAR and ROM registers never reached the device, and the guest
            // never sees the multi-function bit.
            for (off, data) in writes_since(&d, before) {
                let end = off + data.len() as u64;
                prop_assert!(end <= 0x10 || off >= 0x28, "BAR write reached the device: {off:#x}");
                prop_assert!(end <= 0x30 || off >= 0x34, "ROM write reached the device: {off:#x}");
            }
            let mut h = [0u8; 1];
            vc.read(&d, 0x0e, &mut h).unwrap();
            prop_assert_eq!(h[0] & 0x80, 0);
        }
    }
}

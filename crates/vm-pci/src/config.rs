//! Configuration space decoding: header, standard and extended capability lists.
//!
//! The walker is defensive: config space comes from hardware (or a file) and may be short,
//! cyclic, point backwards into the header or out of range. Each such case ends the walk
//! with a warning; nothing here panics or loops (proptest checks it on arbitrary bytes).

use serde::Serialize;

/// Standard config header size; capability pointers below it are invalid.
const HEADER_LEN: usize = 0x40;
/// Where the extended capability list starts (PCIe config space only).
const EXT_START: usize = 0x100;
/// Conventional (PCI) config space size.
pub const LEGACY_LEN: usize = 0x100;
/// Full PCIe config space size.
pub const PCIE_LEN: usize = 0x1000;

/// A read-only view of config space bytes, as read from sysfs `config`.
///
/// Unprivileged readers get only the first 64 bytes from the kernel: then the
/// capability lists are unavailable, which [`ConfigSpace::is_truncated`] reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ConfigSpace {
    bytes: Vec<u8>,
}

fn le16(b: &[u8], off: usize) -> Option<u16> {
    Some(u16::from_le_bytes(b.get(off..off + 2)?.try_into().ok()?))
}
fn le32(b: &[u8], off: usize) -> Option<u32> {
    Some(u32::from_le_bytes(b.get(off..off + 4)?.try_into().ok()?))
}

impl ConfigSpace {
    /// Wraps bytes read from `config` (64, 256 or 4096 of them).
    pub fn new(bytes: Vec<u8>) -> Self {
        ConfigSpace { bytes }
    }
    /// Bytes available.
    pub fn len(&self) -> usize {
        self.bytes.len()
    }
    /// Nothing could be read.
    pub fn is_empty(&self) -> bool {
        self.bytes.is_empty()
    }
    /// The raw bytes.
    pub fn bytes(&self) -> &[u8] {
        &self.bytes
    }
    /// The byte at `off`, `None` past the end.
    pub fn u8(&self, off: usize) -> Option<u8> {
        self.bytes.get(off).copied()
    }
    /// The little-endian word at `off`, `None` past the end.
    pub fn u16(&self, off: usize) -> Option<u16> {
        le16(&self.bytes, off)
    }
    /// The little-endian dword at `off`, `None` past the end.
    pub fn u32(&self, off: usize) -> Option<u32> {
        le32(&self.bytes, off)
    }
    /// Less than the 256 bytes that hold the standard capability list.
    pub fn is_truncated(&self) -> bool {
        self.bytes.len() < LEGACY_LEN
    }
    /// Vendor id (offset 0).
    pub fn vendor_id(&self) -> Option<u16> {
        self.u16(0x00)
    }
    /// Device id (offset 2).
    pub fn device_id(&self) -> Option<u16> {
        self.u16(0x02)
    }
    /// Command register (offset 4).
    pub fn command(&self) -> Option<u16> {
        self.u16(0x04)
    }
    /// Status register (offset 6).
    pub fn status(&self) -> Option<u16> {
        self.u16(0x06)
    }
    /// Header type without the multi-function bit: 0 endpoint, 1 PCI bridge, 2 CardBus.
    pub fn header_type(&self) -> Option<u8> {
        self.u8(0x0e).map(|h| h & 0x7f)
    }
    /// Header type bit 7: the device has more than one function.
    pub fn is_multifunction(&self) -> Option<bool> {
        self.u8(0x0e).map(|h| h & 0x80 != 0)
    }

    /// Walks both capability lists. A space shorter than 256 bytes (an unprivileged read, or
    /// a header-only one) has no lists to walk: that is not a defect of the device, so it
    /// gives empty lists without warnings ([`ConfigSpace::is_truncated`] tells).
    pub fn capabilities(&self) -> CapabilityList {
        let mut out = CapabilityList::default();
        if self.is_truncated() {
            return out;
        }
        self.walk_standard(&mut out);
        self.walk_extended(&mut out);
        out
    }

    fn walk_standard(&self, out: &mut CapabilityList) {
        let b = &self.bytes;
        let Some(status) = self.status() else { return };
        // Status bit 4: the capability list exists.
        if status & 0x10 == 0 {
            return;
        }
        let ptr_off = match self.header_type() {
            Some(2) => 0x14, // CardBus keeps its pointer elsewhere
            _ => 0x34,
        };
        let Some(mut ptr) = self.u8(ptr_off).map(|p| usize::from(p & 0xfc)) else {
            return;
        };
        let mut seen = [false; LEGACY_LEN / 4];
        while ptr != 0 {
            if ptr < HEADER_LEN {
                out.warn(format!(
                    "capability pointer {ptr:#x} points into the header"
                ));
                return;
            }
            if seen[ptr / 4] {
                out.warn(format!("capability list loops back to {ptr:#x}"));
                return;
            }
            seen[ptr / 4] = true;
            let (Some(&id), Some(&next)) = (b.get(ptr), b.get(ptr + 1)) else {
                out.warn(format!(
                    "capability at {ptr:#x} lies beyond the {} bytes read",
                    b.len()
                ));
                return;
            };
            out.standard.push(Capability {
                offset: ptr as u16,
                id,
                detail: decode_std(b, ptr, id),
            });
            ptr = usize::from(next & 0xfc);
        }
    }

    fn walk_extended(&self, out: &mut CapabilityList) {
        let b = &self.bytes;
        if b.len() < EXT_START + 4 {
            return;
        }
        let mut ptr = EXT_START;
        let mut seen = vec![false; PCIE_LEN / 4];
        loop {
            let Some(hdr) = le32(b, ptr) else {
                out.warn(format!(
                    "extended capability at {ptr:#x} lies beyond the {} bytes read",
                    b.len()
                ));
                return;
            };
            // All ones: the device is gone or the space is not implemented; all zeros at
            // the start: no extended capabilities.
            if hdr == 0xffff_ffff || (hdr == 0 && ptr == EXT_START) {
                return;
            }
            if seen[ptr / 4] {
                out.warn(format!("extended capability list loops back to {ptr:#x}"));
                return;
            }
            seen[ptr / 4] = true;
            let id = (hdr & 0xffff) as u16;
            let version = ((hdr >> 16) & 0xf) as u8;
            let next = ((hdr >> 20) & 0xffc) as usize;
            // Id 0 is a null capability (hypervisors hide capabilities this way): skip it,
            // but keep following the chain.
            if id != 0 {
                out.extended.push(ExtCapability {
                    offset: ptr as u16,
                    id,
                    version,
                    detail: decode_ext(b, ptr, id),
                });
            }
            if next == 0 {
                return;
            }
            if next < EXT_START {
                out.warn(format!(
                    "extended capability pointer {next:#x} points below 0x100"
                ));
                return;
            }
            ptr = next;
        }
    }
}

/// Both capability lists and whatever made the walk stop early.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CapabilityList {
    /// Standard capabilities, in list order.
    pub standard: Vec<Capability>,
    /// Extended (PCIe) capabilities, in list order.
    pub extended: Vec<ExtCapability>,
    /// Non-fatal problems (loops, bad pointers, short reads); the lists hold what was read
    /// before them.
    pub warnings: Vec<String>,
}

impl CapabilityList {
    fn warn(&mut self, w: String) {
        log::warn!("config space: {w}");
        self.warnings.push(w);
    }
    /// The first standard capability with this id.
    pub fn find(&self, id: u8) -> Option<&Capability> {
        self.standard.iter().find(|c| c.id == id)
    }
    /// The first extended capability with this id.
    pub fn find_ext(&self, id: u16) -> Option<&ExtCapability> {
        self.extended.iter().find(|c| c.id == id)
    }
    /// The decoded PCI Express capability.
    pub fn pcie(&self) -> Option<&PcieCap> {
        self.standard.iter().find_map(|c| match &c.detail {
            CapDetail::Pcie(p) => Some(p),
            _ => None,
        })
    }
    /// The decoded MSI-X capability.
    pub fn msix(&self) -> Option<&MsixCap> {
        self.standard.iter().find_map(|c| match &c.detail {
            CapDetail::Msix(m) => Some(m),
            _ => None,
        })
    }
    /// The decoded ACS capability.
    pub fn acs(&self) -> Option<&AcsCap> {
        self.extended.iter().find_map(|c| match &c.detail {
            ExtDetail::Acs(a) => Some(a),
            _ => None,
        })
    }
    /// The decoded SR-IOV capability.
    pub fn sriov(&self) -> Option<&SriovCap> {
        self.extended.iter().find_map(|c| match &c.detail {
            ExtDetail::Sriov(s) => Some(s),
            _ => None,
        })
    }
}

/// A standard (8-bit id) capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Capability {
    /// Offset in config space.
    pub offset: u16,
    #[serde(serialize_with = "crate::json::hex2")]
    /// Capability id (0x01 PM, 0x05 MSI, 0x10 PCIe, 0x11 MSI-X...).
    pub id: u8,
    /// Decoded fields, when vm-pci decodes this id.
    pub detail: CapDetail,
}

impl Capability {
    /// The capability's name as lspci prints it.
    pub fn name(&self) -> &'static str {
        std_cap_name(self.id)
    }
}

/// Decoded contents of the standard capabilities vm-accel cares about.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
pub enum CapDetail {
    /// Power management (id 0x01).
    PowerManagement(PmCap),
    /// MSI (id 0x05).
    Msi(MsiCap),
    /// MSI-X (id 0x11).
    Msix(MsixCap),
    /// PCI Express (id 0x10).
    Pcie(PcieCap),
    /// Known id without decoded fields, or bytes missing.
    Other,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
/// Power management capability.
pub struct PmCap {
    /// Capability version (PMC bits 2:0).
    pub version: u8,
    /// Current power state, 0..=3 for D0..D3hot (`"D0"`..`"D3hot"` in JSON, where `state`
    /// is a word in every document).
    #[serde(serialize_with = "crate::json::power_state")]
    pub state: u8,
    /// The device keeps its state on D3hot->D0 (so a PM reset does not reset it).
    pub no_soft_reset: bool,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
/// MSI capability.
pub struct MsiCap {
    /// MSI is enabled.
    pub enabled: bool,
    /// Vectors the device can request.
    pub vectors: u8,
    /// 64-bit message address.
    pub is_64bit: bool,
    /// Per-vector masking.
    pub per_vector_mask: bool,
}

/// Where an MSI-X structure (table or PBA) lives: BAR index (BIR) and offset in it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct BarLocation {
    /// BAR index (BIR).
    pub bar: u8,
    /// Byte offset in the BAR.
    pub offset: u32,
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
/// MSI-X capability.
pub struct MsixCap {
    /// MSI-X is enabled.
    pub enabled: bool,
    /// All vectors are masked.
    pub function_mask: bool,
    /// Number of table entries (vectors).
    pub table_size: u16,
    /// Where the vector table lives.
    pub table: BarLocation,
    /// Where the pending-bit array lives.
    pub pba: BarLocation,
}

impl MsixCap {
    /// Bytes the table occupies (16 per vector).
    pub fn table_len(&self) -> u64 {
        u64::from(self.table_size) * 16
    }
    /// Bytes the PBA occupies (one bit per vector, in 64-bit words).
    pub fn pba_len(&self) -> u64 {
        u64::from(self.table_size).div_ceil(64) * 8
    }
}

/// PCIe device/port type (PCIe capability register bits 7:4).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum PortType {
    /// PCI Express endpoint.
    Endpoint,
    /// Legacy PCI Express endpoint.
    LegacyEndpoint,
    /// Root port of a root complex.
    RootPort,
    /// Upstream port of a switch.
    UpstreamSwitchPort,
    /// Downstream port of a switch.
    DownstreamSwitchPort,
    /// PCI Express to PCI/PCI-X bridge.
    PcieToPciBridge,
    /// PCI/PCI-X to PCI Express bridge.
    PciToPcieBridge,
    /// Root-complex integrated endpoint.
    RcIntegratedEndpoint,
    /// Root-complex event collector.
    RcEventCollector,
    /// A value the spec reserves.
    Reserved(u8),
}

impl PortType {
    fn from_bits(v: u8) -> Self {
        match v {
            0 => PortType::Endpoint,
            1 => PortType::LegacyEndpoint,
            4 => PortType::RootPort,
            5 => PortType::UpstreamSwitchPort,
            6 => PortType::DownstreamSwitchPort,
            7 => PortType::PcieToPciBridge,
            8 => PortType::PciToPcieBridge,
            9 => PortType::RcIntegratedEndpoint,
            10 => PortType::RcEventCollector,
            other => PortType::Reserved(other),
        }
    }
    /// Ports on the path to a device whose ACS settings decide isolation.
    pub fn is_downstream_port(self) -> bool {
        matches!(self, PortType::RootPort | PortType::DownstreamSwitchPort)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
/// PCI Express capability (the parts vm-accel uses).
pub struct PcieCap {
    /// Capability version.
    pub version: u8,
    /// Device/port type.
    pub port_type: PortType,
    /// A slot is attached (the port leads to a physical slot).
    pub slot_implemented: bool,
    /// Function Level Reset supported (Device Capabilities bit 28).
    pub flr: bool,
    /// Maximum payload size supported, in bytes.
    pub max_payload: u16,
    /// Link capabilities: max speed as a generation (1 = 2.5 GT/s ... 6 = 64 GT/s), width.
    pub link_max_gen: Option<u8>,
    /// Maximum link width (lanes), from the link capabilities.
    pub link_max_width: Option<u8>,
    /// Negotiated link generation, from the link status.
    pub link_gen: Option<u8>,
    /// Negotiated link width, from the link status.
    pub link_width: Option<u8>,
}

fn decode_std(b: &[u8], at: usize, id: u8) -> CapDetail {
    let d = match id {
        0x01 => decode_pm(b, at).map(CapDetail::PowerManagement),
        0x05 => decode_msi(b, at).map(CapDetail::Msi),
        0x10 => decode_pcie(b, at).map(CapDetail::Pcie),
        0x11 => decode_msix(b, at).map(CapDetail::Msix),
        _ => None,
    };
    d.unwrap_or(CapDetail::Other)
}

fn decode_pm(b: &[u8], at: usize) -> Option<PmCap> {
    let pmc = le16(b, at + 2)?;
    let pmcsr = le16(b, at + 4)?;
    Some(PmCap {
        version: (pmc & 7) as u8,
        state: (pmcsr & 3) as u8,
        no_soft_reset: pmcsr & 0x8 != 0,
    })
}

fn decode_msi(b: &[u8], at: usize) -> Option<MsiCap> {
    let ctl = le16(b, at + 2)?;
    Some(MsiCap {
        enabled: ctl & 1 != 0,
        vectors: 1 << ((ctl >> 1) & 7).min(5),
        is_64bit: ctl & 0x80 != 0,
        per_vector_mask: ctl & 0x100 != 0,
    })
}

fn decode_msix(b: &[u8], at: usize) -> Option<MsixCap> {
    let ctl = le16(b, at + 2)?;
    let table = le32(b, at + 4)?;
    let pba = le32(b, at + 8)?;
    let loc = |v: u32| BarLocation {
        bar: (v & 7) as u8,
        offset: v & !7,
    };
    Some(MsixCap {
        enabled: ctl & 0x8000 != 0,
        function_mask: ctl & 0x4000 != 0,
        table_size: (ctl & 0x7ff) + 1,
        table: loc(table),
        pba: loc(pba),
    })
}

fn decode_pcie(b: &[u8], at: usize) -> Option<PcieCap> {
    let caps = le16(b, at + 2)?;
    let devcap = le32(b, at + 4)?;
    let port_type = PortType::from_bits(((caps >> 4) & 0xf) as u8);
    let linkcap = le32(b, at + 0x0c);
    let linksta = le16(b, at + 0x12);
    let nonzero = |v: u8| (v != 0).then_some(v);
    Some(PcieCap {
        version: (caps & 0xf) as u8,
        port_type,
        slot_implemented: caps & 0x100 != 0,
        flr: devcap & (1 << 28) != 0,
        max_payload: 128 << (devcap & 7).min(5),
        link_max_gen: linkcap.and_then(|l| nonzero((l & 0xf) as u8)),
        link_max_width: linkcap.and_then(|l| nonzero(((l >> 4) & 0x3f) as u8)),
        link_gen: linksta.and_then(|l| nonzero((l & 0xf) as u8)),
        link_width: linksta.and_then(|l| nonzero(((l >> 4) & 0x3f) as u8)),
    })
}

/// An extended (16-bit id) capability.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ExtCapability {
    /// Offset in config space (0x100 or above).
    pub offset: u16,
    #[serde(serialize_with = "crate::json::hex4")]
    /// Extended capability id (0x0001 AER, 0x000d ACS, 0x0010 SR-IOV...).
    pub id: u16,
    /// Capability version.
    pub version: u8,
    /// Decoded fields, when vm-pci decodes this id.
    pub detail: ExtDetail,
}

impl ExtCapability {
    /// The capability's name as lspci prints it.
    pub fn name(&self) -> &'static str {
        ext_cap_name(self.id)
    }
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", rename_all = "snake_case")]
/// Decoded contents of the extended capabilities vm-accel cares about.
pub enum ExtDetail {
    /// Access Control Services.
    Acs(AcsCap),
    /// Single Root I/O Virtualization.
    Sriov(SriovCap),
    /// Resizable BAR.
    ResizableBar {
        /// One entry per resizable BAR.
        bars: Vec<ResizableBarEntry>,
    },
    /// Alternative Routing-ID Interpretation.
    Ari {
        /// Next function number in the ARI chain.
        next_function: u8,
    },
    /// Designated vendor-specific capability.
    Dvsec {
        #[serde(serialize_with = "crate::json::hex4")]
        /// The vendor that defines it.
        vendor: u16,
        /// `dvsec_revision` in JSON (`revision` is the function's hex revision id there).
        #[serde(rename = "dvsec_revision")]
        revision: u8,
        #[serde(serialize_with = "crate::json::hex4")]
        /// The vendor's id for it.
        dvsec_id: u16,
    },
    /// Vendor-specific capability.
    Vsec {
        #[serde(serialize_with = "crate::json::hex4")]
        /// The vendor's id for it.
        vsec_id: u16,
        /// `vsec_revision` in JSON (`revision` is the function's hex revision id there).
        #[serde(rename = "vsec_revision")]
        revision: u8,
    },
    /// Advanced Error Reporting: the status registers now.
    Aer {
        /// Uncorrectable error status bits.
        uncorrectable_status: u32,
        /// Correctable error status bits.
        correctable_status: u32,
    },
    /// Device serial number.
    SerialNumber {
        /// The 64-bit serial number.
        serial: u64,
    },
    /// Known id without decoded fields, or bytes missing.
    Other,
}

/// Access Control Services: which controls the port offers and which are enabled.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct AcsCap {
    /// Controls the port implements (ACS capability register).
    pub capability: u16,
    /// Controls enabled now (ACS control register).
    pub control: u16,
}

impl AcsCap {
    /// ACS source validation.
    pub const SOURCE_VALIDATION: u16 = 1 << 0;
    /// ACS translation blocking.
    pub const TRANSLATION_BLOCKING: u16 = 1 << 1;
    /// ACS peer-to-peer request redirect.
    pub const P2P_REQUEST_REDIRECT: u16 = 1 << 2;
    /// ACS peer-to-peer completion redirect.
    pub const P2P_COMPLETION_REDIRECT: u16 = 1 << 3;
    /// ACS upstream forwarding.
    pub const UPSTREAM_FORWARDING: u16 = 1 << 4;
    /// ACS peer-to-peer egress control.
    pub const P2P_EGRESS_CONTROL: u16 = 1 << 5;
    /// ACS direct translated peer-to-peer.
    pub const DIRECT_TRANSLATED_P2P: u16 = 1 << 6;
    /// What the kernel needs enabled on a downstream port to isolate what is below it
    /// (pci_acs_enabled: SV, RR, CR, UF).
    pub const ISOLATION: u16 = Self::SOURCE_VALIDATION
        | Self::P2P_REQUEST_REDIRECT
        | Self::P2P_COMPLETION_REDIRECT
        | Self::UPSTREAM_FORWARDING;

    /// The isolation controls that are missing (neither enabled nor absent for a reason).
    pub fn missing_isolation(&self) -> u16 {
        Self::ISOLATION & !self.control
    }
    /// The short names (as lspci prints them) of the controls set in `bits`.
    pub fn control_names(bits: u16) -> Vec<&'static str> {
        const NAMES: [&str; 7] = [
            "SrcValid",
            "TransBlk",
            "ReqRedir",
            "CmpltRedir",
            "UpstreamFwd",
            "EgressCtrl",
            "DirectTrans",
        ];
        NAMES
            .iter()
            .enumerate()
            .filter(|(i, _)| bits & (1 << i) != 0)
            .map(|(_, n)| *n)
            .collect()
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
/// SR-IOV capability.
pub struct SriovCap {
    /// VFs initially associated with the PF.
    pub initial_vfs: u16,
    /// VFs the PF supports.
    pub total_vfs: u16,
    /// VFs enabled now.
    pub num_vfs: u16,
    /// Routing-id offset of the first VF.
    pub vf_offset: u16,
    /// Routing-id distance between VFs.
    pub vf_stride: u16,
    #[serde(serialize_with = "crate::json::hex4")]
    /// Device id of the VFs.
    pub vf_device_id: u16,
    /// VF Enable is set.
    pub vf_enabled: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
/// One resizable BAR: which sizes it supports and the size now.
pub struct ResizableBarEntry {
    /// BAR index.
    pub bar: u8,
    /// Supported sizes as a bit mask: bit n = 2^(n+20) bytes (1 MiB .. 128 TiB).
    pub supported_sizes: u64,
    /// Size programmed now, in bytes.
    pub current_size: u64,
}

fn decode_ext(b: &[u8], at: usize, id: u16) -> ExtDetail {
    let d = match id {
        0x0001 => (|| {
            Some(ExtDetail::Aer {
                uncorrectable_status: le32(b, at + 4)?,
                correctable_status: le32(b, at + 0x10)?,
            })
        })(),
        0x0003 => (|| {
            let lo = u64::from(le32(b, at + 4)?);
            let hi = u64::from(le32(b, at + 8)?);
            Some(ExtDetail::SerialNumber {
                serial: hi << 32 | lo,
            })
        })(),
        0x000b => le32(b, at + 4).map(|h| ExtDetail::Vsec {
            vsec_id: (h & 0xffff) as u16,
            revision: ((h >> 16) & 0xf) as u8,
        }),
        0x000d => (|| {
            Some(ExtDetail::Acs(AcsCap {
                capability: le16(b, at + 4)?,
                control: le16(b, at + 6)?,
            }))
        })(),
        0x000e => le16(b, at + 4).map(|c| ExtDetail::Ari {
            next_function: (c >> 8) as u8,
        }),
        0x0010 => decode_sriov(b, at).map(ExtDetail::Sriov),
        0x0015 => decode_rebar(b, at).map(|bars| ExtDetail::ResizableBar { bars }),
        0x0023 => (|| {
            let h1 = le32(b, at + 4)?;
            let h2 = le16(b, at + 8)?;
            Some(ExtDetail::Dvsec {
                vendor: (h1 & 0xffff) as u16,
                revision: ((h1 >> 16) & 0xf) as u8,
                dvsec_id: h2,
            })
        })(),
        _ => None,
    };
    d.unwrap_or(ExtDetail::Other)
}

fn decode_sriov(b: &[u8], at: usize) -> Option<SriovCap> {
    Some(SriovCap {
        vf_enabled: le16(b, at + 8)? & 1 != 0,
        initial_vfs: le16(b, at + 0x0c)?,
        total_vfs: le16(b, at + 0x0e)?,
        num_vfs: le16(b, at + 0x10)?,
        vf_offset: le16(b, at + 0x14)?,
        vf_stride: le16(b, at + 0x16)?,
        vf_device_id: le16(b, at + 0x1a)?,
    })
}

fn decode_rebar(b: &[u8], at: usize) -> Option<Vec<ResizableBarEntry>> {
    let first_ctl = le32(b, at + 8)?;
    let count = ((first_ctl >> 5) & 7).clamp(1, 6) as usize;
    (0..count)
        .map(|i| {
            let cap = le32(b, at + 4 + i * 8)?;
            let ctl = le32(b, at + 8 + i * 8)?;
            // Capability bits 4..=31 advertise 1 MiB .. 128 TiB.
            let supported_sizes = u64::from(cap >> 4);
            let size_bits = (ctl >> 8) & 0x3f;
            Some(ResizableBarEntry {
                bar: (ctl & 7) as u8,
                supported_sizes,
                current_size: 1u64.checked_shl(size_bits + 20).unwrap_or(0),
            })
        })
        .collect()
}

/// Standard capability names, as the PCI spec (and lspci) call them.
pub fn std_cap_name(id: u8) -> &'static str {
    match id {
        0x01 => "Power Management",
        0x02 => "AGP",
        0x03 => "VPD",
        0x04 => "Slot Identification",
        0x05 => "MSI",
        0x06 => "CompactPCI Hot Swap",
        0x07 => "PCI-X",
        0x08 => "HyperTransport",
        0x09 => "Vendor Specific",
        0x0a => "Debug Port",
        0x0b => "CompactPCI Central Resource Control",
        0x0c => "PCI Hot-Plug",
        0x0d => "Bridge Subsystem Vendor ID",
        0x0e => "AGP 8x",
        0x0f => "Secure Device",
        0x10 => "PCI Express",
        0x11 => "MSI-X",
        0x12 => "SATA Data/Index",
        0x13 => "Advanced Features",
        0x14 => "Enhanced Allocation",
        0x15 => "Flattening Portal Bridge",
        _ => "Unknown",
    }
}

/// Extended capability names.
pub fn ext_cap_name(id: u16) -> &'static str {
    match id {
        0x0001 => "Advanced Error Reporting",
        0x0002 => "Virtual Channel",
        0x0003 => "Device Serial Number",
        0x0004 => "Power Budgeting",
        0x0005 => "Root Complex Link Declaration",
        0x0006 => "Root Complex Internal Link Control",
        0x0007 => "Root Complex Event Collector Endpoint Association",
        0x0008 => "Multi-Function Virtual Channel",
        0x0009 => "Virtual Channel (MFVC)",
        0x000a => "Root Complex Register Block",
        0x000b => "Vendor Specific",
        0x000c => "Configuration Access Correlation",
        0x000d => "Access Control Services",
        0x000e => "Alternative Routing-ID Interpretation",
        0x000f => "Address Translation Services",
        0x0010 => "Single Root I/O Virtualization",
        0x0011 => "Multi-Root I/O Virtualization",
        0x0012 => "Multicast",
        0x0013 => "Page Request",
        0x0015 => "Resizable BAR",
        0x0016 => "Dynamic Power Allocation",
        0x0017 => "TPH Requester",
        0x0018 => "Latency Tolerance Reporting",
        0x0019 => "Secondary PCI Express",
        0x001a => "Protocol Multiplexing",
        0x001b => "Process Address Space ID",
        0x001c => "LN Requester",
        0x001d => "Downstream Port Containment",
        0x001e => "L1 PM Substates",
        0x001f => "Precision Time Measurement",
        0x0020 => "M-PCIe",
        0x0021 => "FRS Queueing",
        0x0022 => "Readiness Time Reporting",
        0x0023 => "Designated Vendor-Specific",
        0x0024 => "VF Resizable BAR",
        0x0025 => "Data Link Feature",
        0x0026 => "Physical Layer 16.0 GT/s",
        0x0027 => "Lane Margining at the Receiver",
        0x0028 => "Hierarchy ID",
        0x0029 => "Native PCIe Enclosure Management",
        0x002a => "Physical Layer 32.0 GT/s",
        0x002b => "Alternate Protocol",
        0x002c => "System Firmware Intermediary",
        0x002d => "Shadow Functions",
        0x002e => "Data Object Exchange",
        0x002f => "Device 3",
        0x0030 => "Integrity and Data Encryption",
        0x0031 => "Physical Layer 64.0 GT/s",
        _ => "Unknown",
    }
}

/// Link speed of a PCIe generation number, as sysfs prints it.
pub fn gen_speed(gen: u8) -> Option<&'static str> {
    Some(match gen {
        1 => "2.5 GT/s",
        2 => "5.0 GT/s",
        3 => "8.0 GT/s",
        4 => "16.0 GT/s",
        5 => "32.0 GT/s",
        6 => "64.0 GT/s",
        _ => return None,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    /// A 4 KiB config space with the capability list bit set and caps placed by the test.
    fn space() -> Vec<u8> {
        let mut b = vec![0u8; PCIE_LEN];
        b[0x06] = 0x10;
        b
    }

    #[test]
    fn cyclic_standard_list_stops() {
        let mut b = space();
        b[0x34] = 0x40;
        b[0x40] = 0x01;
        b[0x41] = 0x50;
        b[0x50] = 0x05;
        b[0x51] = 0x40; // back to the first
        let caps = ConfigSpace::new(b).capabilities();
        assert_eq!(caps.standard.len(), 2);
        assert!(caps.warnings[0].contains("loops"), "{:?}", caps.warnings);
    }

    #[test]
    fn pointer_into_header_and_short_read() {
        let mut b = space();
        b[0x34] = 0x10;
        let caps = ConfigSpace::new(b).capabilities();
        assert!(caps.standard.is_empty());
        assert!(caps.warnings[0].contains("header"));
        // A header-only (64-byte) read has no capability lists: empty, and no warning.
        let mut b = space();
        b[0x34] = 0x40;
        b.truncate(64);
        let caps = ConfigSpace::new(b).capabilities();
        assert!(
            caps.standard.is_empty() && caps.warnings.is_empty(),
            "{caps:?}"
        );
    }

    #[test]
    fn extended_loop_and_null_caps() {
        let mut b = space();
        // null cap at 0x100 -> ACS at 0x140 -> back to 0x100
        b[0x100..0x104].copy_from_slice(&(0x140u32 << 20).to_le_bytes());
        b[0x140..0x144].copy_from_slice(&(0x000du32 | 1 << 16 | 0x100 << 20).to_le_bytes());
        b[0x144..0x146].copy_from_slice(&0x7fu16.to_le_bytes());
        b[0x146..0x148].copy_from_slice(&0x19u16.to_le_bytes()); // SV, CR, UF: no RR
        let caps = ConfigSpace::new(b).capabilities();
        assert_eq!(caps.extended.len(), 1);
        let acs = caps.acs().unwrap();
        assert_eq!(acs.missing_isolation(), AcsCap::P2P_REQUEST_REDIRECT);
        assert!(caps.warnings[0].contains("loops"));
    }

    #[test]
    fn msix_table_and_pba() {
        let mut b = space();
        b[0x34] = 0xb0;
        b[0xb0] = 0x11;
        b[0xb2..0xb4].copy_from_slice(&0x8008u16.to_le_bytes());
        b[0xb4..0xb8].copy_from_slice(&0x00b9_0000u32.to_le_bytes());
        b[0xb8..0xbc].copy_from_slice(&0x00ba_0000u32.to_le_bytes());
        let caps = ConfigSpace::new(b).capabilities();
        let m = caps.msix().unwrap();
        assert_eq!(
            (m.table_size, m.table.bar, m.table.offset),
            (9, 0, 0xb9_0000)
        );
        assert_eq!((m.pba.bar, m.pba.offset, m.pba_len()), (0, 0xba_0000, 8));
        assert!(m.enabled);
    }

    proptest! {
        #![proptest_config(ProptestConfig::with_cases(2000))]
        #[test]
        fn arbitrary_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..PCIE_LEN + 16)) {
            let caps = ConfigSpace::new(bytes).capabilities();
            // Every offset is visited at most once, so the lists are bounded.
            prop_assert!(caps.standard.len() <= LEGACY_LEN / 4);
            prop_assert!(caps.extended.len() <= PCIE_LEN / 4);
        }

        #[test]
        fn adversarial_chains_terminate(ptrs in proptest::collection::vec(0u16..0x1000, 1..64), ids in proptest::collection::vec(any::<u16>(), 64)) {
            // Build a chain whose pointers are chosen by the fuzzer (cycles included).
            let mut b = space();
            b[0x34] = (ptrs[0] & 0xff) as u8;
            let mut at = 0x100usize;
            for (i, p) in ptrs.iter().enumerate() {
                let hdr = u32::from(ids[i]) | (u32::from(*p & 0xffc) << 20);
                b[at..at + 4].copy_from_slice(&hdr.to_le_bytes());
                let so = usize::from(*p & 0xfc);
                if so >= 0x40 { b[so] = (ids[i] & 0xff) as u8; b[so + 1] = (ids[i] >> 8) as u8; }
                at = usize::from(*p & 0xffc).max(0x100);
            }
            let caps = ConfigSpace::new(b).capabilities();
            prop_assert!(caps.extended.len() <= PCIE_LEN / 4);
        }
    }
}

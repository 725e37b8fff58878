//! The guest's view of the device's config space: shadow BARs, emulated MSI and MSI-X
//! capabilities, hidden capabilities, and which guest writes reach the device.
//!
//! (Skeleton: the types other attach modules exchange with the config emulation. The
//! emulation itself, `VirtualConfig`, lives here too.)

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

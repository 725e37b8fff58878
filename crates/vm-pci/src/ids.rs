//! PCI identity: vendor/device ids with their names, and the class code.
//!
//! Names come from the PCI ID database of the `pci-ids` crate, so they match what lspci
//! prints without depending on a pci.ids file being installed. build.rs lays that database
//! out as relocation-free tables (why: see there), which the lookups below binary-search.

use serde::Serialize;

/// Vendor and device name as the PCI ID database has them (`None` when unknown, where
/// lspci would print `Device 11e8`).
pub fn vendor_name(vendor: u16) -> Option<&'static str> {
    names::find(names::VENDORS, u64::from(vendor))
}

/// Device name from the PCI ID database.
pub fn device_name(vendor: u16, device: u16) -> Option<&'static str> {
    names::find(names::DEVICES, names::device_key(vendor, device))
}

/// Subsystem name from the PCI ID database.
pub fn subsystem_name(
    vendor: u16,
    device: u16,
    sub_vendor: u16,
    sub_device: u16,
) -> Option<&'static str> {
    let key = names::device_key(vendor, device) << 32
        | u64::from(sub_vendor) << 16
        | u64::from(sub_device);
    names::find(names::SUBSYSTEMS, key)
}

/// The tables build.rs writes: sorted 16-byte records (key u64, name offset u32, name
/// length u32, little-endian) into one string of names.
mod names {
    const NAMES: &str = include_str!(concat!(env!("OUT_DIR"), "/pci_names.txt"));
    pub(super) const VENDORS: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pci_vendors.bin"));
    pub(super) const DEVICES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pci_devices.bin"));
    pub(super) const SUBSYSTEMS: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pci_subsystems.bin"));
    pub(super) const CLASSES: &[u8] = include_bytes!(concat!(env!("OUT_DIR"), "/pci_classes.bin"));
    pub(super) const SUBCLASSES: &[u8] =
        include_bytes!(concat!(env!("OUT_DIR"), "/pci_subclasses.bin"));

    pub(super) fn device_key(vendor: u16, device: u16) -> u64 {
        u64::from(vendor) << 16 | u64::from(device)
    }

    fn field<const N: usize>(rec: &[u8], at: usize) -> [u8; N] {
        let mut b = [0u8; N];
        if let Some(s) = rec.get(at..at + N) {
            b.copy_from_slice(s);
        }
        b
    }

    /// The name stored under `key`, by binary search.
    pub(super) fn find(table: &'static [u8], key: u64) -> Option<&'static str> {
        let n = table.len() / 16;
        let (mut lo, mut hi) = (0usize, n);
        while lo < hi {
            let mid = lo + (hi - lo) / 2;
            let rec = table.get(mid * 16..mid * 16 + 16)?;
            match u64::from_le_bytes(field(rec, 0)).cmp(&key) {
                std::cmp::Ordering::Less => lo = mid + 1,
                std::cmp::Ordering::Greater => hi = mid,
                std::cmp::Ordering::Equal => {
                    let off = u32::from_le_bytes(field(rec, 8)) as usize;
                    let len = u32::from_le_bytes(field(rec, 12)) as usize;
                    return NAMES.get(off..off + len);
                }
            }
        }
        None
    }
}

/// The 24-bit class code: base class, subclass, programming interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct ClassCode(u32);

/// What a class code means for vm-accel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ClassKind {
    /// VGA-compatible display controller (0300).
    VgaController,
    /// 3D controller (0302), e.g. data-center GPUs.
    Display3d,
    /// Any other display controller.
    DisplayOther,
    /// Processing accelerator (12xx).
    ProcessingAccelerator,
    /// Co-processor (0b40).
    Coprocessor,
    /// Host bridge (0600).
    HostBridge,
    /// PCI-to-PCI bridge (0604).
    PciBridge,
    /// Any other bridge.
    OtherBridge,
    /// Network controller.
    Network,
    /// Mass storage controller.
    Storage,
    /// Multimedia controller (audio, video).
    Multimedia,
    /// Serial bus controller (USB...).
    SerialBus,
    /// Anything else.
    Other,
}

impl ClassCode {
    /// `None` when the value does not fit 24 bits.
    pub const fn new(raw: u32) -> Option<ClassCode> {
        if raw > 0xff_ffff {
            None
        } else {
            Some(ClassCode(raw))
        }
    }
    /// The 24-bit value.
    pub const fn raw(self) -> u32 {
        self.0
    }
    /// Base class (bits 23:16).
    pub const fn base(self) -> u8 {
        (self.0 >> 16) as u8
    }
    /// Subclass (bits 15:8).
    pub const fn sub(self) -> u8 {
        (self.0 >> 8) as u8
    }
    /// Programming interface (bits 7:0).
    pub const fn prog_if(self) -> u8 {
        self.0 as u8
    }

    /// What the class means to vm-accel.
    pub fn kind(self) -> ClassKind {
        match (self.base(), self.sub()) {
            (0x03, 0x00) => ClassKind::VgaController,
            (0x03, 0x02) => ClassKind::Display3d,
            (0x03, _) => ClassKind::DisplayOther,
            (0x12, _) => ClassKind::ProcessingAccelerator,
            (0x0b, 0x40) => ClassKind::Coprocessor,
            (0x06, 0x00) => ClassKind::HostBridge,
            (0x06, 0x04) | (0x06, 0x09) => ClassKind::PciBridge,
            (0x06, _) => ClassKind::OtherBridge,
            (0x02, _) => ClassKind::Network,
            (0x01, _) => ClassKind::Storage,
            (0x04, _) => ClassKind::Multimedia,
            (0x0c, _) => ClassKind::SerialBus,
            _ => ClassKind::Other,
        }
    }

    /// GPUs and other compute accelerators: display controllers (VGA, 3D, other),
    /// processing accelerators (class 0x12) and co-processors.
    pub fn is_accelerator(self) -> bool {
        matches!(
            self.kind(),
            ClassKind::VgaController
                | ClassKind::Display3d
                | ClassKind::DisplayOther
                | ClassKind::ProcessingAccelerator
                | ClassKind::Coprocessor
        )
    }

    /// Any bridge (host, PCI-to-PCI, ISA...). VFIO leaves bridges in a group on their
    /// drivers, so group viability ignores them.
    pub fn is_bridge(self) -> bool {
        self.base() == 0x06
    }

    /// The class name lspci prints (most specific known: subclass, else base class).
    pub fn name(self) -> &'static str {
        let sub = u64::from(self.base()) << 8 | u64::from(self.sub());
        names::find(names::SUBCLASSES, sub)
            .or_else(|| names::find(names::CLASSES, u64::from(self.base())))
            .unwrap_or("Unclassified device")
    }
}

impl std::fmt::Display for ClassCode {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:06x}", self.0)
    }
}

impl Serialize for ClassCode {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(&format_args!("{:06x}", self.0))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_kinds() {
        assert_eq!(device_name(0x10de, 0x2335), Some("GH100 [H200 SXM 141GB]"));
        assert_eq!(vendor_name(0x10de), Some("NVIDIA Corporation"));
        assert_eq!(device_name(0x1234, 0x11e8), None);
        let c = ClassCode::new(0x030200).unwrap();
        assert_eq!(c.kind(), ClassKind::Display3d);
        assert!(c.is_accelerator());
        assert_eq!(c.name(), "3D controller");
        assert!(ClassCode::new(0x060400).unwrap().is_bridge());
        assert_eq!(
            ClassCode::new(0x120000).unwrap().kind(),
            ClassKind::ProcessingAccelerator
        );
        assert!(ClassCode::new(0x1_000_000).is_none());
        assert_eq!(ClassCode::new(0xff0000).unwrap().name(), "Unassigned class");
    }

    /// The relocation-free tables answer exactly what the pci-ids crate answers, for every
    /// entry it has (and a few it has not).
    #[test]
    fn tables_match_the_pci_ids_crate() {
        use pci_ids::FromId;
        let mut checked = 0usize;
        for v in pci_ids::Vendors::iter() {
            assert_eq!(
                vendor_name(v.id()),
                pci_ids::Vendor::from_id(v.id()).map(|v| v.name())
            );
            for d in v.devices() {
                let want = pci_ids::Device::from_vid_pid(v.id(), d.id()).map(|d| d.name());
                assert_eq!(device_name(v.id(), d.id()), want);
                for s in d.subsystems() {
                    let want = pci_ids::Device::from_vid_pid(v.id(), d.id())
                        .and_then(|d| {
                            d.subsystems().find(|x| {
                                x.subvendor() == s.subvendor() && x.subdevice() == s.subdevice()
                            })
                        })
                        .map(|s| s.name());
                    assert_eq!(
                        subsystem_name(v.id(), d.id(), s.subvendor(), s.subdevice()),
                        want
                    );
                    checked += 1;
                }
                checked += 1;
            }
        }
        assert!(checked > 30_000, "{checked}");
        for code in 0..=0xffffu32 {
            let c = ClassCode::new(code << 8).unwrap();
            let want = pci_ids::Subclass::from_cid_sid(c.base(), c.sub())
                .map(|s| s.name())
                .or_else(|| pci_ids::Class::from_id(c.base()).map(|c| c.name()))
                .unwrap_or("Unclassified device");
            assert_eq!(c.name(), want, "{code:04x}");
        }
        for vid in 0..=0xffffu16 {
            assert_eq!(
                vendor_name(vid),
                pci_ids::Vendor::from_id(vid).map(|v| v.name())
            );
        }
        assert_eq!(device_name(0x10de, 0xfff0), None);
        assert_eq!(subsystem_name(0x10de, 0x2335, 0xdead, 0xbeef), None);
    }
}

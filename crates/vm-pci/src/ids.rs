//! PCI identity: vendor/device ids with their names, and the class code.
//!
//! Names come from the PCI ID database embedded by the `pci-ids` crate, so they match what
//! lspci prints without depending on a pci.ids file being installed.

use pci_ids::FromId;
use serde::Serialize;

/// Vendor and device name as the PCI ID database has them (`None` when unknown, where
/// lspci would print `Device 11e8`).
pub fn vendor_name(vendor: u16) -> Option<&'static str> {
    pci_ids::Vendor::from_id(vendor).map(|v| v.name())
}

/// Device name from the PCI ID database.
pub fn device_name(vendor: u16, device: u16) -> Option<&'static str> {
    pci_ids::Device::from_vid_pid(vendor, device).map(|d| d.name())
}

/// Subsystem name from the PCI ID database.
pub fn subsystem_name(
    vendor: u16,
    device: u16,
    sub_vendor: u16,
    sub_device: u16,
) -> Option<&'static str> {
    pci_ids::Device::from_vid_pid(vendor, device)?
        .subsystems()
        .find(|s| s.subvendor() == sub_vendor && s.subdevice() == sub_device)
        .map(|s| s.name())
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
        if let Some(s) = pci_ids::Subclass::from_cid_sid(self.base(), self.sub()) {
            return s.name();
        }
        pci_ids::Class::from_id(self.base()).map_or("Unclassified device", |c| c.name())
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
}

//! Lays the PCI ID database of the `pci-ids` crate out as relocation-free tables.
//!
//! pci-ids keeps its ~45,000 names behind pointers; in a position-independent executable
//! every one is a relocation the dynamic loader applies at each start (about 1.3 MiB of
//! pages written before `main`), which was most of `vm-accel list`'s process-start cost.
//! Here the names become one string and each table a sorted array of fixed 16-byte records
//! (key u64, name offset u32, name length u32, little-endian) that `ids.rs` binary-searches
//! from `include_bytes!`: no pointers, so nothing to relocate. The data is exactly pci-ids'.

use std::path::Path;

#[derive(Default)]
struct Tables {
    names: String,
    vendors: Vec<(u64, u32, u32)>,
    devices: Vec<(u64, u32, u32)>,
    subsystems: Vec<(u64, u32, u32)>,
    classes: Vec<(u64, u32, u32)>,
    subclasses: Vec<(u64, u32, u32)>,
}

impl Tables {
    fn name(&mut self, s: &str) -> (u32, u32) {
        let off = u32::try_from(self.names.len()).expect("names fit in 4 GiB");
        self.names.push_str(s);
        (off, u32::try_from(s.len()).expect("a name fits in 4 GiB"))
    }
}

fn write_table(dir: &Path, file: &str, mut rows: Vec<(u64, u32, u32)>) {
    rows.sort_by_key(|r| r.0);
    // pci.ids may list a key twice; the first entry is what pci-ids' lookups return.
    rows.dedup_by_key(|r| r.0);
    let mut bytes = Vec::with_capacity(rows.len() * 16);
    for (key, off, len) in rows {
        bytes.extend_from_slice(&key.to_le_bytes());
        bytes.extend_from_slice(&off.to_le_bytes());
        bytes.extend_from_slice(&len.to_le_bytes());
    }
    std::fs::write(dir.join(file), bytes).expect("write table");
}

fn main() {
    println!("cargo:rerun-if-changed=build.rs");
    let out = std::env::var_os("OUT_DIR").expect("OUT_DIR");
    let out = Path::new(&out);
    let mut t = Tables::default();
    for v in pci_ids::Vendors::iter() {
        let vid = u64::from(v.id());
        let (o, l) = t.name(v.name());
        t.vendors.push((vid, o, l));
        for d in v.devices() {
            let did = vid << 16 | u64::from(d.id());
            let (o, l) = t.name(d.name());
            t.devices.push((did, o, l));
            for s in d.subsystems() {
                let key = did << 32 | u64::from(s.subvendor()) << 16 | u64::from(s.subdevice());
                let (o, l) = t.name(s.name());
                t.subsystems.push((key, o, l));
            }
        }
    }
    for c in pci_ids::Classes::iter() {
        let cid = u64::from(c.id());
        let (o, l) = t.name(c.name());
        t.classes.push((cid, o, l));
        for s in c.subclasses() {
            let (o, l) = t.name(s.name());
            t.subclasses.push((cid << 8 | u64::from(s.id()), o, l));
        }
    }
    std::fs::write(out.join("pci_names.txt"), &t.names).expect("write names");
    write_table(out, "pci_vendors.bin", t.vendors);
    write_table(out, "pci_devices.bin", t.devices);
    write_table(out, "pci_subsystems.bin", t.subsystems);
    write_table(out, "pci_classes.bin", t.classes);
    write_table(out, "pci_subclasses.bin", t.subclasses);
}

//! Prints the inventory of a sysfs root as JSON: `cargo run -p vm-pci --example dump -- /sys`.
fn main() {
    let root = std::env::args().nth(1).unwrap_or_else(|| "/sys".into());
    match vm_pci::Inventory::scan(&vm_pci::SysfsRoot::new(root)) {
        Ok(inv) => match serde_json::to_string_pretty(&inv) {
            Ok(s) => println!("{s}"),
            Err(e) => eprintln!("{e}"),
        },
        Err(e) => eprintln!("{e}"),
    }
}

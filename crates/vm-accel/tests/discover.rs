//! The facade's discovery on the workspace's captured hosts (an integration test: the
//! fixtures live outside the published crate).

mod fake_gpu;

use vm_accel::{discover, join_cuda, vm_cuda, vm_pci};
use vm_cuda::DeviceInfo as CudaInfo;
use vm_pci::{Inventory, SysfsRoot};

#[test]
fn without_cuda_the_pci_accelerators_remain_and_the_reason_is_given() {
    let root = SysfsRoot::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/sysfs/h200x2-host"
    ));
    let d = discover(&root).unwrap();
    let bdfs: Vec<String> = d
        .accelerators
        .iter()
        .map(|a| a.pci.bdf.to_string())
        .collect();
    assert_eq!(bdfs, vec!["0000:00:06.0", "0000:00:07.0"]);
    if !vm_cuda::BUILT_WITH_CUDA {
        assert!(d.cuda_unavailable.unwrap().contains("not built in"));
    }
}

fn cuda_info(ordinal: u32, bus: u8, device: u8) -> CudaInfo {
    fake_gpu::h200(ordinal, bus, device)
}

#[test]
fn cuda_devices_join_by_bus_id() {
    let root = SysfsRoot::new(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../tests/fixtures/sysfs/h200x2-host"
    ));
    let inv = Inventory::scan(&root).unwrap();
    // CUDA orders devices its own way: ordinal 0 is the second GPU here.
    let d = join_cuda(
        &inv,
        vec![
            cuda_info(0, 0, 7),
            cuda_info(1, 0, 6),
            cuda_info(2, 0x41, 0),
        ],
    );
    let joined: Vec<(String, Option<u32>)> = d
        .accelerators
        .iter()
        .map(|a| (a.pci.bdf.to_string(), a.cuda.as_ref().map(|c| c.ordinal)))
        .collect();
    assert_eq!(
        joined,
        vec![
            ("0000:00:06.0".into(), Some(1)),
            ("0000:00:07.0".into(), Some(0))
        ]
    );
    assert_eq!(d.unmatched_cuda.len(), 1);
    assert_eq!(d.unmatched_cuda[0].pci_bdf, "0000:41:00.0");
}

//! The facade's discovery on the workspace's captured hosts (an integration test: the
//! fixtures live outside the published crate).

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
    CudaInfo {
        ordinal,
        name: "NVIDIA H200".into(),
        uuid: None,
        pci: vm_cuda::PciLocation {
            domain: 0,
            bus,
            device,
        },
        pci_bdf: format!("0000:{bus:02x}:{device:02x}.0"),
        total_memory_bytes: 141 << 30,
        compute_capability: (9, 0),
        sm_count: 132,
        clock_khz: 1_980_000,
        memory_clock_khz: 3_201_000,
        memory_bus_width_bits: 6144,
        peak_memory_bandwidth_bytes_per_s: None,
        l2_cache_bytes: 50 << 20,
        async_engine_count: 3,
        ecc_enabled: true,
        limits: vm_cuda::Limits {
            max_threads_per_block: 1024,
            max_block_dim: [1024, 1024, 64],
            max_grid_dim: [i32::MAX as u32, 65535, 65535],
            max_shared_per_block: 48 << 10,
            max_shared_per_block_optin: 227 << 10,
            warp_size: 32,
        },
    }
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

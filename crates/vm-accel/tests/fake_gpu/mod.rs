//! A CUDA device as the driver describes an H200, for tests that run without one.

use vm_accel::vm_cuda;

/// CUDA device `ordinal` at PCI `0000:bus:device.0`, with the H200's figures; no UUID
/// and no peak bandwidth (set them with struct update syntax where a test needs them).
pub fn h200(ordinal: u32, bus: u8, device: u8) -> vm_cuda::DeviceInfo {
    vm_cuda::DeviceInfo {
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

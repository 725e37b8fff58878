//! Shared setup of the GPU tests: the context of the device under test, or a visible skip.

#![allow(dead_code)]

use vm_cuda::{Context, Error};

/// Device ordinal under test: `VM_ACCEL_CUDA_DEVICE`, default 0.
pub fn ordinal() -> u32 {
    std::env::var("VM_ACCEL_CUDA_DEVICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0)
}

/// The primary context of the device under test. `None` (after reporting the skip with the
/// driver's reason) when this host has no usable GPU: built without `cuda`, the stub
/// library, no device. Any other failure is a test failure.
pub fn gpu(test: &str) -> Option<Context> {
    match Context::for_ordinal(ordinal()) {
        Ok(ctx) => Some(ctx),
        Err(e) if e.means_no_gpu() => {
            vm_accel_tests::hw::skip(test, &format!("no usable GPU: {e}"));
            None
        }
        Err(e @ Error::InvalidDevice { .. }) => {
            vm_accel_tests::hw::skip(test, &e.to_string());
            None
        }
        Err(e) => panic!("{test}: opening CUDA device {}: {e}", ordinal()),
    }
}

pub const TEST_PTX: &str = include_str!("../../kernels/test_kernels.ptx");

//! CUDA compute for GPU health checks and VMM helpers: devices, primary contexts, PTX
//! modules with checked kernel launches, streams, events, device and pinned memory, peer
//! access and copies between GPUs, and the health checks (one GPU or all, busy vs
//! unhealthy).
//!
//! Behind the `cuda` feature the driver API is loaded from `libcuda.so.1` at run time
//! (handle types from cust's raw bindings, `cust::sys`): without the driver operations
//! return [`Error::DriverNotFound`]; without the feature every type and function still
//! exists and each operation returns [`Error::Unsupported`]; with the stub libcuda of
//! `cargo xtask cuda-stub` or no device, [`Error::Driver`] with
//! `CUDA_ERROR_STUB_LIBRARY` / `CUDA_ERROR_NO_DEVICE`. [`Error::means_no_gpu`] tells all of
//! those apart from a GPU that failed.
//!
//! ```no_run
//! use vm_cuda::*;
//! # fn main() -> vm_cuda::Result<()> {
//! let ctx = Context::for_ordinal(0)?;
//! let module = Module::from_ptx(&ctx, vm_cuda::health::HEALTH_PTX, &JitOptions::default())?;
//! let vec_add = module.kernel("vec_add")?;
//! let stream = Stream::new(&ctx, StreamOptions::default())?;
//! let a = DeviceBuffer::from_slice(&ctx, &[1.0f32; 1024])?;
//! let b = DeviceBuffer::from_slice(&ctx, &[2.0f32; 1024])?;
//! let c = DeviceBuffer::<f32>::zeroed(&ctx, 1024)?;
//! let args = KernelArgs::new().buffer(&a).buffer(&b).buffer(&c).u64(1024);
//! vec_add.launch(&stream, &LaunchConfig::for_elements(1024, 256)?, &args)?;
//! stream.synchronize()?;
//! assert_eq!(c.to_vec()?, vec![3.0f32; 1024]);
//! # Ok(()) }
//! ```

#![deny(missing_docs)]

pub mod all_gpus;
pub mod args;
pub mod context;
mod deadline;
pub mod device;
pub mod error;
pub mod health;
pub mod launch;
pub mod memory;
pub mod module;
pub mod peer;
pub mod ptx;
pub mod sharing;
mod steps;
pub mod stream;
mod sys;

pub use args::{KernelArgs, Pod};
pub use context::{Context, MemoryInfo};
pub use device::{driver_version, Device, DeviceInfo, Limits, PciLocation};
pub use error::{DriverCode, Error, Result};
pub use launch::{Dim3, LaunchConfig};
pub use memory::{DeviceBuffer, PinnedBuffer};
pub use module::{FunctionAttributes, JitOptions, Kernel, Module};
pub use peer::{topology, LinkKind, PeerLink};
pub use ptx::{KernelSignature, Param, ParamType};
pub use stream::{Event, EventOptions, Stream, StreamOptions};

/// True when this build can talk to a CUDA driver at all (the `cuda` feature).
pub const BUILT_WITH_CUDA: bool = cfg!(feature = "cuda");

/// Without the `cuda` feature every entry point exists and fails with `Unsupported`.
#[cfg(all(test, not(feature = "cuda")))]
mod unsupported_tests {
    use super::*;

    fn unsupported<T: std::fmt::Debug>(r: Result<T>) {
        match r {
            Err(e @ Error::Unsupported { .. }) => {
                assert!(e.means_no_gpu());
                assert!(e.to_string().contains("`cuda` feature"), "{e}");
            }
            other => panic!("expected Unsupported, got {other:?}"),
        }
    }

    #[test]
    fn every_entry_point_is_unsupported() {
        const { assert!(!BUILT_WITH_CUDA) };
        unsupported(device::init());
        unsupported(driver_version());
        unsupported(Device::count());
        unsupported(Device::get(0));
        unsupported(Device::all());
        unsupported(Context::for_ordinal(0));
        unsupported(health::run(0, &health::HealthOptions::default()));
    }
}

// The README is the crate page on crates.io: its examples are compiled as doctests.
#[cfg(doctest)]
#[doc = include_str!("../README.md")]
struct ReadmeDoctests;

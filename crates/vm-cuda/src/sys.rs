//! The CUDA driver entry points vm-cuda calls, resolved from libcuda.so.1 at run time.
//!
//! Handle types come from `cust::sys` (cust_raw). The functions are not linked: a binary
//! built with `cuda` must start on hosts without the NVIDIA driver (passthrough hosts,
//! where the GPUs sit on vfio-pci), so the first driver call dlopens `libcuda.so.1`
//! (or `$VM_CUDA_LIBRARY`) and resolves every entry point of the table below once; its
//! absence is [`Error::DriverNotFound`], never a failed program start.
//!
//! Each function returns [`CuResult`], a plain `c_int`, where cust_raw returns the Rust enum
//! `cudaError_enum` generated from CUDA 11.4 headers. A newer driver returns codes that
//! enum lacks (CUDA 12/13 added dozens), and a Rust enum holding an undeclared value is
//! undefined behaviour; an integer keeps every code intact for [`crate::DriverCode`].
//!
//! Without the `cuda` feature the same functions exist as Rust functions returning
//! [`CuResult::NOT_BUILT`], so the whole safe layer compiles, and fails with
//! `Error::Unsupported`, in both configurations.

#![allow(non_snake_case, non_camel_case_types, clippy::too_many_arguments)]

use std::ffi::{c_char, c_int, c_uchar, c_uint, c_void};

use crate::error::{DriverCode, Error, Result};

#[cfg(feature = "cuda")]
pub use cust::sys::{
    CUcontext, CUdevice, CUdeviceptr, CUevent, CUfunction, CUmodule, CUstream, CUuuid,
};

#[cfg(not(feature = "cuda"))]
mod types {
    pub type CUcontext = *mut std::ffi::c_void;
    pub type CUdevice = std::ffi::c_int;
    pub type CUdeviceptr = u64;
    pub type CUevent = *mut std::ffi::c_void;
    pub type CUfunction = *mut std::ffi::c_void;
    pub type CUmodule = *mut std::ffi::c_void;
    pub type CUstream = *mut std::ffi::c_void;
    #[repr(C)]
    #[derive(Debug, Clone, Copy)]
    pub struct CUuuid {
        pub bytes: [std::ffi::c_char; 16],
    }
}
#[cfg(not(feature = "cuda"))]
pub use types::*;

/// A `CUresult` as the driver returns it.
#[repr(transparent)]
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[must_use]
pub struct CuResult(pub c_int);

impl CuResult {
    pub const SUCCESS: Self = Self(0);
    pub const NOT_READY: Self = Self(600);
    /// Not a CUDA code: returned by every entry point when the `cuda` feature is off.
    pub const NOT_BUILT: Self = Self(-1);
    /// Not a CUDA code: the driver library could not be loaded ([`load_error`] says why).
    pub const NOT_LOADED: Self = Self(-2);

    /// `Ok` on success, else the typed error naming `operation`.
    #[inline]
    pub fn ok(self, operation: &'static str) -> Result<()> {
        if self == Self::SUCCESS {
            Ok(())
        } else {
            Err(self.error(operation))
        }
    }

    #[cold]
    pub fn error(self, operation: &'static str) -> Error {
        if self == Self::NOT_BUILT {
            Error::Unsupported { operation }
        } else if self == Self::NOT_LOADED {
            Error::DriverNotFound {
                library: library_name(),
                reason: load_error().unwrap_or_else(|| "not loaded".into()),
            }
        } else {
            Error::Driver {
                operation,
                code: DriverCode(self.0 as u32),
            }
        }
    }
}

/// The library asked for: `$VM_CUDA_LIBRARY` (a name or a path) or `libcuda.so.1`.
pub fn library_name() -> String {
    std::env::var("VM_CUDA_LIBRARY").unwrap_or_else(|_| "libcuda.so.1".into())
}

macro_rules! driver_api {
    ($( fn $name:ident( $($arg:ident : $ty:ty),* $(,)? ); )*) => {
        #[cfg(feature = "cuda")]
        mod loaded {
            use super::*;
            use std::sync::OnceLock;

            /// Every entry point, resolved once; the library stays loaded for the
            /// process's life (the pointers point into it).
            #[allow(dead_code)]
            pub(super) struct Api {
                _lib: libloading::Library,
                $( pub(super) $name: unsafe extern "C" fn($($ty),*) -> CuResult, )*
            }

            static API: OnceLock<std::result::Result<Api, String>> = OnceLock::new();

            fn load() -> std::result::Result<Api, String> {
                let name = library_name();
                // SAFETY: libcuda's initialisers are the driver's own and safe to run;
                // loading it is what linking it did before.
                let lib = unsafe { libloading::Library::new(&name) }.map_err(|e| e.to_string())?;
                $(
                    // SAFETY: the symbol is the driver API function of this name, whose C
                    // signature (cuda.h) the declared pointer type matches.
                    let $name = *unsafe {
                        lib.get::<unsafe extern "C" fn($($ty),*) -> CuResult>(
                            concat!(stringify!($name), "\0").as_bytes(),
                        )
                    }
                    .map_err(|e| {
                        format!("{name} lacks {} (driver too old?): {e}", stringify!($name))
                    })?;
                )*
                log::debug!("loaded the CUDA driver API from {name}");
                Ok(Api { _lib: lib, $( $name, )* })
            }

            /// The table: after the first call one atomic load and a branch (every launch
            /// goes through here twice, so the loading stays out of line).
            #[inline(always)]
            pub(super) fn api() -> Option<&'static Api> {
                match API.get() {
                    Some(r) => r.as_ref().ok(),
                    None => first_use(),
                }
            }

            #[cold]
            #[inline(never)]
            fn first_use() -> Option<&'static Api> {
                API.get_or_init(load).as_ref().ok()
            }

            pub(super) fn error() -> Option<String> {
                API.get_or_init(load).as_ref().err().cloned()
            }

            $(
                #[allow(clippy::missing_safety_doc)]
                #[inline]
                pub unsafe fn $name($($arg: $ty),*) -> CuResult {
                    match api() {
                        // SAFETY: the caller upholds the driver function's contract.
                        Some(a) => unsafe { (a.$name)($($arg),*) },
                        None => CuResult::NOT_LOADED,
                    }
                }
            )*
        }
        #[cfg(feature = "cuda")]
        pub use loaded::*;

        #[cfg(not(feature = "cuda"))]
        mod not_built {
            use super::*;
            $(
                #[allow(unused_variables, clippy::missing_safety_doc)]
                #[inline]
                pub unsafe fn $name($($arg: $ty),*) -> CuResult { CuResult::NOT_BUILT }
            )*
        }
        #[cfg(not(feature = "cuda"))]
        pub use not_built::*;
    };
}

/// Why the driver library could not be loaded (`None` when it was, or without `cuda`).
pub fn load_error() -> Option<String> {
    #[cfg(feature = "cuda")]
    {
        loaded::error()
    }
    #[cfg(not(feature = "cuda"))]
    {
        None
    }
}

driver_api! {
    fn cuInit(flags: c_uint);
    fn cuDriverGetVersion(version: *mut c_int);
    fn cuDeviceGetCount(count: *mut c_int);
    fn cuDeviceGet(device: *mut CUdevice, ordinal: c_int);
    fn cuDeviceGetName(name: *mut c_char, len: c_int, dev: CUdevice);
    fn cuDeviceTotalMem_v2(bytes: *mut usize, dev: CUdevice);
    fn cuDeviceGetAttribute(value: *mut c_int, attrib: c_int, dev: CUdevice);
    fn cuDeviceGetUuid_v2(uuid: *mut CUuuid, dev: CUdevice);
    fn cuDevicePrimaryCtxRetain(ctx: *mut CUcontext, dev: CUdevice);
    fn cuDevicePrimaryCtxRelease_v2(dev: CUdevice);
    fn cuCtxSetCurrent(ctx: CUcontext);
    fn cuCtxGetCurrent(ctx: *mut CUcontext);
    fn cuCtxSynchronize();
    fn cuCtxGetStreamPriorityRange(least: *mut c_int, greatest: *mut c_int);
    fn cuMemGetInfo_v2(free: *mut usize, total: *mut usize);
    fn cuModuleLoadDataEx(
        module: *mut CUmodule,
        image: *const c_void,
        num_options: c_uint,
        options: *mut c_int,
        values: *mut *mut c_void,
    );
    fn cuModuleUnload(module: CUmodule);
    fn cuModuleGetFunction(func: *mut CUfunction, module: CUmodule, name: *const c_char);
    fn cuFuncGetAttribute(value: *mut c_int, attrib: c_int, func: CUfunction);
    fn cuFuncSetAttribute(func: CUfunction, attrib: c_int, value: c_int);
    fn cuLaunchKernel(
        func: CUfunction,
        grid_x: c_uint,
        grid_y: c_uint,
        grid_z: c_uint,
        block_x: c_uint,
        block_y: c_uint,
        block_z: c_uint,
        shared_bytes: c_uint,
        stream: CUstream,
        params: *mut *mut c_void,
        extra: *mut *mut c_void,
    );
    fn cuStreamCreateWithPriority(stream: *mut CUstream, flags: c_uint, priority: c_int);
    fn cuStreamDestroy_v2(stream: CUstream);
    fn cuStreamSynchronize(stream: CUstream);
    fn cuStreamQuery(stream: CUstream);
    fn cuStreamWaitEvent(stream: CUstream, event: CUevent, flags: c_uint);
    fn cuStreamGetPriority(stream: CUstream, priority: *mut c_int);
    fn cuEventCreate(event: *mut CUevent, flags: c_uint);
    fn cuEventDestroy_v2(event: CUevent);
    fn cuEventRecord(event: CUevent, stream: CUstream);
    fn cuEventSynchronize(event: CUevent);
    fn cuEventQuery(event: CUevent);
    fn cuEventElapsedTime(ms: *mut f32, start: CUevent, end: CUevent);
    fn cuMemAlloc_v2(ptr: *mut CUdeviceptr, bytes: usize);
    fn cuMemFree_v2(ptr: CUdeviceptr);
    fn cuMemHostAlloc(ptr: *mut *mut c_void, bytes: usize, flags: c_uint);
    fn cuMemFreeHost(ptr: *mut c_void);
    fn cuMemcpyHtoD_v2(dst: CUdeviceptr, src: *const c_void, bytes: usize);
    fn cuMemcpyDtoH_v2(dst: *mut c_void, src: CUdeviceptr, bytes: usize);
    fn cuMemcpyDtoD_v2(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize);
    fn cuMemcpyHtoDAsync_v2(dst: CUdeviceptr, src: *const c_void, bytes: usize, stream: CUstream);
    fn cuMemcpyDtoHAsync_v2(dst: *mut c_void, src: CUdeviceptr, bytes: usize, stream: CUstream);
    fn cuMemcpyDtoDAsync_v2(dst: CUdeviceptr, src: CUdeviceptr, bytes: usize, stream: CUstream);
    fn cuMemsetD8_v2(dst: CUdeviceptr, value: c_uchar, count: usize);
    fn cuMemsetD32_v2(dst: CUdeviceptr, value: c_uint, count: usize);
    fn cuMemsetD8Async(dst: CUdeviceptr, value: c_uchar, count: usize, stream: CUstream);
    fn cuMemsetD32Async(dst: CUdeviceptr, value: c_uint, count: usize, stream: CUstream);
    fn cuDeviceCanAccessPeer(can: *mut c_int, dev: CUdevice, peer: CUdevice);
    fn cuDeviceGetP2PAttribute(value: *mut c_int, attrib: c_int, src: CUdevice, dst: CUdevice);
    fn cuCtxEnablePeerAccess(peer: CUcontext, flags: c_uint);
    fn cuCtxDisablePeerAccess(peer: CUcontext);
    fn cuMemcpyPeer(
        dst: CUdeviceptr,
        dst_ctx: CUcontext,
        src: CUdeviceptr,
        src_ctx: CUcontext,
        bytes: usize,
    );
    fn cuMemcpyPeerAsync(
        dst: CUdeviceptr,
        dst_ctx: CUcontext,
        src: CUdeviceptr,
        src_ctx: CUcontext,
        bytes: usize,
        stream: CUstream,
    );
}

/// The legacy default stream (`CU_STREAM_LEGACY` is 0x1; the null handle means the same
/// unless compiled for per-thread default streams, which these bindings are not).
pub const LEGACY_STREAM: CUstream = std::ptr::null_mut();

// Constants from cuda.h (ABI-stable values).
pub const CU_STREAM_NON_BLOCKING: c_uint = 0x1;
pub const CU_EVENT_BLOCKING_SYNC: c_uint = 0x1;
pub const CU_EVENT_DISABLE_TIMING: c_uint = 0x2;
pub const CU_MEMHOSTALLOC_PORTABLE: c_uint = 0x1;

pub const CU_DEVICE_P2P_ATTRIBUTE_PERFORMANCE_RANK: c_int = 1;
pub const CU_DEVICE_P2P_ATTRIBUTE_ACCESS_SUPPORTED: c_int = 2;
pub const CU_DEVICE_P2P_ATTRIBUTE_NATIVE_ATOMIC_SUPPORTED: c_int = 3;

pub const CU_JIT_MAX_REGISTERS: c_int = 0;
pub const CU_JIT_INFO_LOG_BUFFER: c_int = 3;
pub const CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES: c_int = 4;
pub const CU_JIT_ERROR_LOG_BUFFER: c_int = 5;
pub const CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES: c_int = 6;
pub const CU_JIT_OPTIMIZATION_LEVEL: c_int = 7;
pub const CU_JIT_LOG_VERBOSE: c_int = 12;
pub const CU_JIT_GENERATE_LINE_INFO: c_int = 13;

pub const CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK: c_int = 0;
pub const CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES: c_int = 1;
pub const CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES: c_int = 2;
pub const CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES: c_int = 3;
pub const CU_FUNC_ATTRIBUTE_NUM_REGS: c_int = 4;
pub const CU_FUNC_ATTRIBUTE_PTX_VERSION: c_int = 5;
pub const CU_FUNC_ATTRIBUTE_BINARY_VERSION: c_int = 6;
pub const CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES: c_int = 8;

pub const CU_DEVICE_ATTRIBUTE_MAX_THREADS_PER_BLOCK: c_int = 1;
pub const CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_X: c_int = 2;
pub const CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Y: c_int = 3;
pub const CU_DEVICE_ATTRIBUTE_MAX_BLOCK_DIM_Z: c_int = 4;
pub const CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_X: c_int = 5;
pub const CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Y: c_int = 6;
pub const CU_DEVICE_ATTRIBUTE_MAX_GRID_DIM_Z: c_int = 7;
pub const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK: c_int = 8;
pub const CU_DEVICE_ATTRIBUTE_WARP_SIZE: c_int = 10;
pub const CU_DEVICE_ATTRIBUTE_CLOCK_RATE: c_int = 13;
pub const CU_DEVICE_ATTRIBUTE_MULTIPROCESSOR_COUNT: c_int = 16;
pub const CU_DEVICE_ATTRIBUTE_ECC_ENABLED: c_int = 32;
pub const CU_DEVICE_ATTRIBUTE_PCI_BUS_ID: c_int = 33;
pub const CU_DEVICE_ATTRIBUTE_PCI_DEVICE_ID: c_int = 34;
pub const CU_DEVICE_ATTRIBUTE_MEMORY_CLOCK_RATE: c_int = 36;
pub const CU_DEVICE_ATTRIBUTE_GLOBAL_MEMORY_BUS_WIDTH: c_int = 37;
pub const CU_DEVICE_ATTRIBUTE_L2_CACHE_SIZE: c_int = 38;
pub const CU_DEVICE_ATTRIBUTE_ASYNC_ENGINE_COUNT: c_int = 40;
pub const CU_DEVICE_ATTRIBUTE_PCI_DOMAIN_ID: c_int = 50;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR: c_int = 75;
pub const CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR: c_int = 76;
pub const CU_DEVICE_ATTRIBUTE_MAX_SHARED_MEMORY_PER_BLOCK_OPTIN: c_int = 97;

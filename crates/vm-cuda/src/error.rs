//! Errors: every failed driver call keeps its raw `CUresult` and the name of the operation.

use std::fmt;

/// A `CUresult` other than `CUDA_SUCCESS`, kept as the raw number so that codes newer than
/// this crate's table still arrive intact.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct DriverCode(pub u32);

impl DriverCode {
    /// `CUDA_ERROR_INVALID_VALUE`.
    pub const INVALID_VALUE: Self = Self(1);
    /// `CUDA_ERROR_OUT_OF_MEMORY`.
    pub const OUT_OF_MEMORY: Self = Self(2);
    /// `CUDA_ERROR_NOT_INITIALIZED`.
    pub const NOT_INITIALIZED: Self = Self(3);
    /// `CUDA_ERROR_STUB_LIBRARY`: the stub libcuda, not a driver.
    pub const STUB_LIBRARY: Self = Self(34);
    /// `CUDA_ERROR_INSUFFICIENT_DRIVER`: the driver is older than the API.
    pub const INSUFFICIENT_DRIVER: Self = Self(35);
    /// `CUDA_ERROR_NO_DEVICE`.
    pub const NO_DEVICE: Self = Self(100);
    /// `CUDA_ERROR_INVALID_DEVICE`.
    pub const INVALID_DEVICE: Self = Self(101);
    /// `CUDA_ERROR_INVALID_PTX`.
    pub const INVALID_PTX: Self = Self(218);
    /// `CUDA_ERROR_NOT_FOUND`.
    pub const NOT_FOUND: Self = Self(500);
    /// `CUDA_ERROR_NOT_READY`: the work has not finished yet.
    pub const NOT_READY: Self = Self(600);
    /// `CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES`.
    pub const LAUNCH_OUT_OF_RESOURCES: Self = Self(701);
    /// `CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED`.
    pub const PEER_ACCESS_ALREADY_ENABLED: Self = Self(704);
    /// `CUDA_ERROR_PEER_ACCESS_NOT_ENABLED`.
    pub const PEER_ACCESS_NOT_ENABLED: Self = Self(705);

    /// The `CUDA_ERROR_*` name from cuda.h, if this crate knows the code.
    pub fn name(self) -> Option<&'static str> {
        CODES
            .iter()
            .find(|(c, _)| *c == self.0)
            .map(|(_, name)| *name)
    }

    /// True for the codes that mean "there is no usable GPU here" rather than "the GPU
    /// failed": the stub library, no device, a driver too old, CUDA not installed.
    pub fn means_no_gpu(self) -> bool {
        matches!(self.0, 34 | 35 | 100)
    }
}

impl fmt::Display for DriverCode {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self.name() {
            Some(name) => write!(f, "{name} ({})", self.0),
            None => write!(f, "CUresult {}", self.0),
        }
    }
}

/// `CUresult` values from cuda.h (CUDA 13.0).
const CODES: &[(u32, &str)] = &[
    (1, "CUDA_ERROR_INVALID_VALUE"),
    (2, "CUDA_ERROR_OUT_OF_MEMORY"),
    (3, "CUDA_ERROR_NOT_INITIALIZED"),
    (4, "CUDA_ERROR_DEINITIALIZED"),
    (5, "CUDA_ERROR_PROFILER_DISABLED"),
    (6, "CUDA_ERROR_PROFILER_NOT_INITIALIZED"),
    (7, "CUDA_ERROR_PROFILER_ALREADY_STARTED"),
    (8, "CUDA_ERROR_PROFILER_ALREADY_STOPPED"),
    (34, "CUDA_ERROR_STUB_LIBRARY"),
    (35, "CUDA_ERROR_INSUFFICIENT_DRIVER"),
    (36, "CUDA_ERROR_CALL_REQUIRES_NEWER_DRIVER"),
    (46, "CUDA_ERROR_DEVICE_UNAVAILABLE"),
    (100, "CUDA_ERROR_NO_DEVICE"),
    (101, "CUDA_ERROR_INVALID_DEVICE"),
    (102, "CUDA_ERROR_DEVICE_NOT_LICENSED"),
    (200, "CUDA_ERROR_INVALID_IMAGE"),
    (201, "CUDA_ERROR_INVALID_CONTEXT"),
    (202, "CUDA_ERROR_CONTEXT_ALREADY_CURRENT"),
    (205, "CUDA_ERROR_MAP_FAILED"),
    (206, "CUDA_ERROR_UNMAP_FAILED"),
    (207, "CUDA_ERROR_ARRAY_IS_MAPPED"),
    (208, "CUDA_ERROR_ALREADY_MAPPED"),
    (209, "CUDA_ERROR_NO_BINARY_FOR_GPU"),
    (210, "CUDA_ERROR_ALREADY_ACQUIRED"),
    (211, "CUDA_ERROR_NOT_MAPPED"),
    (212, "CUDA_ERROR_NOT_MAPPED_AS_ARRAY"),
    (213, "CUDA_ERROR_NOT_MAPPED_AS_POINTER"),
    (214, "CUDA_ERROR_ECC_UNCORRECTABLE"),
    (215, "CUDA_ERROR_UNSUPPORTED_LIMIT"),
    (216, "CUDA_ERROR_CONTEXT_ALREADY_IN_USE"),
    (217, "CUDA_ERROR_PEER_ACCESS_UNSUPPORTED"),
    (218, "CUDA_ERROR_INVALID_PTX"),
    (219, "CUDA_ERROR_INVALID_GRAPHICS_CONTEXT"),
    (220, "CUDA_ERROR_NVLINK_UNCORRECTABLE"),
    (221, "CUDA_ERROR_JIT_COMPILER_NOT_FOUND"),
    (222, "CUDA_ERROR_UNSUPPORTED_PTX_VERSION"),
    (223, "CUDA_ERROR_JIT_COMPILATION_DISABLED"),
    (224, "CUDA_ERROR_UNSUPPORTED_EXEC_AFFINITY"),
    (225, "CUDA_ERROR_UNSUPPORTED_DEVSIDE_SYNC"),
    (226, "CUDA_ERROR_CONTAINED"),
    (300, "CUDA_ERROR_INVALID_SOURCE"),
    (301, "CUDA_ERROR_FILE_NOT_FOUND"),
    (302, "CUDA_ERROR_SHARED_OBJECT_SYMBOL_NOT_FOUND"),
    (303, "CUDA_ERROR_SHARED_OBJECT_INIT_FAILED"),
    (304, "CUDA_ERROR_OPERATING_SYSTEM"),
    (400, "CUDA_ERROR_INVALID_HANDLE"),
    (401, "CUDA_ERROR_ILLEGAL_STATE"),
    (402, "CUDA_ERROR_LOSSY_QUERY"),
    (500, "CUDA_ERROR_NOT_FOUND"),
    (600, "CUDA_ERROR_NOT_READY"),
    (700, "CUDA_ERROR_ILLEGAL_ADDRESS"),
    (701, "CUDA_ERROR_LAUNCH_OUT_OF_RESOURCES"),
    (702, "CUDA_ERROR_LAUNCH_TIMEOUT"),
    (703, "CUDA_ERROR_LAUNCH_INCOMPATIBLE_TEXTURING"),
    (704, "CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED"),
    (705, "CUDA_ERROR_PEER_ACCESS_NOT_ENABLED"),
    (708, "CUDA_ERROR_PRIMARY_CONTEXT_ACTIVE"),
    (709, "CUDA_ERROR_CONTEXT_IS_DESTROYED"),
    (710, "CUDA_ERROR_ASSERT"),
    (711, "CUDA_ERROR_TOO_MANY_PEERS"),
    (712, "CUDA_ERROR_HOST_MEMORY_ALREADY_REGISTERED"),
    (713, "CUDA_ERROR_HOST_MEMORY_NOT_REGISTERED"),
    (714, "CUDA_ERROR_HARDWARE_STACK_ERROR"),
    (715, "CUDA_ERROR_ILLEGAL_INSTRUCTION"),
    (716, "CUDA_ERROR_MISALIGNED_ADDRESS"),
    (717, "CUDA_ERROR_INVALID_ADDRESS_SPACE"),
    (718, "CUDA_ERROR_INVALID_PC"),
    (719, "CUDA_ERROR_LAUNCH_FAILED"),
    (720, "CUDA_ERROR_COOPERATIVE_LAUNCH_TOO_LARGE"),
    (721, "CUDA_ERROR_TENSOR_MEMORY_LEAK"),
    (800, "CUDA_ERROR_NOT_PERMITTED"),
    (801, "CUDA_ERROR_NOT_SUPPORTED"),
    (802, "CUDA_ERROR_SYSTEM_NOT_READY"),
    (803, "CUDA_ERROR_SYSTEM_DRIVER_MISMATCH"),
    (804, "CUDA_ERROR_COMPAT_NOT_SUPPORTED_ON_DEVICE"),
    (805, "CUDA_ERROR_MPS_CONNECTION_FAILED"),
    (806, "CUDA_ERROR_MPS_RPC_FAILURE"),
    (807, "CUDA_ERROR_MPS_SERVER_NOT_READY"),
    (808, "CUDA_ERROR_MPS_MAX_CLIENTS_REACHED"),
    (809, "CUDA_ERROR_MPS_MAX_CONNECTIONS_REACHED"),
    (810, "CUDA_ERROR_MPS_CLIENT_TERMINATED"),
    (811, "CUDA_ERROR_CDP_NOT_SUPPORTED"),
    (812, "CUDA_ERROR_CDP_VERSION_MISMATCH"),
    (900, "CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED"),
    (901, "CUDA_ERROR_STREAM_CAPTURE_INVALIDATED"),
    (902, "CUDA_ERROR_STREAM_CAPTURE_MERGE"),
    (903, "CUDA_ERROR_STREAM_CAPTURE_UNMATCHED"),
    (904, "CUDA_ERROR_STREAM_CAPTURE_UNJOINED"),
    (905, "CUDA_ERROR_STREAM_CAPTURE_ISOLATION"),
    (906, "CUDA_ERROR_STREAM_CAPTURE_IMPLICIT"),
    (907, "CUDA_ERROR_CAPTURED_EVENT"),
    (908, "CUDA_ERROR_STREAM_CAPTURE_WRONG_THREAD"),
    (909, "CUDA_ERROR_TIMEOUT"),
    (910, "CUDA_ERROR_GRAPH_EXEC_UPDATE_FAILURE"),
    (911, "CUDA_ERROR_EXTERNAL_DEVICE"),
    (912, "CUDA_ERROR_INVALID_CLUSTER_SIZE"),
    (913, "CUDA_ERROR_FUNCTION_NOT_LOADED"),
    (914, "CUDA_ERROR_INVALID_RESOURCE_TYPE"),
    (915, "CUDA_ERROR_INVALID_RESOURCE_CONFIGURATION"),
    (916, "CUDA_ERROR_KEY_ROTATION"),
    (917, "CUDA_ERROR_STREAM_DETACHED"),
    (999, "CUDA_ERROR_UNKNOWN"),
];

/// Everything vm-cuda can fail with.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum Error {
    /// vm-cuda was built without the `cuda` feature: no CUDA call can be made.
    #[error("{operation}: CUDA support is not built in (enable vm-cuda's `cuda` feature)")]
    Unsupported {
        /// What was asked for.
        operation: &'static str,
    },

    /// The NVIDIA driver library could not be loaded (not installed, e.g. a passthrough
    /// host whose GPUs sit on vfio-pci), or lacks an entry point vm-cuda needs.
    #[error("NVIDIA driver not found ({library}): {reason}")]
    DriverNotFound {
        /// The library looked for (`libcuda.so.1`).
        library: String,
        /// Why it could not be used.
        reason: String,
    },

    /// A driver call failed.
    #[error("{operation} failed: {code}")]
    Driver {
        /// The driver call.
        operation: &'static str,
        /// The driver's result code.
        code: DriverCode,
    },

    /// PTX did not load; `log` is the JIT compiler's error log.
    #[error("loading PTX module failed: {code}{}", jit_log_suffix(.log))]
    Jit {
        /// The driver's result code.
        code: DriverCode,
        /// The JIT compiler's error log.
        log: String,
    },

    /// A GPU operation did not finish by its deadline: the GPU or its driver hangs. The
    /// operation is left running (no driver call can be cancelled).
    #[error(
        "{operation} did not finish within the {} deadline: the GPU or its driver is stuck",
        crate::deadline::human(*.deadline)
    )]
    Stuck {
        /// What did not finish.
        operation: &'static str,
        /// The deadline it missed.
        deadline: std::time::Duration,
    },

    /// The device ordinal is not one of the `count` devices present.
    #[error("CUDA device {ordinal} does not exist ({count} present)")]
    InvalidDevice {
        /// The ordinal asked for.
        ordinal: u32,
        /// Devices present.
        count: u32,
    },

    /// The PTX text could not be parsed (never a panic).
    #[error("PTX line {line}: {message}")]
    Ptx {
        /// 1-based line number.
        line: usize,
        /// What is wrong there.
        message: String,
    },

    /// The module has no `.entry` of this name.
    #[error("kernel `{kernel}` is not in the module")]
    KernelNotFound {
        /// The name asked for.
        kernel: String,
    },

    /// The arguments do not match the kernel's PTX signature.
    #[error("kernel `{kernel}`{}: {reason}", param_suffix(.param))]
    KernelArgs {
        /// The kernel.
        kernel: String,
        /// `index (name)` of the offending parameter, when one is to blame.
        param: Option<String>,
        /// What does not match.
        reason: String,
    },

    /// Grid, block or shared-memory sizes the device or kernel cannot run.
    #[error("kernel `{kernel}`: invalid launch configuration: {reason}")]
    LaunchConfig {
        /// The kernel.
        kernel: String,
        /// Which limit is violated.
        reason: String,
    },

    /// Source and destination of a copy differ in size.
    #[error(
        "{operation}: source has {src} bytes, destination {dst} bytes (copies never truncate)"
    )]
    SizeMismatch {
        /// The copy.
        operation: &'static str,
        /// Bytes in the source.
        src: usize,
        /// Bytes in the destination.
        dst: usize,
    },

    /// A sub-range lies outside its buffer.
    #[error("{operation}: range {offset}..{offset}+{len} is outside a buffer of {size} elements")]
    OutOfBounds {
        /// The operation.
        operation: &'static str,
        /// First element of the range.
        offset: usize,
        /// Elements in the range.
        len: usize,
        /// Elements in the buffer.
        size: usize,
    },

    /// An argument no CUDA call should even see.
    #[error("{operation}: {reason}")]
    InvalidArgument {
        /// The operation.
        operation: &'static str,
        /// What is wrong with the argument.
        reason: String,
    },

    /// The GPU is in use by someone else: a health check holds its lock (and the caller
    /// asked not to wait), or other processes share it.
    #[error("GPU {bdf} is busy: {reason}")]
    Busy {
        /// The GPU's PCI address.
        bdf: String,
        /// Who holds it.
        reason: String,
    },

    /// The per-GPU lock file could not be created or locked.
    #[error("{operation} {path}: {source}")]
    Lock {
        /// What was being done.
        operation: &'static str,
        /// The lock file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },

    /// Reading a file (PTX) failed.
    #[error("reading {path}: {source}")]
    Io {
        /// The file.
        path: std::path::PathBuf,
        /// The OS error.
        source: std::io::Error,
    },
}

fn jit_log_suffix(log: &str) -> String {
    let log = log.trim();
    if log.is_empty() {
        String::new()
    } else {
        format!("\nJIT log:\n{log}")
    }
}

fn param_suffix(param: &Option<String>) -> String {
    match param {
        Some(p) => format!(" parameter {p}"),
        None => String::new(),
    }
}

impl Error {
    /// The raw `CUresult`, for driver failures.
    pub fn driver_code(&self) -> Option<DriverCode> {
        match self {
            Error::Driver { code, .. } | Error::Jit { code, .. } => Some(*code),
            _ => None,
        }
    }

    /// True when the error means this host has no usable GPU (built without CUDA, the stub
    /// library, no device, driver too old) rather than a GPU that failed. Hardware-gated
    /// tests skip on these and fail on everything else.
    pub fn means_no_gpu(&self) -> bool {
        match self {
            Error::Unsupported { .. } | Error::DriverNotFound { .. } => true,
            Error::Driver { code, .. } => code.means_no_gpu(),
            _ => false,
        }
    }
}

/// The crate's result type.
pub type Result<T, E = Error> = std::result::Result<T, E>;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn driver_errors_name_operation_and_code() {
        let e = Error::Driver {
            operation: "cuMemAlloc",
            code: DriverCode::OUT_OF_MEMORY,
        };
        assert_eq!(
            e.to_string(),
            "cuMemAlloc failed: CUDA_ERROR_OUT_OF_MEMORY (2)"
        );
        assert_eq!(e.driver_code(), Some(DriverCode(2)));
        assert!(!e.means_no_gpu());
        let unknown = Error::Driver {
            operation: "cuInit",
            code: DriverCode(4242),
        };
        assert_eq!(unknown.to_string(), "cuInit failed: CUresult 4242");
    }

    #[test]
    fn stub_and_no_device_mean_no_gpu() {
        for code in [34, 35, 100] {
            assert!(Error::Driver {
                operation: "cuInit",
                code: DriverCode(code)
            }
            .means_no_gpu());
        }
        assert!(Error::Unsupported { operation: "x" }.means_no_gpu());
    }

    #[test]
    fn kernel_args_error_names_kernel_and_parameter() {
        let e = Error::KernelArgs {
            kernel: "vec_add".into(),
            param: Some("3 (vec_add_param_3)".into()),
            reason: "expects .u64 (8 bytes), got f32 (4 bytes)".into(),
        };
        assert_eq!(
            e.to_string(),
            "kernel `vec_add` parameter 3 (vec_add_param_3): expects .u64 (8 bytes), got f32 (4 bytes)"
        );
    }

    #[test]
    fn code_table_is_sorted_and_unique() {
        assert!(CODES.windows(2).all(|w| w[0].0 < w[1].0));
    }
}

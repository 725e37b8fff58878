//! PTX modules (with the JIT's error log on failure) and their kernels.

use std::ffi::{c_int, c_uint, c_void, CString};
use std::path::Path;
use std::sync::{Arc, OnceLock};

use crate::args::KernelArgs;
use crate::context::Context;
use crate::error::{DriverCode, Error, Result};
use crate::launch::{validate, KernelLimits, LaunchConfig};
use crate::ptx::{parse_entries, KernelSignature};
use crate::stream::Stream;
use crate::sys;

/// JIT compiler options for [`Module::from_ptx`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct JitOptions {
    /// `-O0`..`-O4` of ptxas (driver default: 4).
    pub optimization_level: Option<u32>,
    /// Register cap per thread.
    pub max_registers: Option<u32>,
    /// Emit line information for profilers.
    pub generate_line_info: bool,
    /// Also collect the JIT's info log (kept in [`Module::info_log`]).
    pub info_log: bool,
    /// Size of each log buffer.
    pub log_bytes: usize,
}

impl Default for JitOptions {
    fn default() -> Self {
        Self {
            optimization_level: None,
            max_registers: None,
            generate_line_info: false,
            info_log: false,
            log_bytes: 16 * 1024,
        }
    }
}

#[derive(Debug)]
struct ModuleInner {
    ctx: Context,
    raw: sys::CUmodule,
    /// The PTX text (kept for the signatures, parsed on the first kernel lookup).
    image: CString,
    signatures: OnceLock<std::result::Result<Vec<KernelSignature>, (usize, String)>>,
    info_log: String,
}

// SAFETY: a CUmodule handle may be used from any thread.
unsafe impl Send for ModuleInner {}
// SAFETY: as above; the module is immutable after loading.
unsafe impl Sync for ModuleInner {}

impl Drop for ModuleInner {
    fn drop(&mut self) {
        let r = self.ctx.make_current().and_then(|()| {
            // SAFETY: loaded by cuModuleLoadDataEx, unloaded only here (after every Kernel,
            // which holds an Arc to this, is gone).
            unsafe { sys::cuModuleUnload(self.raw) }.ok("cuModuleUnload")
        });
        if let Err(e) = r {
            log::warn!("unloading a CUDA module: {e}");
        }
    }
}

/// A loaded PTX module. Cheap to clone; unloaded when the last clone and kernel are gone.
#[derive(Debug, Clone)]
pub struct Module {
    inner: Arc<ModuleInner>,
}

/// A JIT option value: integers travel in the pointer-sized slot itself.
fn value(v: usize) -> *mut c_void {
    std::ptr::without_provenance_mut(v)
}

fn log_text(buf: &[u8]) -> String {
    let end = buf.iter().position(|&b| b == 0).unwrap_or(buf.len());
    String::from_utf8_lossy(&buf[..end]).trim_end().to_string()
}

impl Module {
    /// JIT-compiles `ptx` for the context's device. A compile failure is [`Error::Jit`]
    /// with the compiler's error log.
    pub fn from_ptx(ctx: &Context, ptx: &str, opts: &JitOptions) -> Result<Self> {
        let image = CString::new(ptx).map_err(|_| Error::InvalidArgument {
            operation: "cuModuleLoadDataEx",
            reason: "PTX text contains a NUL byte".into(),
        })?;

        let log_bytes = opts.log_bytes.clamp(256, 1 << 20);
        let mut err_log = vec![0u8; log_bytes];
        let mut info_log = vec![0u8; if opts.info_log { log_bytes } else { 0 }];
        // Option values are passed *as* pointers: sizes and flags cast to void*.
        let mut keys: Vec<c_int> = vec![
            sys::CU_JIT_ERROR_LOG_BUFFER,
            sys::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ];
        let mut vals: Vec<*mut c_void> = vec![err_log.as_mut_ptr().cast(), value(log_bytes)];
        if opts.info_log {
            keys.extend([
                sys::CU_JIT_INFO_LOG_BUFFER,
                sys::CU_JIT_INFO_LOG_BUFFER_SIZE_BYTES,
                sys::CU_JIT_LOG_VERBOSE,
            ]);
            vals.extend([info_log.as_mut_ptr().cast(), value(log_bytes), value(1)]);
        }
        if let Some(o) = opts.optimization_level {
            keys.push(sys::CU_JIT_OPTIMIZATION_LEVEL);
            vals.push(value(o.min(4) as usize));
        }
        if let Some(r) = opts.max_registers {
            keys.push(sys::CU_JIT_MAX_REGISTERS);
            vals.push(value(r as usize));
        }
        if opts.generate_line_info {
            keys.push(sys::CU_JIT_GENERATE_LINE_INFO);
            vals.push(value(1));
        }

        ctx.make_current()?;
        let mut raw: sys::CUmodule = std::ptr::null_mut();
        // SAFETY: `image` is NUL-terminated PTX; `keys`/`vals` have equal lengths; the log
        // buffers have the sizes given and outlive the call.
        let r = unsafe {
            sys::cuModuleLoadDataEx(
                &mut raw,
                image.as_ptr().cast::<c_void>(),
                keys.len() as c_uint,
                keys.as_mut_ptr(),
                vals.as_mut_ptr(),
            )
        };
        if r != sys::CuResult::SUCCESS {
            let e = r.error("cuModuleLoadDataEx");
            return Err(match e {
                Error::Driver { code, .. } if !code.means_no_gpu() => Error::Jit {
                    code,
                    log: log_text(&err_log),
                },
                other => other,
            });
        }
        Ok(Self {
            inner: Arc::new(ModuleInner {
                ctx: ctx.clone(),
                raw,
                image,
                signatures: OnceLock::new(),
                info_log: log_text(&info_log),
            }),
        })
    }

    /// Reads and loads a PTX file.
    pub fn from_ptx_file(ctx: &Context, path: &Path, opts: &JitOptions) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_ptx(ctx, &text, opts)
    }

    /// The JIT's info log, if [`JitOptions::info_log`] asked for it.
    pub fn info_log(&self) -> &str {
        &self.inner.info_log
    }

    /// The kernel signatures parsed from the PTX (on first use: a module whose kernels are
    /// never looked up costs no parsing).
    pub fn signatures(&self) -> Result<&[KernelSignature]> {
        let parsed = self.inner.signatures.get_or_init(|| {
            // The image was made from a &str, so it is UTF-8.
            let text = self.inner.image.to_str().unwrap_or_default();
            parse_entries(text).map_err(|e| match e {
                Error::Ptx { line, message } => (line, message),
                other => (0, other.to_string()),
            })
        });
        match parsed {
            Ok(s) => Ok(s),
            Err((line, message)) => Err(Error::Ptx {
                line: *line,
                message: message.clone(),
            }),
        }
    }

    /// The context the module is loaded in.
    pub fn context(&self) -> &Context {
        &self.inner.ctx
    }

    /// The kernel `name`, with its signature and attributes.
    pub fn kernel(&self, name: &str) -> Result<Kernel> {
        let sig = self
            .signatures()?
            .iter()
            .find(|s| s.name == name)
            .cloned()
            .ok_or_else(|| Error::KernelNotFound {
                kernel: name.to_string(),
            })?;
        let cname = CString::new(name).map_err(|_| Error::KernelNotFound {
            kernel: name.to_string(),
        })?;
        self.inner.ctx.make_current()?;
        let mut raw: sys::CUfunction = std::ptr::null_mut();
        // SAFETY: valid out-pointer, live module, NUL-terminated name.
        let r = unsafe { sys::cuModuleGetFunction(&mut raw, self.inner.raw, cname.as_ptr()) };
        if r.0 as u32 == DriverCode::NOT_FOUND.0 {
            return Err(Error::KernelNotFound {
                kernel: name.to_string(),
            });
        }
        r.ok("cuModuleGetFunction")?;
        let attributes = FunctionAttributes::read(raw)?;
        Ok(Kernel {
            module: self.inner.clone(),
            raw,
            limits: KernelLimits {
                device: *self.inner.ctx.limits(),
                max_threads_per_block: attributes.max_threads_per_block,
                max_dynamic_shared_bytes: attributes.max_dynamic_shared_bytes,
            },
            attributes,
            sig,
        })
    }
}

/// What the compiled kernel needs and allows (cuFuncGetAttribute).
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct FunctionAttributes {
    /// Most threads per block this kernel can launch with (registers permitting).
    pub max_threads_per_block: u32,
    /// Registers per thread.
    pub num_regs: u32,
    /// Statically allocated shared memory, in bytes.
    pub static_shared_bytes: u32,
    /// Constant memory, in bytes.
    pub const_bytes: u32,
    /// Local memory per thread, in bytes.
    pub local_bytes: u32,
    /// Current dynamic shared memory limit (raised by `set_max_dynamic_shared_bytes`).
    pub max_dynamic_shared_bytes: u32,
    /// PTX ISA version it was compiled from (major × 10 + minor).
    pub ptx_version: u32,
    /// Binary (SASS) architecture version (major × 10 + minor).
    pub binary_version: u32,
}

impl FunctionAttributes {
    fn read(f: sys::CUfunction) -> Result<Self> {
        let get = |attr: c_int| -> Result<u32> {
            let mut v: c_int = 0;
            // SAFETY: valid out-pointer and function handle.
            unsafe { sys::cuFuncGetAttribute(&mut v, attr, f) }.ok("cuFuncGetAttribute")?;
            Ok(u32::try_from(v).unwrap_or(0))
        };
        Ok(Self {
            max_threads_per_block: get(sys::CU_FUNC_ATTRIBUTE_MAX_THREADS_PER_BLOCK)?,
            num_regs: get(sys::CU_FUNC_ATTRIBUTE_NUM_REGS)?,
            static_shared_bytes: get(sys::CU_FUNC_ATTRIBUTE_SHARED_SIZE_BYTES)?,
            const_bytes: get(sys::CU_FUNC_ATTRIBUTE_CONST_SIZE_BYTES)?,
            local_bytes: get(sys::CU_FUNC_ATTRIBUTE_LOCAL_SIZE_BYTES)?,
            max_dynamic_shared_bytes: get(sys::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES)?,
            ptx_version: get(sys::CU_FUNC_ATTRIBUTE_PTX_VERSION)?,
            binary_version: get(sys::CU_FUNC_ATTRIBUTE_BINARY_VERSION)?,
        })
    }
}

/// A kernel of a loaded module: launches are checked against its PTX signature and the
/// device's and its own limits before they reach the driver.
#[derive(Debug)]
pub struct Kernel {
    module: Arc<ModuleInner>,
    raw: sys::CUfunction,
    sig: KernelSignature,
    attributes: FunctionAttributes,
    limits: KernelLimits,
}

// SAFETY: a CUfunction handle may be used from any thread.
unsafe impl Send for Kernel {}
// SAFETY: as above; launching only reads the handle.
unsafe impl Sync for Kernel {}

impl Kernel {
    /// The kernel's name (its `.entry`).
    pub fn name(&self) -> &str {
        &self.sig.name
    }

    /// The driver's handle, for interop with other CUDA code (and the benchmark's raw
    /// baseline). Launching through it bypasses every check of [`Kernel::launch`].
    pub fn as_raw(&self) -> sys::CUfunction {
        self.raw
    }

    /// Its parameters, parsed from the PTX.
    pub fn signature(&self) -> &KernelSignature {
        &self.sig
    }

    /// Its attributes as the driver reports them.
    pub fn attributes(&self) -> &FunctionAttributes {
        &self.attributes
    }

    /// What bounds its launches.
    pub fn limits(&self) -> &KernelLimits {
        &self.limits
    }

    /// Allows launches with up to `bytes` of dynamic shared memory, above the default
    /// 48 KiB up to the device's opt-in maximum (minus the kernel's static shared memory).
    pub fn set_max_dynamic_shared_bytes(&mut self, bytes: u32) -> Result<()> {
        let optin = self.limits.device.max_shared_per_block_optin;
        let available = optin.saturating_sub(self.attributes.static_shared_bytes);
        if bytes > available {
            return Err(Error::LaunchConfig {
                kernel: self.sig.name.clone(),
                reason: format!(
                    "{bytes} bytes of dynamic shared memory requested; the device allows {optin} per block, {} of them static in this kernel",
                    self.attributes.static_shared_bytes
                ),
            });
        }
        self.module.ctx.make_current()?;
        let value = c_int::try_from(bytes).unwrap_or(c_int::MAX);
        // SAFETY: live function handle; the value was checked against the device limit.
        unsafe {
            sys::cuFuncSetAttribute(
                self.raw,
                sys::CU_FUNC_ATTRIBUTE_MAX_DYNAMIC_SHARED_SIZE_BYTES,
                value,
            )
        }
        .ok("cuFuncSetAttribute")?;
        self.attributes = FunctionAttributes::read(self.raw)?;
        self.limits.max_threads_per_block = self.attributes.max_threads_per_block;
        self.limits.max_dynamic_shared_bytes = self.attributes.max_dynamic_shared_bytes;
        Ok(())
    }

    /// Queues the kernel on `stream` after checking `args` against the PTX signature and
    /// `cfg` against the limits.
    #[inline]
    pub fn launch(&self, stream: &Stream, cfg: &LaunchConfig, args: &KernelArgs<'_>) -> Result<()> {
        args.check(&self.sig)?;
        validate(&self.sig.name, cfg, &self.limits)?;
        stream.check_context(&self.module.ctx, "cuLaunchKernel")?;
        self.module.ctx.make_current()?;
        // SAFETY: the function and stream are live and of the current context; `args` was
        // checked against the kernel's parameter list (count, sizes, classes), so the
        // driver reads exactly the bytes each parameter needs; device pointers in `args` are
        // borrowed for the argument list's lifetime and freeing them waits for the device.
        unsafe {
            sys::cuLaunchKernel(
                self.raw,
                cfg.grid.x,
                cfg.grid.y,
                cfg.grid.z,
                cfg.block.x,
                cfg.block.y,
                cfg.block.z,
                cfg.shared_mem_bytes,
                stream.as_raw(),
                args.as_kernel_params(),
                std::ptr::null_mut(),
            )
        }
        .ok("cuLaunchKernel")
    }
}

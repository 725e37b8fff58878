//! The device's primary context, shared by every object made in it.
//!
//! Primary contexts are what the runtime API and other libraries in the process use too, so
//! vm-cuda interoperates instead of creating private contexts. Each [`Context`] clone holds
//! one retain (through an `Arc`); every buffer, module, stream and event keeps a clone, so
//! the context outlives them all and is released exactly once, when the last goes.
//!
//! Multi-threaded use: a context is current per thread. Every operation makes its context
//! current on the calling thread first (one `cuCtxGetCurrent` when it already is), so
//! objects can move between VMM threads freely.

use std::ffi::c_int;
use std::sync::Arc;

use crate::device::{Device, Limits};
use crate::error::Result;
use crate::sys;

#[derive(Debug)]
struct Inner {
    raw: sys::CUcontext,
    device: Device,
    limits: Limits,
}

// SAFETY: a CUcontext is a handle the driver API accepts from any thread.
unsafe impl Send for Inner {}
// SAFETY: as above; all driver calls on a context are thread-safe.
unsafe impl Sync for Inner {}

impl Drop for Inner {
    fn drop(&mut self) {
        // SAFETY: this value holds exactly one retain of the device's primary context.
        if let Err(e) = unsafe { sys::cuDevicePrimaryCtxRelease_v2(self.device.raw()) }
            .ok("cuDevicePrimaryCtxRelease")
        {
            log::warn!(
                "releasing the primary context of CUDA device {}: {e}",
                self.device.ordinal()
            );
        }
    }
}

/// A retained primary context of one device.
#[derive(Debug, Clone)]
pub struct Context {
    inner: Arc<Inner>,
}

/// Free and total device memory.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
pub struct MemoryInfo {
    /// Free device memory, in bytes.
    pub free_bytes: u64,
    /// Total device memory, in bytes.
    pub total_bytes: u64,
}

impl Context {
    /// Retains `device`'s primary context (creating it on first use) and makes it current
    /// on this thread.
    pub fn new(device: Device) -> Result<Self> {
        let limits = device.limits()?;
        let mut raw: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: `raw` is a valid out-pointer; `device` came from cuDeviceGet.
        unsafe { sys::cuDevicePrimaryCtxRetain(&mut raw, device.raw()) }
            .ok("cuDevicePrimaryCtxRetain")?;
        let ctx = Self {
            inner: Arc::new(Inner {
                raw,
                device,
                limits,
            }),
        };
        ctx.bind()?;
        Ok(ctx)
    }

    /// The primary context of device `ordinal`.
    pub fn for_ordinal(ordinal: u32) -> Result<Self> {
        Self::new(Device::get(ordinal)?)
    }

    /// Makes this context current on the calling thread.
    pub fn bind(&self) -> Result<()> {
        // SAFETY: the context is retained for as long as `self` lives.
        unsafe { sys::cuCtxSetCurrent(self.inner.raw) }.ok("cuCtxSetCurrent")
    }

    /// Makes this context current unless it already is (the cheap check every operation
    /// starts with).
    #[inline]
    pub(crate) fn make_current(&self) -> Result<()> {
        let mut cur: sys::CUcontext = std::ptr::null_mut();
        // SAFETY: `cur` is a valid out-pointer.
        unsafe { sys::cuCtxGetCurrent(&mut cur) }.ok("cuCtxGetCurrent")?;
        if cur == self.inner.raw {
            Ok(())
        } else {
            self.bind()
        }
    }

    /// The device the context belongs to.
    pub fn device(&self) -> Device {
        self.inner.device
    }

    /// The device's launch limits (read once).
    pub fn limits(&self) -> &Limits {
        &self.inner.limits
    }

    /// The raw driver handle.
    pub fn as_raw(&self) -> sys::CUcontext {
        self.inner.raw
    }

    /// Waits for all work in the context, on every stream.
    pub fn synchronize(&self) -> Result<()> {
        self.make_current()?;
        // SAFETY: no arguments; the context is current.
        unsafe { sys::cuCtxSynchronize() }.ok("cuCtxSynchronize")
    }

    /// Free and total memory of the device, as the driver sees it now.
    pub fn memory_info(&self) -> Result<MemoryInfo> {
        self.make_current()?;
        let (mut free, mut total) = (0usize, 0usize);
        // SAFETY: valid out-pointers; the context is current.
        unsafe { sys::cuMemGetInfo_v2(&mut free, &mut total) }.ok("cuMemGetInfo")?;
        Ok(MemoryInfo {
            free_bytes: free as u64,
            total_bytes: total as u64,
        })
    }

    /// Stream priorities as (least, greatest). Numerically lower is higher priority, so
    /// `greatest <= priority <= least` (on current GPUs: -5..=0).
    pub fn stream_priority_range(&self) -> Result<(i32, i32)> {
        self.make_current()?;
        let (mut least, mut greatest): (c_int, c_int) = (0, 0);
        // SAFETY: valid out-pointers; the context is current.
        unsafe { sys::cuCtxGetStreamPriorityRange(&mut least, &mut greatest) }
            .ok("cuCtxGetStreamPriorityRange")?;
        Ok((least, greatest))
    }

    pub(crate) fn same_as(&self, other: &Context) -> bool {
        Arc::ptr_eq(&self.inner, &other.inner) || self.inner.raw == other.inner.raw
    }
}

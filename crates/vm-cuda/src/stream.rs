//! Streams (non-blocking, with priorities) and events (record, wait, elapsed time).

use std::ffi::{c_int, c_uint};

use crate::context::Context;
use crate::error::{Error, Result};
use crate::sys;

/// How to create a [`Stream`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct StreamOptions {
    /// Do not synchronise with the legacy default stream (what concurrent work wants).
    pub non_blocking: bool,
    /// Lower is more urgent; must lie in [`Context::stream_priority_range`]. 0 = default.
    pub priority: i32,
}

impl Default for StreamOptions {
    fn default() -> Self {
        Self {
            non_blocking: true,
            priority: 0,
        }
    }
}

/// A CUDA stream. Work queued on it runs in order; destroying it waits for nothing (the
/// driver frees it once its work is done).
#[derive(Debug)]
pub struct Stream {
    ctx: Context,
    raw: sys::CUstream,
}

// SAFETY: a CUstream handle may be used from any thread; the driver serialises access.
unsafe impl Send for Stream {}
// SAFETY: as above.
unsafe impl Sync for Stream {}

impl Stream {
    /// A stream in `ctx`.
    pub fn new(ctx: &Context, opts: StreamOptions) -> Result<Self> {
        let (least, greatest) = ctx.stream_priority_range()?;
        if opts.priority < greatest || opts.priority > least {
            return Err(Error::InvalidArgument {
                operation: "cuStreamCreateWithPriority",
                reason: format!(
                    "priority {} outside the device's range {greatest}..={least} (lower is more urgent)",
                    opts.priority
                ),
            });
        }
        let flags: c_uint = if opts.non_blocking {
            sys::CU_STREAM_NON_BLOCKING
        } else {
            0
        };
        let mut raw: sys::CUstream = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the context is current (checked by the range query).
        unsafe { sys::cuStreamCreateWithPriority(&mut raw, flags, opts.priority) }
            .ok("cuStreamCreateWithPriority")?;
        Ok(Self {
            ctx: ctx.clone(),
            raw,
        })
    }

    /// The context the stream belongs to.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    /// The raw driver handle.
    pub fn as_raw(&self) -> sys::CUstream {
        self.raw
    }

    /// Blocks until all work queued so far has completed.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: `raw` is a live stream of this object.
        unsafe { sys::cuStreamSynchronize(self.raw) }.ok("cuStreamSynchronize")
    }

    /// True when all queued work has completed.
    pub fn is_idle(&self) -> Result<bool> {
        // SAFETY: `raw` is a live stream of this object.
        let r = unsafe { sys::cuStreamQuery(self.raw) };
        if r == sys::CuResult::NOT_READY {
            return Ok(false);
        }
        r.ok("cuStreamQuery").map(|()| true)
    }

    /// Makes later work on this stream wait until `event` has completed.
    pub fn wait_event(&self, event: &Event) -> Result<()> {
        // SAFETY: both handles are live for the duration of the call.
        unsafe { sys::cuStreamWaitEvent(self.raw, event.raw, 0) }.ok("cuStreamWaitEvent")
    }

    /// The stream's priority (lower numbers run first).
    pub fn priority(&self) -> Result<i32> {
        let mut p: c_int = 0;
        // SAFETY: valid out-pointer, live stream.
        unsafe { sys::cuStreamGetPriority(self.raw, &mut p) }.ok("cuStreamGetPriority")?;
        Ok(p)
    }

    pub(crate) fn check_context(&self, ctx: &Context, operation: &'static str) -> Result<()> {
        if self.ctx.same_as(ctx) {
            Ok(())
        } else {
            Err(Error::InvalidArgument {
                operation,
                reason: "the stream belongs to another device's context".into(),
            })
        }
    }
}

impl Drop for Stream {
    fn drop(&mut self) {
        let r = self.ctx.make_current().and_then(|()| {
            // SAFETY: `raw` is live and destroyed only here.
            unsafe { sys::cuStreamDestroy_v2(self.raw) }.ok("cuStreamDestroy")
        });
        if let Err(e) = r {
            log::warn!("destroying a CUDA stream: {e}");
        }
    }
}

/// How to create an [`Event`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EventOptions {
    /// Record timestamps (needed for [`Event::elapsed_ms`]; costs a little).
    pub timing: bool,
    /// `synchronize` sleeps instead of spinning.
    pub blocking_sync: bool,
}

impl Default for EventOptions {
    fn default() -> Self {
        Self {
            timing: true,
            blocking_sync: false,
        }
    }
}

/// A CUDA event: a marker in a stream that can be waited on and timed.
#[derive(Debug)]
pub struct Event {
    ctx: Context,
    raw: sys::CUevent,
    timing: bool,
}

// SAFETY: a CUevent handle may be used from any thread.
unsafe impl Send for Event {}
// SAFETY: as above.
unsafe impl Sync for Event {}

impl Event {
    /// An event in `ctx`.
    pub fn new(ctx: &Context, opts: EventOptions) -> Result<Self> {
        ctx.make_current()?;
        let mut flags = 0;
        if !opts.timing {
            flags |= sys::CU_EVENT_DISABLE_TIMING;
        }
        if opts.blocking_sync {
            flags |= sys::CU_EVENT_BLOCKING_SYNC;
        }
        let mut raw: sys::CUevent = std::ptr::null_mut();
        // SAFETY: valid out-pointer; the context is current.
        unsafe { sys::cuEventCreate(&mut raw, flags) }.ok("cuEventCreate")?;
        Ok(Self {
            ctx: ctx.clone(),
            raw,
            timing: opts.timing,
        })
    }

    /// Records the event at the current end of `stream`.
    pub fn record(&self, stream: &Stream) -> Result<()> {
        stream.check_context(&self.ctx, "cuEventRecord")?;
        // SAFETY: both handles live, same context.
        unsafe { sys::cuEventRecord(self.raw, stream.raw) }.ok("cuEventRecord")
    }

    /// Records the event on the legacy default stream.
    pub(crate) fn record_raw(&self, stream: sys::CUstream) -> Result<()> {
        // SAFETY: `raw` is live; `stream` is a live stream of the same context (caller).
        unsafe { sys::cuEventRecord(self.raw, stream) }.ok("cuEventRecord")
    }

    /// Blocks until the work before the recorded point has completed.
    pub fn synchronize(&self) -> Result<()> {
        // SAFETY: live handle.
        unsafe { sys::cuEventSynchronize(self.raw) }.ok("cuEventSynchronize")
    }

    /// True once the recorded work has completed (or if never recorded).
    pub fn is_complete(&self) -> Result<bool> {
        // SAFETY: live handle.
        let r = unsafe { sys::cuEventQuery(self.raw) };
        if r == sys::CuResult::NOT_READY {
            return Ok(false);
        }
        r.ok("cuEventQuery").map(|()| true)
    }

    /// Milliseconds between two completed, recorded timing events.
    pub fn elapsed_ms(start: &Event, end: &Event) -> Result<f32> {
        if !start.timing || !end.timing {
            return Err(Error::InvalidArgument {
                operation: "cuEventElapsedTime",
                reason: "both events must be created with timing enabled".into(),
            });
        }
        let mut ms = 0f32;
        // SAFETY: valid out-pointer, live handles.
        unsafe { sys::cuEventElapsedTime(&mut ms, start.raw, end.raw) }.ok("cuEventElapsedTime")?;
        Ok(ms)
    }
}

impl Drop for Event {
    fn drop(&mut self) {
        let r = self.ctx.make_current().and_then(|()| {
            // SAFETY: `raw` is live and destroyed only here.
            unsafe { sys::cuEventDestroy_v2(self.raw) }.ok("cuEventDestroy")
        });
        if let Err(e) = r {
            log::warn!("destroying a CUDA event: {e}");
        }
    }
}

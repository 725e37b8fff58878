//! Device buffers, pinned host buffers, copies and memset.
//!
//! Rules, everywhere:
//! - Whole-buffer copies need equal sizes ([`Error::SizeMismatch`]); nothing is truncated.
//!   Partial copies are explicit: an element offset and length, bounds-checked
//!   ([`Error::OutOfBounds`]).
//! - A synchronous operation is complete when it returns. `cuMemcpyDtoD`, `cuMemsetD*` and
//!   `cuMemcpyHtoD` from pageable memory can return before the device has finished, so
//!   those are followed by a wait on the legacy stream they were queued on.
//! - Async operations are queued on a [`Stream`]. A [`PinnedBuffer`] remembers its last
//!   async transfer and its host accessors wait for it, so host code never reads memory a
//!   DMA is still writing, nor writes memory a DMA is still reading.

use std::ffi::c_void;
use std::marker::PhantomData;
use std::ptr::NonNull;

use crate::args::Pod;
use crate::context::Context;
use crate::error::{Error, Result};
use crate::stream::{Event, EventOptions, Stream};
use crate::sys;

fn byte_len<T>(len: usize, operation: &'static str) -> Result<usize> {
    len.checked_mul(std::mem::size_of::<T>())
        .ok_or_else(|| Error::InvalidArgument {
            operation,
            reason: format!("{len} elements overflow the address space"),
        })
}

fn check_range(operation: &'static str, offset: usize, len: usize, size: usize) -> Result<()> {
    match offset.checked_add(len) {
        Some(end) if end <= size => Ok(()),
        _ => Err(Error::OutOfBounds {
            operation,
            offset,
            len,
            size,
        }),
    }
}

fn same_size(operation: &'static str, src: usize, dst: usize) -> Result<()> {
    if src == dst {
        Ok(())
    } else {
        Err(Error::SizeMismatch {
            operation,
            src,
            dst,
        })
    }
}

/// Waits for the legacy default stream: what makes a "synchronous" copy really complete.
fn wait_legacy(operation: &'static str) -> Result<()> {
    // SAFETY: the legacy stream always exists in the current context.
    unsafe { sys::cuStreamSynchronize(sys::LEGACY_STREAM) }.ok(operation)
}

/// `len` elements of `T` in device memory of one context.
#[derive(Debug)]
pub struct DeviceBuffer<T: Pod> {
    ctx: Context,
    ptr: sys::CUdeviceptr,
    len: usize,
    /// Events after async peer copies that read this buffer from another device's stream:
    /// freeing waits for them (cuMemFree waits only for this buffer's own device).
    peer_reads: std::sync::Mutex<Vec<Event>>,
    _t: PhantomData<T>,
}

impl<T: Pod> DeviceBuffer<T> {
    /// Allocates `len` elements, contents unspecified (device memory is never read as Rust
    /// values without a copy, and `T: Pod` accepts any bits).
    pub fn alloc(ctx: &Context, len: usize) -> Result<Self> {
        let bytes = byte_len::<T>(len, "cuMemAlloc")?;
        ctx.make_current()?;
        let mut ptr: sys::CUdeviceptr = 0;
        if bytes > 0 {
            // SAFETY: valid out-pointer; the context is current.
            unsafe { sys::cuMemAlloc_v2(&mut ptr, bytes) }.ok("cuMemAlloc")?;
        }
        Ok(Self {
            ctx: ctx.clone(),
            ptr,
            len,
            peer_reads: std::sync::Mutex::new(Vec::new()),
            _t: PhantomData,
        })
    }

    /// Allocates `len` zeroed elements.
    pub fn zeroed(ctx: &Context, len: usize) -> Result<Self> {
        let mut b = Self::alloc(ctx, len)?;
        b.memset_bytes(0)?;
        Ok(b)
    }

    /// Allocates and fills from host memory.
    pub fn from_slice(ctx: &Context, src: &[T]) -> Result<Self> {
        let mut b = Self::alloc(ctx, src.len())?;
        b.copy_from_host(src)?;
        Ok(b)
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Bytes.
    pub fn byte_len(&self) -> usize {
        self.len * std::mem::size_of::<T>()
    }

    /// The device address (0 for an empty buffer).
    pub fn device_ptr(&self) -> u64 {
        self.ptr
    }

    /// The context the memory belongs to.
    pub fn context(&self) -> &Context {
        &self.ctx
    }

    fn addr(&self, offset: usize) -> sys::CUdeviceptr {
        self.ptr + (offset * std::mem::size_of::<T>()) as u64
    }

    // ---- synchronous copies -------------------------------------------------------------

    /// Host → device, whole buffer; sizes must match.
    pub fn copy_from_host(&mut self, src: &[T]) -> Result<()> {
        same_size("cuMemcpyHtoD", src.len(), self.len)?;
        self.copy_range_from_host(0, src)
    }

    /// Host → device into elements `offset..offset + src.len()`.
    pub fn copy_range_from_host(&mut self, offset: usize, src: &[T]) -> Result<()> {
        check_range("cuMemcpyHtoD", offset, src.len(), self.len)?;
        if src.is_empty() {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: the destination range was bounds-checked; `src` is valid for its length.
        unsafe {
            sys::cuMemcpyHtoD_v2(
                self.addr(offset),
                src.as_ptr().cast::<c_void>(),
                std::mem::size_of_val(src),
            )
        }
        .ok("cuMemcpyHtoD")?;
        wait_legacy("cuMemcpyHtoD")
    }

    /// Device → host, whole buffer; sizes must match.
    pub fn copy_to_host(&self, dst: &mut [T]) -> Result<()> {
        same_size("cuMemcpyDtoH", self.len, dst.len())?;
        self.copy_range_to_host(0, dst)
    }

    /// Device elements `offset..offset + dst.len()` → host.
    pub fn copy_range_to_host(&self, offset: usize, dst: &mut [T]) -> Result<()> {
        check_range("cuMemcpyDtoH", offset, dst.len(), self.len)?;
        if dst.is_empty() {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: the source range was bounds-checked; `dst` is valid for writes of its
        // length and any bits are a valid `T`. cuMemcpyDtoH returns when the data is there.
        unsafe {
            sys::cuMemcpyDtoH_v2(
                dst.as_mut_ptr().cast::<c_void>(),
                self.addr(offset),
                std::mem::size_of_val(dst),
            )
        }
        .ok("cuMemcpyDtoH")
    }

    /// The whole buffer as a `Vec`.
    pub fn to_vec(&self) -> Result<Vec<T>> {
        // SAFETY: `T: Pod`, so all-zero bits are a valid `T`.
        let mut v = vec![unsafe { std::mem::zeroed::<T>() }; self.len];
        self.copy_to_host(&mut v)?;
        Ok(v)
    }

    /// Device → device, whole buffer, complete on return (`cuMemcpyDtoD` alone is not).
    pub fn copy_from_device(&mut self, src: &DeviceBuffer<T>) -> Result<()> {
        same_size("cuMemcpyDtoD", src.len, self.len)?;
        self.copy_range_from_device(0, src, 0, src.len)
    }

    /// `len` elements from `src[src_offset..]` to `self[dst_offset..]`, complete on return.
    pub fn copy_range_from_device(
        &mut self,
        dst_offset: usize,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        len: usize,
    ) -> Result<()> {
        check_range("cuMemcpyDtoD (source)", src_offset, len, src.len)?;
        check_range("cuMemcpyDtoD (destination)", dst_offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: both ranges were bounds-checked; `&mut self` and `&src` cannot alias.
        unsafe {
            sys::cuMemcpyDtoD_v2(
                self.addr(dst_offset),
                src.addr(src_offset),
                len * std::mem::size_of::<T>(),
            )
        }
        .ok("cuMemcpyDtoD")?;
        wait_legacy("cuMemcpyDtoD")
    }

    // ---- asynchronous copies ------------------------------------------------------------

    /// Pinned host → device on `stream`; sizes must match. `src` cannot be touched from the
    /// host until the copy is done (its accessors wait).
    pub fn copy_from_pinned_async(
        &mut self,
        src: &mut PinnedBuffer<T>,
        stream: &Stream,
    ) -> Result<()> {
        same_size("cuMemcpyHtoDAsync", src.len, self.len)?;
        stream.check_context(&self.ctx, "cuMemcpyHtoDAsync")?;
        if self.len == 0 {
            return Ok(());
        }
        src.wait_pending()?;
        self.ctx.make_current()?;
        // SAFETY: sizes match; the pinned memory stays allocated and untouched by the host
        // until the recorded event completes (PinnedBuffer waits for it before any access
        // and before freeing).
        unsafe {
            sys::cuMemcpyHtoDAsync_v2(
                self.ptr,
                src.ptr.as_ptr().cast::<c_void>(),
                self.byte_len(),
                stream.as_raw(),
            )
        }
        .ok("cuMemcpyHtoDAsync")?;
        src.mark_pending(stream)
    }

    /// Device → pinned host on `stream`; sizes must match.
    pub fn copy_to_pinned_async(&self, dst: &mut PinnedBuffer<T>, stream: &Stream) -> Result<()> {
        same_size("cuMemcpyDtoHAsync", self.len, dst.len)?;
        stream.check_context(&self.ctx, "cuMemcpyDtoHAsync")?;
        if self.len == 0 {
            return Ok(());
        }
        dst.wait_pending()?;
        self.ctx.make_current()?;
        // SAFETY: as in copy_from_pinned_async.
        unsafe {
            sys::cuMemcpyDtoHAsync_v2(
                dst.ptr.as_ptr().cast::<c_void>(),
                self.ptr,
                self.byte_len(),
                stream.as_raw(),
            )
        }
        .ok("cuMemcpyDtoHAsync")?;
        dst.mark_pending(stream)
    }

    /// Device → device on `stream`, whole buffer; sizes must match.
    pub fn copy_from_device_async(&mut self, src: &DeviceBuffer<T>, stream: &Stream) -> Result<()> {
        same_size("cuMemcpyDtoDAsync", src.len, self.len)?;
        self.copy_range_from_device_async(0, src, 0, src.len, stream)
    }

    /// `len` elements from `src[src_offset..]` to `self[dst_offset..]` on `stream`.
    pub fn copy_range_from_device_async(
        &mut self,
        dst_offset: usize,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        len: usize,
        stream: &Stream,
    ) -> Result<()> {
        check_range("cuMemcpyDtoDAsync (source)", src_offset, len, src.len)?;
        check_range("cuMemcpyDtoDAsync (destination)", dst_offset, len, self.len)?;
        stream.check_context(&self.ctx, "cuMemcpyDtoDAsync")?;
        if len == 0 {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: ranges bounds-checked; device memory outlives queued work because freeing
        // it (cuMemFree) waits for the device.
        unsafe {
            sys::cuMemcpyDtoDAsync_v2(
                self.addr(dst_offset),
                src.addr(src_offset),
                len * std::mem::size_of::<T>(),
                stream.as_raw(),
            )
        }
        .ok("cuMemcpyDtoDAsync")
    }

    // ---- peer copies (between devices) ----------------------------------------------------

    /// Whole buffer from a buffer on another device (or the same one), complete on return.
    /// Works with or without peer access enabled; with it ([`Context::enable_peer_access`])
    /// the copy goes directly over NVLink or PCIe instead of through host memory.
    pub fn copy_from_peer(&mut self, src: &DeviceBuffer<T>) -> Result<()> {
        same_size("cuMemcpyPeer", src.len, self.len)?;
        self.copy_range_from_peer(0, src, 0, src.len)
    }

    /// `len` elements from `src[src_offset..]` (any device) to `self[dst_offset..]`,
    /// complete on return.
    pub fn copy_range_from_peer(
        &mut self,
        dst_offset: usize,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        len: usize,
    ) -> Result<()> {
        check_range("cuMemcpyPeer (source)", src_offset, len, src.len)?;
        check_range("cuMemcpyPeer (destination)", dst_offset, len, self.len)?;
        if len == 0 {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: both ranges were bounds-checked against live allocations of the contexts
        // named; `&mut self` and `&src` cannot alias.
        unsafe {
            sys::cuMemcpyPeer(
                self.addr(dst_offset),
                self.ctx.as_raw(),
                src.addr(src_offset),
                src.ctx.as_raw(),
                len * std::mem::size_of::<T>(),
            )
        }
        .ok("cuMemcpyPeer")?;
        // Like cuMemcpyDtoD, it may return before the device is done.
        wait_legacy("cuMemcpyPeer")
    }

    /// Whole buffer from a buffer on another device, queued on `stream` (of this buffer's
    /// context); sizes must match.
    pub fn copy_from_peer_async(&mut self, src: &DeviceBuffer<T>, stream: &Stream) -> Result<()> {
        same_size("cuMemcpyPeerAsync", src.len, self.len)?;
        self.copy_range_from_peer_async(0, src, 0, src.len, stream)
    }

    /// `len` elements from `src[src_offset..]` (any device) to `self[dst_offset..]` on
    /// `stream`, which must belong to this buffer's context. `src` waits for the copy
    /// before it is freed.
    pub fn copy_range_from_peer_async(
        &mut self,
        dst_offset: usize,
        src: &DeviceBuffer<T>,
        src_offset: usize,
        len: usize,
        stream: &Stream,
    ) -> Result<()> {
        check_range("cuMemcpyPeerAsync (source)", src_offset, len, src.len)?;
        check_range("cuMemcpyPeerAsync (destination)", dst_offset, len, self.len)?;
        stream.check_context(&self.ctx, "cuMemcpyPeerAsync")?;
        if len == 0 {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: ranges bounds-checked; this buffer's memory outlives the queued copy
        // (cuMemFree waits for its own device), and `src` waits for the event recorded
        // below before it is freed.
        unsafe {
            sys::cuMemcpyPeerAsync(
                self.addr(dst_offset),
                self.ctx.as_raw(),
                src.addr(src_offset),
                src.ctx.as_raw(),
                len * std::mem::size_of::<T>(),
                stream.as_raw(),
            )
        }
        .ok("cuMemcpyPeerAsync")?;
        if !src.ctx.same_as(&self.ctx) {
            let done = Event::new(
                &self.ctx,
                EventOptions {
                    timing: false,
                    blocking_sync: false,
                },
            )?;
            done.record(stream)?;
            let mut reads = src.peer_reads.lock().unwrap_or_else(|p| p.into_inner());
            reads.retain(|e| !e.is_complete().unwrap_or(true));
            reads.push(done);
        }
        Ok(())
    }

    // ---- memset -------------------------------------------------------------------------

    /// Sets every byte to `value`, complete on return.
    pub fn memset_bytes(&mut self, value: u8) -> Result<()> {
        if self.len == 0 {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: the whole allocation, `byte_len` bytes.
        unsafe { sys::cuMemsetD8_v2(self.ptr, value, self.byte_len()) }.ok("cuMemsetD8")?;
        wait_legacy("cuMemsetD8")
    }

    /// Sets every 32-bit word to `value`, complete on return. The buffer's byte length must
    /// be a multiple of 4.
    pub fn memset_u32(&mut self, value: u32) -> Result<()> {
        let words = self.words("cuMemsetD32")?;
        if words == 0 {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: `words` 32-bit words cover exactly the allocation.
        unsafe { sys::cuMemsetD32_v2(self.ptr, value, words) }.ok("cuMemsetD32")?;
        wait_legacy("cuMemsetD32")
    }

    /// Sets every byte to `value` on `stream`.
    pub fn memset_bytes_async(&mut self, value: u8, stream: &Stream) -> Result<()> {
        stream.check_context(&self.ctx, "cuMemsetD8Async")?;
        if self.len == 0 {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: the whole allocation.
        unsafe { sys::cuMemsetD8Async(self.ptr, value, self.byte_len(), stream.as_raw()) }
            .ok("cuMemsetD8Async")
    }

    /// Sets every 32-bit word to `value` on `stream`.
    pub fn memset_u32_async(&mut self, value: u32, stream: &Stream) -> Result<()> {
        stream.check_context(&self.ctx, "cuMemsetD32Async")?;
        let words = self.words("cuMemsetD32Async")?;
        if words == 0 {
            return Ok(());
        }
        self.ctx.make_current()?;
        // SAFETY: `words` 32-bit words cover exactly the allocation.
        unsafe { sys::cuMemsetD32Async(self.ptr, value, words, stream.as_raw()) }
            .ok("cuMemsetD32Async")
    }

    fn words(&self, operation: &'static str) -> Result<usize> {
        if self.byte_len() % 4 != 0 {
            return Err(Error::InvalidArgument {
                operation,
                reason: format!(
                    "{} bytes is not a whole number of 32-bit words",
                    self.byte_len()
                ),
            });
        }
        Ok(self.byte_len() / 4)
    }
}

impl<T: Pod> Drop for DeviceBuffer<T> {
    fn drop(&mut self) {
        if self.ptr == 0 {
            return;
        }
        for e in self
            .peer_reads
            .get_mut()
            .unwrap_or_else(|p| p.into_inner())
            .drain(..)
        {
            if let Err(err) = e.synchronize() {
                log::warn!("waiting for a peer copy before freeing device memory: {err}");
            }
        }
        let r = self.ctx.make_current().and_then(|()| {
            // SAFETY: `ptr` came from cuMemAlloc and is freed only here. cuMemFree waits for
            // queued work that may still use it.
            unsafe { sys::cuMemFree_v2(self.ptr) }.ok("cuMemFree")
        });
        if let Err(e) = r {
            log::warn!("freeing {} bytes of device memory: {e}", self.byte_len());
        }
    }
}

/// Page-locked host memory: the fast path for host↔device copies, and the only kind async
/// copies accept.
#[derive(Debug)]
pub struct PinnedBuffer<T: Pod> {
    ctx: Context,
    ptr: NonNull<T>,
    len: usize,
    /// Recorded after the last async transfer; waited for before host access or free.
    pending: Option<Event>,
    has_pending: bool,
}

// SAFETY: the buffer owns its memory exclusively, like a Box<[T]>.
unsafe impl<T: Pod> Send for PinnedBuffer<T> {}
// SAFETY: shared access gives no host access (accessors take &mut self).
unsafe impl<T: Pod> Sync for PinnedBuffer<T> {}

impl<T: Pod> PinnedBuffer<T> {
    /// Allocates `len` zeroed elements of page-locked memory (portable: usable from every
    /// context).
    pub fn zeroed(ctx: &Context, len: usize) -> Result<Self> {
        let bytes = byte_len::<T>(len, "cuMemHostAlloc")?;
        ctx.make_current()?;
        let ptr = if bytes == 0 {
            NonNull::dangling()
        } else {
            let mut p: *mut c_void = std::ptr::null_mut();
            // SAFETY: valid out-pointer; the context is current.
            unsafe { sys::cuMemHostAlloc(&mut p, bytes, sys::CU_MEMHOSTALLOC_PORTABLE) }
                .ok("cuMemHostAlloc")?;
            let p = NonNull::new(p.cast::<T>()).ok_or_else(|| Error::InvalidArgument {
                operation: "cuMemHostAlloc",
                reason: "driver returned a null pointer".into(),
            })?;
            // SAFETY: freshly allocated, `bytes` long; zero bits are a valid Pod value.
            unsafe { std::ptr::write_bytes(p.as_ptr().cast::<u8>(), 0, bytes) };
            p
        };
        Ok(Self {
            ctx: ctx.clone(),
            ptr,
            len,
            pending: None,
            has_pending: false,
        })
    }

    /// Allocates and fills from `src`.
    pub fn from_slice(ctx: &Context, src: &[T]) -> Result<Self> {
        let mut b = Self::zeroed(ctx, src.len())?;
        b.as_mut_slice()?.copy_from_slice(src);
        Ok(b)
    }

    /// Elements.
    pub fn len(&self) -> usize {
        self.len
    }

    /// No elements.
    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The contents, after any async transfer in flight has finished.
    pub fn as_slice(&mut self) -> Result<&[T]> {
        self.wait_pending()?;
        // SAFETY: `len` initialised elements (zeroed at allocation), no DMA in flight, and
        // the borrow of `self` prevents new transfers while the slice lives.
        Ok(unsafe { std::slice::from_raw_parts(self.ptr.as_ptr(), self.len) })
    }

    /// The contents for writing, after any async transfer in flight has finished.
    pub fn as_mut_slice(&mut self) -> Result<&mut [T]> {
        self.wait_pending()?;
        // SAFETY: as in as_slice, and `&mut self` makes the access exclusive.
        Ok(unsafe { std::slice::from_raw_parts_mut(self.ptr.as_ptr(), self.len) })
    }

    fn wait_pending(&mut self) -> Result<()> {
        if self.has_pending {
            if let Some(e) = &self.pending {
                e.synchronize()?;
            }
            self.has_pending = false;
        }
        Ok(())
    }

    fn mark_pending(&mut self, stream: &Stream) -> Result<()> {
        if self.pending.is_none() {
            self.pending = Some(Event::new(
                &self.ctx,
                EventOptions {
                    timing: false,
                    blocking_sync: false,
                },
            )?);
        }
        if let Some(e) = &self.pending {
            e.record_raw(stream.as_raw())?;
            self.has_pending = true;
        }
        Ok(())
    }
}

impl<T: Pod> Drop for PinnedBuffer<T> {
    fn drop(&mut self) {
        if self.len == 0 || std::mem::size_of::<T>() == 0 {
            return;
        }
        if let Err(e) = self.wait_pending() {
            // Freeing memory a DMA may still use is worse than leaking it.
            log::error!("pinned buffer: waiting for its transfer failed ({e}); leaking it");
            return;
        }
        let r = self.ctx.make_current().and_then(|()| {
            // SAFETY: allocated by cuMemHostAlloc, freed only here, no transfer in flight.
            unsafe { sys::cuMemFreeHost(self.ptr.as_ptr().cast::<c_void>()) }.ok("cuMemFreeHost")
        });
        if let Err(e) = r {
            log::warn!("freeing pinned host memory: {e}");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn range_checks() {
        check_range("op", 0, 4, 4).expect("fits");
        check_range("op", 4, 0, 4).expect("empty at end fits");
        assert!(matches!(
            check_range("op", 3, 2, 4),
            Err(Error::OutOfBounds {
                offset: 3,
                len: 2,
                size: 4,
                ..
            })
        ));
        assert!(check_range("op", usize::MAX, 2, 4).is_err());
        assert!(matches!(
            same_size("op", 1, 2),
            Err(Error::SizeMismatch { src: 1, dst: 2, .. })
        ));
        assert!(byte_len::<u64>(usize::MAX, "op").is_err());
    }
}

//! Typed kernel arguments, checked against the kernel's PTX signature before every launch.
//!
//! cust's `launch!` only checks that arguments are `DeviceCopy`; a wrong count, width or
//! layout is silent memory corruption or a GPU fault. Here each argument carries its size,
//! alignment and class (pointer / integer / float / POD bytes), and [`KernelArgs::check`]
//! compares them with the `.param` list parsed from the PTX: a mismatch is
//! [`Error::KernelArgs`] naming the kernel and the parameter.

use std::ffi::c_void;
use std::marker::PhantomData;

use crate::error::{Error, Result};
use crate::memory::DeviceBuffer;
use crate::ptx::{KernelSignature, Param, TypeClass};

/// Plain old data: any bit pattern is a valid value, no padding-sensitive invariants, no
/// pointers to host memory. Safe to copy to and from the device byte for byte.
///
/// # Safety
/// Implement only for `#[repr(C)]` (or primitive) types of which every bit pattern is a
/// valid value, without references or host pointers, and whose layout matches the C type
/// the kernel declares.
pub unsafe trait Pod: Copy + Send + Sync + 'static {}

macro_rules! pod {
    ($($t:ty),*) => { $(
        // SAFETY: primitive integers and floats accept every bit pattern.
        unsafe impl Pod for $t {}
    )* };
}
pod!(u8, i8, u16, i16, u32, i32, u64, i64, f32, f64);
// SAFETY: an array of Pod is Pod (no padding between elements).
unsafe impl<T: Pod, const N: usize> Pod for [T; N] {}

/// What an argument is, for the signature check.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ArgKind {
    DevicePointer,
    Integer,
    Float,
    /// Raw bytes of a user POD type (structs passed by value).
    Bytes,
}

#[derive(Debug, Clone, Copy)]
struct ArgMeta {
    kind: ArgKind,
    size: usize,
    align: usize,
    what: &'static str,
    /// Offset of the value in `KernelArgs::data`, in 8-byte words.
    word: usize,
}

/// The argument list of one launch, built in order:
///
/// ```ignore
/// let args = KernelArgs::new().buffer(&a).buffer(&b).buffer(&c).u64(n);
/// kernel.launch(&stream, &cfg, &args)?;
/// ```
///
/// Borrowing the device buffers for `'a` keeps them alive (not freed) while the argument
/// list exists. Build it once and reuse it for many launches: launching does not copy it.
#[derive(Debug)]
pub struct KernelArgs<'a> {
    data: Vec<u64>,
    metas: Vec<ArgMeta>,
    /// `kernelParams` for cuLaunchKernel: pointers into `data`, rebuilt after every push.
    ptrs: Vec<*mut c_void>,
    _borrows: PhantomData<&'a ()>,
}

// SAFETY: the raw pointers only point into `data`, which the value owns; nothing is shared.
unsafe impl Send for KernelArgs<'_> {}
// SAFETY: as above; `&KernelArgs` gives no way to write through the pointers.
unsafe impl Sync for KernelArgs<'_> {}

impl Default for KernelArgs<'_> {
    fn default() -> Self {
        Self::new()
    }
}

macro_rules! scalar_methods {
    ($($name:ident: $t:ty => $kind:ident),* $(,)?) => { $(
        #[doc = concat!("Appends a `", stringify!($t), "` by value.")]
        pub fn $name(self, v: $t) -> Self {
            self.push_value(&v, ArgKind::$kind, stringify!($t))
        }
    )* };
}

impl<'a> KernelArgs<'a> {
    /// An empty argument list.
    pub fn new() -> Self {
        Self {
            data: Vec::new(),
            metas: Vec::new(),
            ptrs: Vec::new(),
            _borrows: PhantomData,
        }
    }

    scalar_methods! {
        u8: u8 => Integer, i8: i8 => Integer, u16: u16 => Integer, i16: i16 => Integer,
        u32: u32 => Integer, i32: i32 => Integer, u64: u64 => Integer, i64: i64 => Integer,
        f32: f32 => Float, f64: f64 => Float,
    }

    /// Appends a device buffer's address (a `T*` parameter).
    pub fn buffer<T: Pod>(self, buf: &'a DeviceBuffer<T>) -> Self {
        let ptr = buf.device_ptr();
        self.push_value(&ptr, ArgKind::DevicePointer, "device pointer")
    }

    /// Appends a raw device address.
    ///
    /// # Safety
    /// The kernel will dereference `ptr`: it must stay a valid device allocation of the
    /// kernel's context, of the size the kernel expects, until the launch has completed.
    pub unsafe fn raw_device_ptr(self, ptr: u64) -> Self {
        self.push_value(&ptr, ArgKind::DevicePointer, "device pointer")
    }

    /// Appends a POD value (typically a `#[repr(C)]` struct) by value: it must match the
    /// `.param .align N .b8 name[K]` the kernel declares in size and alignment.
    pub fn pod<T: Pod>(self, v: &T) -> Self {
        self.push_value(v, ArgKind::Bytes, std::any::type_name::<T>())
    }

    /// Number of arguments so far.
    pub fn len(&self) -> usize {
        self.metas.len()
    }

    /// No arguments yet.
    pub fn is_empty(&self) -> bool {
        self.metas.is_empty()
    }

    fn push_value<T: Copy>(mut self, v: &T, kind: ArgKind, what: &'static str) -> Self {
        let size = std::mem::size_of::<T>();
        let word = self.data.len();
        self.data.resize(word + size.div_ceil(8).max(1), 0);
        // SAFETY: `data[word..]` has at least `size` bytes (resized just above); the source
        // is a valid `T` of `size` bytes; byte copies need no alignment.
        unsafe {
            std::ptr::copy_nonoverlapping(
                (v as *const T).cast::<u8>(),
                self.data.as_mut_ptr().add(word).cast::<u8>(),
                size,
            );
        }
        self.metas.push(ArgMeta {
            kind,
            size,
            align: std::mem::align_of::<T>(),
            what,
            word,
        });
        // `data` may have moved: point every parameter at its value again.
        let base = self.data.as_mut_ptr();
        self.ptrs = self
            .metas
            .iter()
            // SAFETY: every `word` is an index inside `data` (pushed above).
            .map(|m| unsafe { base.add(m.word) }.cast::<c_void>())
            .collect();
        self
    }

    /// The `kernelParams` array for cuLaunchKernel (null when there are no arguments).
    pub(crate) fn as_kernel_params(&self) -> *mut *mut c_void {
        if self.ptrs.is_empty() {
            std::ptr::null_mut()
        } else {
            // The driver only reads through this pointer.
            self.ptrs.as_ptr().cast_mut()
        }
    }

    /// Checks the arguments against `sig`: count, then each parameter's size, alignment
    /// (for by-value aggregates) and class (no float into an integer parameter, no
    /// integer or pointer into a float one).
    pub fn check(&self, sig: &KernelSignature) -> Result<()> {
        if self.metas.len() != sig.params.len() {
            let list: Vec<String> = sig.params.iter().map(|p| p.to_string()).collect();
            return Err(Error::KernelArgs {
                kernel: sig.name.clone(),
                param: None,
                reason: format!(
                    "takes {} parameters ({}), got {} arguments",
                    sig.params.len(),
                    list.join(", "),
                    self.metas.len()
                ),
            });
        }
        for (i, (m, p)) in self.metas.iter().zip(&sig.params).enumerate() {
            if let Some(reason) = mismatch(m, p) {
                return Err(Error::KernelArgs {
                    kernel: sig.name.clone(),
                    param: Some(format!("{i} (`{}`)", p.name)),
                    reason,
                });
            }
        }
        Ok(())
    }
}

fn mismatch(m: &ArgMeta, p: &Param) -> Option<String> {
    let got = || format!("got {} ({} bytes, align {})", m.what, m.size, m.align);
    if m.size != p.size() {
        return Some(format!("expects {p}, {}", got()));
    }
    if p.is_aggregate() {
        if m.align != p.align() {
            return Some(format!(
                "expects {p} aligned to {}, {}: layouts differ",
                p.align(),
                got()
            ));
        }
        return None;
    }
    let ok = match (p.ty.class(), m.kind) {
        (TypeClass::Bits, _) | (_, ArgKind::Bytes) => true,
        (TypeClass::Integer, k) => matches!(k, ArgKind::Integer | ArgKind::DevicePointer),
        (TypeClass::Float, k) => k == ArgKind::Float,
    };
    if ok {
        None
    } else {
        Some(format!("expects {p}, {}", got()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ptx::parse_entries;

    fn sig(decl: &str) -> KernelSignature {
        parse_entries(decl)
            .expect("test PTX parses")
            .into_iter()
            .next()
            .expect("one entry")
    }

    #[repr(C)]
    #[derive(Clone, Copy)]
    struct Affine {
        scale: f64,
        offset: f32,
        n: u32,
        tag: u64,
    }
    // SAFETY: repr(C), all fields Pod, no padding.
    unsafe impl Pod for Affine {}

    #[test]
    fn matching_arguments_pass_and_values_are_laid_out() {
        let s = sig(".entry k(.param .u8 a, .param .u16 b, .param .u32 c, .param .u64 d, .param .f32 e, .param .f64 f)");
        let args = KernelArgs::new()
            .u8(1)
            .i16(-2)
            .i32(-3)
            .u64(4)
            .f32(5.5)
            .f64(6.25);
        args.check(&s).expect("matches");
        assert_eq!(args.len(), 6);
        let params = args.as_kernel_params();
        // SAFETY: six pointers into args.data, each to a value of the pushed type.
        unsafe {
            assert_eq!(*(*params.add(0)).cast::<u8>(), 1);
            assert_eq!(*(*params.add(1)).cast::<i16>(), -2);
            assert_eq!(*(*params.add(3)).cast::<u64>(), 4);
            assert_eq!(*(*params.add(5)).cast::<f64>(), 6.25);
        }
    }

    #[test]
    fn structs_by_value_check_size_and_alignment() {
        let s = sig(".entry affine(.param .align 8 .b8 p[24], .param .u64 x)");
        let a = Affine {
            scale: 2.0,
            offset: 1.0,
            n: 3,
            tag: 9,
        };
        KernelArgs::new().pod(&a).u64(0).check(&s).expect("matches");
        // Same size, wrong alignment: [u32; 6] is 24 bytes aligned to 4.
        let e = KernelArgs::new()
            .pod(&[0u32; 6])
            .u64(0)
            .check(&s)
            .expect_err("alignment differs");
        let msg = e.to_string();
        assert!(msg.contains("kernel `affine` parameter 0 (`p`)"), "{msg}");
        assert!(msg.contains("aligned to 8"), "{msg}");
    }

    #[test]
    fn mismatches_name_kernel_and_parameter() {
        let s = sig(".entry vec_add(.param .u64 a, .param .u64 b, .param .u64 c, .param .u64 n)");
        let e = KernelArgs::new()
            .u64(1)
            .u64(2)
            .u64(3)
            .check(&s)
            .expect_err("count");
        assert!(matches!(&e, Error::KernelArgs { param: None, .. }));
        assert!(e.to_string().contains("takes 4 parameters"), "{e}");

        let e = KernelArgs::new()
            .u64(1)
            .u64(2)
            .u64(3)
            .f32(1.0)
            .check(&s)
            .expect_err("size");
        assert_eq!(
            e.to_string(),
            "kernel `vec_add` parameter 3 (`n`): expects .u64 (8 bytes), got f32 (4 bytes, align 4)"
        );

        let f = sig(".entry k(.param .f64 x)");
        let e = KernelArgs::new().u64(1).check(&f).expect_err("class");
        assert!(e.to_string().contains("expects .f64"), "{e}");
        let i = sig(".entry k(.param .u32 x)");
        KernelArgs::new()
            .f32(1.0)
            .check(&i)
            .expect_err("float into integer");
        let b = sig(".entry k(.param .b32 x)");
        KernelArgs::new()
            .f32(1.0)
            .check(&b)
            .expect("bits take anything");
    }

    #[test]
    fn empty_argument_list() {
        let s = sig(".entry empty()");
        let args = KernelArgs::new();
        args.check(&s).expect("matches");
        assert!(args.as_kernel_params().is_null());
        assert!(args.is_empty());
    }
}

//! How PCI identifiers appear in JSON: lowercase hex strings of fixed width without `0x`
//! (`"10de"`, class `"030200"`, revision `"a1"`), exactly as `lspci -nn` and sysfs print
//! them, so a JSON id compares equal to what an operator copies from either. Every other
//! number (sizes, addresses, offsets, counts, group and NUMA numbers) stays a JSON number.

use serde::Serializer;

pub(crate) fn hex2<S: Serializer>(v: &u8, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:02x}"))
}

pub(crate) fn hex4<S: Serializer>(v: &u16, s: S) -> Result<S::Ok, S::Error> {
    s.collect_str(&format_args!("{v:04x}"))
}

pub(crate) fn opt_hex2<S: Serializer>(v: &Option<u8>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => hex2(v, s),
        None => s.serialize_none(),
    }
}

pub(crate) fn opt_hex4<S: Serializer>(v: &Option<u16>, s: S) -> Result<S::Ok, S::Error> {
    match v {
        Some(v) => hex4(v, s),
        None => s.serialize_none(),
    }
}

/// A PCI power management state as the spec names it.
pub(crate) fn power_state<S: Serializer>(v: &u8, s: S) -> Result<S::Ok, S::Error> {
    match v {
        3 => s.serialize_str("D3hot"),
        v => s.collect_str(&format_args!("D{v}")),
    }
}

//! Kernel signatures read from PTX text: the `.entry` declarations and their `.param` lists.
//!
//! The PTX is the only place that says what a kernel really takes, so launches are checked
//! against it ([`crate::KernelArgs`]). Pure Rust, no CUDA needed. Malformed input of any
//! kind gives [`Error::Ptx`] with a line number, never a panic (property-tested).

use std::fmt;

use crate::error::{Error, Result};

/// Largest parameter list PTX allows a kernel (32764 bytes on sm_70+ with PTX 8.1).
pub const MAX_PARAM_BYTES: usize = 32_764;

/// A PTX fundamental type as it appears in a `.param` declaration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize)]
#[non_exhaustive]
pub enum ParamType {
    /// `.u8`.
    U8,
    /// `.u16`.
    U16,
    /// `.u32`.
    U32,
    /// `.u64`.
    U64,
    /// `.s8`.
    S8,
    /// `.s16`.
    S16,
    /// `.s32`.
    S32,
    /// `.s64`.
    S64,
    /// `.b8`.
    B8,
    /// `.b16`.
    B16,
    /// `.b32`.
    B32,
    /// `.b64`.
    B64,
    /// `.f16`.
    F16,
    /// `.bf16`.
    Bf16,
    /// `.f32`.
    F32,
    /// `.f64`.
    F64,
    /// `.texref`, `.samplerref`, `.surfref`: 64-bit opaque handles.
    Opaque,
}

/// How an argument's bits are read: decides which host types may fill a parameter.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TypeClass {
    /// `.uN` / `.sN`: integers and (for 64 bits) device pointers. Signedness is not
    /// checked: nvcc writes `.u32` for `int` too.
    Integer,
    /// `.fN` / `.bf16`: floating point only.
    Float,
    /// `.bN`, opaque handles: untyped bits of the right size.
    Bits,
}

impl ParamType {
    fn from_name(name: &str) -> Option<Self> {
        use ParamType::*;
        Some(match name {
            "u8" => U8,
            "u16" => U16,
            "u32" => U32,
            "u64" => U64,
            "s8" => S8,
            "s16" => S16,
            "s32" => S32,
            "s64" => S64,
            "b8" => B8,
            "b16" => B16,
            "b32" => B32,
            "b64" => B64,
            "f16" => F16,
            "bf16" => Bf16,
            "f32" => F32,
            "f64" => F64,
            "texref" | "samplerref" | "surfref" => Opaque,
            _ => return None,
        })
    }

    /// Size in bytes.
    pub fn size(self) -> usize {
        use ParamType::*;
        match self {
            U8 | S8 | B8 => 1,
            U16 | S16 | B16 | F16 | Bf16 => 2,
            U32 | S32 | B32 | F32 => 4,
            U64 | S64 | B64 | F64 | Opaque => 8,
        }
    }

    /// Unsigned, signed, untyped bits or floating point.
    pub fn class(self) -> TypeClass {
        use ParamType::*;
        match self {
            U8 | U16 | U32 | U64 | S8 | S16 | S32 | S64 => TypeClass::Integer,
            F16 | Bf16 | F32 | F64 => TypeClass::Float,
            B8 | B16 | B32 | B64 | Opaque => TypeClass::Bits,
        }
    }

    /// The PTX spelling, e.g. `.u64`.
    pub fn ptx_name(self) -> &'static str {
        use ParamType::*;
        match self {
            U8 => ".u8",
            U16 => ".u16",
            U32 => ".u32",
            U64 => ".u64",
            S8 => ".s8",
            S16 => ".s16",
            S32 => ".s32",
            S64 => ".s64",
            B8 => ".b8",
            B16 => ".b16",
            B32 => ".b32",
            B64 => ".b64",
            F16 => ".f16",
            Bf16 => ".bf16",
            F32 => ".f32",
            F64 => ".f64",
            Opaque => ".texref",
        }
    }
}

/// One kernel parameter.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct Param {
    /// The parameter's name in the PTX.
    pub name: String,
    /// Its type.
    pub ty: ParamType,
    /// `Some(K)` for an array `name[K]`: how nvcc passes structs (`.align N .b8 name[K]`).
    pub array_len: Option<usize>,
    /// The declared `.align N`, if any.
    pub declared_align: Option<usize>,
}

impl Param {
    /// Bytes the argument occupies.
    pub fn size(&self) -> usize {
        self.ty.size() * self.array_len.unwrap_or(1)
    }

    /// Required alignment: the declared one, else the element's natural alignment.
    pub fn align(&self) -> usize {
        self.declared_align.unwrap_or(self.ty.size())
    }

    /// True for by-value aggregates (arrays).
    pub fn is_aggregate(&self) -> bool {
        self.array_len.is_some()
    }
}

impl fmt::Display for Param {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if let Some(a) = self.declared_align {
            write!(f, ".align {a} ")?;
        }
        write!(f, "{}", self.ty.ptx_name())?;
        if let Some(n) = self.array_len {
            write!(f, "[{n}]")?;
        }
        write!(f, " ({} bytes)", self.size())
    }
}

/// A kernel's name and parameters, in order.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct KernelSignature {
    /// The `.entry` name.
    pub name: String,
    /// Its parameters, in order.
    pub params: Vec<Param>,
}

impl KernelSignature {
    /// Total bytes of the parameter list, with each parameter at its aligned offset.
    pub fn param_bytes(&self) -> usize {
        self.params.iter().fold(0usize, |off, p| {
            let a = p.align().max(1);
            off.div_ceil(a).saturating_mul(a).saturating_add(p.size())
        })
    }
}

/// Parses every `.entry` declaration in `ptx`.
pub fn parse_entries(ptx: &str) -> Result<Vec<KernelSignature>> {
    let mut lx = Lexer::new(ptx);
    let mut out = Vec::new();
    while let Some(tok) = lx.next()? {
        match tok.text {
            // Function bodies and initialisers are most of the text and hold no `.entry`:
            // skip them at byte speed instead of tokenising them.
            "{" => lx.skip_block(tok.line)?,
            "}" => return Err(err(tok.line, "unbalanced `}`")),
            ".entry" => out.push(parse_entry(&mut lx, tok.line)?),
            _ => {}
        }
    }
    Ok(out)
}

/// The signature of the kernel `name`, if `ptx` declares it.
pub fn find_entry(ptx: &str, name: &str) -> Result<Option<KernelSignature>> {
    Ok(parse_entries(ptx)?.into_iter().find(|k| k.name == name))
}

fn err(line: usize, message: impl Into<String>) -> Error {
    Error::Ptx {
        line,
        message: message.into(),
    }
}

fn parse_entry(lx: &mut Lexer<'_>, line: usize) -> Result<KernelSignature> {
    let name = lx
        .next()?
        .ok_or_else(|| err(line, "`.entry` without a name"))?;
    if !is_identifier(name.text) {
        return Err(err(
            name.line,
            format!("`.entry` name {:?} is not an identifier", name.text),
        ));
    }
    let mut sig = KernelSignature {
        name: name.text.to_string(),
        params: Vec::new(),
    };
    // A parameter list is optional: `.entry k { ... }` and `.entry k()` are both valid.
    if lx.peek()?.map(|t| t.text) != Some("(") {
        return Ok(sig);
    }
    lx.next()?;
    if lx.peek()?.map(|t| t.text) == Some(")") {
        lx.next()?;
        return Ok(sig);
    }
    loop {
        sig.params.push(parse_param(lx, &sig.name)?);
        let sep = lx.next()?.ok_or_else(|| {
            err(
                lx.line,
                format!("parameter list of `{}` not closed", sig.name),
            )
        })?;
        match sep.text {
            "," => continue,
            ")" => break,
            other => {
                return Err(err(
                    sep.line,
                    format!(
                        "expected `,` or `)` in parameters of `{}`, found {other:?}",
                        sig.name
                    ),
                ))
            }
        }
    }
    let total = sig.param_bytes();
    if total > MAX_PARAM_BYTES {
        return Err(err(
            line,
            format!(
                "parameters of `{}` take {total} bytes, more than PTX allows ({MAX_PARAM_BYTES})",
                sig.name
            ),
        ));
    }
    Ok(sig)
}

fn parse_param(lx: &mut Lexer<'_>, kernel: &str) -> Result<Param> {
    let first = lx
        .next()?
        .ok_or_else(|| err(lx.line, format!("parameter list of `{kernel}` not closed")))?;
    if first.text != ".param" {
        return Err(err(
            first.line,
            format!(
                "expected `.param` in parameters of `{kernel}`, found {:?}",
                first.text
            ),
        ));
    }
    let mut ty = None;
    let mut align = None;
    // Qualifiers come space-separated (`.u64 .ptr .global .align 8`) or run together
    // (`.ptr.global.align 8`): split every directive token on its dots.
    let name = loop {
        let tok = lx
            .next()?
            .ok_or_else(|| err(lx.line, format!("parameter of `{kernel}` has no name")))?;
        if !tok.text.starts_with('.') {
            break tok;
        }
        let mut parts = tok.text[1..].split('.').peekable();
        while let Some(part) = parts.next() {
            match part {
                "align" => {
                    if parts.peek().is_some() {
                        return Err(err(tok.line, "`.align` must be followed by a number"));
                    }
                    let n = lx
                        .next()?
                        .ok_or_else(|| err(tok.line, "`.align` without a value"))?;
                    let v = parse_number(n.text).ok_or_else(|| {
                        err(
                            n.line,
                            format!("`.align` value {:?} is not a number", n.text),
                        )
                    })?;
                    if v == 0 || !v.is_power_of_two() || v > 4096 {
                        return Err(err(
                            n.line,
                            format!("`.align {v}` is not a power of two up to 4096"),
                        ));
                    }
                    align = Some(v);
                }
                "ptr" | "global" | "const" | "shared" | "local" => {}
                other => match ParamType::from_name(other) {
                    Some(t) if ty.is_none() => ty = Some(t),
                    Some(_) => {
                        return Err(err(
                            tok.line,
                            format!("parameter of `{kernel}` has two types"),
                        ))
                    }
                    None => {
                        return Err(err(
                            tok.line,
                            format!("unsupported parameter qualifier `.{other}` in `{kernel}`"),
                        ))
                    }
                },
            }
        }
    };
    if !is_identifier(name.text) {
        return Err(err(
            name.line,
            format!(
                "parameter name {:?} of `{kernel}` is not an identifier",
                name.text
            ),
        ));
    }
    let ty = ty.ok_or_else(|| {
        err(
            name.line,
            format!("parameter `{}` of `{kernel}` has no type", name.text),
        )
    })?;
    let mut array_len = None;
    if lx.peek()?.map(|t| t.text) == Some("[") {
        lx.next()?;
        let n = lx
            .next()?
            .ok_or_else(|| err(name.line, "unterminated `[`"))?;
        let len = parse_number(n.text)
            .filter(|&v| v > 0 && v <= MAX_PARAM_BYTES)
            .ok_or_else(|| {
                err(
                    n.line,
                    format!(
                        "array length {:?} of `{}` is not 1..={MAX_PARAM_BYTES}",
                        n.text, name.text
                    ),
                )
            })?;
        let close = lx.next()?.ok_or_else(|| err(n.line, "unterminated `[`"))?;
        if close.text != "]" {
            return Err(err(
                close.line,
                format!("expected `]`, found {:?}", close.text),
            ));
        }
        array_len = Some(len);
    }
    Ok(Param {
        name: name.text.to_string(),
        ty,
        array_len,
        declared_align: align,
    })
}

fn parse_number(s: &str) -> Option<usize> {
    if let Some(hex) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        usize::from_str_radix(hex, 16).ok()
    } else if s.bytes().all(|b| b.is_ascii_digit()) {
        s.parse().ok()
    } else {
        None
    }
}

/// PTX identifiers: `[a-zA-Z][a-zA-Z0-9_$]*` or `[_$%][a-zA-Z0-9_$]+`.
fn is_identifier(s: &str) -> bool {
    let mut chars = s.chars();
    match chars.next() {
        Some(c) if c.is_ascii_alphabetic() => {}
        Some('_' | '$' | '%') if s.len() > 1 => {}
        _ => return false,
    }
    chars.all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '$')
}

#[derive(Debug, Clone, Copy)]
struct Tok<'a> {
    text: &'a str,
    line: usize,
}

/// Splits PTX into tokens: punctuation alone, strings whole, comments dropped.
struct Lexer<'a> {
    src: &'a str,
    pos: usize,
    line: usize,
    peeked: Option<Tok<'a>>,
}

impl<'a> Lexer<'a> {
    fn new(src: &'a str) -> Self {
        Self {
            src,
            pos: 0,
            line: 1,
            peeked: None,
        }
    }

    fn peek(&mut self) -> Result<Option<Tok<'a>>> {
        if self.peeked.is_none() {
            self.peeked = self.lex()?;
        }
        Ok(self.peeked)
    }

    fn next(&mut self) -> Result<Option<Tok<'a>>> {
        match self.peeked.take() {
            Some(t) => Ok(Some(t)),
            None => self.lex(),
        }
    }

    /// Skips to the `}` closing a `{` just returned by `next`, through nested blocks,
    /// comments and strings, counting lines.
    fn skip_block(&mut self, open_line: usize) -> Result<()> {
        let bytes = self.src.as_bytes();
        let mut depth = 1usize;
        if let Some(t) = self.peeked.take() {
            // Only reachable if a caller peeked past the `{`; account for that token.
            match t.text {
                "{" => depth += 1,
                "}" => return Ok(()),
                _ => {}
            }
        }
        loop {
            let rest = bytes.get(self.pos..).unwrap_or(&[]);
            let Some(skip) = rest
                .iter()
                .position(|&c| matches!(c, b'\n' | b'{' | b'}' | b'/' | b'"'))
            else {
                self.pos = bytes.len();
                return Err(err(open_line, "unterminated `{` block"));
            };
            self.pos += skip;
            match bytes.get(self.pos) {
                Some(b'\n') => {
                    self.line += 1;
                    self.pos += 1;
                }
                Some(b'{') => {
                    depth += 1;
                    self.pos += 1;
                }
                Some(b'}') => {
                    self.pos += 1;
                    depth -= 1;
                    if depth == 0 {
                        return Ok(());
                    }
                }
                Some(b'/') if matches!(bytes.get(self.pos + 1), Some(b'/' | b'*')) => {
                    // Comments: reuse the lexer, which skips them and stops at the next token.
                    let tok = self.lex()?;
                    match tok {
                        Some(t) if t.text == "{" => depth += 1,
                        Some(t) if t.text == "}" => {
                            depth -= 1;
                            if depth == 0 {
                                return Ok(());
                            }
                        }
                        Some(_) => {}
                        None => return Err(err(open_line, "unterminated `{` block")),
                    }
                }
                Some(b'"') => {
                    self.lex()?;
                }
                _ => self.pos += 1,
            }
        }
    }

    fn lex(&mut self) -> Result<Option<Tok<'a>>> {
        let bytes = self.src.as_bytes();
        loop {
            let Some(&b) = bytes.get(self.pos) else {
                return Ok(None);
            };
            match b {
                b'\n' => {
                    self.line += 1;
                    self.pos += 1;
                }
                b if b.is_ascii_whitespace() => self.pos += 1,
                b'/' if bytes.get(self.pos + 1) == Some(&b'/') => {
                    while let Some(&c) = bytes.get(self.pos) {
                        if c == b'\n' {
                            break;
                        }
                        self.pos += 1;
                    }
                }
                b'/' if bytes.get(self.pos + 1) == Some(&b'*') => {
                    let start_line = self.line;
                    self.pos += 2;
                    loop {
                        match bytes.get(self.pos) {
                            None => return Err(err(start_line, "unterminated `/*` comment")),
                            Some(b'*') if bytes.get(self.pos + 1) == Some(&b'/') => {
                                self.pos += 2;
                                break;
                            }
                            Some(b'\n') => {
                                self.line += 1;
                                self.pos += 1;
                            }
                            Some(_) => self.pos += 1,
                        }
                    }
                }
                b'"' => {
                    let start = self.pos;
                    self.pos += 1;
                    loop {
                        match bytes.get(self.pos) {
                            None | Some(b'\n') => {
                                return Err(err(self.line, "unterminated string"))
                            }
                            Some(b'\\') => self.pos += 2,
                            Some(b'"') => {
                                self.pos += 1;
                                break;
                            }
                            Some(_) => self.pos += 1,
                        }
                    }
                    let end = self.pos.min(bytes.len());
                    return Ok(Some(Tok {
                        text: self.src.get(start..end).unwrap_or(""),
                        line: self.line,
                    }));
                }
                b'(' | b')' | b',' | b'[' | b']' | b'{' | b'}' | b';' | b'<' | b'>' | b'=' => {
                    let start = self.pos;
                    self.pos += 1;
                    return Ok(Some(Tok {
                        text: self.src.get(start..self.pos).unwrap_or(""),
                        line: self.line,
                    }));
                }
                _ => {
                    let start = self.pos;
                    while let Some(&c) = bytes.get(self.pos) {
                        if c.is_ascii_whitespace()
                            || matches!(
                                c,
                                b'(' | b')'
                                    | b','
                                    | b'['
                                    | b']'
                                    | b'{'
                                    | b'}'
                                    | b';'
                                    | b'<'
                                    | b'>'
                                    | b'='
                                    | b'"'
                            )
                            || (c == b'/' && matches!(bytes.get(self.pos + 1), Some(b'/' | b'*')))
                        {
                            break;
                        }
                        self.pos += 1;
                    }
                    // Token boundaries are ASCII bytes, so they fall on char boundaries;
                    // `get` keeps even a mistake here from panicking.
                    let text = self
                        .src
                        .get(start..self.pos)
                        .ok_or_else(|| err(self.line, "invalid UTF-8 boundary"))?;
                    return Ok(Some(Tok {
                        text,
                        line: self.line,
                    }));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const NVCC_PTX: &str = include_str!("../kernels/test_kernels.ptx");

    #[test]
    fn parses_nvcc_output() {
        let k = parse_entries(NVCC_PTX).expect("nvcc PTX parses");
        let names: Vec<_> = k.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["all_widths", "affine", "smem_sum"]);
        let widths: Vec<_> = k[0].params.iter().map(|p| p.ty).collect();
        use ParamType::*;
        assert_eq!(widths, [U8, U16, U32, U64, F32, F64, U16, U64]);
        let affine = &k[1].params[0];
        assert_eq!(affine.name, "affine_param_0");
        assert_eq!((affine.size(), affine.align()), (24, 8));
        assert!(affine.is_aggregate());
        assert_eq!(k[1].param_bytes(), 40);
    }

    #[test]
    fn parses_the_shared_fixture_and_empty_entries() {
        let ptx = include_str!("../kernels/bench.ptx");
        let k = parse_entries(ptx).expect("parses");
        assert_eq!(k[0].name, "empty");
        assert!(k[0].params.is_empty());
        assert_eq!(k[1].params.len(), 4);
        assert_eq!(k[1].params[3].ty, ParamType::F32);
    }

    #[test]
    fn handles_qualifiers_comments_and_forms() {
        let ptx = r#"
.version 8.0 // comment .entry fake(
/* .entry alsofake( */
.extern .entry decl_only(.param .u32 a);
.visible .entry k(
    .param .u64 .ptr .global .align 16 p,
    .param .u64 .ptr.const.align 8 q,
    .param .align 4 .b8 s[12], // struct
    .param .f16 h
) .maxntid 128, 1, 1
{
    .reg .b32 %r<4>;
    { .entry_in_body_is_not_an_entry: ret; }
}
.entry noparams { ret; }
"#;
        let k = parse_entries(ptx).expect("parses");
        let names: Vec<_> = k.iter().map(|k| k.name.as_str()).collect();
        assert_eq!(names, ["decl_only", "k", "noparams"]);
        let p = &k[1].params;
        assert_eq!(p[0].declared_align, Some(16));
        assert_eq!(p[1].name, "q");
        assert_eq!((p[2].size(), p[2].align()), (12, 4));
        assert_eq!(p[3].ty, ParamType::F16);
        assert!(k[2].params.is_empty());
        assert_eq!(
            find_entry(ptx, "k")
                .expect("parses")
                .map(|s| s.params.len()),
            Some(4)
        );
        assert_eq!(find_entry(ptx, "nope").expect("parses"), None);
    }

    #[test]
    fn malformed_ptx_is_an_error_with_a_line() {
        for (ptx, line) in [
            (".entry k(\n.param .u32 a", 2),
            (".entry k(.param .u33 a)", 1),
            (".entry k(.param .u32)", 1),
            (".entry k(.param .u32 a[0])", 1),
            (".entry k(.param .align 3 .b8 a[4])", 1),
            (".entry k(.param .b8 a[99999999999999999999999])", 1),
            (".entry k(\n\n.param .align 8 .b8 a[40000])", 3),
            (".entry k(\n.param .b8 a[20000],\n.param .b8 b[20000])", 1),
            (".entry 9k()", 1),
            (".entry", 1),
            ("/* open", 1),
            ("}", 1),
            (".entry k() {", 1),
            (".entry k(.param .u32 a .u32 b)", 1),
        ] {
            match parse_entries(ptx) {
                Err(Error::Ptx { line: l, .. }) => assert_eq!(l, line, "{ptx:?}"),
                other => panic!("{ptx:?}: expected a PTX error, got {other:?}"),
            }
        }
    }

    mod props {
        use super::*;
        use proptest::prelude::*;

        proptest! {
            #![proptest_config(ProptestConfig::with_cases(2000))]

            #[test]
            fn never_panics_on_arbitrary_text(s in "\\PC*") {
                let _ = parse_entries(&s);
            }

            #[test]
            fn never_panics_on_ptx_like_tokens(
                toks in proptest::collection::vec(
                    prop_oneof![
                        Just(".entry"), Just(".param"), Just(".u64"), Just(".b8"), Just(".align"),
                        Just(".ptr.global.align"), Just("("), Just(")"), Just(","), Just("["),
                        Just("]"), Just("{"), Just("}"), Just("8"), Just("0x10"), Just("k"),
                        Just("p0"), Just("//"), Just("/*"), Just("*/"), Just("\""), Just("\n"),
                        Just("é"), Just(";"),
                    ],
                    0..40,
                )
            ) {
                let _ = parse_entries(&toks.join(" "));
                let _ = parse_entries(&toks.concat());
            }

            #[test]
            fn never_panics_on_truncated_or_mutated_nvcc_ptx(cut in 0usize..4000, at in 0usize..4000, byte in any::<u8>()) {
                let mut bytes = NVCC_PTX.as_bytes().to_vec();
                bytes.truncate(cut.min(bytes.len()));
                if !bytes.is_empty() {
                    let i = at % bytes.len();
                    bytes[i] = byte;
                }
                let s = String::from_utf8_lossy(&bytes);
                let _ = parse_entries(&s);
            }

            #[test]
            fn generated_signatures_round_trip(
                params in proptest::collection::vec((0usize..16, proptest::option::of(1usize..64), proptest::option::of(0u32..5)), 0..12)
            ) {
                let types = ["u8","u16","u32","u64","s8","s16","s32","s64","b8","b16","b32","b64","f16","bf16","f32","f64"];
                let mut decl = String::from(".visible .entry gen(\n");
                for (i, (t, len, align)) in params.iter().enumerate() {
                    if i > 0 { decl.push_str(",\n"); }
                    decl.push_str("  .param ");
                    if let Some(a) = align { decl.push_str(&format!(".align {} ", 1u32 << a)); }
                    decl.push_str(&format!(".{} p{i}", types[*t]));
                    if let Some(n) = len { decl.push_str(&format!("[{n}]")); }
                }
                decl.push_str("\n)\n{\n ret;\n}\n");
                let k = parse_entries(&decl).expect("generated PTX parses");
                prop_assert_eq!(k.len(), 1);
                prop_assert_eq!(k[0].params.len(), params.len());
                for (p, (t, len, align)) in k[0].params.iter().zip(&params) {
                    prop_assert_eq!(p.ty.ptx_name(), format!(".{}", types[*t]));
                    prop_assert_eq!(p.array_len, *len);
                    prop_assert_eq!(p.declared_align, align.map(|a| 1usize << a));
                }
            }
        }
    }
}

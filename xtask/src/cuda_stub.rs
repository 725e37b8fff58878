//! `cargo xtask cuda-stub`: a stub `libcuda.so` for building the `cuda` feature without a GPU.
//!
//! cust's build scripts (cust and cust_raw, through find_cuda_helper) need only one thing:
//! `$CUDA_LIBRARY_PATH/lib64` must exist and hold a `libcuda.so` to link. They read no
//! header and check no version. So the stub is generated from the symbol list of the
//! bindings cust actually links (cust_raw's `cuda.rs`, located through `cargo metadata`),
//! with every entry point returning `CUDA_ERROR_STUB_LIBRARY` (34), as NVIDIA's own stub
//! does. Its soname is `libcuda.so.1`, so a binary linked against it loads the real driver
//! library unchanged on a GPU host.
//!
//! The stub goes to `<cargo target dir>/cuda-stub/lib64/`. Building needs
//! `CUDA_LIBRARY_PATH=<that dir>/..` (printed on stdout). Nothing links it in the end:
//! vm-cuda loads `libcuda.so.1` when a CUDA operation first needs it, so binaries start
//! without any libcuda. Pointing `LD_LIBRARY_PATH=<cuda-stub>/lib64` at it on a host without
//! a GPU makes that load find the stub (every call answers CUDA_ERROR_STUB_LIBRARY), which
//! CI uses to test that path; never on a GPU host, where it would shadow the real driver.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context as _};

/// `CUDA_ERROR_STUB_LIBRARY` from cuda.h.
const CUDA_ERROR_STUB_LIBRARY: u32 = 34;

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Output folder (gets lib64/libcuda.so{,.1}); default: `<target dir>/cuda-stub`.
    #[arg(long)]
    pub out: Option<PathBuf>,
    /// C compiler to build the stub with.
    #[arg(long, env = "CC", default_value = "cc")]
    pub cc: String,
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let meta = cargo_metadata()?;
    let bindings = cust_raw_bindings(&meta)?;
    let text = std::fs::read_to_string(&bindings)
        .with_context(|| format!("reading {}", bindings.display()))?;
    let symbols = extern_functions(&text)
        .with_context(|| format!("parsing the bindings in {}", bindings.display()))?;
    log::info!(
        "{} CUDA driver entry points in {}",
        symbols.len(),
        bindings.display()
    );

    let out = match args.out {
        Some(p) => absolute(&p)?,
        None => meta.target_directory.join("cuda-stub"),
    };
    let lib64 = out.join("lib64");
    std::fs::create_dir_all(&lib64).with_context(|| format!("creating {}", lib64.display()))?;
    let source = out.join("libcuda_stub.c");
    std::fs::write(&source, stub_source(&symbols, &bindings))
        .with_context(|| format!("writing {}", source.display()))?;

    let lib = lib64.join("libcuda.so.1");
    let status = Command::new(&args.cc)
        .args(["-shared", "-fPIC", "-O2", "-Wl,-soname,libcuda.so.1", "-o"])
        .arg(&lib)
        .arg(&source)
        .status()
        .with_context(|| format!("running the C compiler `{}`", args.cc))?;
    if !status.success() {
        bail!("`{}` failed ({status}) building {}", args.cc, lib.display());
    }
    let link = lib64.join("libcuda.so");
    match std::fs::remove_file(&link) {
        Ok(()) => {}
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e).with_context(|| format!("removing {}", link.display())),
    }
    std::os::unix::fs::symlink("libcuda.so.1", &link)
        .with_context(|| format!("linking {}", link.display()))?;

    log::info!(
        "stub libcuda ({} symbols) at {}",
        symbols.len(),
        lib.display()
    );
    eprintln!("# Build the `cuda` feature with the line below (the binaries load libcuda.so.1");
    eprintln!(
        "# at run time; LD_LIBRARY_PATH={} makes them find this stub: never on a GPU host).",
        lib64.display()
    );
    println!("CUDA_LIBRARY_PATH={}", out.display());
    Ok(())
}

fn absolute(p: &Path) -> anyhow::Result<PathBuf> {
    if p.is_absolute() {
        return Ok(p.to_path_buf());
    }
    Ok(std::env::current_dir()
        .context("reading the current directory")?
        .join(p))
}

struct Metadata {
    target_directory: PathBuf,
    packages: Vec<serde_json::Value>,
}

fn cargo_metadata() -> anyhow::Result<Metadata> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let manifest = Path::new(env!("CARGO_MANIFEST_DIR")).join("../Cargo.toml");
    // --all-features: cust is an optional dependency of vm-cuda.
    let output = Command::new(cargo)
        .args([
            "metadata",
            "--format-version",
            "1",
            "--all-features",
            "--manifest-path",
        ])
        .arg(&manifest)
        .output()
        .context("running `cargo metadata`")?;
    if !output.status.success() {
        bail!(
            "`cargo metadata` failed: {}",
            String::from_utf8_lossy(&output.stderr)
        );
    }
    let v: serde_json::Value =
        serde_json::from_slice(&output.stdout).context("parsing `cargo metadata` output")?;
    let target_directory = v["target_directory"]
        .as_str()
        .context("`cargo metadata` has no target_directory")?
        .into();
    let packages = v["packages"]
        .as_array()
        .context("`cargo metadata` has no packages")?
        .clone();
    Ok(Metadata {
        target_directory,
        packages,
    })
}

/// The bindgen output of the cust_raw version this workspace resolves to.
fn cust_raw_bindings(meta: &Metadata) -> anyhow::Result<PathBuf> {
    let pkg = meta
        .packages
        .iter()
        .find(|p| p["name"] == "cust_raw")
        .context(
            "cust_raw is not in the dependency graph (is cust still a dependency of vm-cuda?)",
        )?;
    let manifest = pkg["manifest_path"]
        .as_str()
        .context("cust_raw has no manifest_path")?;
    let src = Path::new(manifest)
        .parent()
        .context("cust_raw manifest has no folder")?
        .join("src/cuda.rs");
    if !src.is_file() {
        bail!("{} is missing (run `cargo fetch` first)", src.display());
    }
    Ok(src)
}

/// Names of the `pub fn` items of the bindings' `extern "C"` blocks. Every one must return
/// `CUresult`: a stub returning 34 from a function of another return type would be a lie.
pub fn extern_functions(text: &str) -> anyhow::Result<Vec<String>> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("pub fn ") {
        rest = &rest[at + "pub fn ".len()..];
        let end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let name = &rest[..end];
        let decl_end = rest
            .find(';')
            .with_context(|| format!("declaration of {name} has no end"))?;
        let decl = &rest[..decl_end];
        if decl.contains('{') {
            bail!("`pub fn {name}` has a body: not an extern declaration");
        }
        let ret = decl.rsplit_once("->").map(|(_, r)| r.trim());
        if ret != Some("CUresult") {
            bail!("`{name}` returns {ret:?}, not CUresult");
        }
        if name.is_empty() || !name.starts_with("cu") {
            bail!("unexpected extern function name {name:?}");
        }
        names.push(name.to_string());
        rest = &rest[decl_end..];
    }
    if names.is_empty() {
        bail!("no extern functions found");
    }
    names.sort();
    names.dedup();
    Ok(names)
}

fn stub_source(symbols: &[String], from: &Path) -> String {
    let mut s = String::new();
    let _ = writeln!(
        s,
        "/* Generated by `cargo xtask cuda-stub` from {}. Do not edit.\n * Every CUDA driver entry point returns CUDA_ERROR_STUB_LIBRARY, like NVIDIA's stub. */",
        from.display()
    );
    let _ = writeln!(
        s,
        "#define STUB(name) __attribute__((visibility(\"default\"))) int name(void) {{ return {CUDA_ERROR_STUB_LIBRARY}; }}"
    );
    for name in symbols {
        let _ = writeln!(s, "STUB({name})");
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn finds_extern_functions() {
        let text = r#"
extern "C" {
    pub fn cuInit(Flags: ::std::os::raw::c_uint) -> CUresult;
}
extern "C" {
    pub fn cuMemcpyDtoD_v2(
        dstDevice: CUdeviceptr,
        ByteCount: usize,
    ) -> CUresult;
}
fn bindgen_test_layout_x() { }
"#;
        assert_eq!(
            extern_functions(text).expect("parses"),
            vec!["cuInit".to_string(), "cuMemcpyDtoD_v2".to_string()]
        );
    }

    #[test]
    fn rejects_functions_of_other_return_types() {
        let text = "extern \"C\" { pub fn cuFoo() -> u32; }";
        assert!(extern_functions(text).is_err());
        assert!(extern_functions("nothing here").is_err());
    }
}

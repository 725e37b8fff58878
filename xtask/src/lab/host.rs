//! What the lab needs from the host: Debian packages and the musl Rust target.

use std::process::Command;

use anyhow::{bail, Context, Result};

use super::KernelKind;

/// The Rust target the guest binaries are built for: static, runs in a bare initramfs.
pub const GUEST_TARGET: &str = "x86_64-unknown-linux-musl";

/// Debian packages the lab needs for `kernel`.
pub fn packages(kernel: KernelKind) -> Vec<&'static str> {
    let mut pkgs = vec!["qemu-system-x86", "busybox-static", "xz-utils"];
    match kernel {
        KernelKind::Debian => pkgs.push("linux-image-amd64"),
        KernelKind::Iommufd => pkgs.extend([
            super::kernel::SOURCE_PACKAGE,
            "build-essential",
            "flex",
            "bison",
            "bc",
            "libelf-dev",
        ]),
    }
    pkgs
}

/// Installs (as root, unless `install` is false) or reports the missing packages, then makes
/// sure the musl target is there.
pub fn ensure(kernel: KernelKind, install: bool) -> Result<()> {
    let wanted = packages(kernel);
    if Command::new("dpkg-query")
        .arg("--version")
        .output()
        .is_err()
    {
        bail!(
            "the lab is written for Debian 12 (dpkg-query not found); it needs the equivalents \
             of: {}",
            wanted.join(" ")
        );
    }
    let missing: Vec<&str> = wanted.iter().copied().filter(|p| !installed(p)).collect();
    if !missing.is_empty() {
        let list = missing.join(" ");
        if !install {
            bail!("missing Debian packages: {list}; install them with: apt-get install -y {list}");
        }
        if !is_root() {
            bail!(
                "missing Debian packages: {list}; run `sudo apt-get install -y {list}` (or run \
                 `cargo xtask lab` as root, which installs them itself)"
            );
        }
        log::info!("installing {list} with apt-get");
        run_apt(&["update", "-q"])?;
        let mut args = vec!["install", "-y", "-q", "--no-install-recommends"];
        args.extend(&missing);
        run_apt(&args)?;
        let still: Vec<&str> = missing.iter().copied().filter(|p| !installed(p)).collect();
        if !still.is_empty() {
            bail!(
                "apt-get ran but these are still not installed: {}",
                still.join(" ")
            );
        }
    }
    ensure_musl_target()
}

fn installed(pkg: &str) -> bool {
    Command::new("dpkg-query")
        .args(["-W", "-f=${db:Status-Status}", pkg])
        .output()
        .map(|o| o.status.success() && o.stdout == b"installed")
        .unwrap_or(false)
}

fn is_root() -> bool {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find_map(|l| l.strip_prefix("Uid:"))
                .and_then(|l| l.split_whitespace().nth(1).map(|e| e == "0"))
        })
        .unwrap_or(false)
}

fn run_apt(args: &[&str]) -> Result<()> {
    let status = Command::new("apt-get")
        .args(args)
        .env("DEBIAN_FRONTEND", "noninteractive")
        .status()
        .context("running apt-get")?;
    if !status.success() {
        bail!("apt-get {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn ensure_musl_target() -> Result<()> {
    let libdir = Command::new("rustc")
        .args(["--print", "target-libdir", "--target", GUEST_TARGET])
        .output()
        .context("running rustc --print target-libdir")?;
    let dir = String::from_utf8_lossy(&libdir.stdout).trim().to_string();
    let has_std = |dir: &str| {
        std::fs::read_dir(dir).is_ok_and(|mut entries| {
            entries.any(|e| e.is_ok_and(|e| e.file_name().to_string_lossy().starts_with("libstd-")))
        })
    };
    if libdir.status.success() && has_std(&dir) {
        return Ok(());
    }
    log::info!("adding the Rust target {GUEST_TARGET} with rustup");
    let status = Command::new("rustup")
        .args(["target", "add", GUEST_TARGET])
        .status()
        .context("running rustup (install the Rust target x86_64-unknown-linux-musl by hand if rustup is not used)")?;
    if !status.success() {
        bail!("rustup target add {GUEST_TARGET} failed ({status})");
    }
    Ok(())
}

//! The guest kernel: Debian's packaged kernel (vfio as modules), or the lab's own iommufd
//! kernel built once from Debian's kernel source and cached outside the work tree.

use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context, Result};

use super::KernelKind;

/// Debian's kernel source with IOMMUFD and VFIO_DEVICE_CDEV in Kconfig (6.1 predates both).
pub const SOURCE_PACKAGE: &str = "linux-source-6.12";
const SOURCE_TARBALL: &str = "/usr/src/linux-source-6.12.tar.xz";
/// Kconfig fragment and build script of the iommufd kernel (part of its cache key).
const FRAGMENT: &str = "lab/iommufd-kernel.config";
const BUILD_SCRIPT: &str = "lab/build-kernel.sh";

/// Modules the Debian guest loads (with their dependencies, in dependency order). The
/// virtio and ext4 modules drive the host-use devices (a mounted disk, a swap disk, a NIC
/// with an address) that `lab_host_safety` proves `vm-accel` refuses to take.
const DEBIAN_MODULES: &[&str] = &[
    "vfio_iommu_type1",
    "vfio-pci",
    "ccp",
    "kvm-amd",
    "virtio_pci",
    "virtio_blk",
    "virtio_net",
    // ext4 asks the crypto API for crc32c at every mount (modprobe: not in the guest).
    "crc32c_generic",
    "ext4",
];

/// What QEMU boots and what the initramfs must load.
#[derive(Debug)]
pub struct GuestKernel {
    pub image: PathBuf,
    /// Kernel modules, in load order (empty when everything is built in).
    pub modules: Vec<PathBuf>,
    pub description: String,
}

pub fn prepare(kind: KernelKind, workspace: &Path, cache: &Path) -> Result<GuestKernel> {
    match kind {
        KernelKind::Debian => debian(cache),
        KernelKind::Iommufd => iommufd(workspace),
    }
}

fn debian(cache: &Path) -> Result<GuestKernel> {
    let mut candidates = Vec::new();
    for entry in std::fs::read_dir("/boot").context("reading /boot")? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if let Some(version) = name.strip_prefix("vmlinuz-") {
            let moddir = Path::new("/lib/modules").join(version);
            if moddir.join("modules.dep").exists() {
                candidates.push(version.to_string());
            }
        }
    }
    // The kernel linux-image-amd64 points at, when installed: a cloud image may also carry
    // linux-image-cloud-amd64 (of the same version number, without the IOMMU drivers).
    let packaged = packaged_version();
    candidates.sort_by_key(|v| (Some(v) == packaged.as_ref(), version_key(v)));
    let Some(version) = candidates.pop() else {
        bail!("no /boot/vmlinuz-* with modules under /lib/modules (apt-get install linux-image-amd64)");
    };
    let bzimage = PathBuf::from(format!("/boot/vmlinuz-{version}"));
    let moddir = Path::new("/lib/modules").join(&version);
    let modules = module_order(&moddir, DEBIAN_MODULES)?;
    let image = pvh_vmlinux(&bzimage, &version, cache)?;
    Ok(GuestKernel {
        image,
        modules,
        description: format!("Debian {version}"),
    })
}

/// `6.1.0-48-amd64` from linux-image-amd64's `Depends: linux-image-6.1.0-48-amd64 (= ...)`.
fn packaged_version() -> Option<String> {
    let out = Command::new("dpkg-query")
        .args(["-W", "-f=${Depends}", "linux-image-amd64"])
        .output()
        .ok()?;
    String::from_utf8_lossy(&out.stdout)
        .split(',')
        .find_map(|d| d.trim().strip_prefix("linux-image-"))
        .and_then(|d| d.split_whitespace().next())
        .map(str::to_string)
}

/// Orders `roots` and their dependencies (from modules.dep) so each loads after its deps.
fn module_order(moddir: &Path, roots: &[&str]) -> Result<Vec<PathBuf>> {
    let depfile = moddir.join("modules.dep");
    let text = std::fs::read_to_string(&depfile)
        .with_context(|| format!("reading {}", depfile.display()))?;
    let norm = |s: &str| s.replace('-', "_");
    let mut deps: HashMap<String, (String, Vec<String>)> = HashMap::new();
    for line in text.lines() {
        let Some((path, rest)) = line.split_once(':') else {
            continue;
        };
        let list: Vec<String> = rest.split_whitespace().map(str::to_string).collect();
        deps.insert(norm(&module_name(path)), (path.to_string(), list));
    }
    let mut order = Vec::new();
    let mut seen = Vec::new();
    fn visit(
        path: &str,
        deps: &HashMap<String, (String, Vec<String>)>,
        seen: &mut Vec<String>,
        order: &mut Vec<String>,
    ) {
        if seen.iter().any(|s| s == path) {
            return;
        }
        seen.push(path.to_string());
        let key = module_name(path).replace('-', "_");
        if let Some((_, list)) = deps.get(&key) {
            for d in list {
                visit(d, deps, seen, order);
            }
        }
        order.push(path.to_string());
    }
    for root in roots {
        let Some((path, _)) = deps.get(&norm(root)) else {
            bail!("kernel module {root} not found in {}", depfile.display());
        };
        visit(&path.clone(), &deps, &mut seen, &mut order);
    }
    order
        .into_iter()
        .map(|p| {
            let full = moddir.join(&p);
            if !p.ends_with(".ko") {
                bail!(
                    "{} is compressed; the lab loads plain .ko modules only",
                    full.display()
                );
            }
            Ok(full)
        })
        .collect()
}

fn module_name(path: &str) -> String {
    let file = path.rsplit('/').next().unwrap_or(path);
    file.split(".ko").next().unwrap_or(file).to_string()
}

fn version_key(v: &str) -> Vec<u64> {
    v.split(|c: char| !c.is_ascii_digit())
        .filter_map(|p| p.parse().ok())
        .collect()
}

/// Extracts the ELF vmlinux (with its PVH entry note) from a bzImage: booting it directly
/// skips ~4.5 s of in-guest decompression under TCG. Falls back to the bzImage when the
/// payload is not xz or has no PVH note.
fn pvh_vmlinux(bzimage: &Path, version: &str, cache: &Path) -> Result<PathBuf> {
    let meta =
        std::fs::metadata(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let mtime = meta
        .modified()
        .ok()
        .and_then(|t| t.duration_since(std::time::UNIX_EPOCH).ok())
        .map_or(0, |d| d.as_secs());
    let out = cache
        .join("kernel")
        .join(format!("{version}-{}-{mtime}", meta.len()))
        .join("vmlinux");
    if out.exists() {
        return Ok(out);
    }
    let data = std::fs::read(bzimage).with_context(|| format!("reading {}", bzimage.display()))?;
    let payload = match bzimage_payload(&data) {
        Ok(p) => p,
        Err(e) => {
            log::warn!("booting the bzImage itself (slower): {e:#}");
            return Ok(bzimage.to_path_buf());
        }
    };
    let mut child = Command::new("xz")
        .args(["-dc", "--single-stream"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running xz")?;
    let mut stdin = child.stdin.take().context("xz stdin")?;
    let payload = payload.to_vec();
    let writer = std::thread::spawn(move || std::io::Write::write_all(&mut stdin, &payload));
    let output = child.wait_with_output().context("running xz")?;
    let _ = writer.join();
    if !output.status.success() || !has_pvh_note(&output.stdout) {
        log::warn!(
            "{}: no PVH vmlinux in the payload; booting the bzImage (slower)",
            bzimage.display()
        );
        return Ok(bzimage.to_path_buf());
    }
    let dir = out.parent().context("cache path")?;
    std::fs::create_dir_all(dir)?;
    let tmp = dir.join(format!("vmlinux.tmp{}", std::process::id()));
    std::fs::write(&tmp, &output.stdout)?;
    std::fs::rename(&tmp, &out)?;
    Ok(out)
}

fn bzimage_payload(data: &[u8]) -> Result<&[u8]> {
    let u32_at = |off: usize| -> Result<usize> {
        let b = data.get(off..off + 4).context("bzImage too short")?;
        Ok(u32::from_le_bytes([b[0], b[1], b[2], b[3]]) as usize)
    };
    if data.get(0x202..0x206) != Some(b"HdrS") {
        bail!("not a bzImage (no HdrS)");
    }
    let setup_sects = match *data.get(0x1f1).context("bzImage too short")? {
        0 => 4,
        n => n as usize,
    };
    let start = (setup_sects + 1) * 512 + u32_at(0x248)?;
    let payload = data
        .get(start..start + u32_at(0x24c)?)
        .context("payload outside the bzImage")?;
    if !payload.starts_with(b"\xfd7zXZ\0") {
        bail!("bzImage payload is not xz");
    }
    Ok(payload)
}

/// Whether an ELF64 image carries XEN_ELFNOTE_PHYS32_ENTRY (the PVH entry QEMU uses).
fn has_pvh_note(elf: &[u8]) -> bool {
    let rd = |off: usize, n: usize| -> Option<u64> {
        let b = elf.get(off..off + n)?;
        Some(b.iter().rev().fold(0u64, |a, &x| (a << 8) | u64::from(x)))
    };
    if !elf.starts_with(b"\x7fELF\x02\x01") {
        return false;
    }
    let (Some(phoff), Some(phentsize), Some(phnum)) = (rd(0x20, 8), rd(0x36, 2), rd(0x38, 2))
    else {
        return false;
    };
    for i in 0..phnum as usize {
        let ph = phoff as usize + i * phentsize as usize;
        if rd(ph, 4) != Some(4) {
            continue; // not PT_NOTE
        }
        let (Some(off), Some(size)) = (rd(ph + 8, 8), rd(ph + 32, 8)) else {
            continue;
        };
        let (mut p, end) = (off as usize, (off + size) as usize);
        while p + 12 <= end {
            let (Some(namesz), Some(descsz), Some(ty)) = (rd(p, 4), rd(p + 4, 4), rd(p + 8, 4))
            else {
                break;
            };
            let name = elf.get(p + 12..p + 12 + namesz as usize);
            if ty == 18 && name == Some(b"Xen\0") {
                return true;
            }
            p += 12 + (namesz as usize).div_ceil(4) * 4 + (descsz as usize).div_ceil(4) * 4;
        }
    }
    false
}

/// Where the iommufd kernel is cached: `VM_ACCEL_LAB_KERNEL_CACHE`, else
/// /var/cache/vm-accel-lab when writable, else ~/.cache/vm-accel-lab.
pub fn kernel_cache_root() -> PathBuf {
    if let Some(dir) = std::env::var_os("VM_ACCEL_LAB_KERNEL_CACHE") {
        return PathBuf::from(dir);
    }
    let system = Path::new("/var/cache/vm-accel-lab");
    if std::fs::create_dir_all(system).is_ok() && tempfile_probe(system) {
        return system.to_path_buf();
    }
    let home = std::env::var_os("XDG_CACHE_HOME")
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))
        .unwrap_or_else(|| PathBuf::from("/tmp"));
    home.join("vm-accel-lab")
}

fn tempfile_probe(dir: &Path) -> bool {
    let probe = dir.join(format!(".probe-{}", std::process::id()));
    let ok = std::fs::write(&probe, b"").is_ok();
    let _ = std::fs::remove_file(&probe);
    ok
}

/// The iommufd kernel's cache directory: a hash of the fragment, the build script and the
/// kernel source package version, so any change rebuilds and nothing stale is reused.
pub fn iommufd_dir(workspace: &Path) -> Result<PathBuf> {
    let fragment =
        std::fs::read(workspace.join(FRAGMENT)).with_context(|| format!("reading {FRAGMENT}"))?;
    let script = std::fs::read(workspace.join(BUILD_SCRIPT))
        .with_context(|| format!("reading {BUILD_SCRIPT}"))?;
    let src = std::fs::metadata(SOURCE_TARBALL)
        .with_context(|| format!("{SOURCE_TARBALL} missing (apt-get install {SOURCE_PACKAGE})"))?;
    let mut key = fragment;
    key.extend_from_slice(b"\n--\n");
    key.extend_from_slice(&script);
    key.extend_from_slice(format!("\n--\n{SOURCE_TARBALL} {}\n", src.len()).as_bytes());
    let hash = super::sha256_hex(&key)?;
    Ok(kernel_cache_root()
        .join("kernel")
        .join(format!("iommufd-{}", &hash[..16])))
}

fn iommufd(workspace: &Path) -> Result<GuestKernel> {
    let dir = iommufd_dir(workspace)?;
    let image = dir.join("vmlinux");
    if !image.exists() {
        let log = dir.with_extension("log");
        std::fs::create_dir_all(dir.parent().context("cache dir")?)?;
        log::info!(
            "building the lab's iommufd kernel once into {} (4-5 min on 2 cores; \
             log: {})",
            dir.display(),
            log.display()
        );
        let started = Instant::now();
        let logfile = std::fs::File::create(&log)?;
        // flock: a second lab run waits for this build instead of racing it, then finds
        // the kernel there.
        let status = Command::new("flock")
            .arg(dir.with_extension("lock"))
            .args([
                "sh",
                "-c",
                r#"[ -e "$3/vmlinux" ] || exec nice -n 10 "$0" "$@""#,
            ])
            .arg(workspace.join(BUILD_SCRIPT))
            .arg(SOURCE_TARBALL)
            .arg(workspace.join(FRAGMENT))
            .arg(&dir)
            .stdout(logfile.try_clone()?)
            .stderr(logfile)
            .status()
            .context("running lab/build-kernel.sh")?;
        if !status.success() || !image.exists() {
            bail!(
                "building the iommufd kernel failed ({status}); see {}",
                log.display()
            );
        }
        log::info!(
            "iommufd kernel built in {:.0} s",
            started.elapsed().as_secs_f64()
        );
    }
    Ok(GuestKernel {
        image,
        modules: Vec::new(),
        description: format!("lab iommufd kernel ({})", dir.display()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn modules_load_after_their_dependencies_once_each() {
        let dir = std::env::temp_dir().join(format!("lab-moddep-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        std::fs::write(
            dir.join("modules.dep"),
            "kernel/drivers/vfio/pci/vfio-pci.ko: kernel/drivers/vfio/pci/vfio-pci-core.ko \
             kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko\n\
             kernel/drivers/vfio/pci/vfio-pci-core.ko: kernel/drivers/vfio/vfio.ko kernel/virt/lib/irqbypass.ko\n\
             kernel/drivers/vfio/vfio.ko:\n\
             kernel/virt/lib/irqbypass.ko:\n\
             kernel/drivers/vfio/vfio_iommu_type1.ko: kernel/drivers/vfio/vfio.ko\n",
        )
        .expect("write modules.dep");
        let order = module_order(&dir, &["vfio_iommu_type1", "vfio_pci"]).expect("order");
        let names: Vec<String> = order
            .iter()
            .map(|p| module_name(&p.to_string_lossy()))
            .collect();
        let pos = |m: &str| names.iter().position(|n| n == m).expect(m);
        assert_eq!(names.len(), 5, "{names:?}");
        assert!(pos("vfio") < pos("vfio_iommu_type1"));
        assert!(pos("vfio-pci-core") < pos("vfio-pci") && pos("irqbypass") < pos("vfio-pci-core"));
        assert!(module_order(&dir, &["nope"]).is_err());
        std::fs::remove_dir_all(&dir).expect("cleanup");
    }

    #[test]
    fn malformed_images_are_refused_not_panicked_on() {
        assert!(!has_pvh_note(b"not an elf"));
        assert!(!has_pvh_note(b"\x7fELF\x02\x01 truncated"));
        assert!(bzimage_payload(b"short").is_err());
        let mut fake = vec![0u8; 0x300];
        fake[0x202..0x206].copy_from_slice(b"HdrS");
        fake[0x24c] = 0xff; // payload length past the end
        assert!(bzimage_payload(&fake).is_err());
    }
}

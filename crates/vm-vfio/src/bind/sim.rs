//! A simulated kernel on a fixture tree, for testing code that binds devices.
//!
//! [`SimHost`] writes a sysfs-shaped directory (devices, drivers, IOMMU groups, real
//! symlinks) and [`SimKernel`] applies [`KernelOp`]s to it the way the PCI core does:
//! `unbind` removes the driver links, `drivers_probe` attaches the driver named by
//! `driver_override` (or the device's native driver when there is none), `bind` honours
//! `driver_override`, loading a module registers its driver and probes the devices waiting for
//! it. Any step can be made to fail ([`Fault`]), which is how the lifecycle's rollback is
//! proven.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::os::unix::fs::symlink;
use std::path::{Path, PathBuf};

use vm_pci::Bdf;

use super::kernel::{Kernel, KernelOp};
use super::state::{parse_override, Paths, VFIO_PCI};

/// A PCI function of a simulated host.
#[derive(Debug, Clone)]
pub struct SimDevice {
    /// The function's address.
    pub bdf: Bdf,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// 24-bit class code (0x030200 = 3D controller, 0x060400 = PCI bridge).
    pub class: u32,
    /// IOMMU group (`None`: no IOMMU).
    pub iommu_group: Option<u32>,
    /// The driver bound when the host is built.
    pub driver: Option<String>,
    /// `driver_override` when the host is built (`None`: `(null)`).
    pub driver_override: Option<String>,
    /// The driver the kernel would pick by ID table on a probe without override.
    pub native_driver: Option<String>,
    /// Other drivers that accept the device on an explicit `bind` (dynamic IDs added with
    /// `new_id`, e.g. pci-stub), though a probe picks the native one.
    pub extra_drivers: Vec<String>,
}

impl SimDevice {
    /// An endpoint (3D controller) bound to, and natively matched by, `driver`.
    pub fn endpoint(bdf: &str, group: u32, driver: Option<&str>) -> SimDevice {
        SimDevice {
            bdf: bdf.parse().expect("valid BDF in fixture"),
            vendor: 0x10de,
            device: 0x2335,
            class: 0x030200,
            iommu_group: Some(group),
            driver: driver.map(str::to_string),
            driver_override: None,
            native_driver: driver.map(str::to_string),
            extra_drivers: Vec::new(),
        }
    }
    /// A PCI-to-PCI bridge bound to pcieport.
    pub fn bridge(bdf: &str, group: u32) -> SimDevice {
        SimDevice {
            vendor: 0x8086,
            device: 0x7075,
            class: 0x060400,
            ..SimDevice::endpoint(bdf, group, Some("pcieport"))
        }
    }
    /// QEMU's `edu` device (1234:11e8), unbound: no host driver matches it.
    pub fn edu(bdf: &str, group: u32) -> SimDevice {
        SimDevice {
            vendor: 0x1234,
            device: 0x11e8,
            class: 0x00ff00,
            ..SimDevice::endpoint(bdf, group, None)
        }
    }
}

/// How a step fails.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fault {
    /// The write/modprobe returns this errno and changes nothing.
    Errno(i32),
    /// The write "succeeds" but the kernel does nothing (a driver whose probe() fails, a
    /// module that loads without registering): only reading back can tell.
    Ignored,
}

/// Builds a simulated host's sysfs tree.
#[derive(Debug, Default)]
pub struct SimHost {
    devices: Vec<SimDevice>,
    /// Drivers registered at start (besides those devices are bound to).
    loaded: BTreeSet<String>,
    /// Modules `modprobe` can load.
    available: BTreeSet<String>,
}

impl SimHost {
    /// A host with no devices, where `modprobe vfio-pci` works.
    pub fn new() -> SimHost {
        SimHost {
            available: [VFIO_PCI.to_string()].into(),
            ..SimHost::default()
        }
    }
    /// Adds a device.
    pub fn device(mut self, d: SimDevice) -> SimHost {
        self.devices.push(d);
        self
    }
    /// The common passthrough case: a GPU (nvidia) and its audio function (snd_hda_intel)
    /// in IOMMU group 5, behind a bridge that shares the group.
    pub fn gpu_with_audio() -> SimHost {
        let mut audio = SimDevice::endpoint("0000:41:00.1", 5, Some("snd_hda_intel"));
        audio.class = 0x040300;
        SimHost::new()
            .device(SimDevice::bridge("0000:40:01.0", 5))
            .device(SimDevice::endpoint("0000:41:00.0", 5, Some("nvidia")))
            .device(audio)
    }
    /// Registers a driver at start (e.g. vfio-pci already loaded).
    pub fn loaded(mut self, driver: &str) -> SimHost {
        self.loaded.insert(driver.to_string());
        self
    }
    /// Makes `modprobe vfio-pci` fail as on a kernel built without it.
    pub fn without_vfio_module(mut self) -> SimHost {
        self.available.remove(VFIO_PCI);
        self
    }

    /// Writes the tree under `root` (which must exist) and returns the kernel that drives it.
    pub fn build(self, root: &Path) -> io::Result<SimKernel> {
        let paths = Paths::new(root);
        std::fs::create_dir_all(paths.drivers())?;
        std::fs::write(paths.drivers_probe(), "")?;
        std::fs::write(
            root.join("cmdline"),
            "console=ttyS0 intel_iommu=on iommu=pt\n",
        )?;
        // A VT-d unit whose extended capabilities include interrupt remapping (bit 3).
        std::fs::create_dir_all(root.join("class/iommu/dmar0/intel-iommu"))?;
        std::fs::write(root.join("class/iommu/dmar0/intel-iommu/ecap"), "f0205e\n")?;
        for m in ["vfio", "vfio_iommu_type1"] {
            std::fs::create_dir_all(root.join("module").join(m))?;
        }
        std::fs::create_dir_all(root.join("bus/pci/devices"))?;
        let mut drivers: BTreeSet<String> = self.loaded.clone();
        drivers.extend(self.devices.iter().filter_map(|d| d.driver.clone()));
        drivers.extend(self.devices.iter().filter_map(|d| d.native_driver.clone()));
        drivers.extend(self.devices.iter().flat_map(|d| d.extra_drivers.clone()));
        let mut native = BTreeMap::new();
        let mut extra = BTreeMap::new();
        let mut k = SimKernel {
            paths,
            native: BTreeMap::new(),
            extra: BTreeMap::new(),
            available: self.available.clone(),
            step: 0,
            faults: BTreeMap::new(),
            applied: Vec::new(),
        };
        for drv in &drivers {
            k.register_driver(drv)?;
        }
        for d in &self.devices {
            let rel = format!(
                "devices/pci{:04x}:{:02x}/{}",
                d.bdf.domain(),
                d.bdf.bus(),
                d.bdf
            );
            let dir = root.join(&rel);
            std::fs::create_dir_all(&dir)?;
            std::fs::write(dir.join("vendor"), format!("0x{:04x}\n", d.vendor))?;
            std::fs::write(dir.join("device"), format!("0x{:04x}\n", d.device))?;
            std::fs::write(
                dir.join("subsystem_vendor"),
                format!("0x{:04x}\n", d.vendor),
            )?;
            std::fs::write(dir.join("subsystem_device"), "0x0000\n")?;
            std::fs::write(dir.join("revision"), "0x00\n")?;
            std::fs::write(dir.join("class"), format!("0x{:06x}\n", d.class))?;
            std::fs::write(dir.join("config"), config_space(d))?;
            std::fs::write(dir.join("resource"), resource_file())?;
            std::fs::write(dir.join("numa_node"), "-1\n")?;
            std::fs::write(dir.join("irq"), "11\n")?;
            std::fs::write(dir.join("enable"), "0\n")?;
            std::fs::write(dir.join("reset_method"), "flr bus\n")?;
            std::fs::write(
                dir.join("driver_override"),
                override_text(d.driver_override.as_deref()),
            )?;
            symlink(
                format!("../../../{rel}"),
                root.join("bus/pci/devices").join(d.bdf.to_string()),
            )?;
            if let Some(g) = d.iommu_group {
                let gdir = root.join("kernel/iommu_groups").join(g.to_string());
                std::fs::create_dir_all(gdir.join("devices"))?;
                std::fs::write(
                    gdir.join("reserved_regions"),
                    "0x00000000fee00000 0x00000000feefffff msi\n",
                )?;
                std::fs::write(gdir.join("type"), "DMA\n")?;
                symlink(
                    format!("../../../../{rel}"),
                    gdir.join("devices").join(d.bdf.to_string()),
                )?;
                symlink(
                    format!("../../../kernel/iommu_groups/{g}"),
                    dir.join("iommu_group"),
                )?;
            }
            native.insert(d.bdf, d.native_driver.clone());
            extra.insert(d.bdf, d.extra_drivers.clone());
            if let Some(drv) = &d.driver {
                k.link(d.bdf, drv)?;
            }
        }
        k.native = native;
        k.extra = extra;
        Ok(k)
    }
}

fn override_text(o: Option<&str>) -> String {
    format!("{}\n", o.unwrap_or("(null)"))
}

/// A 256-byte type-0 header with the IDs and class (enough for config-space readers).
fn config_space(d: &SimDevice) -> Vec<u8> {
    let mut c = vec![0u8; 256];
    c[0..2].copy_from_slice(&d.vendor.to_le_bytes());
    c[2..4].copy_from_slice(&d.device.to_le_bytes());
    c[9] = d.class as u8;
    c[10] = (d.class >> 8) as u8;
    c[11] = (d.class >> 16) as u8;
    c[0x0e] = if d.class >> 8 == 0x0604 { 1 } else { 0 };
    c
}

fn resource_file() -> String {
    let mut s = String::from("0x00000000fe000000 0x00000000fe0fffff 0x0000000000040200\n");
    for _ in 1..13 {
        s.push_str("0x0000000000000000 0x0000000000000000 0x0000000000000000\n");
    }
    s
}

/// The simulated kernel. Every [`Kernel::apply`] is one numbered step (from 0).
#[derive(Debug)]
pub struct SimKernel {
    paths: Paths,
    native: BTreeMap<Bdf, Option<String>>,
    extra: BTreeMap<Bdf, Vec<String>>,
    available: BTreeSet<String>,
    step: usize,
    faults: BTreeMap<usize, Fault>,
    applied: Vec<KernelOp>,
}

fn errno(e: i32, what: impl std::fmt::Display) -> io::Error {
    let os = io::Error::from_raw_os_error(e);
    io::Error::new(os.kind(), format!("{what}: {os}"))
}

impl SimKernel {
    /// The tree's paths.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }
    /// Makes step `step` (0-based count of `apply` calls) fail with `fault`.
    pub fn inject(&mut self, step: usize, fault: Fault) {
        self.faults.insert(step, fault);
    }
    /// Removes every injected fault.
    pub fn clear_faults(&mut self) {
        self.faults.clear();
    }
    /// Steps taken so far (including failed ones).
    pub fn steps(&self) -> usize {
        self.step
    }
    /// The ops that took effect, in order.
    pub fn applied(&self) -> &[KernelOp] {
        &self.applied
    }

    fn register_driver(&self, drv: &str) -> io::Result<()> {
        let dir = self.paths.driver_dir(drv);
        std::fs::create_dir_all(&dir)?;
        for f in ["bind", "unbind", "new_id", "remove_id"] {
            std::fs::write(dir.join(f), "")?;
        }
        Ok(())
    }

    fn dev_dir(&self, bdf: Bdf) -> io::Result<PathBuf> {
        self.paths.device_dir(bdf)
    }

    fn current(&self, bdf: Bdf) -> io::Result<(Option<String>, Option<String>)> {
        let st = self.paths.driver_state(bdf)?;
        Ok((st.driver, st.driver_override))
    }

    fn link(&self, bdf: Bdf, drv: &str) -> io::Result<()> {
        let dir = self.dev_dir(bdf)?;
        let rel_dev = dir
            .strip_prefix(self.paths.root())
            .map_err(io::Error::other)?
            .to_path_buf();
        let depth = rel_dev.components().count();
        let up = "../".repeat(depth);
        symlink(format!("{up}bus/pci/drivers/{drv}"), dir.join("driver"))?;
        symlink(
            format!("../../../../{}", rel_dev.display()),
            self.paths.driver_dir(drv).join(bdf.to_string()),
        )?;
        Ok(())
    }

    fn unlink(&self, bdf: Bdf, drv: &str) -> io::Result<()> {
        std::fs::remove_file(self.dev_dir(bdf)?.join("driver"))?;
        std::fs::remove_file(self.paths.driver_dir(drv).join(bdf.to_string()))?;
        Ok(())
    }

    /// The kernel's driver_match_device for PCI: an override names the only driver allowed;
    /// without one, the ID table (here: the native driver) decides.
    fn matches(&self, bdf: Bdf, drv: &str) -> io::Result<bool> {
        let (_, ov) = self.current(bdf)?;
        Ok(match ov {
            Some(o) => o == drv,
            None => {
                self.native.get(&bdf).cloned().flatten().as_deref() == Some(drv)
                    || self
                        .extra
                        .get(&bdf)
                        .is_some_and(|e| e.iter().any(|x| x == drv))
            }
        })
    }

    fn probe(&self, bdf: Bdf) -> io::Result<()> {
        let (drv, ov) = self.current(bdf)?;
        if drv.is_some() {
            return Ok(());
        }
        let candidate = ov.or_else(|| self.native.get(&bdf).cloned().flatten());
        if let Some(c) = candidate {
            if self.paths.driver_loaded(&c) {
                self.link(bdf, &c)?;
            }
        }
        Ok(())
    }

    fn parse_bdf(value: &str) -> io::Result<Bdf> {
        value
            .trim()
            .parse()
            .map_err(|_| errno(libc::ENODEV, format!("no such device {value:?}")))
    }

    fn effect(&mut self, op: &KernelOp) -> io::Result<()> {
        match op {
            KernelOp::LoadModule { module } => {
                let name = module.replace('_', "-");
                if !self.available.contains(&name) {
                    return Err(errno(
                        libc::ENOENT,
                        format!("modprobe: module {module} not found"),
                    ));
                }
                if !self.paths.driver_loaded(&name) {
                    self.register_driver(&name)?;
                    std::fs::create_dir_all(
                        self.paths
                            .root()
                            .join("module")
                            .join(name.replace('-', "_")),
                    )?;
                    // driver_register() attaches every unbound device the driver matches.
                    let waiting: Vec<Bdf> = self.native.keys().copied().collect();
                    for b in waiting {
                        if self.current(b)?.0.is_none() && self.matches(b, &name)? {
                            self.link(b, &name)?;
                        }
                    }
                }
                Ok(())
            }
            // write(2) of zero bytes never reaches a sysfs store function.
            KernelOp::Write { value, .. } if value.is_empty() => Ok(()),
            KernelOp::Write { path, value } => {
                let root = self.paths.root().to_path_buf();
                let rel = path
                    .strip_prefix(&root)
                    .map_err(|_| errno(libc::ENOENT, path.display()))?;
                let parts: Vec<&str> = rel.iter().filter_map(|c| c.to_str()).collect();
                match parts.as_slice() {
                    ["bus", "pci", "devices", bdf, "driver_override"] => {
                        let bdf = Self::parse_bdf(bdf)?;
                        let dir = self.dev_dir(bdf)?;
                        let text = override_text(parse_override(value).as_deref());
                        std::fs::write(dir.join("driver_override"), text)
                    }
                    ["bus", "pci", "drivers_probe"] => self.probe(Self::parse_bdf(value)?),
                    ["bus", "pci", "drivers", drv, "unbind"] => {
                        let bdf = Self::parse_bdf(value)?;
                        if self.current(bdf)?.0.as_deref() != Some(*drv) {
                            return Err(errno(
                                libc::ENODEV,
                                format!("{bdf} is not bound to {drv}"),
                            ));
                        }
                        self.unlink(bdf, drv)
                    }
                    ["bus", "pci", "drivers", drv, "bind"] => {
                        let bdf = Self::parse_bdf(value)?;
                        if !self.paths.driver_loaded(drv) {
                            return Err(errno(libc::ENOENT, path.display()));
                        }
                        if self.current(bdf)?.0.is_some() {
                            return Err(errno(libc::EBUSY, format!("{bdf} already has a driver")));
                        }
                        if !self.matches(bdf, drv)? {
                            return Err(errno(libc::ENODEV, format!("{drv} does not match {bdf}")));
                        }
                        self.link(bdf, drv)
                    }
                    _ => Err(errno(
                        libc::ENOENT,
                        format!("sim: no attribute {}", path.display()),
                    )),
                }
            }
        }
    }
}

impl Kernel for SimKernel {
    fn apply(&mut self, op: &KernelOp) -> io::Result<()> {
        let step = self.step;
        self.step += 1;
        match self.faults.get(&step) {
            Some(Fault::Errno(e)) => {
                log::debug!("sim step {step}: injected errno {e} for `{op}`");
                return Err(errno(*e, format!("injected fault at step {step}")));
            }
            Some(Fault::Ignored) => {
                log::debug!("sim step {step}: injected silent no-op for `{op}`");
                return Ok(());
            }
            None => {}
        }
        self.effect(op)?;
        self.applied.push(op.clone());
        Ok(())
    }
}

//! Builders for sysfs-shaped directory trees, for tests of code built on vm-pci.
//!
//! Real captures (like the H200 host in tests/fixtures) cover what real hosts look like;
//! these builders cover what those hosts lack: IOMMU groups, multi-device groups, bridges
//! in groups, SR-IOV, broken config space. Links are real symlinks, as in live sysfs.

use std::io;
use std::path::{Path, PathBuf};

use crate::Bdf;

/// Builds a PCI config space image (4 KiB) capability by capability.
#[derive(Debug, Clone)]
pub struct ConfigBuilder {
    bytes: Vec<u8>,
    next_std: usize,
    last_std: Option<usize>,
    next_ext: usize,
    last_ext: Option<usize>,
}

impl ConfigBuilder {
    /// A type-0 (endpoint) or type-1 (bridge) header with ids and class.
    pub fn new(vendor: u16, device: u16, class: u32, header_type: u8) -> Self {
        let mut b = vec![0u8; crate::config::PCIE_LEN];
        b[0..2].copy_from_slice(&vendor.to_le_bytes());
        b[2..4].copy_from_slice(&device.to_le_bytes());
        b[0x08] = 0xa1; // revision
        b[0x09..0x0c].copy_from_slice(&class.to_le_bytes()[..3]);
        b[0x0e] = header_type;
        ConfigBuilder {
            bytes: b,
            next_std: 0x40,
            last_std: None,
            next_ext: 0x100,
            last_ext: None,
        }
    }

    fn push_std(&mut self, id: u8, body: &[u8]) -> &mut Self {
        let at = self.next_std;
        self.bytes[0x06] |= 0x10;
        match self.last_std {
            None => self.bytes[0x34] = at as u8,
            Some(prev) => self.bytes[prev + 1] = at as u8,
        }
        self.bytes[at] = id;
        self.bytes[at + 2..at + 2 + body.len()].copy_from_slice(body);
        self.last_std = Some(at);
        self.next_std = (at + 2 + body.len()).next_multiple_of(4);
        self
    }

    fn push_ext(&mut self, id: u16, version: u8, body: &[u8]) -> &mut Self {
        let at = self.next_ext;
        let hdr = u32::from(id) | u32::from(version) << 16;
        self.bytes[at..at + 4].copy_from_slice(&hdr.to_le_bytes());
        if let Some(prev) = self.last_ext {
            let mut h = u32::from_le_bytes(self.bytes[prev..prev + 4].try_into().unwrap_or([0; 4]));
            h |= (at as u32) << 20;
            self.bytes[prev..prev + 4].copy_from_slice(&h.to_le_bytes());
        }
        self.bytes[at + 4..at + 4 + body.len()].copy_from_slice(body);
        self.last_ext = Some(at);
        self.next_ext = (at + 4 + body.len()).next_multiple_of(4);
        self
    }

    /// Adds a power-management capability.
    pub fn power_management(&mut self, no_soft_reset: bool) -> &mut Self {
        self.push_std(
            0x01,
            &[0x03, 0x00, if no_soft_reset { 0x08 } else { 0 }, 0, 0, 0],
        )
    }

    /// Adds a 64-bit MSI capability with 2^`vectors_log2` vectors.
    pub fn msi(&mut self, vectors_log2: u8) -> &mut Self {
        let ctl: u16 = 0x80 | u16::from(vectors_log2 & 7) << 1;
        let mut body = vec![0u8; 12];
        body[..2].copy_from_slice(&ctl.to_le_bytes());
        self.push_std(0x05, &body)
    }

    /// `port_type` as the PCIe capability encodes it (0 endpoint, 4 root port, 6 downstream).
    pub fn pcie(&mut self, port_type: u8, flr: bool, gen: u8, width: u8) -> &mut Self {
        let mut body = vec![0u8; 0x3a];
        let caps: u16 = 2 | u16::from(port_type) << 4;
        body[0..2].copy_from_slice(&caps.to_le_bytes());
        let devcap: u32 = if flr { 1 << 28 } else { 0 };
        body[2..6].copy_from_slice(&devcap.to_le_bytes());
        let linkcap: u32 = u32::from(gen) | u32::from(width) << 4;
        body[0x0a..0x0e].copy_from_slice(&linkcap.to_le_bytes());
        let linksta: u16 = u16::from(gen) | u16::from(width) << 4;
        body[0x10..0x12].copy_from_slice(&linksta.to_le_bytes());
        self.push_std(0x10, &body)
    }

    /// Adds an MSI-X capability: table and PBA as BAR index and offset.
    pub fn msix(
        &mut self,
        vectors: u16,
        table_bar: u8,
        table_off: u32,
        pba_bar: u8,
        pba_off: u32,
    ) -> &mut Self {
        let mut body = vec![0u8; 10];
        body[0..2].copy_from_slice(&(vectors - 1).to_le_bytes());
        body[2..6].copy_from_slice(&(table_off | u32::from(table_bar)).to_le_bytes());
        body[6..10].copy_from_slice(&(pba_off | u32::from(pba_bar)).to_le_bytes());
        self.push_std(0x11, &body)
    }

    /// Adds an ACS extended capability with every control offered and `control` enabled.
    pub fn acs(&mut self, control: u16) -> &mut Self {
        let mut body = vec![0u8; 4];
        body[0..2].copy_from_slice(&0x7fu16.to_le_bytes());
        body[2..4].copy_from_slice(&control.to_le_bytes());
        self.push_ext(0x000d, 1, &body)
    }

    /// Adds an AER extended capability.
    pub fn aer(&mut self) -> &mut Self {
        self.push_ext(0x0001, 2, &[0u8; 0x44])
    }

    /// Adds an SR-IOV extended capability.
    pub fn sriov(&mut self, total_vfs: u16, num_vfs: u16, vf_device: u16) -> &mut Self {
        let mut body = vec![0u8; 0x3c];
        body[4..6].copy_from_slice(&u16::from(num_vfs > 0).to_le_bytes());
        body[8..10].copy_from_slice(&total_vfs.to_le_bytes());
        body[10..12].copy_from_slice(&total_vfs.to_le_bytes());
        body[12..14].copy_from_slice(&num_vfs.to_le_bytes());
        body[16..18].copy_from_slice(&1u16.to_le_bytes());
        body[18..20].copy_from_slice(&1u16.to_le_bytes());
        body[22..24].copy_from_slice(&vf_device.to_le_bytes());
        self.push_ext(0x0010, 1, &body)
    }

    /// Adds an ARI extended capability.
    pub fn ari(&mut self) -> &mut Self {
        self.push_ext(0x000e, 1, &[0u8; 4])
    }

    /// Adds a resizable-BAR extended capability.
    pub fn resizable_bar(
        &mut self,
        bar: u8,
        supported_mask: u32,
        current_log2_mib: u8,
    ) -> &mut Self {
        let mut body = vec![0u8; 8];
        body[0..4].copy_from_slice(&(supported_mask << 4).to_le_bytes());
        let ctl: u32 = u32::from(bar) | 1 << 5 | u32::from(current_log2_mib) << 8;
        body[4..8].copy_from_slice(&ctl.to_le_bytes());
        self.push_ext(0x0015, 1, &body)
    }

    /// Raw access for deliberately broken spaces.
    pub fn bytes_mut(&mut self) -> &mut [u8] {
        &mut self.bytes
    }

    /// The config space image.
    pub fn build(&self) -> Vec<u8> {
        self.bytes.clone()
    }
}

/// One device to place in a tree.
#[derive(Debug, Clone)]
pub struct DeviceSpec {
    /// The function's address.
    pub bdf: Bdf,
    /// Bridge above it (its sysfs directory nests under the bridge's), `None`: root bus.
    pub parent: Option<Bdf>,
    /// Vendor id.
    pub vendor: u16,
    /// Device id.
    pub device: u16,
    /// 24-bit class code.
    pub class: u32,
    /// Bound driver (`None`: unbound).
    pub driver: Option<String>,
    /// IOMMU group (`None`: no IOMMU).
    pub iommu_group: Option<u32>,
    /// Contents of `config`.
    pub config: Vec<u8>,
    /// Contents of `resource` (lines of `start end flags`).
    pub resource: String,
    /// Contents of `reset_method` (`None`: no such file).
    pub reset_method: Option<String>,
    /// Contents of `boot_vga`.
    pub boot_vga: bool,
    /// Contents of `numa_node` (-1: no affinity).
    pub numa_node: i32,
    /// Contents of `sriov_totalvfs` (`None`: not a PF).
    pub sriov_totalvfs: Option<u16>,
    /// For a VF: its PF, which gets a `virtfnN` link to it.
    pub physfn: Option<Bdf>,
}

impl DeviceSpec {
    /// An endpoint with a PCIe capability (FLR), MSI-X, one 16 MiB BAR0.
    pub fn endpoint(bdf: Bdf, vendor: u16, device: u16, class: u32) -> Self {
        let config = ConfigBuilder::new(vendor, device, class, 0)
            .power_management(false)
            .pcie(0, true, 4, 16)
            .msix(8, 0, 0x2000, 0, 0x3000)
            .aer()
            .build();
        DeviceSpec {
            bdf,
            parent: None,
            vendor,
            device,
            class,
            driver: None,
            iommu_group: None,
            config,
            resource: "0x00000000fd000000 0x00000000fdffffff 0x0000000000040200\n".into(),
            reset_method: Some("flr bus".into()),
            boot_vga: false,
            numa_node: 0,
            sriov_totalvfs: None,
            physfn: None,
        }
    }

    /// A PCIe root port (`port_type` 4) with ACS `acs_control` (`None`: no ACS capability).
    pub fn root_port(bdf: Bdf, acs_control: Option<u16>) -> Self {
        let mut c = ConfigBuilder::new(0x8086, 0x1234, 0x060400, 1);
        c.pcie(4, false, 4, 16);
        if let Some(ctl) = acs_control {
            c.acs(ctl);
        }
        DeviceSpec {
            config: c.build(),
            resource: String::new(),
            reset_method: None,
            driver: Some("pcieport".into()),
            ..DeviceSpec::endpoint(bdf, 0x8086, 0x1234, 0x060400)
        }
    }

    /// Binds it to driver `d`.
    pub fn driver(mut self, d: &str) -> Self {
        self.driver = Some(d.into());
        self
    }
    /// Puts it in IOMMU group `g`.
    pub fn group(mut self, g: u32) -> Self {
        self.iommu_group = Some(g);
        self
    }
    /// Nests it below bridge `p`.
    pub fn parent(mut self, p: Bdf) -> Self {
        self.parent = Some(p);
        self
    }
}

/// Writes a sysfs-shaped tree into a directory.
#[derive(Debug)]
pub struct TreeBuilder {
    root: PathBuf,
    placed: Vec<(Bdf, PathBuf)>,
}

fn rel_symlink(target: &Path, link: &Path) -> io::Result<()> {
    // Relative, like the kernel's links, so the tree can be moved.
    let link_dir = link.parent().unwrap_or(Path::new("/"));
    let common = target
        .components()
        .zip(link_dir.components())
        .take_while(|(a, b)| a == b)
        .count();
    let mut rel = PathBuf::new();
    for _ in link_dir.components().skip(common) {
        rel.push("..");
    }
    for c in target.components().skip(common) {
        rel.push(c.as_os_str());
    }
    let _ = std::fs::remove_file(link);
    std::os::unix::fs::symlink(rel, link)
}

impl TreeBuilder {
    /// Starts an empty tree at `root` (created if missing).
    pub fn new(root: impl Into<PathBuf>) -> io::Result<Self> {
        let root = root.into();
        for d in [
            "bus/pci/devices",
            "bus/pci/drivers",
            "kernel/iommu_groups",
            "class/iommu",
            "module",
        ] {
            std::fs::create_dir_all(root.join(d))?;
        }
        std::fs::write(root.join("kernel-release"), "6.1.0\n")?;
        std::fs::write(root.join("cmdline"), "console=ttyS0\n")?;
        Ok(TreeBuilder {
            root,
            placed: Vec::new(),
        })
    }

    /// The tree's root directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    /// Sets the captured kernel command line (`cmdline`).
    pub fn cmdline(&mut self, line: &str) -> io::Result<&mut Self> {
        std::fs::write(self.root.join("cmdline"), format!("{line}\n"))?;
        Ok(self)
    }

    /// An Intel IOMMU unit; `ecap` bit 3 says interrupt remapping.
    pub fn intel_iommu(&mut self, unit: &str, ecap: u64) -> io::Result<&mut Self> {
        let d = self.root.join("class/iommu").join(unit).join("intel-iommu");
        std::fs::create_dir_all(&d)?;
        std::fs::write(d.join("ecap"), format!("{ecap:x}\n"))?;
        Ok(self)
    }

    /// A loaded module (`module/<name>`, with the `refcnt` a loaded module has: a file, so
    /// the directory survives in git, which drops empty ones).
    pub fn module(&mut self, name: &str) -> io::Result<&mut Self> {
        let dir = self.root.join("module").join(name);
        std::fs::create_dir_all(&dir)?;
        std::fs::write(dir.join("refcnt"), "0\n")?;
        Ok(self)
    }

    /// Registers a PCI driver (`bus/pci/drivers/<name>`).
    pub fn driver(&mut self, name: &str) -> io::Result<&mut Self> {
        std::fs::create_dir_all(self.root.join("bus/pci/drivers").join(name))?;
        Ok(self)
    }

    /// Where a device's directory lives (nested below its parent bridge, as in sysfs).
    pub fn device_path(&self, bdf: Bdf, parent: Option<Bdf>) -> PathBuf {
        let base = parent
            .and_then(|p| {
                self.placed
                    .iter()
                    .find(|(b, _)| *b == p)
                    .map(|(_, d)| d.clone())
            })
            .unwrap_or_else(|| {
                self.root
                    .join(format!("devices/pci{:04x}:{:02x}", bdf.domain(), 0))
            });
        base.join(bdf.to_string())
    }

    /// Writes one device: attributes, config, links to driver and IOMMU group.
    pub fn device(&mut self, spec: &DeviceSpec) -> io::Result<&mut Self> {
        let dir = self.device_path(spec.bdf, spec.parent);
        std::fs::create_dir_all(&dir)?;
        let w = |name: &str, v: String| std::fs::write(dir.join(name), v);
        w("vendor", format!("0x{:04x}\n", spec.vendor))?;
        w("device", format!("0x{:04x}\n", spec.device))?;
        w("class", format!("0x{:06x}\n", spec.class))?;
        w("subsystem_vendor", format!("0x{:04x}\n", spec.vendor))?;
        w("subsystem_device", "0x0000\n".into())?;
        w("revision", "0xa1\n".into())?;
        w("numa_node", format!("{}\n", spec.numa_node))?;
        w("local_cpulist", "0-1\n".into())?;
        w("driver_override", "(null)\n".into())?;
        w("boot_vga", format!("{}\n", u8::from(spec.boot_vga)))?;
        w("resource", spec.resource.clone())?;
        w("current_link_speed", "16.0 GT/s PCIe\n".into())?;
        w("max_link_speed", "16.0 GT/s PCIe\n".into())?;
        w("current_link_width", "16\n".into())?;
        w("max_link_width", "16\n".into())?;
        std::fs::write(dir.join("config"), &spec.config)?;
        if let Some(r) = &spec.reset_method {
            w("reset_method", format!("{r}\n"))?;
        }
        if let Some(t) = spec.sriov_totalvfs {
            w("sriov_totalvfs", format!("{t}\n"))?;
            w("sriov_numvfs", "0\n".into())?;
        }
        rel_symlink(
            &dir,
            &self.root.join("bus/pci/devices").join(spec.bdf.to_string()),
        )?;
        if let Some(d) = &spec.driver {
            let ddir = self.root.join("bus/pci/drivers").join(d);
            std::fs::create_dir_all(&ddir)?;
            rel_symlink(&ddir, &dir.join("driver"))?;
            rel_symlink(&dir, &ddir.join(spec.bdf.to_string()))?;
        }
        if let Some(g) = spec.iommu_group {
            let gdir = self.root.join("kernel/iommu_groups").join(g.to_string());
            std::fs::create_dir_all(gdir.join("devices"))?;
            if !gdir.join("type").exists() {
                std::fs::write(gdir.join("type"), "DMA\n")?;
                std::fs::write(
                    gdir.join("reserved_regions"),
                    "0x00000000fee00000 0x00000000feefffff msi\n",
                )?;
            }
            rel_symlink(&gdir, &dir.join("iommu_group"))?;
            rel_symlink(&dir, &gdir.join("devices").join(spec.bdf.to_string()))?;
        }
        if let Some(pf) = spec.physfn {
            let pf_dir = self
                .placed
                .iter()
                .find(|(b, _)| *b == pf)
                .map(|(_, d)| d.clone());
            if let Some(pf_dir) = pf_dir {
                rel_symlink(&pf_dir, &dir.join("physfn"))?;
                let n = std::fs::read_dir(&pf_dir)?
                    .filter_map(|e| e.ok())
                    .filter(|e| e.file_name().to_string_lossy().starts_with("virtfn"))
                    .count();
                rel_symlink(&dir, &pf_dir.join(format!("virtfn{n}")))?;
                std::fs::write(pf_dir.join("sriov_numvfs"), format!("{}\n", n + 1))?;
            }
        }
        self.placed.push((spec.bdf, dir));
        Ok(self)
    }
}

/// A host with VT-d (interrupt remapping), vfio modules loaded, and:
/// - group 1: GPU 0000:01:00.0 (nvidia) + its audio function 01:00.1 (snd_hda_intel),
///   behind root port 00:01.0 with ACS enabled (the port is in its own group 0);
/// - group 2: a NIC 0000:02:00.0 bound to vfio-pci already (viable);
/// - group 3: an accelerator 0000:03:00.0 unbound, plus a bridge 00:03.0 in the same group;
/// - group 4: an SR-IOV PF 0000:04:00.0 (mlx5_core) with two VFs 04:00.1/.2 in groups 5/6;
/// - 0000:00:1f.0: the boot VGA, group 7; 0000:00:05.0 with malformed (cyclic) config, group 8.
pub fn iommu_host(root: impl Into<PathBuf>) -> io::Result<TreeBuilder> {
    let b = |s: &str| {
        s.parse::<Bdf>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let mut t = TreeBuilder::new(root)?;
    t.cmdline("BOOT_IMAGE=/vmlinuz intel_iommu=on iommu=pt")?
        .intel_iommu("dmar0", 0xf0_50da)?
        .module("vfio")?
        .module("vfio_iommu_type1")?
        .module("vfio_pci")?
        .driver("vfio-pci")?;
    let acs_on = crate::config::AcsCap::ISOLATION;
    t.device(&DeviceSpec::root_port(b("0000:00:01.0")?, Some(acs_on)).group(0))?;
    let mut gpu = DeviceSpec::endpoint(b("0000:01:00.0")?, 0x10de, 0x2335, 0x030200)
        .driver("nvidia")
        .group(1)
        .parent(b("0000:00:01.0")?);
    gpu.resource = "0x00000000fd000000 0x00000000fdffffff 0x0000000000040200\n0 0 0\n0x0000100000000000 0x0000103fffffffff 0x000000000014220c\n".into();
    t.device(&gpu)?;
    t.device(
        &DeviceSpec::endpoint(b("0000:01:00.1")?, 0x10de, 0x22a3, 0x040300)
            .driver("snd_hda_intel")
            .group(1)
            .parent(b("0000:00:01.0")?),
    )?;
    t.device(
        &DeviceSpec::endpoint(b("0000:02:00.0")?, 0x8086, 0x1572, 0x020000)
            .driver("vfio-pci")
            .group(2),
    )?;
    t.device(&DeviceSpec::root_port(b("0000:00:03.0")?, None).group(3))?;
    t.device(
        &DeviceSpec::endpoint(b("0000:03:00.0")?, 0x1da3, 0x1000, 0x120000)
            .group(3)
            .parent(b("0000:00:03.0")?),
    )?;
    let mut pf = DeviceSpec::endpoint(b("0000:04:00.0")?, 0x15b3, 0x101d, 0x020000)
        .driver("mlx5_core")
        .group(4);
    pf.config = ConfigBuilder::new(0x15b3, 0x101d, 0x020000, 0x80)
        .pcie(0, true, 4, 16)
        .msix(64, 0, 0x2000, 0, 0x3000)
        .sriov(8, 2, 0x101e)
        .ari()
        .build();
    pf.sriov_totalvfs = Some(8);
    t.device(&pf)?;
    for (i, f) in ["0000:04:00.1", "0000:04:00.2"].iter().enumerate() {
        let mut vf = DeviceSpec::endpoint(b(f)?, 0x15b3, 0x101e, 0x020000)
            .driver("mlx5_core")
            .group(5 + i as u32);
        vf.physfn = Some(b("0000:04:00.0")?);
        t.device(&vf)?;
    }
    let mut vga = DeviceSpec::endpoint(b("0000:00:1f.0")?, 0x1a03, 0x2000, 0x030000)
        .driver("ast")
        .group(7);
    vga.boot_vga = true;
    t.device(&vga)?;
    let mut broken = DeviceSpec::endpoint(b("0000:00:05.0")?, 0x1af4, 0x1041, 0x020000).group(8);
    let mut c = ConfigBuilder::new(0x1af4, 0x1041, 0x020000, 0);
    c.power_management(false).msi(0);
    let bytes = c.bytes_mut();
    bytes[0x49] = 0x40; // MSI's next pointer loops back to PM
    broken.config = c.build();
    broken.reset_method = None;
    t.device(&broken)?;
    Ok(t)
}

/// The host of docs/passthrough.md: VT-d with interrupt remapping, the vfio and
/// vfio_iommu_type1 modules loaded but vfio-pci not yet, and IOMMU group 5 holding a GPU
/// 0000:41:00.0 (nvidia), its HDMI audio function 0000:41:00.1 (snd_hda_intel) and the root
/// port 0000:40:01.0 above them (pcieport; no ACS, hence one group). Committed as
/// `tests/fixtures/sysfs/gpu-audio-host`, where the how-to's examples run with
/// `--sysfs-root`.
pub fn gpu_audio_host(root: impl Into<PathBuf>) -> io::Result<TreeBuilder> {
    let b = |s: &str| {
        s.parse::<Bdf>()
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))
    };
    let mut t = TreeBuilder::new(root)?;
    t.cmdline("BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on iommu=pt")?
        .intel_iommu("dmar0", 0xf0_50da)?
        .module("vfio")?
        .module("vfio_iommu_type1")?;
    let port = b("0000:40:01.0")?;
    t.device(&DeviceSpec::root_port(port, None).group(5))?;
    let mut gpu = DeviceSpec::endpoint(b("0000:41:00.0")?, 0x10de, 0x2684, 0x030000)
        .driver("nvidia")
        .group(5)
        .parent(port);
    gpu.resource = "0x00000000fb000000 0x00000000fbffffff 0x0000000000040200\n0 0 0\n0x0000006000000000 0x00000067ffffffff 0x000000000014220c\n".into();
    t.device(&gpu)?;
    t.device(
        &DeviceSpec::endpoint(b("0000:41:00.1")?, 0x10de, 0x22ba, 0x040300)
            .driver("snd_hda_intel")
            .group(5)
            .parent(port),
    )?;
    Ok(t)
}

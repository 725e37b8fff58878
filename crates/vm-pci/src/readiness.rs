//! Passthrough readiness: what must hold before a device can be handed to a VM.
//!
//! Modelled on libvirt's virt-host-validate ("IOMMU support", "IOMMU enabled by kernel")
//! and the kernel's VFIO documentation (group viability, interrupt remapping, ACS).

use std::cell::RefCell;
use std::collections::HashMap;
use std::path::Path;
use std::rc::Rc;

use serde::Serialize;

use crate::bar::format_size;
use crate::config::{AcsCap, CapDetail};
use crate::device::PciDevice;
use crate::error::Result;
use crate::inventory::{GroupMember, Inventory};
use crate::iommu::InterruptRemapping;
use crate::usage::{HostUsage, InUse, ProcRoot};
use crate::Bdf;

/// Every check id, host and device (what `vm-accel bind --allow` may name).
pub const CHECK_IDS: &[&str] = &[
    "iommu_enabled",
    "interrupt_remapping",
    "vfio_modules",
    "endpoint",
    "iommu_group",
    "group_viable",
    "driver",
    "in_use",
    "boot_vga",
    "reset",
    "acs",
    "link",
    "large_bar",
];

/// Failing checks that `vm-accel bind` fixes (a device or group member on a host driver):
/// they make a device not ready, but it stays preparable.
pub const FIXED_BY_BIND: &[&str] = &["driver", "group_viable"];

/// How many devices a message names before it says "and N more": messages stay O(1) in
/// the size of a group.
const MAX_NAMED: usize = 4;

/// `a, b, c, d and 96 more`.
fn name_some<T: std::fmt::Display>(items: &[T]) -> String {
    let mut v: Vec<String> = items
        .iter()
        .take(MAX_NAMED)
        .map(|i| i.to_string())
        .collect();
    if items.len() > MAX_NAMED {
        v.push(format!("and {} more", items.len() - MAX_NAMED));
    }
    v.join("; ")
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
/// How a check came out.
pub enum Level {
    /// Nothing in the way.
    Pass,
    /// Works, with a caveat, or something `vm-accel bind` will fix.
    Warn,
    /// Passthrough is refused until this is fixed.
    Fail,
}

impl std::fmt::Display for Level {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Level::Pass => "PASS",
            Level::Warn => "WARN",
            Level::Fail => "FAIL",
        })
    }
}

/// One readiness check and its outcome, with the reason in words.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Check {
    /// Stable identifier (part of the JSON schema).
    pub id: &'static str,
    /// How it came out.
    pub level: Level,
    /// The reason, in words.
    pub message: String,
}

impl Check {
    fn new(id: &'static str, level: Level, message: impl Into<String>) -> Check {
        Check {
            id,
            level,
            message: message.into(),
        }
    }
}

/// No check failed (warnings allowed).
pub fn all_pass(checks: &[Check]) -> bool {
    checks.iter().all(|c| c.level != Level::Fail)
}

/// A VMM could open the device now: no check failed, so it is on vfio-pci, its group is
/// viable and nothing of the host uses it.
pub fn is_ready(checks: &[Check]) -> bool {
    all_pass(checks)
}

/// `vm-accel bind` could make it ready without touching a device the host uses: the only
/// failures are those binding fixes.
pub fn is_preparable(checks: &[Check]) -> bool {
    checks
        .iter()
        .all(|c| c.level != Level::Fail || FIXED_BY_BIND.contains(&c.id))
}

/// A loaded module shows up in /sys/module. The VFIO modules a passthrough host needs.
const VFIO_MODULES: [&str; 3] = ["vfio", "vfio_iommu_type1", "vfio_pci"];

/// Checks that concern the host as a whole.
pub fn host_checks(inv: &Inventory) -> Vec<Check> {
    let checks = vec![
        iommu_check(inv),
        interrupt_remapping_check(inv),
        vfio_module_check(inv),
    ];
    log_checks("host", &checks);
    checks
}

/// Says at debug level what each check decided (the files behind it are logged by the scan).
fn log_checks(subject: &str, checks: &[Check]) {
    for c in checks {
        log::debug!("{subject}: check {} = {}: {}", c.id, c.level, c.message);
    }
}

fn iommu_check(inv: &Inventory) -> Check {
    let io = &inv.iommu;
    if io.enabled() {
        let units = if io.units.is_empty() {
            "no units listed".to_string()
        } else {
            io.units.join(", ")
        };
        return Check::new(
            "iommu_enabled",
            Level::Pass,
            format!("{} IOMMU groups ({units})", io.group_count),
        );
    }
    let mut why = if io.units.is_empty() {
        "no IOMMU: the kernel registered no IOMMU units (class/iommu is empty) and made no IOMMU groups".to_string()
    } else {
        format!(
            "IOMMU units {:?} exist but the kernel made no IOMMU groups",
            io.units
        )
    };
    if let Some(off) = io.cmdline_flags.iter().find(|f| f.ends_with("=off")) {
        why.push_str(&format!("; the kernel command line has {off}"));
    }
    why.push_str("; enable VT-d / AMD-Vi in firmware and boot with intel_iommu=on (Intel) or amd_iommu=on (AMD)");
    Check::new("iommu_enabled", Level::Fail, why)
}

fn interrupt_remapping_check(inv: &Inventory) -> Check {
    use InterruptRemapping::*;
    let id = "interrupt_remapping";
    match &inv.iommu.interrupt_remapping {
        Enabled(e) => Check::new(id, Level::Pass, format!("enabled ({e})")),
        Supported(e) => Check::new(id, Level::Pass, format!("supported by the IOMMU ({e})")),
        Disabled(e) => Check::new(id, Level::Fail, format!("disabled: {e}; VFIO refuses MSI without it")),
        Unsupported(e) => Check::new(id, Level::Fail, format!("not supported: {e}; VFIO needs vfio_iommu_type1.allow_unsafe_interrupts=1, which lets a guest forge interrupts")),
        Unknown(e) if !inv.iommu.enabled() => Check::new(id, Level::Fail, format!("no IOMMU, so no interrupt remapping ({e})")),
        Unknown(e) => Check::new(id, Level::Warn, format!("could not tell: {e}")),
    }
}

fn vfio_module_check(inv: &Inventory) -> Check {
    let id = "vfio_modules";
    let module_dir = inv.root.module_dir();
    let missing: Vec<&str> = VFIO_MODULES
        .iter()
        .copied()
        .filter(|m| !module_dir.join(m).exists())
        .collect();
    if missing.is_empty() {
        return Check::new(
            id,
            Level::Pass,
            "vfio, vfio_iommu_type1 and vfio_pci are loaded",
        );
    }
    if !module_dir.exists() {
        return Check::new(
            id,
            Level::Warn,
            "cannot tell: this sysfs root has no module/ directory (a capture without module state?)",
        );
    }
    match inv.kernel_release.as_deref().filter(|_| inv.root.is_live()) {
        Some(rel) if module_available(rel, "vfio-pci") => Check::new(
            id,
            Level::Warn,
            format!("{} not loaded but installed for {rel}: `modprobe vfio-pci` (vm-accel bind loads it)", missing.join(", ")),
        ),
        Some(rel) => Check::new(id, Level::Fail, format!("vfio-pci is neither loaded nor installed for kernel {rel}")),
        None => Check::new(id, Level::Warn, format!("{} not loaded (module files not checked for this root)", missing.join(", "))),
    }
}

/// Whether `/lib/modules/<release>` has the module (as a file or built in).
fn module_available(release: &str, module: &str) -> bool {
    let base = Path::new("/lib/modules").join(release);
    let underscored = module.replace('-', "_");
    ["modules.dep", "modules.builtin"].iter().any(|f| {
        // modules.dep is a few hundred KiB; 16 MiB bounds a corrupt one.
        crate::sysfs::read_prefix(&base.join(f), 16 << 20).is_ok_and(|t| {
            let t = String::from_utf8_lossy(&t);
            t.lines().any(|l| {
                let path = l.split(':').next().unwrap_or("");
                let file = path.rsplit('/').next().unwrap_or("");
                let stem = file.split('.').next().unwrap_or("");
                stem == module || stem == underscored
            })
        })
    })
}

/// Checks for one device. `Err` only when the device is not in the inventory. Checking
/// many devices: make one [`Readiness`] and ask it, so host-wide evidence is gathered once.
pub fn device_checks(inv: &Inventory, bdf: Bdf) -> Result<Vec<Check>> {
    Readiness::new(inv).device_checks(bdf)
}

/// What a group's members amount to, computed once per group however many of its devices
/// are checked (so `check` on a group of N devices is O(N), not O(N^2)).
#[derive(Debug)]
struct GroupFacts {
    /// Endpoints on a host driver (not vfio-pci, not pci-stub, not unbound).
    on_host: Vec<GroupMember>,
    boot_vga: Option<Bdf>,
    /// Evidence that the host uses any endpoint of the group.
    in_use: Vec<InUse>,
}

/// Readiness of the devices of one inventory, with the host's usage evidence gathered once.
#[derive(Debug)]
pub struct Readiness<'a> {
    inv: &'a Inventory,
    usage: HostUsage,
    groups: RefCell<HashMap<u32, Rc<GroupFacts>>>,
}

impl<'a> Readiness<'a> {
    /// Evidence from the proc root that describes `inv`'s host ([`ProcRoot::for_sysfs`]).
    pub fn new(inv: &'a Inventory) -> Readiness<'a> {
        Readiness::with_proc(inv, ProcRoot::for_sysfs(&inv.root).as_ref())
    }

    /// Evidence from `proc` (`None`: none; the `in_use` check then says it could not tell).
    pub fn with_proc(inv: &'a Inventory, proc: Option<&ProcRoot>) -> Readiness<'a> {
        Readiness {
            inv,
            usage: HostUsage::gather(&inv.root, proc),
            groups: RefCell::new(HashMap::new()),
        }
    }

    /// The host-wide evidence gathered for these checks.
    pub fn usage(&self) -> &HostUsage {
        &self.usage
    }

    fn group_facts(&self, gid: u32) -> Option<Rc<GroupFacts>> {
        if let Some(f) = self.groups.borrow().get(&gid) {
            return Some(f.clone());
        }
        let group = self.inv.groups.get(&gid)?;
        let endpoints: Vec<&PciDevice> = group
            .devices
            .iter()
            .filter_map(|b| self.inv.device(*b))
            .filter(|d| !d.is_bridge())
            .collect();
        let facts = Rc::new(GroupFacts {
            on_host: endpoints
                .iter()
                .filter(|d| on_host_driver(d))
                .map(|d| GroupMember {
                    bdf: d.bdf,
                    driver: d.driver.clone(),
                })
                .collect(),
            boot_vga: endpoints.iter().find(|d| d.boot_vga).map(|d| d.bdf),
            in_use: {
                // /dev/vfio/N belongs to every member: say it once.
                let mut seen = std::collections::HashSet::new();
                endpoints
                    .iter()
                    .flat_map(|d| self.usage.of_device(d))
                    .filter(|u| seen.insert(u.message.clone()))
                    .collect()
            },
        });
        self.groups.borrow_mut().insert(gid, facts.clone());
        Some(facts)
    }

    /// What the host uses of `bdf` and of the devices `vm-accel bind` would move with it
    /// (its IOMMU group's endpoints).
    pub fn in_use(&self, bdf: Bdf) -> Vec<InUse> {
        let Some(dev) = self.inv.device(bdf) else {
            return Vec::new();
        };
        match dev.iommu_group.and_then(|g| self.group_facts(g)) {
            Some(f) => f.in_use.clone(),
            None => self.usage.of_device(dev),
        }
    }

    /// Checks for one device. `Err` only when the device is not in the inventory (or could
    /// not be read: the error names the file).
    pub fn device_checks(&self, bdf: Bdf) -> Result<Vec<Check>> {
        let inv = self.inv;
        let dev = inv.require(bdf)?;
        let facts = dev.iommu_group.and_then(|g| self.group_facts(g));
        let mut checks = Vec::new();
        if dev.is_bridge() {
            checks.push(Check::new(
                "endpoint",
                Level::Fail,
                format!(
                    "{} is a bridge ({}); bridges are not passed through",
                    bdf, dev.class_name
                ),
            ));
        }
        checks.extend(group_checks(inv, dev, facts.as_deref()));
        checks.push(driver_check(dev));
        checks.push(self.in_use_check(dev, facts.as_deref()));
        checks.push(boot_vga_check(dev, facts.as_deref()));
        checks.push(reset_check(
            dev,
            lists_reset_methods(inv.kernel_release.as_deref()),
        ));
        checks.push(acs_check(inv, dev));
        if let Some(link) = &dev.link {
            if link.is_degraded() {
                checks.push(Check::new(
                    "link",
                    Level::Warn,
                    format!(
                        "link trained at {} x{} below its max {} x{}",
                        link.current_speed.as_deref().unwrap_or("?"),
                        link.current_width.unwrap_or(0),
                        link.max_speed.as_deref().unwrap_or("?"),
                        link.max_width.unwrap_or(0)
                    ),
                ));
            }
        }
        if let Some(bar) = dev.largest_bar().filter(|b| b.size >= 64 << 30) {
            checks.push(Check::new(
                "large_bar",
                Level::Warn,
                format!("BAR{} is {}: the VMM must place it in a 64-bit MMIO window at least that large, and mapping it is slow without huge-page alignment", bar.index, format_size(bar.size)),
            ));
        }
        log_checks(&bdf.to_string(), &checks);
        Ok(checks)
    }

    fn in_use_check(&self, dev: &PciDevice, facts: Option<&GroupFacts>) -> Check {
        let id = "in_use";
        let evidence = match facts {
            Some(f) => f.in_use.clone(),
            None => self.usage.of_device(dev),
        };
        if !evidence.is_empty() {
            return Check::new(
                id,
                Level::Fail,
                format!(
                    "the host uses {} or its IOMMU group: {}; binding would take it away",
                    dev.bdf,
                    name_some(&evidence)
                ),
            );
        }
        let blind = self.usage.blind_spots();
        if blind.is_empty() {
            Check::new(
                id,
                Level::Pass,
                "no mounts, swap, holders, addressed interfaces, console or open device files on it or its group",
            )
        } else {
            Check::new(
                id,
                Level::Warn,
                format!("no use found, but {}", blind.join("; ")),
            )
        }
    }
}

/// Bound to a driver that is neither vfio-pci nor pci-stub (which VFIO accepts in a group).
fn on_host_driver(d: &PciDevice) -> bool {
    !matches!(
        d.driver.as_deref(),
        None | Some(crate::VFIO_PCI_DRIVER) | Some("pci-stub")
    )
}

fn group_checks(inv: &Inventory, dev: &PciDevice, facts: Option<&GroupFacts>) -> Vec<Check> {
    let Some(gid) = dev.iommu_group else {
        return vec![Check::new(
            "iommu_group",
            Level::Fail,
            format!(
                "{} is in no IOMMU group: without an IOMMU it cannot be isolated from the host",
                dev.bdf
            ),
        )];
    };
    let (Some(group), Some(facts)) = (inv.groups.get(&gid), facts) else {
        return vec![Check::new(
            "iommu_group",
            Level::Fail,
            format!(
                "{} names group {gid}, which kernel/iommu_groups lacks",
                dev.bdf
            ),
        )];
    };
    if group.devices.binary_search(&dev.bdf).is_err() {
        return vec![Check::new(
            "iommu_group",
            Level::Fail,
            format!(
                "{} names group {gid}, but kernel/iommu_groups/{gid}/devices does not list it: the tree is inconsistent",
                dev.bdf
            ),
        )];
    }
    let mut v = vec![Check::new(
        "iommu_group",
        Level::Pass,
        format!(
            "group {gid} ({} device{})",
            group.devices.len(),
            if group.devices.len() == 1 { "" } else { "s" }
        ),
    )];
    let others: Vec<&GroupMember> = facts.on_host.iter().filter(|m| m.bdf != dev.bdf).collect();
    v.push(if others.is_empty() {
        Check::new(
            "group_viable",
            Level::Pass,
            format!("every other endpoint of group {gid} is on vfio-pci or has no driver"),
        )
    } else {
        let list: Vec<String> = others
            .iter()
            .map(|m| {
                let used = facts.in_use.iter().any(|u| u.bdf == m.bdf);
                format!(
                    "{} on {} ({})",
                    m.bdf,
                    m.driver.as_deref().unwrap_or("-"),
                    if used { "in use" } else { "not in use" }
                )
            })
            .take(MAX_NAMED + 1)
            .collect();
        let named = if others.len() > MAX_NAMED {
            let mut l = list[..MAX_NAMED].to_vec();
            l.push(format!("and {} more", others.len() - MAX_NAMED));
            l.join(", ")
        } else {
            list.join(", ")
        };
        Check::new(
            "group_viable",
            Level::Fail,
            format!(
                "group {gid} is not viable: {named} on host drivers; `vm-accel bind {}` would move {} to vfio-pci",
                dev.bdf,
                if others.len() == 1 { "it" } else { "them" }
            ),
        )
    });
    v
}

fn driver_check(dev: &PciDevice) -> Check {
    match dev.driver.as_deref() {
        Some(crate::VFIO_PCI_DRIVER) => Check::new("driver", Level::Pass, "bound to vfio-pci"),
        None => Check::new(
            "driver",
            Level::Fail,
            format!(
                "no driver bound: a VMM opens it through vfio-pci; `vm-accel bind {}` binds it",
                dev.bdf
            ),
        ),
        Some(d) => Check::new(
            "driver",
            Level::Fail,
            format!(
                "bound to host driver {d}; `vm-accel bind {}` moves it to vfio-pci",
                dev.bdf
            ),
        ),
    }
}

fn boot_vga_check(dev: &PciDevice, facts: Option<&GroupFacts>) -> Check {
    if dev.boot_vga {
        return Check::new(
            "boot_vga",
            Level::Fail,
            format!(
                "{} is the boot VGA device: the host console uses it",
                dev.bdf
            ),
        );
    }
    if let Some(c) = facts.and_then(|f| f.boot_vga) {
        return Check::new(
            "boot_vga",
            Level::Fail,
            format!(
                "{} shares its IOMMU group with the boot VGA device {c}",
                dev.bdf
            ),
        );
    }
    Check::new("boot_vga", Level::Pass, "not the boot VGA device")
}

/// Whether this kernel has the `reset_method` attribute (Linux 5.15+). Where it does, a
/// device without the attribute has no reset method at all: the kernel creates it only
/// when there is one. `None`: release unknown.
fn lists_reset_methods(release: Option<&str>) -> Option<bool> {
    let mut parts = release?.split(|c: char| !c.is_ascii_digit());
    let major: u32 = parts.next()?.parse().ok()?;
    let minor: u32 = parts.next()?.parse().ok()?;
    Some((major, minor) >= (5, 15))
}

fn reset_check(dev: &PciDevice, kernel_lists_methods: Option<bool>) -> Check {
    let id = "reset";
    if !dev.reset_methods.is_empty() {
        let m = dev.reset_methods.join(" ");
        if dev.reset_methods.iter().all(|r| r == "bus") {
            return Check::new(id, Level::Warn, format!("only a secondary bus reset ({m}): it resets every function behind the same bridge"));
        }
        return Check::new(id, Level::Pass, format!("reset methods: {m}"));
    }
    if kernel_lists_methods == Some(true) {
        return Check::new(
            id,
            Level::Fail,
            "no reset method: the kernel lists none for this device (no reset_method attribute), so it cannot be reset between tenants",
        );
    }
    // Kernels before 5.15 have no reset_method attribute: judge from capabilities.
    let caps = &dev.capabilities;
    if caps.pcie().is_some_and(|p| p.flr) {
        return Check::new(
            id,
            Level::Pass,
            "function level reset (from the PCIe capability)",
        );
    }
    let pm_reset = caps
        .standard
        .iter()
        .any(|c| matches!(&c.detail, CapDetail::PowerManagement(pm) if !pm.no_soft_reset));
    if pm_reset {
        return Check::new(
            id,
            Level::Pass,
            "power-management (D3hot) reset (from the PM capability)",
        );
    }
    if dev.config_len < crate::config::LEGACY_LEN {
        return Check::new(
            id,
            Level::Warn,
            "unknown: this kernel has no reset_method attribute and the config space is not readable (run as root)",
        );
    }
    Check::new(
        id,
        Level::Fail,
        "no reset method: the device cannot be reset between tenants",
    )
}

fn acs_check(inv: &Inventory, dev: &PciDevice) -> Check {
    let id = "acs";
    let path = dev.upstream_path();
    let ports: Vec<&PciDevice> = path
        .iter()
        .filter_map(|b| inv.device(*b))
        .filter(|p| {
            p.capabilities
                .pcie()
                .is_some_and(|c| c.port_type.is_downstream_port())
                || p.config_len < crate::config::LEGACY_LEN
        })
        .collect();
    if ports.is_empty() {
        return Check::new(
            id,
            Level::Pass,
            "on a root bus: no PCIe ports upstream to leak peer-to-peer traffic",
        );
    }
    let mut problems = Vec::new();
    for p in &ports {
        if p.config_len < crate::config::LEGACY_LEN {
            problems.push(format!("{}: config space unreadable (run as root)", p.bdf));
            continue;
        }
        match p.capabilities.acs() {
            None => problems.push(format!("{}: no ACS capability", p.bdf)),
            Some(acs) if acs.missing_isolation() != 0 => problems.push(format!(
                "{}: ACS {} not enabled",
                p.bdf,
                AcsCap::control_names(acs.missing_isolation()).join("/")
            )),
            Some(_) => {}
        }
    }
    if problems.is_empty() {
        let names: Vec<String> = ports.iter().map(|p| p.bdf.to_string()).collect();
        Check::new(
            id,
            Level::Pass,
            format!(
                "ACS isolation enabled on upstream ports {}",
                names.join(", ")
            ),
        )
    } else {
        Check::new(
            id,
            Level::Warn,
            format!(
                "peer-to-peer isolation not assured upstream: {}",
                problems.join("; ")
            ),
        )
    }
}

#[cfg(test)]
mod tests {
    use super::lists_reset_methods;

    #[test]
    fn reset_method_attribute_exists_from_5_15() {
        assert_eq!(lists_reset_methods(Some("6.18.44-fc-v669")), Some(true));
        assert_eq!(lists_reset_methods(Some("5.15.0-91-generic")), Some(true));
        assert_eq!(lists_reset_methods(Some("5.10.0")), Some(false));
        assert_eq!(lists_reset_methods(Some("4.19")), Some(false));
        assert_eq!(lists_reset_methods(Some("garbage")), None);
        assert_eq!(lists_reset_methods(None), None);
    }
}

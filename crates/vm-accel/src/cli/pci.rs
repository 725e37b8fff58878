//! `vm-accel list|show|check`: discovery and readiness, as tables or JSON.

use std::process::ExitCode;

use serde::Serialize;

use std::io::Write;
use vm_pci::bar::format_size;
use vm_pci::config::{CapDetail, ExtDetail};

use vm_pci::readiness::{all_pass, host_checks, is_preparable, is_ready};
use vm_pci::{
    Bdf, Check, ConfigRead, InUse, Inventory, PciDevice, Readiness, SysfsRoot, Viability,
};

use super::table::clean;
use super::{print_json, table, warn_line, CmdResult, Global};

#[derive(Debug, clap::Args)]
pub struct ListArgs {
    /// Only accelerators (display, 3D, processing-accelerator classes).
    #[arg(long)]
    pub accelerators: bool,
    /// Also ask the CUDA driver which GPUs reach which (NVLink or PCIe); costs a driver
    /// start, so it is not the default.
    #[arg(long)]
    pub topology: bool,
}

#[derive(Debug, clap::Args)]
pub struct ShowArgs {
    /// Device address, e.g. 0000:00:06.0.
    pub bdf: Bdf,
    /// Also ask the CUDA driver which GPUs this one reaches (NVLink or PCIe).
    #[arg(long)]
    pub topology: bool,
}

/// `gpu_topology` of `list --json --topology` / `show --json --topology`: the topology, or
/// why the driver could not give it.
#[derive(Debug, Serialize)]
struct TopologyField {
    #[serde(flatten)]
    topology: Option<super::cuda::Topology>,
    error: Option<String>,
}

fn topology_field(g: &Global, wanted: bool) -> Option<TopologyField> {
    wanted.then(|| match super::cuda::gpu_topology(g) {
        Ok(t) => TopologyField {
            topology: Some(t),
            error: None,
        },
        Err(e) => TopologyField {
            topology: None,
            error: Some(e),
        },
    })
}

fn print_topology_field(t: Option<TopologyField>) -> anyhow::Result<()> {
    match t {
        Some(TopologyField {
            topology: Some(t), ..
        }) => super::cuda::print_topology(&t)?,
        Some(TopologyField { error: Some(e), .. }) => {
            outln!("GPU topology: unavailable: {e}")
        }
        _ => {}
    }
    Ok(())
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// Only this device (default: every accelerator).
    pub bdf: Option<Bdf>,
}

fn scan(g: &Global) -> anyhow::Result<Inventory> {
    Ok(Inventory::scan(&SysfsRoot::new(&g.sysfs_root))?)
}

/// One row of `list --json` (schema `vm-accel.list/v1`, docs/json-schema.md).
#[derive(Debug, Serialize)]
struct ListEntry<'a> {
    bdf: Bdf,
    vendor_id: String,
    device_id: String,
    vendor_name: Option<&'a str>,
    device_name: Option<&'a str>,
    class: String,
    class_name: &'a str,
    accelerator: bool,
    driver: Option<&'a str>,
    iommu_group: Option<u32>,
    numa_node: Option<u32>,
    largest_bar: Option<BarSummary>,
}

#[derive(Debug, Serialize)]
struct BarSummary {
    index: usize,
    size: u64,
}

#[derive(Debug, Serialize)]
struct ListOutput<'a> {
    schema: &'static str,
    devices: Vec<ListEntry<'a>>,
    unreadable: &'a [vm_pci::Unreadable],
    /// Only with `--topology`.
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_topology: Option<TopologyField>,
}

fn list_entry(d: &PciDevice) -> ListEntry<'_> {
    ListEntry {
        bdf: d.bdf,
        vendor_id: format!("{:04x}", d.vendor_id),
        device_id: format!("{:04x}", d.device_id),
        vendor_name: d.vendor_name,
        device_name: d.device_name,
        class: format!("{:06x}", d.class.raw()),
        class_name: d.class_name,
        accelerator: d.is_accelerator(),
        driver: d.driver.as_deref(),
        iommu_group: d.iommu_group,
        numa_node: d.numa_node,
        largest_bar: d.largest_bar().map(|b| BarSummary {
            index: b.index,
            size: b.size,
        }),
    }
}

/// `NVIDIA Corporation GH100 [H200 SXM 141GB]`, with lspci's fallbacks for unknown ids.
fn display_name(d: &PciDevice) -> String {
    let vendor = d
        .vendor_name
        .map_or_else(|| format!("Vendor {:04x}", d.vendor_id), str::to_string);
    let device = d
        .device_name
        .map_or_else(|| format!("Device {:04x}", d.device_id), str::to_string);
    format!("{vendor} {device}")
}

fn opt<T: ToString>(v: Option<T>) -> String {
    v.map_or_else(|| "-".to_string(), |v| v.to_string())
}

pub fn list(g: &Global, a: ListArgs) -> CmdResult {
    // The list shows only what a summary scan reads: no config space, no IOMMU groups
    // (docs/benchmarks.md, bench-list).
    let inv = Inventory::scan_with(&SysfsRoot::new(&g.sysfs_root), ConfigRead::Summary)?;
    let devices: Vec<&PciDevice> = inv
        .devices_accelerators_first()
        .into_iter()
        .filter(|d| !a.accelerators || d.is_accelerator())
        .collect();
    if g.json {
        print_json(&ListOutput {
            schema: "vm-accel.list/v1",
            devices: devices.iter().map(|d| list_entry(d)).collect(),
            unreadable: &inv.unreadable,
            gpu_topology: topology_field(g, a.topology),
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let rows: Vec<Vec<String>> = devices
        .iter()
        .map(|d| {
            vec![
                d.bdf.to_string(),
                format!("{:04x}:{:04x}", d.vendor_id, d.device_id),
                d.class_name.to_string(),
                opt(d.driver.as_deref()),
                opt(d.iommu_group),
                opt(d.numa_node),
                d.largest_bar().map_or("-".into(), |b| {
                    format!("BAR{} {}", b.index, format_size(b.size))
                }),
                display_name(d),
            ]
        })
        .collect();
    std::io::stdout().lock().write_all(
        table::render(
            &[
                "BDF",
                "IDS",
                "CLASS",
                "DRIVER",
                "GROUP",
                "NUMA",
                "LARGEST BAR",
                "NAME",
            ],
            &rows,
        )
        .as_bytes(),
    )?;
    for u in &inv.unreadable {
        warn_line(format_args!(
            "warning: {} could not be read: {}",
            clean(&u.entry),
            clean(&u.error)
        ));
    }
    print_topology_field(topology_field(g, a.topology))?;
    Ok(ExitCode::SUCCESS)
}

/// `show --json` (schema `vm-accel.show/v2`).
#[derive(Debug, Serialize)]
struct ShowOutput<'a> {
    schema: &'static str,
    device: &'a PciDevice,
    /// The device's IOMMU group in full (`device.iommu_group` is its number).
    group: Option<&'a vm_pci::IommuGroup>,
    group_viability: Option<Viability>,
    checks: Vec<Check>,
    /// Only with `--topology`.
    #[serde(skip_serializing_if = "Option::is_none")]
    gpu_topology: Option<TopologyField>,
}

pub fn show(g: &Global, a: ShowArgs) -> CmdResult {
    let inv = scan(g)?;
    let d = inv.require(a.bdf)?;
    let group = inv.group_of(a.bdf);
    let checks = Readiness::new(&inv).device_checks(a.bdf)?;
    if g.json {
        print_json(&ShowOutput {
            schema: "vm-accel.show/v2",
            device: d,
            group,
            group_viability: group.map(|gr| inv.group_viability(gr)),
            checks,
            gpu_topology: topology_field(g, a.topology),
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    std::io::stdout()
        .lock()
        .write_all(render_show(&inv, d, &checks).as_bytes())?;
    print_topology_field(topology_field(g, a.topology))?;
    Ok(ExitCode::SUCCESS)
}

fn render_show(inv: &Inventory, d: &PciDevice, checks: &[Check]) -> String {
    use std::fmt::Write;
    let mut s = String::new();
    let _ = writeln!(
        s,
        "{} {} [{:04x}:{:04x}]",
        d.bdf,
        display_name(d),
        d.vendor_id,
        d.device_id
    );
    let kv = |s: &mut String, k: &str, v: String| {
        let _ = writeln!(s, "  {k:<18} {}", clean(&v));
    };
    kv(
        &mut s,
        "class",
        format!(
            "{} [{:06x}] ({:?})",
            d.class_name,
            d.class.raw(),
            d.class_kind
        ),
    );
    kv(
        &mut s,
        "revision",
        opt(d.revision.map(|r| format!("{r:02x}"))),
    );
    let sub = match (d.subsystem_vendor_id, d.subsystem_device_id) {
        (Some(v), Some(dd)) => format!(
            "{v:04x}:{dd:04x}{}",
            d.subsystem_name
                .map(|n| format!(" {n}"))
                .unwrap_or_default()
        ),
        _ => "-".into(),
    };
    kv(&mut s, "subsystem", sub);
    kv(&mut s, "driver", opt(d.driver.as_deref()));
    kv(&mut s, "driver_override", opt(d.driver_override.as_deref()));
    kv(&mut s, "iommu group", opt(d.iommu_group));
    kv(&mut s, "numa node", opt(d.numa_node));
    kv(&mut s, "local cpus", opt(d.local_cpus.as_deref()));
    if let Some(l) = &d.link {
        kv(
            &mut s,
            "link",
            format!(
                "{} x{} (max {} x{}){}",
                opt(l.current_speed.as_deref()),
                opt(l.current_width),
                opt(l.max_speed.as_deref()),
                opt(l.max_width),
                if l.is_degraded() { " DEGRADED" } else { "" }
            ),
        );
    }
    kv(
        &mut s,
        "reset methods",
        if d.reset_methods.is_empty() {
            "-".into()
        } else {
            d.reset_methods.join(" ")
        },
    );
    kv(&mut s, "boot vga", d.boot_vga.to_string());
    if let Some(pf) = d.physfn {
        kv(&mut s, "sr-iov pf", pf.to_string());
    }
    if let Some(sr) = &d.sriov {
        kv(
            &mut s,
            "sr-iov",
            format!("{} of {} VFs enabled", sr.num_vfs, sr.total_vfs),
        );
        for vf in &sr.vfs {
            kv(&mut s, "  vf", vf.to_string());
        }
    }
    let _ = writeln!(s, "  BARs:");
    for b in d.bars.iter().chain(d.rom.iter()).chain(d.vf_bars.iter()) {
        let what = match b.index {
            0..=5 => format!("BAR{}", b.index),
            6 => "ROM".into(),
            i => format!("VF BAR{}", i - 7),
        };
        let _ = writeln!(
            s,
            "    {what:<8} {:#018x} size {:>6} {:?}{}{}{}",
            b.address,
            format_size(b.size),
            b.space,
            if b.is_64bit { " 64-bit" } else { "" },
            if b.prefetchable { " prefetchable" } else { "" },
            if b.disabled { " disabled" } else { "" }
        );
    }
    let caps = &d.capabilities;
    if d.config_len < vm_pci::config::LEGACY_LEN {
        let _ = writeln!(
            s,
            "  capabilities: config space has {} bytes here (run as root to read all)",
            d.config_len
        );
    } else {
        let _ = writeln!(s, "  capabilities:");
        for c in &caps.standard {
            let _ = writeln!(
                s,
                "    [{:03x}] {}{}",
                c.offset,
                c.name(),
                describe_std(&c.detail)
            );
        }
        for c in &caps.extended {
            let _ = writeln!(
                s,
                "    [{:03x}] {} v{}{}",
                c.offset,
                c.name(),
                c.version,
                describe_ext(&c.detail)
            );
        }
        for w in &caps.warnings {
            let _ = writeln!(s, "    warning: {}", clean(w));
        }
    }
    if let Some(gr) = inv.group_of(d.bdf) {
        let members: Vec<String> = gr.devices.iter().map(|b| b.to_string()).collect();
        let _ = writeln!(
            s,
            "  iommu group {}: {} (type {})",
            gr.id,
            members.join(", "),
            opt(gr.kind.as_deref())
        );
        for r in &gr.reserved_regions {
            let _ = writeln!(s, "    reserved {:#x}-{:#x} {}", r.start, r.end, r.kind);
        }
    }
    let _ = writeln!(s, "  passthrough readiness:");
    for c in checks {
        let _ = writeln!(s, "    {:<4} {:<16} {}", c.level, c.id, clean(&c.message));
    }
    s
}

fn describe_std(d: &CapDetail) -> String {
    match d {
        CapDetail::PowerManagement(p) => format!(
            ": version {}, D{}{}",
            p.version,
            p.state,
            if p.no_soft_reset { ", NoSoftRst" } else { "" }
        ),
        CapDetail::Msi(m) => format!(
            ": {} vector(s), {}{}{}",
            m.vectors,
            if m.is_64bit { "64-bit" } else { "32-bit" },
            if m.per_vector_mask { ", maskable" } else { "" },
            if m.enabled { ", enabled" } else { "" }
        ),
        CapDetail::Msix(m) => format!(
            ": {} vectors, table BAR{}+{:#x}, PBA BAR{}+{:#x}{}",
            m.table_size,
            m.table.bar,
            m.table.offset,
            m.pba.bar,
            m.pba.offset,
            if m.enabled { ", enabled" } else { "" }
        ),
        CapDetail::Pcie(p) => {
            let link = match (p.link_gen.and_then(vm_pci::config::gen_speed), p.link_width) {
                (Some(sp), Some(w)) => format!(", link {sp} x{w}"),
                _ => String::new(),
            };
            format!(
                ": v{} {:?}{}{}",
                p.version,
                p.port_type,
                if p.flr { ", FLR" } else { "" },
                link
            )
        }
        CapDetail::Other => String::new(),
    }
}

fn describe_ext(d: &ExtDetail) -> String {
    match d {
        ExtDetail::Acs(a) => format!(
            ": control {:#06x} [{}]",
            a.control,
            vm_pci::config::AcsCap::control_names(a.control).join(" ")
        ),
        ExtDetail::Sriov(s) => format!(
            ": {} of {} VFs, VF device {:04x}",
            s.num_vfs, s.total_vfs, s.vf_device_id
        ),
        ExtDetail::ResizableBar { bars } => {
            let v: Vec<String> = bars
                .iter()
                .map(|b| format!("BAR{} {}", b.bar, format_size(b.current_size)))
                .collect();
            format!(": {}", v.join(", "))
        }
        ExtDetail::Ari { next_function } => format!(": next function {next_function}"),
        ExtDetail::Dvsec {
            vendor,
            revision,
            dvsec_id,
        } => format!(": vendor {vendor:04x} id {dvsec_id:#x} rev {revision}"),
        ExtDetail::Vsec { vsec_id, revision } => format!(": id {vsec_id:#x} rev {revision}"),
        ExtDetail::Aer {
            uncorrectable_status,
            correctable_status,
        } => {
            format!(
                ": uncorrectable {uncorrectable_status:#x}, correctable {correctable_status:#x}"
            )
        }
        ExtDetail::SerialNumber { serial } => format!(": {serial:016x}"),
        ExtDetail::Other => String::new(),
    }
}

/// `check --json` (schema `vm-accel.check/v1`).
#[derive(Debug, Serialize)]
struct CheckOutput<'a> {
    schema: &'static str,
    /// A VMM could open every listed device now (and the host checks pass).
    ready: bool,
    /// `vm-accel bind` could make every listed device ready without taking a device the
    /// host uses.
    preparable: bool,
    host: Vec<Check>,
    devices: Vec<DeviceReadiness>,
    /// Devices that may be accelerators but could not be read: never "ready".
    unreadable: Vec<&'a vm_pci::Unreadable>,
}

#[derive(Debug, Serialize)]
struct DeviceReadiness {
    bdf: Bdf,
    name: String,
    ready: bool,
    preparable: bool,
    /// What the host uses of the device and of its IOMMU group.
    in_use: Vec<InUse>,
    checks: Vec<Check>,
}

pub fn check(g: &Global, a: CheckArgs) -> CmdResult {
    let inv = scan(g)?;
    let targets: Vec<Bdf> = match a.bdf {
        Some(b) => vec![inv.require(b)?.bdf],
        None => inv
            .devices
            .iter()
            .filter(|d| d.is_accelerator())
            .map(|d| d.bdf)
            .collect(),
    };
    let unreadable: Vec<&vm_pci::Unreadable> = match a.bdf {
        Some(_) => Vec::new(),
        None => inv
            .unreadable
            .iter()
            .filter(|u| u.maybe_accelerator())
            .collect(),
    };
    let host = host_checks(&inv);
    // One evidence scan (mounts, /proc/*/fd...) and one pass per group, however many
    // devices: O(N) in the devices checked.
    let readiness = Readiness::new(&inv);
    let mut devices = Vec::new();
    for bdf in targets {
        let checks = readiness.device_checks(bdf)?;
        let name = inv.device(bdf).map(display_name).unwrap_or_default();
        devices.push(DeviceReadiness {
            bdf,
            name,
            ready: is_ready(&checks),
            preparable: is_preparable(&checks),
            in_use: readiness.in_use(bdf),
            checks,
        });
    }
    let host_ok = all_pass(&host);
    let ready = host_ok && unreadable.is_empty() && devices.iter().all(|d| d.ready);
    let preparable = host_ok && unreadable.is_empty() && devices.iter().all(|d| d.preparable);
    if g.json {
        print_json(&CheckOutput {
            schema: "vm-accel.check/v1",
            ready,
            preparable,
            host,
            devices,
            unreadable,
        })?;
    } else {
        let mut out = std::io::BufWriter::new(std::io::stdout().lock());
        writeln!(out, "host ({}):", g.sysfs_root.display())?;
        for c in &host {
            writeln!(out, "  {:<4} {:<20} {}", c.level, c.id, clean(&c.message))?;
        }
        for u in &unreadable {
            writeln!(out, "{} — UNREADABLE: {}", clean(&u.entry), clean(&u.error))?;
        }
        if devices.is_empty() && unreadable.is_empty() {
            writeln!(
                out,
                "no accelerators found (name a device: vm-accel check BDF)"
            )?;
        }
        for d in &devices {
            let state = if d.ready {
                "ready"
            } else if d.preparable {
                "NOT READY (`vm-accel bind` can prepare it)"
            } else {
                "NOT READY"
            };
            writeln!(out, "{} {} — {state}", d.bdf, d.name)?;
            for c in &d.checks {
                writeln!(out, "  {:<4} {:<20} {}", c.level, c.id, clean(&c.message))?;
            }
        }
        let result = if ready {
            "result: ready for passthrough"
        } else if !unreadable.is_empty() {
            "result: not ready (a device could not be read)"
        } else if preparable {
            "result: not ready; `vm-accel bind` can prepare (see FAIL lines)"
        } else {
            "result: not ready (see FAIL lines)"
        };
        writeln!(out, "{result}")?;
        out.flush()?;
    }
    Ok(if ready {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

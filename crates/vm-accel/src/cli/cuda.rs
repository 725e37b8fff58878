//! `vm-accel cuda info|check`: CUDA devices (joinable with `list` by PCI address) and the
//! GPU health check of vm_cuda::health.
//!
//! Exit codes: 0 = ok / healthy, 1 = unhealthy (a check failed), 2 = could not run (no
//! driver, no GPU, built without the `cuda` feature, bad arguments), 3 = busy (the GPU is
//! locked by another check, or shared with other processes while a check came out slow).
//! JSON schemas: `vm-accel.cuda-info/v2`, `vm-accel.cuda-check/v2`,
//! `vm-accel.cuda-check-all/v2` (docs/json-schema.md, docs/cuda.md).

use std::path::PathBuf;
use std::process::ExitCode;

use vm_cuda::all_gpus::{self, AllReport};
use vm_cuda::health::{self, Exclusive, HealthOptions, HealthReport, Verdict};
use vm_cuda::sharing::Wait;
use vm_cuda::{Device, DeviceInfo, PeerLink};

use super::{print_json, CmdResult, Global};

#[derive(Debug, clap::Subcommand)]
pub enum CudaCommand {
    /// List CUDA devices: name, PCI address, UUID, memory, compute capability, peak bandwidth.
    Info,
    /// Run the GPU health check (exit 1 unhealthy, 2 cannot run, 3 busy).
    Check(CheckArgs),
}

/// Exit code of a busy GPU (locked by another check, or shared while a check was slow).
pub const EXIT_BUSY: u8 = 3;

/// `--device`: a CUDA ordinal, or a PCI address (what every other vm-accel command takes;
/// CUDA numbers GPUs in its own order, not PCI order).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeviceArg {
    /// A CUDA device ordinal.
    Ordinal(u32),
    /// The GPU's PCI function.
    Pci(vm_pci::Bdf),
}

impl std::str::FromStr for DeviceArg {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        if let Ok(n) = s.parse() {
            return Ok(Self::Ordinal(n));
        }
        s.parse().map(Self::Pci).map_err(|e| {
            format!("{e} (expected a CUDA device ordinal or a PCI address like 0000:3b:00.0)")
        })
    }
}

impl std::fmt::Display for DeviceArg {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Self::Ordinal(n) => write!(f, "{n}"),
            Self::Pci(b) => write!(f, "{b}"),
        }
    }
}

/// The driver settings the CLI starts its contexts with, unless the operator set them.
///
/// `CUDA_DEVICE_MAX_CONNECTIONS` is the number of "compute and copy engine concurrent
/// connections (work queues) from the host to the device" (NVIDIA's words): the driver
/// builds all of them when it starts a context, and starts contexts one at a time across
/// the whole host. The CLI runs one stream per GPU, so one is all it uses: on an H200 a
/// context then starts in about half the time and is torn down in about a third
/// (docs/benchmarks.md, "`check --all` vs the single check, taken apart").
pub const DRIVER_ENV: [(&str, &str); 1] = [("CUDA_DEVICE_MAX_CONNECTIONS", "1")];

/// Applies [`DRIVER_ENV`] to this process. Call it before any thread starts and before the
/// driver is loaded: the driver reads the variables when it starts.
pub(crate) fn set_driver_env() {
    for (name, value) in driver_env_to_set(|n| std::env::var_os(n).is_some()) {
        std::env::set_var(name, value);
    }
}

/// The [`DRIVER_ENV`] entries the operator has not set.
fn driver_env_to_set(is_set: impl Fn(&str) -> bool) -> Vec<(&'static str, &'static str)> {
    DRIVER_ENV
        .into_iter()
        .filter(|(name, _)| !is_set(name))
        .collect()
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// The GPU: its CUDA ordinal, or its PCI address (`0000:3b:00.0`, as `list` shows it).
    #[arg(long, default_value = "0", env = "VM_ACCEL_CUDA_DEVICE")]
    pub device: DeviceArg,
    /// Every GPU (in parallel), plus a peer-copy test between every pair with peer access.
    #[arg(long, conflicts_with = "device")]
    pub all: bool,
    /// Report busy (exit 3) at once if another check holds the GPU, instead of queueing.
    #[arg(long)]
    pub no_wait: bool,
    /// Where the per-GPU lock files live.
    #[arg(long, default_value = "/run/vm-accel", env = "VM_ACCEL_RUN_DIR")]
    pub run_dir: PathBuf,
    /// Read processes from this directory instead of /proc (fixtures).
    #[arg(long, default_value = "/proc", hide = true, env = "VM_ACCEL_PROC_ROOT")]
    pub proc_root: PathBuf,
    /// Share of free device memory the pattern test writes and verifies (0 < f <= 0.95).
    #[arg(long, default_value_t = 0.25)]
    pub memory_fraction: f64,
    /// Size of each device-to-device copy of the bandwidth test, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub copy_mib: u64,
    /// Fail when copy bandwidth (read + write) is below this share of the theoretical peak.
    #[arg(long, default_value_t = 0.6)]
    pub min_bandwidth: f64,
    /// A GPU whose check (or peer copy) has not finished after this many seconds is
    /// reported stuck, and the command ends instead of hanging with it.
    #[arg(long, default_value_t = health::DEFAULT_DEADLINE.as_secs_f64(), value_parser = positive_seconds)]
    pub deadline_s: f64,
}

fn positive_seconds(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(v) if v > 0.0 && v.is_finite() && v <= 86_400.0 => Ok(v),
        _ => Err(format!("{s:?} is not a number of seconds in (0, 86400]")),
    }
}

#[derive(Debug, serde::Serialize)]
struct InfoOutput {
    schema: &'static str,
    built_with_cuda: bool,
    /// `null` when the driver could not be asked.
    driver_version: Option<String>,
    devices: Vec<DeviceInfo>,
    /// Which GPUs reach which (`null` when the driver could not be asked).
    topology: Option<Topology>,
    /// Why there are no devices, when the driver refused (stub library, no device...).
    error: Option<String>,
}

/// Peer attributes of every ordered pair of GPUs, joined with each GPU's NUMA node and PCI
/// path from sysfs.
#[derive(Debug, serde::Serialize)]
pub struct Topology {
    gpus: Vec<GpuPlace>,
    links: Vec<PeerLink>,
}

#[derive(Debug, serde::Serialize)]
struct GpuPlace {
    ordinal: u32,
    /// The GPU's address (`bdf`, as in every document).
    #[serde(rename = "bdf")]
    pci_bdf: String,
    /// `null` when sysfs does not say (or the device is not under the sysfs root).
    numa_node: Option<u32>,
    /// Bridges above the GPU, nearest first.
    pci_path: Vec<String>,
}

#[derive(Debug, serde::Serialize)]
struct CheckAllOutput<'a> {
    schema: &'static str,
    #[serde(flatten)]
    report: &'a AllReport,
}

#[derive(Debug, serde::Serialize)]
struct CheckOutput<'a> {
    schema: &'static str,
    /// Carries `passed`, `device`, `checks`, `bandwidth`, ...
    #[serde(flatten)]
    report: &'a HealthReport,
}

pub fn run(g: &Global, c: CudaCommand) -> CmdResult {
    match c {
        CudaCommand::Info => info(g),
        CudaCommand::Check(a) => check(g, a),
    }
}

/// The error as a CLI user should read it: vm-cuda's "enable the `cuda` feature" is for a
/// crate user; the person at the shell needs the install command.
fn explain(e: &vm_cuda::Error) -> String {
    if matches!(e, vm_cuda::Error::Unsupported { .. }) {
        "this vm-accel was built without CUDA support; rebuild it with \
         `cargo install vm-accel --features cuda` (needs the NVIDIA driver's libcuda)"
            .to_string()
    } else {
        e.to_string()
    }
}

/// [`explain`] for the facade's error, which wraps the CUDA one.
fn explain_facade(e: &crate::Error) -> String {
    match e {
        crate::Error::Cuda(c) => explain(c),
        other => other.to_string(),
    }
}

fn gather(g: &Global) -> vm_cuda::Result<(String, Vec<DeviceInfo>, Topology)> {
    let (major, minor) = vm_cuda::driver_version()?;
    let devices = Device::all()?
        .iter()
        .map(Device::info)
        .collect::<vm_cuda::Result<Vec<_>>>()?;
    let topology = Topology {
        gpus: devices.iter().map(|d| place(g, d)).collect(),
        links: vm_cuda::topology()?,
    };
    Ok((format!("{major}.{minor}"), devices, topology))
}

/// The GPU topology for `list --topology` / `show --topology`: which GPUs reach which, or
/// why the driver could not say (no driver, GPUs on vfio-pci, no `cuda` feature).
pub fn gpu_topology(g: &Global) -> Result<Topology, String> {
    gather(g).map(|(_, _, t)| t).map_err(|e| explain(&e))
}

/// Where a GPU sits, from sysfs (best effort: a GPU the sysfs root does not show has no
/// NUMA node and no path).
fn place(g: &Global, d: &DeviceInfo) -> GpuPlace {
    let dev = d
        .pci_bdf
        .parse::<vm_pci::Bdf>()
        .ok()
        .and_then(|b| vm_pci::read_device(&vm_pci::SysfsRoot::new(&g.sysfs_root), b).ok());
    GpuPlace {
        ordinal: d.ordinal,
        pci_bdf: d.pci_bdf.clone(),
        numa_node: dev.as_ref().and_then(|p| p.numa_node),
        pci_path: dev
            .map(|p| p.upstream_path().iter().map(|b| b.to_string()).collect())
            .unwrap_or_default(),
    }
}

/// One line per ordered pair: `0 -> 1  NVLink (...), performance rank 0`.
pub fn print_topology(t: &Topology) -> anyhow::Result<()> {
    if t.links.is_empty() {
        outln!("peers: none ({} GPU)", t.gpus.len());
        return Ok(());
    }
    outln!("peers:");
    for p in &t.gpus {
        outln!(
            "  GPU {} = {} (NUMA node {})",
            p.ordinal,
            p.pci_bdf,
            p.numa_node
                .map(|n| n.to_string())
                .unwrap_or_else(|| "-".into())
        );
    }
    for l in &t.links {
        let how = match l.link {
            vm_cuda::LinkKind::Nvlink => "NVLink (peer access, native atomics)",
            vm_cuda::LinkKind::Pcie => "PCIe (peer access, no native atomics)",
            vm_cuda::LinkKind::None => "no peer access (copies go through host memory)",
        };
        outln!(
            "  {} -> {}  {how}, performance rank {}",
            l.src,
            l.dst,
            l.performance_rank
        );
    }
    Ok(())
}

fn info(g: &Global) -> CmdResult {
    let result = gather(g);
    if g.json {
        let (driver_version, devices, topology, error) = match result {
            Ok((v, d, t)) => (Some(v), d, Some(t), None),
            Err(e) => (None, Vec::new(), None, Some(explain(&e))),
        };
        let failed = error.is_some();
        print_json(&InfoOutput {
            schema: "vm-accel.cuda-info/v2",
            built_with_cuda: vm_cuda::BUILT_WITH_CUDA,
            driver_version,
            devices,
            topology,
            error,
        })?;
        return Ok(if failed {
            ExitCode::from(2)
        } else {
            ExitCode::SUCCESS
        });
    }
    let (version, devices, topology) =
        result.map_err(|e| anyhow::anyhow!("no usable CUDA devices: {}", explain(&e)))?;
    outln!("CUDA driver {version}, {} device(s)", devices.len());
    for d in &devices {
        outln!("{}: {}", d.ordinal, d.name);
        outln!("  pci        {}", d.pci_bdf);
        outln!("  uuid       {}", d.uuid.as_deref().unwrap_or("-"));
        outln!(
            "  memory     {:.1} GiB, {}-bit bus at {} MHz, peak {}",
            d.total_memory_bytes as f64 / (1u64 << 30) as f64,
            d.memory_bus_width_bits,
            d.memory_clock_khz / 1000,
            d.peak_memory_bandwidth_gbs()
                .map(|p| format!("{p:.0} GB/s"))
                .unwrap_or_else(|| "unknown".into())
        );
        outln!(
            "  compute    sm_{}{}, {} SMs at {} MHz, ECC {}",
            d.compute_capability.0,
            d.compute_capability.1,
            d.sm_count,
            d.clock_khz / 1000,
            if d.ecc_enabled { "on" } else { "off" }
        );
        outln!(
            "  limits     {} threads/block, shared memory {} KiB/block ({} KiB opt-in)",
            d.limits.max_threads_per_block,
            d.limits.max_shared_per_block / 1024,
            d.limits.max_shared_per_block_optin / 1024
        );
        if let Some(p) = topology.gpus.iter().find(|p| p.ordinal == d.ordinal) {
            outln!(
                "  numa       {}, PCI path {}",
                p.numa_node
                    .map(|n| n.to_string())
                    .unwrap_or_else(|| "-".into()),
                if p.pci_path.is_empty() {
                    "-".to_string()
                } else {
                    p.pci_path.join(" <- ")
                }
            );
        }
    }
    print_topology(&topology)?;
    Ok(ExitCode::SUCCESS)
}

fn check(g: &Global, a: CheckArgs) -> CmdResult {
    let opts = HealthOptions {
        memory_fraction: a.memory_fraction,
        copy_bytes: a.copy_mib.saturating_mul(1 << 20),
        min_bandwidth_fraction: a.min_bandwidth,
        deadline: std::time::Duration::from_secs_f64(a.deadline_s),
        ..HealthOptions::default()
    };
    let ex = Exclusive {
        run_dir: a.run_dir.clone(),
        proc_root: a.proc_root.clone(),
        wait: if a.no_wait { Wait::No } else { Wait::Yes },
    };
    if a.all {
        return check_all(g, &opts, &ex);
    }
    let report = match a.device {
        DeviceArg::Ordinal(n) => health::run_exclusive(n, &opts, &ex).map_err(crate::Error::from),
        DeviceArg::Pci(bdf) => crate::gpu_check::check(bdf, &opts, &ex),
    }
    .map_err(|e| {
        anyhow::anyhow!(
            "CUDA health check of device {} could not run: {}",
            a.device,
            explain_facade(&e)
        )
    })?;
    if g.json {
        print_json(&CheckOutput {
            schema: "vm-accel.cuda-check/v2",
            report: &report,
        })?;
    } else {
        print_report(&report)?;
        outln!("result: {}", verdict_line(&report));
    }
    Ok(exit_code(report.verdict, report.is_stuck()))
}

/// The exit code of `v`. When a GPU is `stuck` the process ends here, at once: a check
/// thread is still inside the driver, and the driver's teardown at exit would wait for it
/// (the hang the deadline is there to prevent). The report is out by then; output is
/// flushed first.
fn exit_code(v: Verdict, stuck: bool) -> ExitCode {
    if stuck {
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        let _ = std::io::stderr().flush();
        // SAFETY: _exit ends the process without running exit handlers or destructors,
        // which is the point; nothing after it runs.
        unsafe { libc::_exit(i32::from(code_of(v))) }
    }
    ExitCode::from(code_of(v))
}

fn code_of(v: Verdict) -> u8 {
    match v {
        Verdict::Healthy => 0,
        Verdict::Unhealthy => 1,
        Verdict::Busy => EXIT_BUSY,
    }
}

fn verdict_line(r: &HealthReport) -> String {
    match r.verdict {
        Verdict::Healthy => "PASS".into(),
        Verdict::Unhealthy => "FAIL (see FAIL lines)".into(),
        Verdict::Busy => format!("BUSY: {}", r.busy.as_deref().unwrap_or("in use")),
    }
}

fn print_report(report: &HealthReport) -> anyhow::Result<()> {
    let d = &report.device;
    outln!(
        "CUDA device {}: {} ({}, {}), driver {}.{}",
        d.ordinal,
        d.name,
        d.pci_bdf,
        d.uuid.as_deref().unwrap_or("no uuid"),
        report.driver_version.0,
        report.driver_version.1
    );
    for c in &report.checks {
        outln!(
            "  {:<4} {:<15} {:>9.1} ms  {}",
            if c.passed { "PASS" } else { "FAIL" },
            c.name,
            c.elapsed_ms,
            c.detail
        );
    }
    for u in &report.other_users {
        outln!("  also using the GPU: pid {} ({})", u.pid, u.comm);
    }
    Ok(())
}

fn check_all(g: &Global, opts: &HealthOptions, ex: &Exclusive) -> CmdResult {
    let report = all_gpus::run_all(opts, ex).map_err(|e| {
        anyhow::anyhow!(
            "CUDA health check of every GPU could not run: {}",
            explain(&e)
        )
    })?;
    if g.json {
        print_json(&CheckAllOutput {
            schema: "vm-accel.cuda-check-all/v2",
            report: &report,
        })?;
        return Ok(exit_code(report.verdict, report.is_stuck()));
    }
    for d in &report.devices {
        match (&d.report, &d.error) {
            (Some(r), _) => {
                print_report(r)?;
                outln!("  device {}: {}", d.ordinal, verdict_line(r));
            }
            (None, e) => outln!(
                "CUDA device {}: could not run: {}",
                d.ordinal,
                e.as_deref().unwrap_or("?")
            ),
        }
    }
    outln!(
        "devices checked in parallel in {:.0} ms",
        report.devices_elapsed_ms
    );
    match &report.peers.skipped {
        Some(why) => outln!("peer copies: skipped: {why}"),
        None => {
            outln!("peer copies ({:.0} ms):", report.peers_elapsed_ms);
            for p in &report.peers.pairs {
                outln!(
                    "  {:<4} {} -> {}  {}",
                    if p.passed { "PASS" } else { "FAIL" },
                    p.src,
                    p.dst,
                    p.detail
                );
            }
        }
    }
    for l in &report.peers.without_access {
        outln!("  skip {} -> {}  no peer access", l.src, l.dst);
    }
    outln!(
        "result: {}",
        match report.verdict {
            Verdict::Healthy => "PASS",
            Verdict::Unhealthy => "FAIL (see FAIL lines)",
            Verdict::Busy => "BUSY (see the devices above)",
        }
    );
    Ok(exit_code(report.verdict, report.is_stuck()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn device_is_an_ordinal_or_a_pci_address() {
        assert_eq!("3".parse(), Ok(DeviceArg::Ordinal(3)));
        let full: DeviceArg = "0000:3b:00.0".parse().expect("full address");
        let short: DeviceArg = "3b:00.0".parse().expect("short address");
        assert_eq!(full, short);
        assert_eq!(full.to_string(), "0000:3b:00.0");
        let err = "gpu0".parse::<DeviceArg>().expect_err("not a device");
        assert!(err.contains("ordinal or a PCI address"), "{err}");
        assert!("-1".parse::<DeviceArg>().is_err());
    }

    #[test]
    fn the_operators_driver_settings_win() {
        assert_eq!(
            driver_env_to_set(|_| false),
            [("CUDA_DEVICE_MAX_CONNECTIONS", "1")]
        );
        assert!(driver_env_to_set(|n| n == "CUDA_DEVICE_MAX_CONNECTIONS").is_empty());
    }

    fn gpu_at(bdf: &str) -> DeviceInfo {
        DeviceInfo {
            ordinal: 0,
            name: "NVIDIA H200".into(),
            uuid: None,
            pci: vm_cuda::PciLocation {
                domain: 0,
                bus: 1,
                device: 0,
            },
            pci_bdf: bdf.into(),
            total_memory_bytes: 0,
            compute_capability: (9, 0),
            sm_count: 132,
            clock_khz: 0,
            memory_clock_khz: 0,
            memory_bus_width_bits: 0,
            peak_memory_bandwidth_bytes_per_s: None,
            l2_cache_bytes: 0,
            async_engine_count: 0,
            ecc_enabled: true,
            limits: vm_cuda::Limits {
                max_threads_per_block: 1024,
                max_block_dim: [1024, 1024, 64],
                max_grid_dim: [1, 1, 1],
                max_shared_per_block: 0,
                max_shared_per_block_optin: 0,
                warp_size: 32,
            },
        }
    }

    /// The driver's view of a GPU joined with sysfs: NUMA node and the bridges above it.
    #[test]
    fn gpu_place_joins_sysfs_numa_node_and_pci_path() {
        let dir = tempfile::tempdir().expect("tempdir");
        vm_pci::fixture::iommu_host(dir.path()).expect("fixture");
        let g = Global {
            sysfs_root: dir.path().to_path_buf(),
            json: false,
        };
        let p = place(&g, &gpu_at("0000:01:00.0"));
        assert_eq!(p.numa_node, Some(0));
        assert_eq!(p.pci_path, vec!["0000:00:01.0".to_string()]);
        // A GPU sysfs does not show (another root, a malformed address): nothing invented.
        for bdf in ["0000:42:00.0", "not-a-bdf"] {
            let p = place(&g, &gpu_at(bdf));
            assert_eq!((p.numa_node, p.pci_path.len()), (None, 0), "{bdf}");
        }
    }
}

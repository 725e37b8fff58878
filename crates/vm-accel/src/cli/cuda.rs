//! `vm-accel cuda info|check`: CUDA devices (joinable with `list` by PCI address) and the
//! GPU health check of vm_cuda::health.
//!
//! Exit codes: 0 = ok / all checks passed, 1 = a check failed, 2 = could not run (no GPU,
//! built without the `cuda` feature, bad arguments). JSON schemas: `vm-accel.cuda-info/v1`,
//! `vm-accel.cuda-check/v1` (docs/json-schema.md, docs/cuda.md).

use std::process::ExitCode;

use vm_cuda::health::{self, HealthOptions, HealthReport};
use vm_cuda::{Device, DeviceInfo};

use super::{print_json, CmdResult, Global};

#[derive(Debug, clap::Subcommand)]
pub enum CudaCommand {
    /// List CUDA devices: name, PCI address, UUID, memory, compute capability, peak bandwidth.
    Info,
    /// Run the GPU health check on one device (exit 1 if a check fails, 2 if it cannot run).
    Check(CheckArgs),
}

#[derive(Debug, clap::Args)]
pub struct CheckArgs {
    /// CUDA device ordinal.
    #[arg(long, default_value_t = 0, env = "VM_ACCEL_CUDA_DEVICE")]
    pub device: u32,
    /// Share of free device memory the pattern test writes and verifies (0 < f <= 0.95).
    #[arg(long, default_value_t = 0.25)]
    pub memory_fraction: f64,
    /// Size of each device-to-device copy of the bandwidth test, in MiB.
    #[arg(long, default_value_t = 1024)]
    pub copy_mib: u64,
    /// Fail when copy bandwidth (read + write) is below this share of the theoretical peak.
    #[arg(long, default_value_t = 0.6)]
    pub min_bandwidth: f64,
}

#[derive(Debug, serde::Serialize)]
struct InfoOutput {
    schema: &'static str,
    built_with_cuda: bool,
    /// `null` when the driver could not be asked.
    driver_version: Option<String>,
    devices: Vec<DeviceInfo>,
    /// Why there are no devices, when the driver refused (stub library, no device...).
    error: Option<String>,
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

fn gather() -> vm_cuda::Result<(String, Vec<DeviceInfo>)> {
    let (major, minor) = vm_cuda::driver_version()?;
    let devices = Device::all()?
        .iter()
        .map(Device::info)
        .collect::<vm_cuda::Result<Vec<_>>>()?;
    Ok((format!("{major}.{minor}"), devices))
}

fn info(g: &Global) -> CmdResult {
    let result = gather();
    if g.json {
        let (driver_version, devices, error) = match &result {
            Ok((v, d)) => (Some(v.clone()), d.clone(), None),
            Err(e) => (None, Vec::new(), Some(e.to_string())),
        };
        print_json(&InfoOutput {
            schema: "vm-accel.cuda-info/v1",
            built_with_cuda: vm_cuda::BUILT_WITH_CUDA,
            driver_version,
            devices,
            error,
        })?;
        return Ok(if result.is_ok() {
            ExitCode::SUCCESS
        } else {
            ExitCode::from(2)
        });
    }
    let (version, devices) = result.map_err(|e| anyhow::anyhow!("no usable CUDA devices: {e}"))?;
    println!("CUDA driver {version}, {} device(s)", devices.len());
    for d in &devices {
        println!("{}: {}", d.ordinal, d.name);
        println!("  pci        {}", d.pci_bdf);
        println!("  uuid       {}", d.uuid.as_deref().unwrap_or("-"));
        println!(
            "  memory     {:.1} GiB, {}-bit bus at {} MHz, peak {}",
            d.total_memory_bytes as f64 / (1u64 << 30) as f64,
            d.memory_bus_width_bits,
            d.memory_clock_khz / 1000,
            d.peak_memory_bandwidth_gbs()
                .map(|p| format!("{p:.0} GB/s"))
                .unwrap_or_else(|| "unknown".into())
        );
        println!(
            "  compute    sm_{}{}, {} SMs at {} MHz, ECC {}",
            d.compute_capability.0,
            d.compute_capability.1,
            d.sm_count,
            d.clock_khz / 1000,
            if d.ecc_enabled { "on" } else { "off" }
        );
        println!(
            "  limits     {} threads/block, shared memory {} KiB/block ({} KiB opt-in)",
            d.limits.max_threads_per_block,
            d.limits.max_shared_per_block / 1024,
            d.limits.max_shared_per_block_optin / 1024
        );
    }
    Ok(ExitCode::SUCCESS)
}

fn check(g: &Global, a: CheckArgs) -> CmdResult {
    let opts = HealthOptions {
        memory_fraction: a.memory_fraction,
        copy_bytes: a.copy_mib.saturating_mul(1 << 20),
        min_bandwidth_fraction: a.min_bandwidth,
        ..HealthOptions::default()
    };
    let report = health::run(a.device, &opts).map_err(|e| {
        anyhow::anyhow!(
            "CUDA health check of device {} could not run: {e}",
            a.device
        )
    })?;
    if g.json {
        print_json(&CheckOutput {
            schema: "vm-accel.cuda-check/v1",
            report: &report,
        })?;
    } else {
        let d = &report.device;
        println!(
            "CUDA device {}: {} ({}, {}), driver {}.{}",
            d.ordinal,
            d.name,
            d.pci_bdf,
            d.uuid.as_deref().unwrap_or("no uuid"),
            report.driver_version.0,
            report.driver_version.1
        );
        for c in &report.checks {
            println!(
                "  {:<4} {:<15} {:>9.1} ms  {}",
                if c.passed { "PASS" } else { "FAIL" },
                c.name,
                c.elapsed_ms,
                c.detail
            );
        }
        println!(
            "result: {}",
            if report.passed {
                "PASS"
            } else {
                "FAIL (see FAIL lines)"
            }
        );
    }
    Ok(if report.passed {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    })
}

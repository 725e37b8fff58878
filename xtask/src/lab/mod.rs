//! `cargo xtask lab`: the emulated VFIO lab.
//!
//! Boots a QEMU q35 guest with an emulated Intel IOMMU (interrupt remapping, caching mode)
//! and several `edu` devices, binds them to vfio-pci, runs the project's `lab_*` test
//! binaries inside it and turns the serial console into a per-test summary. Real VFIO
//! (groups, DMA through the IOMMU, MSI, BAR mmap) and nested KVM, on a host with neither.
//!
//! Steps: [`host`] (packages, musl target) -> [`kernel`] (guest kernel) -> [`build`] (test
//! binaries) -> [`initramfs`] -> [`qemu`] -> [`report`]. The test list is [`targets`].

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

mod build;
mod host;
mod initramfs;
mod kernel;
mod qemu;
mod report;
mod targets;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Accel {
    /// QEMU's emulator: works everywhere, including nested cloud VMs (the default).
    Tcg,
    /// Hardware virtualization: the choice on bare metal; crawls on nested /dev/kvm.
    Kvm,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum KernelKind {
    /// Debian's packaged kernel (vfio as modules; legacy container/group path only).
    Debian,
    /// The lab's own kernel with IOMMUFD and VFIO_DEVICE_CDEV (built once, cached).
    Iommufd,
}

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Lab test target to run (repeatable; see `--list`). Default: every `--all` target.
    #[arg(long = "test", value_name = "NAME")]
    tests: Vec<String>,
    /// Run every target of the default suite (also what no --test means).
    #[arg(long, conflicts_with = "tests")]
    all: bool,
    /// Print the lab's test targets and exit.
    #[arg(long)]
    list: bool,
    /// Keep the run directory (serial log, QEMU command line) even when everything passed.
    #[arg(long)]
    keep: bool,
    #[arg(long, value_enum, default_value_t = Accel::Tcg)]
    accel: Accel,
    #[arg(long, value_enum, default_value_t = KernelKind::Debian)]
    kernel: KernelKind,
    /// Seconds until the guest's init must report in.
    #[arg(long, default_value_t = 90)]
    boot_timeout: u64,
    /// Seconds one test binary may run in the guest before it is killed.
    #[arg(long, default_value_t = 120)]
    test_timeout: u64,
    /// Seconds the whole boot + tests may take before QEMU is killed.
    #[arg(long, default_value_t = 600)]
    timeout: u64,
    /// Number of edu devices (each gets its own IOMMU group; the tests expect at least 2:
    /// one on the root bus, the rest behind PCIe root ports).
    #[arg(long, default_value_t = 3, value_parser = clap::value_parser!(u8).range(2..=8))]
    edu: u8,
    /// Guest RAM in MiB.
    #[arg(long, default_value_t = 1024)]
    memory: u32,
    /// `KEY=VALUE` exported to the tests in the guest (repeatable).
    #[arg(long = "guest-env", value_name = "KEY=VALUE")]
    guest_env: Vec<String>,
    /// Print the guest's console while it runs.
    #[arg(long, short)]
    verbose: bool,
    /// Report missing Debian packages instead of installing them.
    #[arg(long)]
    no_install: bool,
    /// Arguments for every test binary (libtest filters, `--ignored`, `--exact`...).
    #[arg(last = true)]
    test_args: Vec<String>,
}

pub fn run(args: Args) -> Result<()> {
    if args.list {
        for t in targets::TARGETS {
            let all = match (t.in_all, t.iommufd) {
                (true, false) => "  (--all)",
                (true, true) => "  (--all with --kernel iommufd)",
                (false, _) => "",
            };
            println!("{:<16} {} --test {}{all}", t.name, t.package, t.test);
        }
        return Ok(());
    }
    let started = Instant::now();
    let selected = targets::select(
        if args.all { &[] } else { &args.tests },
        args.kernel == KernelKind::Iommufd,
    )?;
    let workspace = workspace_root();
    let cache = workspace.join(".lab-cache");
    std::fs::create_dir_all(&cache).with_context(|| format!("creating {}", cache.display()))?;

    host::ensure(args.kernel, !args.no_install)?;
    let kernel = kernel::prepare(args.kernel, &workspace, &cache)?;
    let (tests, bins) = build::build(&workspace, &selected, &args.test_args)?;

    let mut env = vec![
        (
            "VM_ACCEL_LAB_KERNEL".to_string(),
            format!("{:?}", args.kernel).to_lowercase(),
        ),
        (
            "LAB_TEST_TIMEOUT".to_string(),
            args.test_timeout.to_string(),
        ),
    ];
    for kv in &args.guest_env {
        let (k, v) = kv
            .split_once('=')
            .with_context(|| format!("--guest-env {kv:?}: want KEY=VALUE"))?;
        if k.is_empty() || !k.chars().all(|c| c.is_ascii_alphanumeric() || c == '_') {
            bail!("--guest-env {kv:?}: bad variable name");
        }
        env.push((k.to_string(), v.to_string()));
    }
    let initramfs = initramfs::build(
        &cache,
        &initramfs::Inputs {
            kernel: &kernel,
            tests: &tests,
            bins: &bins,
            env: &env,
            test_args: &args.test_args,
        },
    )?;

    let run_dir = cache.join("runs").join(format!(
        "{}-{}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)?
            .as_secs(),
        std::process::id()
    ));
    std::fs::create_dir_all(&run_dir)?;
    prune_runs(&cache.join("runs"), 10);
    let host_use = args.kernel == KernelKind::Debian;
    if host_use {
        qemu::create_host_use_disks(&run_dir)?;
    }
    let boot = qemu::Boot {
        kernel: &kernel.image,
        initramfs: &initramfs,
        accel: args.accel,
        edu_devices: args.edu,
        memory_mib: args.memory,
        host_use_disks: host_use.then_some(run_dir.as_path()),
        boot_timeout: Duration::from_secs(args.boot_timeout),
        timeout: Duration::from_secs(args.timeout),
        // Past the in-guest per-binary timeout (which prints when it fires) and a margin.
        stall: Duration::from_secs(args.test_timeout + 60),
        verbose: args.verbose,
    };
    log::info!(
        "booting {} with {} edu device(s), one MSI-X device (nvme), one large-BAR device (ivshmem){} under {:?}; {} test binar{}",
        kernel.description,
        args.edu,
        if host_use {
            ", two virtio disks and a virtio NIC the guest uses"
        } else {
            ""
        },
        args.accel,
        tests.len(),
        if tests.len() == 1 { "y" } else { "ies" }
    );
    let prepared = started.elapsed();
    let mut outcome = qemu::run(&boot, &run_dir)?;
    if let qemu::End::GuestHang(d) = outcome.end {
        // The whole guest froze (seen rarely under TCG with nested KVM, in binaries that
        // pass on every other run; docs/hardware-testing.md). One fresh boot, said loudly:
        // a hang our code causes hangs again and fails the run.
        let running = outcome
            .serial
            .iter()
            .rev()
            .find_map(|l| l.strip_prefix("@@LAB-BEGIN "))
            .unwrap_or("?")
            .to_string();
        let kept = run_dir.join("serial-hang.log");
        std::fs::rename(&outcome.serial_log, &kept)?;
        println!(
            "lab: WARNING: the guest hung (no console output for {} s) while running {running}; serial log kept: {}; booting once more",
            d.as_secs(),
            kept.display()
        );
        if host_use {
            qemu::create_host_use_disks(&run_dir)?;
        }
        outcome = qemu::run(&boot, &run_dir)?;
    }
    let report = report::parse(&outcome.serial, &tests);
    report::print(&report);

    let secs =
        |d: Option<Duration>| d.map_or("-".to_string(), |d| format!("{:.1} s", d.as_secs_f64()));
    println!(
        "  timing: prepare {:.1} s, QEMU start to init {}, to all results {}, total {:.1} s",
        prepared.as_secs_f64(),
        secs(outcome.to_ready),
        secs(outcome.to_done),
        started.elapsed().as_secs_f64()
    );
    let problem = match &outcome.end {
        qemu::End::Done if report.ok() => None,
        qemu::End::Done => Some("tests failed".to_string()),
        qemu::End::QemuExited(s) => Some(format!("QEMU exited before the tests finished ({s})")),
        qemu::End::BootTimeout(d) => {
            Some(format!("the guest did not boot within {} s", d.as_secs()))
        }
        qemu::End::Timeout(d) => Some(format!(
            "the run exceeded {} s; QEMU was killed",
            d.as_secs()
        )),
        qemu::End::GuestHang(d) => Some(format!(
            "the guest hung twice (no console output for {} s); QEMU was killed",
            d.as_secs()
        )),
    };
    match problem {
        None => {
            if args.keep {
                println!("  kept: {}", run_dir.display());
            } else {
                let _ = std::fs::remove_dir_all(&run_dir);
            }
            println!("lab: PASS");
            Ok(())
        }
        Some(why) => {
            print_failure(&outcome, &report);
            println!("  serial log kept: {}", outcome.serial_log.display());
            println!("lab: FAIL: {why}");
            // The summary above says what failed; an error backtrace would only bury it.
            std::process::exit(1);
        }
    }
}

/// Shows what a failure needs: the console output of each failed binary, the console's
/// end when the guest never finished, and QEMU's stderr when QEMU itself gave up.
fn print_failure(outcome: &qemu::Outcome, report: &report::Report) {
    let mut out = std::io::stdout().lock();
    let mut shown = false;
    for b in report.binaries.iter().filter(|b| !b.ok()) {
        let begin = format!("@@LAB-BEGIN {}", b.name);
        let end = format!("@@LAB-END {} ", b.name);
        let Some(start) = outcome.serial.iter().position(|l| *l == begin) else {
            continue;
        };
        let stop = outcome.serial[start..]
            .iter()
            .position(|l| l.starts_with(&end))
            .map_or(outcome.serial.len(), |i| start + i + 1);
        let from = start.max(stop.saturating_sub(150));
        shown = true;
        let _ = writeln!(out, "---- guest console: {} ----", b.name);
        for line in &outcome.serial[from..stop] {
            let _ = writeln!(out, "guest| {line}");
        }
    }
    if !report.done && !shown {
        let from = outcome.serial.len().saturating_sub(40);
        let _ = writeln!(out, "---- last lines of the guest console ----");
        for line in &outcome.serial[from..] {
            let _ = writeln!(out, "guest| {line}");
        }
    }
    if outcome.end != qemu::End::Done && !outcome.qemu_stderr.trim().is_empty() {
        // QEMU states why it gave up first; a CPU register dump may follow.
        let _ = writeln!(out, "---- QEMU stderr (first lines) ----");
        for line in outcome.qemu_stderr.lines().take(8) {
            let _ = writeln!(out, "qemu| {line}");
        }
    }
    let _ = writeln!(out, "----");
}

/// Keeps the newest `keep` run directories (failed runs and --keep runs accumulate).
fn prune_runs(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut runs: Vec<PathBuf> = entries.flatten().map(|e| e.path()).collect();
    // Names start with the Unix time: lexical order is age order for centuries.
    runs.sort();
    let excess = runs.len().saturating_sub(keep);
    for old in &runs[..excess] {
        let _ = std::fs::remove_dir_all(old);
    }
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map_or_else(|| PathBuf::from("."), Path::to_path_buf)
}

/// SHA-256 of `data` as hex, through coreutils' sha256sum (cache keys only).
pub(crate) fn sha256_hex(data: &[u8]) -> Result<String> {
    let mut child = Command::new("sha256sum")
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .context("running sha256sum")?;
    child
        .stdin
        .take()
        .context("sha256sum stdin")?
        .write_all(data)?;
    let out = child.wait_with_output()?;
    let text = String::from_utf8_lossy(&out.stdout);
    match text.split_whitespace().next() {
        Some(h) if out.status.success() && h.len() == 64 => Ok(h.to_string()),
        _ => bail!("sha256sum failed"),
    }
}

//! `cargo xtask hw-test`: run every hardware-gated suite this host can run.
//!
//! Capabilities are detected first (GPU with a CUDA driver, /dev/kvm, /dev/vfio, IOMMU
//! groups, /dev/iommu, qemu); a suite whose needs are missing is reported as skipped with
//! the reason, and `--require CAP` turns such a skip into a failure (it also sets
//! VM_ACCEL_REQUIRE_HW for the suites that need CAP, so a test that finds the hardware
//! missing fails instead of skipping).
//!
//! `--bundle DIR` builds the suites' test binaries here into a self-contained folder with a
//! copy of this program and `run.sh`, for a GPU host that has no cargo: `DIR/run.sh` there
//! runs the same suites from the prebuilt binaries (`--from-bundle`).

use std::collections::BTreeSet;
use std::fmt;
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Instant;

use anyhow::{bail, Context as _};
use serde::{Deserialize, Serialize};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Fail (instead of skip) when this capability is missing; repeatable or comma-separated.
    #[arg(long, value_delimiter = ',')]
    pub require: Vec<Cap>,
    /// Run only these suites (default: all).
    #[arg(long, value_delimiter = ',')]
    pub suite: Vec<String>,
    /// List suites and detected capabilities, run nothing.
    #[arg(long)]
    pub list: bool,
    /// Build the suites' test binaries into DIR (with run.sh) for a host without cargo.
    #[arg(long, value_name = "DIR", conflicts_with = "from_bundle")]
    pub bundle: Option<PathBuf>,
    /// Run the suites from a bundle made by --bundle (what DIR/run.sh does).
    #[arg(long, value_name = "DIR", hide = true)]
    pub from_bundle: Option<PathBuf>,
    /// Build in release mode (benchmarks and GPU suites want it; default for --bundle).
    #[arg(long)]
    pub release: bool,
}

/// Something a suite needs from the host.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize, clap::ValueEnum,
)]
#[serde(rename_all = "kebab-case")]
pub enum Cap {
    /// An NVIDIA GPU with the CUDA driver library (libcuda.so.1).
    Gpu,
    /// A usable /dev/kvm.
    Kvm,
    /// /dev/vfio/vfio (the VFIO container interface).
    Vfio,
    /// IOMMU groups in /sys/kernel/iommu_groups.
    Iommu,
    /// /dev/iommu (iommufd).
    Iommufd,
    /// qemu-system-x86_64 (for the emulated VFIO lab).
    Qemu,
    /// cargo (suites that build at run time, like the lab).
    Cargo,
}

impl fmt::Display for Cap {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let s = match self {
            Cap::Gpu => "gpu",
            Cap::Kvm => "kvm",
            Cap::Vfio => "vfio",
            Cap::Iommu => "iommu",
            Cap::Iommufd => "iommufd",
            Cap::Qemu => "qemu",
            Cap::Cargo => "cargo",
        };
        f.write_str(s)
    }
}

const ALL_CAPS: [Cap; 7] = [
    Cap::Gpu,
    Cap::Kvm,
    Cap::Vfio,
    Cap::Iommu,
    Cap::Iommufd,
    Cap::Qemu,
    Cap::Cargo,
];

/// How a suite runs.
#[derive(Debug, Clone, Copy)]
enum Runner {
    /// `cargo test -p PACKAGE --test T...` (bundled as prebuilt binaries).
    CargoTest {
        package: &'static str,
        tests: &'static [&'static str],
        features: &'static [&'static str],
    },
    /// `cargo xtask ARGS...` (needs cargo at run time; not bundled).
    Xtask { args: &'static [&'static str] },
}

/// One hardware-gated suite. Add yours here: one entry.
#[derive(Debug, Clone, Copy)]
struct Suite {
    name: &'static str,
    about: &'static str,
    needs: &'static [Cap],
    runner: Runner,
    env: &'static [(&'static str, &'static str)],
}

const SUITES: &[Suite] = &[
    Suite {
        name: "vm-pci-host",
        about: "vm-pci discovery on this host's real /sys, cross-checked with lspci when present",
        needs: &[],
        runner: Runner::CargoTest {
            package: "vm-pci",
            tests: &["host"],
            features: &[],
        },
        env: &[],
    },
    Suite {
        name: "kvm-smoke",
        about: "kvm-ioctls: a VM runs real-mode code, MMIO/PIO exits and HLT are seen",
        needs: &[Cap::Kvm],
        runner: Runner::CargoTest {
            package: "vm-accel-tests",
            tests: &["kvm_smoke"],
            features: &[],
        },
        env: &[],
    },
    Suite {
        name: "kvm-irq",
        about: "vm-accel attach interrupts: MSI-X/MSI/INTx routes + irqfds reach a vCPU's LAPIC, PBA, guest EOI",
        needs: &[Cap::Kvm],
        runner: Runner::CargoTest {
            package: "vm-accel",
            tests: &["interrupts"],
            features: &[],
        },
        env: &[],
    },
    Suite {
        name: "cuda",
        about: "vm-cuda on real GPUs: PTX load, checked launches, copies, peer copies, health checks",
        needs: &[Cap::Gpu],
        runner: Runner::CargoTest {
            package: "vm-cuda",
            tests: &["gpu_compute", "gpu_memory", "gpu_peer"],
            features: &["cuda"],
        },
        env: &[],
    },
    Suite {
        name: "cuda-lifecycle",
        about: "vm-accel's health-check step on real GPUs: a GPU named by PCI address, under the per-GPU lock",
        needs: &[Cap::Gpu],
        runner: Runner::CargoTest {
            package: "vm-accel",
            tests: &["gpu_health"],
            features: &["cuda"],
        },
        env: &[],
    },
    Suite {
        name: "vfio",
        about: "vm-vfio (legacy container) against a vfio-pci device named by VM_ACCEL_TEST_BDF",
        needs: &[Cap::Vfio, Cap::Iommu],
        runner: Runner::CargoTest {
            package: "vm-vfio",
            tests: &["lab_vfio_legacy"],
            features: &[],
        },
        env: &[],
    },
    Suite {
        name: "vfio-iommufd",
        about: "vm-vfio (iommufd + cdev) against a vfio-pci device named by VM_ACCEL_TEST_BDF",
        needs: &[Cap::Vfio, Cap::Iommu, Cap::Iommufd],
        runner: Runner::CargoTest {
            package: "vm-vfio",
            tests: &["lab_vfio_iommufd"],
            features: &[],
        },
        env: &[],
    },
    Suite {
        name: "lab",
        about: "the emulated VFIO lab: QEMU + intel-iommu + edu, tests run inside the guest",
        needs: &[Cap::Qemu, Cap::Cargo],
        runner: Runner::Xtask {
            args: &["lab", "--all"],
        },
        env: &[],
    },
    Suite {
        name: "lab-iommufd",
        about: "the lab on its own IOMMUFD + VFIO cdev kernel (built once, ~5 min, cached): both VFIO paths",
        needs: &[Cap::Qemu, Cap::Cargo],
        runner: Runner::Xtask {
            args: &["lab", "--kernel", "iommufd", "--all"],
        },
        env: &[],
    },
];

/// What was found for each capability: `Ok(evidence)` or `Err(reason it is missing)`.
type Detected = Vec<(Cap, Result<String, String>)>;

fn detect() -> Detected {
    ALL_CAPS.iter().map(|c| (*c, detect_one(*c))).collect()
}

fn on_path(prog: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|d| d.join(prog))
        .find(|p| p.is_file())
}

fn find_libcuda() -> Option<PathBuf> {
    let mut dirs: Vec<PathBuf> = std::env::var_os("LD_LIBRARY_PATH")
        .map(|v| std::env::split_paths(&v).collect())
        .unwrap_or_default();
    dirs.extend(
        [
            "/usr/local/nvidia/lib64",
            "/usr/lib/x86_64-linux-gnu",
            "/usr/lib64",
            "/usr/lib",
        ]
        .map(PathBuf::from),
    );
    dirs.into_iter()
        .map(|d| d.join("libcuda.so.1"))
        .filter(|p| p.exists())
        // The stub this project generates for building is not a driver.
        .find(|p| !p.to_string_lossy().contains("cuda-stub"))
}

fn detect_one(cap: Cap) -> Result<String, String> {
    match cap {
        Cap::Gpu => {
            if !Path::new("/dev/nvidiactl").exists() {
                return Err("no /dev/nvidiactl: no NVIDIA GPU driver on this host".into());
            }
            find_libcuda()
                .map(|p| format!("/dev/nvidiactl, {}", p.display()))
                .ok_or_else(|| {
                    "/dev/nvidiactl exists but libcuda.so.1 was not found (LD_LIBRARY_PATH?)".into()
                })
        }
        Cap::Kvm => match std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open("/dev/kvm")
        {
            Ok(_) => Ok("/dev/kvm opens read-write".into()),
            Err(e) => Err(format!("/dev/kvm: {e}")),
        },
        Cap::Vfio => {
            if Path::new("/dev/vfio/vfio").exists() {
                Ok("/dev/vfio/vfio".into())
            } else {
                Err("no /dev/vfio/vfio (vfio module not loaded, or no IOMMU)".into())
            }
        }
        Cap::Iommu => match std::fs::read_dir("/sys/kernel/iommu_groups") {
            Ok(d) => {
                let n = d.count();
                if n > 0 {
                    Ok(format!("{n} IOMMU groups"))
                } else {
                    Err("no IOMMU groups (IOMMU off or absent)".into())
                }
            }
            Err(e) => Err(format!("/sys/kernel/iommu_groups: {e}")),
        },
        Cap::Iommufd => {
            if Path::new("/dev/iommu").exists() {
                Ok("/dev/iommu".into())
            } else {
                Err("no /dev/iommu (kernel without CONFIG_IOMMUFD)".into())
            }
        }
        Cap::Qemu => on_path("qemu-system-x86_64")
            .map(|p| p.display().to_string())
            .ok_or_else(|| {
                "qemu-system-x86_64 not on PATH (apt-get install qemu-system-x86)".into()
            }),
        Cap::Cargo => std::env::var("CARGO")
            .ok()
            .map(PathBuf::from)
            .or_else(|| on_path("cargo"))
            .map(|p| p.display().to_string())
            .ok_or_else(|| "no cargo on this host".into()),
    }
}

/// The outcome of one suite.
#[derive(Debug)]
struct Outcome {
    suite: String,
    ran: bool,
    ok: bool,
    passed: u64,
    failed: u64,
    skipped_tests: Vec<String>,
    note: String,
    secs: f64,
}

impl Outcome {
    /// A suite that did not run; it fails the run only when its hardware was required.
    fn not_run(suite: &str, required: bool, note: String) -> Outcome {
        Outcome {
            suite: suite.into(),
            ran: false,
            ok: !required,
            passed: 0,
            failed: 0,
            skipped_tests: Vec::new(),
            note,
            secs: 0.0,
        }
    }

    /// A suite that ran: `(exited ok, passed, failed)` from [`run_counting`], and the tests
    /// that skipped themselves (from the suite's skip log).
    fn ran(
        suite: &str,
        (ok, passed, failed): (bool, u64, u64),
        skip_log: &Path,
        failure: &str,
    ) -> Outcome {
        Outcome {
            suite: suite.into(),
            ran: true,
            ok: ok && failed == 0,
            passed,
            failed,
            skipped_tests: read_skips(skip_log),
            note: if ok { String::new() } else { failure.into() },
            secs: 0.0,
        }
    }
}

pub fn run(args: Args) -> anyhow::Result<()> {
    if let Some(dir) = &args.bundle {
        return make_bundle(dir, &args);
    }
    let detected = detect();
    let bundle = match &args.from_bundle {
        Some(dir) => Some(Manifest::load(dir)?),
        None => None,
    };
    let have = |c: Cap| {
        detected
            .iter()
            .find(|(d, _)| *d == c)
            .and_then(|(_, r)| r.as_ref().ok())
            .is_some()
    };

    println!("capabilities:");
    for (cap, r) in &detected {
        match r {
            Ok(ev) => println!("  {cap:<8} yes  {ev}"),
            Err(why) => println!("  {cap:<8} no   {why}"),
        }
    }
    let selected: Vec<&Suite> = SUITES
        .iter()
        .filter(|s| args.suite.is_empty() || args.suite.iter().any(|n| n == s.name))
        .collect();
    for n in &args.suite {
        if !SUITES.iter().any(|s| s.name == n) {
            bail!(
                "no suite {n:?}; suites: {}",
                SUITES.iter().map(|s| s.name).collect::<Vec<_>>().join(", ")
            );
        }
    }
    if args.list {
        println!("suites:");
        for s in &selected {
            let needs: Vec<String> = s.needs.iter().map(Cap::to_string).collect();
            println!("  {:<12} needs [{}]: {}", s.name, needs.join(", "), s.about);
        }
        return Ok(());
    }

    let required: BTreeSet<Cap> = args.require.iter().copied().collect();
    let mut outcomes = Vec::new();
    for s in selected {
        let missing: Vec<String> = s
            .needs
            .iter()
            .filter(|c| !have(**c))
            .map(|c| {
                format!(
                    "{c}: {}",
                    detected
                        .iter()
                        .find(|(d, _)| d == c)
                        .and_then(|(_, r)| r.as_ref().err())
                        .cloned()
                        .unwrap_or_default()
                )
            })
            .collect();
        let required_here = s.needs.iter().any(|c| required.contains(c));
        if !missing.is_empty() {
            let prefix = if required_here {
                "REQUIRED but missing: "
            } else {
                ""
            };
            outcomes.push(Outcome::not_run(
                s.name,
                required_here,
                format!("{prefix}{}", missing.join("; ")),
            ));
            continue;
        }
        println!("\n=== suite {} — {}", s.name, s.about);
        let started = Instant::now();
        let mut o = match (&bundle, s.runner) {
            (Some(m), Runner::CargoTest { .. }) => run_bundled(m, s, required_here)?,
            (Some(_), Runner::Xtask { .. }) => Outcome::not_run(
                s.name,
                required_here,
                "not in the bundle: it builds at run time and needs cargo".into(),
            ),
            (None, _) => run_with_cargo(s, required_here, args.release)?,
        };
        o.secs = started.elapsed().as_secs_f64();
        outcomes.push(o);
    }
    // Required capabilities no selected suite uses still have to be present.
    let mut missing_required = Vec::new();
    for c in &required {
        if !have(*c) {
            missing_required.push(c.to_string());
        }
    }

    println!("\nhw-test summary:");
    println!(
        "  {:<12} {:<8} {:>6} {:>6} {:>8} {:>8}  note",
        "suite", "status", "passed", "failed", "skipped", "time"
    );
    for o in &outcomes {
        let status = match (o.ran, o.ok) {
            (true, true) => "PASS",
            (true, false) => "FAIL",
            (false, true) => "skipped",
            (false, false) => "FAIL",
        };
        let note = if o.skipped_tests.is_empty() {
            o.note.clone()
        } else {
            format!(
                "{}{}skipped inside: {}",
                o.note,
                if o.note.is_empty() { "" } else { "; " },
                o.skipped_tests.join("; ")
            )
        };
        println!(
            "  {:<12} {:<8} {:>6} {:>6} {:>8} {:>7.1}s  {}",
            o.suite,
            status,
            o.passed,
            o.failed,
            o.skipped_tests.len(),
            o.secs,
            note
        );
    }
    let failed: Vec<&str> = outcomes
        .iter()
        .filter(|o| !o.ok)
        .map(|o| o.suite.as_str())
        .collect();
    let (p, f) = outcomes
        .iter()
        .fold((0, 0), |(p, f), o| (p + o.passed, f + o.failed));
    let skipped = outcomes.iter().filter(|o| !o.ran && o.ok).count();
    println!("hw-test: {p} passed, {f} failed, {skipped} suites skipped");
    if !missing_required.is_empty() {
        bail!(
            "required capabilities missing: {}",
            missing_required.join(", ")
        );
    }
    if !failed.is_empty() {
        bail!("suites failed: {}", failed.join(", "));
    }
    Ok(())
}

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .map(Path::to_path_buf)
        .unwrap_or_else(|| PathBuf::from("."))
}

fn cargo() -> String {
    std::env::var("CARGO").unwrap_or_else(|_| "cargo".into())
}

/// Env for building a suite: the `cuda` feature links against the generated stub.
fn build_env(features: &[&str]) -> anyhow::Result<Vec<(String, String)>> {
    if !features.contains(&"cuda") || std::env::var_os("CUDA_LIBRARY_PATH").is_some() {
        return Ok(Vec::new());
    }
    let status = Command::new(cargo())
        .args(["run", "--quiet", "--package", "xtask", "--", "cuda-stub"])
        .current_dir(workspace_root())
        .status()
        .context("running cargo xtask cuda-stub")?;
    if !status.success() {
        bail!("cargo xtask cuda-stub failed");
    }
    let dir = target_dir()?.join("cuda-stub");
    Ok(vec![(
        "CUDA_LIBRARY_PATH".into(),
        dir.display().to_string(),
    )])
}

fn target_dir() -> anyhow::Result<PathBuf> {
    let out = Command::new(cargo())
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .current_dir(workspace_root())
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo metadata")?;
    let v: serde_json::Value =
        serde_json::from_slice(&out.stdout).context("parsing cargo metadata")?;
    v["target_directory"]
        .as_str()
        .map(PathBuf::from)
        .context("cargo metadata has no target_directory")
}

fn suite_env(s: &Suite, required: bool, skip_log: &Path) -> Vec<(String, String)> {
    let mut env: Vec<(String, String)> = s
        .env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    env.push(("VM_ACCEL_SKIP_LOG".into(), skip_log.display().to_string()));
    if required {
        env.push(("VM_ACCEL_REQUIRE_HW".into(), "1".into()));
    }
    env
}

fn skip_log_path(suite: &str) -> PathBuf {
    std::env::temp_dir().join(format!(
        "vm-accel-hw-test-{}-{suite}.skips",
        std::process::id()
    ))
}

fn read_skips(path: &Path) -> Vec<String> {
    let v = std::fs::read_to_string(path)
        .map(|t| t.lines().map(|l| l.replace('\t', ": ")).collect())
        .unwrap_or_default();
    let _ = std::fs::remove_file(path);
    v
}

/// Runs a command, echoing its output, and adds up libtest's `test result:` lines.
fn run_counting(cmd: &mut Command) -> anyhow::Result<(bool, u64, u64)> {
    cmd.stdout(Stdio::piped()).stderr(Stdio::inherit());
    let mut child = cmd.spawn().with_context(|| format!("starting {cmd:?}"))?;
    let (mut passed, mut failed) = (0, 0);
    if let Some(out) = child.stdout.take() {
        for line in BufReader::new(out).lines() {
            let line = line?;
            println!("{line}");
            if let Some((p, f)) = parse_result_line(&line) {
                passed += p;
                failed += f;
            }
        }
    }
    let status = child.wait()?;
    Ok((status.success(), passed, failed))
}

/// `test result: ok. 3 passed; 0 failed; ...` -> (3, 0).
fn parse_result_line(line: &str) -> Option<(u64, u64)> {
    let rest = line.trim().strip_prefix("test result: ")?;
    let num = |key: &str| -> Option<u64> {
        rest.split(';').find_map(|part| {
            let part = part
                .trim()
                .trim_start_matches("ok. ")
                .trim_start_matches("FAILED. ");
            part.strip_suffix(key).and_then(|n| n.trim().parse().ok())
        })
    };
    Some((num(" passed")?, num(" failed")?))
}

fn run_with_cargo(s: &Suite, required: bool, release: bool) -> anyhow::Result<Outcome> {
    let skip_log = skip_log_path(s.name);
    let mut cmd = Command::new(cargo());
    cmd.current_dir(workspace_root());
    match s.runner {
        Runner::CargoTest {
            package,
            tests,
            features,
        } => {
            cmd.args(["test", "--package", package]);
            for t in tests {
                cmd.args(["--test", t]);
            }
            if !features.is_empty() {
                cmd.args(["--features", &features.join(",")]);
            }
            if release {
                cmd.arg("--release");
            }
            cmd.envs(build_env(features)?);
        }
        Runner::Xtask { args } => {
            cmd.args(["run", "--quiet", "--package", "xtask", "--"])
                .args(args);
        }
    }
    cmd.envs(suite_env(s, required, &skip_log));
    let counts = run_counting(&mut cmd)?;
    Ok(Outcome::ran(
        s.name,
        counts,
        &skip_log,
        "exited with failure",
    ))
}

/// What `--bundle` wrote: per suite, the test executables (relative to the bundle).
#[derive(Debug, Serialize, Deserialize)]
struct Manifest {
    #[serde(skip)]
    dir: PathBuf,
    built_from: String,
    suites: Vec<BundledSuite>,
}

#[derive(Debug, Serialize, Deserialize)]
struct BundledSuite {
    name: String,
    binaries: Vec<String>,
}

impl Manifest {
    fn load(dir: &Path) -> anyhow::Result<Manifest> {
        let path = dir.join("manifest.json");
        let text = std::fs::read_to_string(&path)
            .with_context(|| format!("reading {}", path.display()))?;
        let mut m: Manifest =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        m.dir = dir.to_path_buf();
        Ok(m)
    }
}

fn run_bundled(m: &Manifest, s: &Suite, required: bool) -> anyhow::Result<Outcome> {
    let Some(b) = m.suites.iter().find(|b| b.name == s.name) else {
        return Ok(Outcome::not_run(
            s.name,
            required,
            "not in this bundle".into(),
        ));
    };
    let skip_log = skip_log_path(s.name);
    let (mut ok, mut passed, mut failed) = (true, 0, 0);
    for bin in &b.binaries {
        let mut cmd = Command::new(m.dir.join(bin));
        cmd.current_dir(&m.dir)
            .envs(suite_env(s, required, &skip_log));
        let (o, p, f) = run_counting(&mut cmd)?;
        ok &= o;
        passed += p;
        failed += f;
    }
    Ok(Outcome::ran(
        s.name,
        (ok, passed, failed),
        &skip_log,
        "a test binary exited with failure",
    ))
}

/// Builds every bundleable suite's tests (release) and this program into `dir`.
fn make_bundle(dir: &Path, args: &Args) -> anyhow::Result<()> {
    let bin_dir = dir.join("bin");
    std::fs::create_dir_all(&bin_dir).with_context(|| format!("creating {}", bin_dir.display()))?;
    let mut manifest = Manifest {
        dir: dir.to_path_buf(),
        built_from: git_describe(),
        suites: Vec::new(),
    };
    for s in SUITES
        .iter()
        .filter(|s| args.suite.is_empty() || args.suite.iter().any(|n| n == s.name))
    {
        let Runner::CargoTest {
            package,
            tests,
            features,
        } = s.runner
        else {
            continue;
        };
        let mut cmd = Command::new(cargo());
        cmd.current_dir(workspace_root()).args([
            "test",
            "--release",
            "--no-run",
            "--message-format=json-render-diagnostics",
            "--package",
            package,
        ]);
        for t in tests {
            cmd.args(["--test", t]);
        }
        if !features.is_empty() {
            cmd.args(["--features", &features.join(",")]);
        }
        cmd.envs(build_env(features)?).stderr(Stdio::inherit());
        let out = cmd
            .output()
            .with_context(|| format!("building suite {}", s.name))?;
        if !out.status.success() {
            bail!("building suite {} failed", s.name);
        }
        let mut binaries = Vec::new();
        for line in String::from_utf8_lossy(&out.stdout).lines() {
            let Ok(v) = serde_json::from_str::<serde_json::Value>(line) else {
                continue;
            };
            if v["reason"] != "compiler-artifact" || v["profile"]["test"] != true {
                continue;
            }
            let Some(exe) = v["executable"].as_str() else {
                continue;
            };
            let name = format!(
                "{}-{}",
                s.name,
                v["target"]["name"].as_str().unwrap_or("test")
            );
            std::fs::copy(exe, bin_dir.join(&name)).with_context(|| format!("copying {exe}"))?;
            strip_debug(&bin_dir.join(&name));
            binaries.push(format!("bin/{name}"));
        }
        println!("bundled suite {}: {}", s.name, binaries.join(" "));
        manifest.suites.push(BundledSuite {
            name: s.name.into(),
            binaries,
        });
    }
    let me = std::env::current_exe().context("locating the xtask binary")?;
    std::fs::copy(&me, dir.join("xtask")).context("copying the xtask binary")?;
    strip_debug(&dir.join("xtask"));
    std::fs::write(
        dir.join("manifest.json"),
        serde_json::to_string_pretty(&manifest)?,
    )?;
    let script = dir.join("run.sh");
    std::fs::write(&script, "#!/bin/sh\n# Runs vm-accel's hardware suites from prebuilt binaries (made by `cargo xtask hw-test --bundle`).\ncd \"$(dirname \"$0\")\" && exec ./xtask hw-test --from-bundle . \"$@\"\n")?;
    use std::os::unix::fs::PermissionsExt;
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755))?;
    println!(
        "bundle ready: {} (run {} on the target host)",
        dir.display(),
        script.display()
    );
    Ok(())
}

/// Drops debug info (symbols stay, for backtraces): a bundle travels, and debug info is
/// most of its size.
fn strip_debug(path: &Path) {
    match Command::new("strip")
        .arg("--strip-debug")
        .arg(path)
        .status()
    {
        Ok(s) if s.success() => {}
        other => log::warn!("strip {}: {other:?} (bundle stays larger)", path.display()),
    }
}

fn git_describe() -> String {
    Command::new("git")
        .args(["describe", "--always", "--dirty"])
        .current_dir(workspace_root())
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_libtest_summaries() {
        assert_eq!(
            parse_result_line("test result: ok. 3 passed; 0 failed; 1 ignored; 0 measured"),
            Some((3, 0))
        );
        assert_eq!(
            parse_result_line("test result: FAILED. 2 passed; 1 failed; 0 ignored"),
            Some((2, 1))
        );
        assert_eq!(parse_result_line("running 3 tests"), None);
    }

    #[test]
    fn suite_names_are_unique() {
        let names: BTreeSet<&str> = SUITES.iter().map(|s| s.name).collect();
        assert_eq!(names.len(), SUITES.len());
    }
}

//! `vm-accel bind|unbind|restore`: hand a device and its IOMMU group to vfio-pci and give it
//! back, through vm-vfio's binding lifecycle (rollback on any failure, a record under
//! /run/vm-accel, one process at a time).

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use serde::Serialize;
use vm_pci::Bdf;
use vm_vfio::bind::{
    Action, BindError, BindPlan, Binder, KernelOp, Outcome, Paths, Record, RecordStore, SysfsKernel,
};

use super::table::clean;
use super::{warn_line, CmdResult, Global, EXIT_ERROR};

/// Where the record lives and how long to wait; shared by the three commands.
#[derive(Debug, Clone, clap::Args)]
pub struct RunOpts {
    /// Directory of the binding record and lock.
    #[arg(long, env = "VM_ACCEL_RUN_DIR", default_value = vm_vfio::bind::record::DEFAULT_RUN_DIR)]
    pub run_dir: PathBuf,
    /// How long to wait for a driver to take a device after a probe (milliseconds).
    #[arg(long, default_value_t = 5000)]
    pub probe_timeout_ms: u64,
    /// How long to wait for another vm-accel process to release the lock (milliseconds).
    #[arg(long, default_value_t = 10000)]
    pub lock_timeout_ms: u64,
}

#[derive(Debug, clap::Args)]
pub struct BindArgs {
    /// Device address, e.g. 0000:41:00.0 (the rest of its IOMMU group is bound with it).
    pub bdf: Bdf,
    /// Print the exact sysfs writes, in order, without doing them.
    #[arg(long)]
    pub dry_run: bool,
    /// Bind although this readiness check (an id from `vm-accel check`, e.g. `reset`)
    /// fails; repeat for several. The failure is still logged.
    #[arg(long = "allow", value_name = "CHECK", value_parser = check_id)]
    pub allow: Vec<String>,
    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Debug, clap::Args)]
pub struct UnbindArgs {
    /// Device address (any device of a group bound by `vm-accel bind` releases the group).
    pub bdf: Bdf,
    #[command(flatten)]
    pub run: RunOpts,
}

#[derive(Debug, clap::Args)]
pub struct RestoreArgs {
    /// List what the record says would be restored, without doing it.
    #[arg(long)]
    pub dry_run: bool,
    #[command(flatten)]
    pub run: RunOpts,
}

/// `--allow` takes a check id `vm-accel check` prints; a typo must not silently allow
/// nothing (or, worse, look as if it allowed something).
fn check_id(s: &str) -> Result<String, String> {
    if vm_pci::readiness::CHECK_IDS.contains(&s) {
        Ok(s.to_string())
    } else {
        Err(format!(
            "unknown check {s:?}; checks are: {}",
            vm_pci::readiness::CHECK_IDS.join(", ")
        ))
    }
}

fn binder(g: &Global, run: &RunOpts, allow: &[String]) -> Binder<SysfsKernel> {
    // Modules are loaded only for the live kernel: a fixture root is not it. What the root
    // is decides, not how it is spelled (`/sys/../sys` is the live kernel too).
    let kernel = if vm_pci::SysfsRoot::new(&g.sysfs_root).is_live() {
        SysfsKernel::live()
    } else {
        SysfsKernel::for_tree()
    };
    let store = RecordStore::new(&run.run_dir)
        .with_lock_timeout(Duration::from_millis(run.lock_timeout_ms));
    Binder::new(Paths::new(&g.sysfs_root), kernel, store)
        .with_probe_timeout(Duration::from_millis(run.probe_timeout_ms))
        .with_readiness(Some(vm_vfio::bind::vm_pci_readiness_allowing(
            allow.to_vec(),
        )))
}

/// `bind --dry-run --json` (schema `vm-accel.bind-plan/v1`).
#[derive(Debug, Serialize)]
struct PlanOutput<'a> {
    schema: &'static str,
    #[serde(flatten)]
    plan: &'a BindPlan,
    /// `ops` in shell form, as printed without --json.
    commands: Vec<String>,
    /// True when `bind` would refuse (see `refusals`).
    refused: bool,
}

/// `bind|unbind --json` (schemas `vm-accel.bind/v1`, `vm-accel.unbind/v1`).
#[derive(Debug, Serialize)]
struct ResultOutput<'a> {
    schema: &'static str,
    ok: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    outcome: Option<&'a Outcome>,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
    /// Readiness failures when the bind was refused.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    refusals: Vec<String>,
}

/// `restore --json` (schema `vm-accel.restore/v1`).
#[derive(Debug, Serialize)]
struct RestoreOutput<'a> {
    schema: &'static str,
    ok: bool,
    dry_run: bool,
    #[serde(skip_serializing_if = "Option::is_none")]
    record: Option<&'a Record>,
    restored: Vec<&'a Outcome>,
    failed: Vec<String>,
}

fn emit_json<T: Serialize>(out: &mut dyn Write, v: &T) -> anyhow::Result<()> {
    writeln!(out, "{}", serde_json::to_string_pretty(v)?)?;
    Ok(())
}

fn state_word(s: &vm_vfio::bind::DriverState) -> String {
    let d = clean(s.driver.as_deref().unwrap_or("(no driver)"));
    match &s.driver_override {
        Some(o) => format!("{d} [override {}]", clean(o)),
        None => d.into_owned(),
    }
}

fn print_plan(out: &mut dyn Write, plan: &BindPlan) -> anyhow::Result<()> {
    let group = plan.iommu_group.map_or_else(
        || "no IOMMU group".to_string(),
        |g| format!("IOMMU group {g}"),
    );
    writeln!(out, "bind {} ({group}) to vfio-pci:", plan.target)?;
    for d in &plan.devices {
        let what = match d.action {
            Action::Bind => format!("{} -> vfio-pci", state_word(&d.original)),
            Action::AlreadyVfio => "already on vfio-pci, left as is".to_string(),
            Action::Bridge => format!("bridge, stays on {}", state_word(&d.original)),
        };
        writeln!(out, "  {}  {what}", d.bdf)?;
    }
    if !plan.refusals.is_empty() {
        writeln!(out, "refused:")?;
        for r in &plan.refusals {
            writeln!(out, "  - {}", clean(r))?;
        }
        return Ok(());
    }
    if let Some(n) = &plan.note {
        writeln!(out, "nothing to do: {n}")?;
        return Ok(());
    }
    let ops = plan.ops();
    if ops.is_empty() {
        writeln!(out, "nothing to write")?;
    } else {
        writeln!(
            out,
            "sysfs writes, in order (each followed by a read-back):"
        )?;
        for op in ops {
            writeln!(out, "  {op}")?;
        }
    }
    Ok(())
}

fn print_outcome(out: &mut dyn Write, verb: &str, o: &Outcome) -> anyhow::Result<()> {
    let group = o
        .iommu_group
        .map_or_else(String::new, |g| format!(" (IOMMU group {g})"));
    if !o.changed {
        writeln!(out, "{} {verb}{group}: nothing changed", o.target)?;
    } else {
        writeln!(out, "{} {verb}{group}:", o.target)?;
    }
    for d in &o.devices {
        writeln!(
            out,
            "  {}  {} -> {}",
            d.bdf,
            state_word(&d.before),
            d.after
                .as_ref()
                .map_or_else(|| "(gone from the bus)".to_string(), state_word)
        )?;
    }
    if let Some(n) = &o.note {
        writeln!(out, "  note: {n}")?;
    }
    Ok(())
}

/// Prints a bind/unbind result (`verb` says what happened on success) in `schema`.
fn report_result(
    g: &Global,
    out: &mut dyn Write,
    schema: &'static str,
    verb: &str,
    result: Result<Outcome, BindError>,
) -> CmdResult {
    let o = match result {
        Ok(o) => o,
        Err(e) => return report_error(g, out, schema, &e),
    };
    if g.json {
        emit_json(
            out,
            &ResultOutput {
                schema,
                ok: true,
                outcome: Some(&o),
                error: None,
                refusals: Vec::new(),
            },
        )?;
    } else {
        print_outcome(out, verb, &o)?;
    }
    Ok(ExitCode::SUCCESS)
}

/// The exit status of a lifecycle error (docs/json-schema.md): 1 when the operation was
/// refused or failed and the host state is described (refusals, a rolled-back bind, an
/// unfinished earlier operation, a device vm-accel did not bind); 2 for errors (no such
/// device, unreadable sysfs, a bad or malformed record, the lock held by another process).
fn exit_code(e: &BindError) -> u8 {
    match e {
        BindError::Refused { .. }
        | BindError::Failed { .. }
        | BindError::ReleaseFailed { .. }
        | BindError::Interrupted { .. }
        | BindError::NotRecorded { .. } => 1,
        BindError::Read { .. } | BindError::Record(_) => EXIT_ERROR,
    }
}

/// Reports a lifecycle error with the status [`exit_code`] gives it: JSON in `schema` with
/// `ok: false` and `error` on stdout (with --json), the message on stderr.
fn report_error(g: &Global, out: &mut dyn Write, schema: &'static str, e: &BindError) -> CmdResult {
    let refusals = match e {
        BindError::Refused { reasons, .. } => reasons.clone(),
        _ => Vec::new(),
    };
    if g.json {
        emit_json(
            out,
            &ResultOutput {
                schema,
                ok: false,
                outcome: None,
                error: Some(e.to_string()),
                refusals,
            },
        )?;
    }
    warn_line(format_args!("vm-accel: {}", clean(&e.to_string())));
    Ok(ExitCode::from(exit_code(e)))
}

pub fn bind(g: &Global, a: BindArgs) -> CmdResult {
    // SAFETY: geteuid has no preconditions and cannot fail.
    let root = unsafe { libc::geteuid() } == 0;
    bind_to(g, a, &mut std::io::stdout().lock(), root)
}

/// Binding changes the host: it needs root, unless the record goes to a directory the
/// user chose (`--run-dir`, with a tree they may write as `--sysfs-root`).
fn needs_root(a: &BindArgs, root: bool) -> bool {
    !a.dry_run && !root && a.run.run_dir == Path::new(vm_vfio::bind::record::DEFAULT_RUN_DIR)
}

fn bind_to(g: &Global, a: BindArgs, out: &mut dyn Write, root: bool) -> CmdResult {
    let mut b = binder(g, &a.run, &a.allow);
    if needs_root(&a, root) {
        // Show what would stop the bind anyway, then why this user cannot do it.
        let plan = match b.preview(a.bdf) {
            Ok(p) => p,
            Err(e) => return report_error(g, out, "vm-accel.bind/v1", &e),
        };
        let msg =
            "vm-accel bind needs root (or --run-dir DIR with a --sysfs-root tree you can write)";
        if g.json {
            emit_json(
                out,
                &ResultOutput {
                    schema: "vm-accel.bind/v1",
                    ok: false,
                    outcome: None,
                    error: Some(msg.to_string()),
                    refusals: plan.refusals,
                },
            )?;
        } else {
            for r in &plan.refusals {
                writeln!(out, "refused: {}", clean(r))?;
            }
        }
        warn_line(format_args!("vm-accel: {msg}"));
        return Ok(ExitCode::from(EXIT_ERROR));
    }
    if a.dry_run {
        let plan = match b.preview(a.bdf) {
            Ok(p) => p,
            Err(e) => return report_error(g, out, "vm-accel.bind-plan/v1", &e),
        };
        let refused = !plan.refusals.is_empty();
        if g.json {
            emit_json(
                out,
                &PlanOutput {
                    schema: "vm-accel.bind-plan/v1",
                    plan: &plan,
                    commands: plan.ops().iter().map(KernelOp::to_string).collect(),
                    refused,
                },
            )?;
        } else {
            print_plan(out, &plan)?;
        }
        return Ok(if refused {
            ExitCode::from(1)
        } else {
            ExitCode::SUCCESS
        });
    }
    report_result(
        g,
        out,
        "vm-accel.bind/v1",
        "bound to vfio-pci",
        // The library's typed lifecycle, as a VMM would call it.
        crate::prepare(&mut b, a.bdf).map(crate::Prepared::into_outcome),
    )
}

pub fn unbind(g: &Global, a: UnbindArgs) -> CmdResult {
    unbind_to(g, a, &mut std::io::stdout().lock())
}

fn unbind_to(g: &Global, a: UnbindArgs, out: &mut dyn Write) -> CmdResult {
    let mut b = binder(g, &a.run, &[]);
    let result = b.release(a.bdf);
    report_result(
        g,
        out,
        "vm-accel.unbind/v1",
        "returned to its original drivers",
        result,
    )
}

pub fn restore(g: &Global, a: RestoreArgs) -> CmdResult {
    restore_to(g, a, &mut std::io::stdout().lock())
}

fn restore_to(g: &Global, a: RestoreArgs, out: &mut dyn Write) -> CmdResult {
    let mut b = binder(g, &a.run, &[]);
    if a.dry_run {
        let rec = match b.record() {
            Ok(r) => r,
            Err(e) => return report_error(g, out, "vm-accel.restore/v1", &e),
        };
        if g.json {
            emit_json(
                out,
                &RestoreOutput {
                    schema: "vm-accel.restore/v1",
                    ok: true,
                    dry_run: true,
                    record: Some(&rec),
                    restored: Vec::new(),
                    failed: Vec::new(),
                },
            )?;
        } else if rec.bindings.is_empty() {
            writeln!(out, "nothing recorded under {}", a.run.run_dir.display())?;
        } else {
            for bnd in rec.bindings.iter().rev() {
                writeln!(out, "{} ({:?}):", bnd.target, bnd.phase)?;
                for d in &bnd.devices {
                    writeln!(out, "  {}  back to {}", d.bdf, state_word(&d.original))?;
                }
            }
        }
        return Ok(ExitCode::SUCCESS);
    }
    let results = match b.restore() {
        Ok(r) => r,
        Err(e) => return report_error(g, out, "vm-accel.restore/v1", &e),
    };
    let restored: Vec<&Outcome> = results.iter().filter_map(|r| r.as_ref().ok()).collect();
    let failed: Vec<String> = results
        .iter()
        .filter_map(|r| r.as_ref().err().map(|e| e.to_string()))
        .collect();
    let ok = failed.is_empty();
    if g.json {
        emit_json(
            out,
            &RestoreOutput {
                schema: "vm-accel.restore/v1",
                ok,
                dry_run: false,
                record: None,
                restored,
                failed,
            },
        )?;
    } else {
        if results.is_empty() {
            writeln!(out, "nothing recorded under {}", a.run.run_dir.display())?;
        }
        for o in &restored {
            print_outcome(out, "restored", o)?;
        }
        for f in &failed {
            warn_line(format_args!("vm-accel: {}", clean(f)));
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;
    use vm_vfio::bind::sim::{SimDevice, SimHost};

    struct Fixture {
        dir: tempfile::TempDir,
    }

    impl Fixture {
        fn new(sim: SimHost) -> Fixture {
            let dir = tempfile::tempdir().unwrap();
            std::fs::create_dir(dir.path().join("sys")).unwrap();
            sim.build(&dir.path().join("sys")).unwrap();
            Fixture { dir }
        }
        fn sys(&self) -> PathBuf {
            self.dir.path().join("sys")
        }
        fn run_dir(&self) -> PathBuf {
            self.dir.path().join("run")
        }
        /// Parses a command line the way `vm-accel` does and runs it, capturing stdout.
        fn run(&self, args: &[&str]) -> (ExitCode, String) {
            let sys = self.sys();
            let run = self.run_dir();
            let mut argv = vec!["vm-accel", "--sysfs-root", sys.to_str().unwrap()];
            argv.extend_from_slice(args);
            argv.extend_from_slice(&[
                "--run-dir",
                run.to_str().unwrap(),
                "--probe-timeout-ms",
                "100",
            ]);
            let cli = super::super::Cli::try_parse_from(argv).unwrap();
            let mut out = Vec::new();
            let code = match cli.command {
                super::super::Command::Bind(a) => bind_to(&cli.global, a, &mut out, true),
                super::super::Command::Unbind(a) => unbind_to(&cli.global, a, &mut out),
                super::super::Command::Restore(a) => restore_to(&cli.global, a, &mut out),
                _ => unreachable!(),
            }
            .unwrap();
            (code, String::from_utf8(out).unwrap())
        }
        fn state(&self, bdf: &str) -> vm_vfio::bind::DriverState {
            Paths::new(self.sys())
                .driver_state(bdf.parse().unwrap())
                .unwrap()
        }
    }

    fn gpu_host() -> SimHost {
        SimHost::gpu_with_audio()
    }

    #[test]
    fn dry_run_prints_the_exact_writes_and_changes_nothing() {
        let f = Fixture::new(gpu_host());
        let (code, text) = f.run(&["bind", "0000:41:00.0", "--dry-run"]);
        assert_eq!(code, ExitCode::SUCCESS, "{text}");
        let sys = f.sys().display().to_string();
        let want = format!(
            "bind 0000:41:00.0 (IOMMU group 5) to vfio-pci:
  0000:41:00.0  nvidia -> vfio-pci
  0000:41:00.1  snd_hda_intel -> vfio-pci
  0000:40:01.0  bridge, stays on pcieport
sysfs writes, in order (each followed by a read-back):
  modprobe vfio-pci
  echo vfio-pci > {sys}/bus/pci/devices/0000:41:00.0/driver_override
  echo 0000:41:00.0 > {sys}/bus/pci/drivers/nvidia/unbind
  echo 0000:41:00.0 > {sys}/bus/pci/drivers_probe
  echo vfio-pci > {sys}/bus/pci/devices/0000:41:00.1/driver_override
  echo 0000:41:00.1 > {sys}/bus/pci/drivers/snd_hda_intel/unbind
  echo 0000:41:00.1 > {sys}/bus/pci/drivers_probe
"
        );
        assert_eq!(text, want);
        assert_eq!(f.state("0000:41:00.0").driver.as_deref(), Some("nvidia"));
        assert!(!f.run_dir().join("bindings.json").exists());
    }

    #[test]
    fn dry_run_json() {
        let f = Fixture::new(gpu_host().loaded("vfio-pci"));
        let (code, text) = f.run(&["bind", "0000:41:00.0", "--dry-run", "--json"]);
        assert_eq!(code, ExitCode::SUCCESS);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], "vm-accel.bind-plan/v1");
        assert_eq!(v["target"], "0000:41:00.0");
        assert_eq!(v["iommu_group"], 5);
        assert_eq!(v["load_module"], false);
        assert_eq!(v["refused"], false);
        assert_eq!(v["devices"][0]["action"], "bind");
        assert_eq!(v["devices"][0]["original"]["driver"], "nvidia");
        assert_eq!(v["devices"][2]["action"], "bridge");
        assert_eq!(v["devices"][0]["ops"][0]["op"], "write");
        assert_eq!(v["commands"].as_array().unwrap().len(), 6);
    }

    #[test]
    fn dry_run_of_a_refused_device_exits_1_with_reasons() {
        let mut d = SimDevice::endpoint("0000:41:00.0", 0, Some("nvidia"));
        d.iommu_group = None;
        let f = Fixture::new(SimHost::new().device(d));
        let (code, text) = f.run(&["bind", "0000:41:00.0", "--dry-run"]);
        assert_eq!(code, ExitCode::from(1));
        assert!(
            text.contains("refused:") && text.contains("no IOMMU group"),
            "{text}"
        );
        let (code, text) = f.run(&["bind", "0000:41:00.0", "--json"]);
        assert_eq!(code, ExitCode::from(1));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ok"], false);
        assert!(v["refusals"][0]
            .as_str()
            .unwrap()
            .contains("no IOMMU group"));
    }

    #[test]
    fn allow_accepts_one_named_readiness_failure() {
        let f = Fixture::new(gpu_host());
        std::fs::write(f.sys().join("cmdline"), "intel_iommu=on intremap=off\n").unwrap();
        let (code, text) = f.run(&["bind", "0000:41:00.0", "--dry-run"]);
        assert_eq!(code, ExitCode::from(1));
        assert!(text.contains("interrupt_remapping: disabled"), "{text}");
        assert!(text.contains("--allow interrupt_remapping"), "{text}");
        let (code, text) = f.run(&["bind", "0000:41:00.0", "--dry-run", "--allow", "reset"]);
        assert_eq!(code, ExitCode::from(1), "{text}");
        let (code, text) = f.run(&[
            "bind",
            "0000:41:00.0",
            "--dry-run",
            "--allow",
            "interrupt_remapping",
        ]);
        assert_eq!(code, ExitCode::SUCCESS, "{text}");
    }

    #[test]
    fn a_real_bind_on_a_plain_tree_times_out_and_rolls_back() {
        // Writes to a plain directory tree move no driver links: the read-back must notice,
        // and the rollback must leave every file as it was.
        let f = Fixture::new(gpu_host().loaded("vfio-pci"));
        let before = (f.state("0000:41:00.0"), f.state("0000:41:00.1"));
        let (code, text) = f.run(&["bind", "0000:41:00.0", "--json"]);
        assert_eq!(code, ExitCode::from(1));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        let err = v["error"].as_str().unwrap();
        assert!(
            err.contains("expected driver vfio-pci within 100ms"),
            "{err}"
        );
        assert!(err.contains("rolled back"), "{err}");
        assert_eq!((f.state("0000:41:00.0"), f.state("0000:41:00.1")), before);
        assert!(!f.run_dir().join("bindings.json").exists());
    }

    #[test]
    fn modules_are_never_loaded_for_a_fixture_root() {
        let f = Fixture::new(gpu_host());
        let (code, text) = f.run(&["bind", "0000:41:00.0", "--json"]);
        assert_eq!(code, ExitCode::from(1));
        assert!(
            text.contains("the sysfs root is not the live kernel"),
            "{text}"
        );
    }

    #[test]
    fn unbind_and_restore_with_nothing_recorded() {
        let f = Fixture::new(gpu_host());
        let (code, text) = f.run(&["unbind", "0000:41:00.0", "--json"]);
        assert_eq!(code, ExitCode::from(1));
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert!(v["error"]
            .as_str()
            .unwrap()
            .contains("was not bound by vm-accel"));
        let (code, text) = f.run(&["restore"]);
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(text.starts_with("nothing recorded under"), "{text}");
        let (code, text) = f.run(&["restore", "--dry-run", "--json"]);
        assert_eq!(code, ExitCode::SUCCESS);
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["schema"], "vm-accel.restore/v1");
        assert_eq!(v["record"]["bindings"].as_array().unwrap().len(), 0);
    }

    #[test]
    fn restore_puts_back_what_a_crashed_bind_left() {
        // A record as a killed `vm-accel bind` leaves it, and the half-done writes.
        let f = Fixture::new(gpu_host().loaded("vfio-pci"));
        std::fs::create_dir_all(f.run_dir()).unwrap();
        std::fs::write(
            f.run_dir().join("bindings.json"),
            r#"{"version":1,"bindings":[{"target":"0000:41:00.0","iommu_group":5,"phase":"binding",
            "devices":[{"bdf":"0000:41:00.0","original":{"driver":"nvidia","driver_override":null}}],
            "pid":1,"created":0}]}"#,
        )
        .unwrap();
        let ov = Paths::new(f.sys()).driver_override("0000:41:00.0".parse().unwrap());
        std::fs::write(&ov, "vfio-pci\n").unwrap();
        let (code, text) = f.run(&["restore", "--dry-run"]);
        assert_eq!(code, ExitCode::SUCCESS);
        assert!(text.contains("0000:41:00.0  back to nvidia"), "{text}");
        let (code, text) = f.run(&["restore", "--json"]);
        assert_eq!(code, ExitCode::SUCCESS, "{text}");
        let v: serde_json::Value = serde_json::from_str(&text).unwrap();
        assert_eq!(v["ok"], true);
        assert_eq!(v["restored"][0]["devices"][0]["after"]["driver"], "nvidia");
        assert_eq!(f.state("0000:41:00.0").driver_override, None);
        assert!(!f.run_dir().join("bindings.json").exists());
    }

    #[test]
    fn outcome_in_words() {
        use vm_vfio::bind::{DeviceOutcome, DriverState};
        let o = Outcome {
            target: "0000:41:00.0".parse().unwrap(),
            iommu_group: Some(5),
            changed: true,
            devices: vec![DeviceOutcome {
                bdf: "0000:41:00.0".parse().unwrap(),
                before: DriverState {
                    driver: Some("nvidia".into()),
                    driver_override: None,
                },
                after: Some(DriverState {
                    driver: Some("vfio-pci".into()),
                    driver_override: Some("vfio-pci".into()),
                }),
            }],
            note: None,
        };
        let mut out = Vec::new();
        print_outcome(&mut out, "bound to vfio-pci", &o).unwrap();
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "0000:41:00.0 bound to vfio-pci (IOMMU group 5):\n  0000:41:00.0  nvidia -> vfio-pci [override vfio-pci]\n"
        );
    }

    #[test]
    fn bad_bdf_is_a_usage_error() {
        let e =
            super::super::Cli::try_parse_from(["vm-accel", "bind", "0000:00:20.0"]).unwrap_err();
        assert!(e.to_string().contains("device must be below 0x20"), "{e}");
    }
}

//! Handing a device (and the rest of its IOMMU group) to vfio-pci, and giving it back.
//!
//! The kernel's documented sequence, per endpoint of the group (bridges stay with their
//! drivers): save the driver and driver_override, write `driver_override = vfio-pci`, unbind
//! from the current driver, write the BDF to `drivers_probe`, then read back until vfio-pci
//! owns it. Every write goes through a [`Kernel`]; every outcome is verified by reading sysfs.
//! Any failure rolls back everything done so far, in reverse, so each device ends on exactly
//! the driver and driver_override it had. A write-ahead [`record`] lets `restore` finish the
//! job after a crash, and a host-wide lock keeps two processes from interleaving.

pub mod kernel;
pub mod record;
pub mod sim;
pub mod state;

use std::io;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use vm_pci::Bdf;

pub use kernel::{confine, Kernel, KernelOp, SysfsKernel};
pub use record::{BindingRecord, DeviceRecord, LockGuard, Phase, Record, RecordError, RecordStore};
pub use state::{valid_driver_name, DriverState, Paths, VFIO_PCI};

/// One failed step, naming the device, the operation and the OS error.
#[derive(Debug, thiserror::Error)]
pub enum StepError {
    #[error("{bdf}: `{op}` failed: {source}")]
    /// A write or module load failed.
    Op {
        /// The device.
        bdf: Bdf,
        /// The operation.
        op: KernelOp,
        #[source]
        /// The OS error.
        source: io::Error,
    },
    #[error("{bdf}: cannot read its driver state: {source}")]
    /// The device's driver state could not be read.
    Read {
        /// The device.
        bdf: Bdf,
        #[source]
        /// The OS error.
        source: io::Error,
    },
    #[error("the vfio-pci driver is not available: {reason}")]
    /// vfio-pci cannot be loaded.
    Module {
        /// Why it could not be loaded or is missing.
        reason: String,
    },
    #[error("{bdf}: expected driver {want} within {timeout:?}, found {found}")]
    /// The device did not end on the expected driver in time.
    Verify {
        /// The device.
        bdf: Bdf,
        /// The driver it should have.
        want: String,
        /// What it has.
        found: DriverState,
        /// How long it was given.
        timeout: Duration,
    },
    #[error("{bdf}: its original driver {driver} is no longer registered (module unloaded?); load it and run `vm-accel restore`")]
    /// The original driver disappeared, so the device cannot go back to it.
    DriverGone {
        /// The device.
        bdf: Bdf,
        /// The driver that is no longer registered.
        driver: String,
    },
}

impl StepError {
    /// The device the step was about, when it was about one.
    pub fn bdf(&self) -> Option<Bdf> {
        match self {
            StepError::Op { bdf, .. }
            | StepError::Read { bdf, .. }
            | StepError::Verify { bdf, .. }
            | StepError::DriverGone { bdf, .. } => Some(*bdf),
            StepError::Module { .. } => None,
        }
    }
}

fn list(errs: &[StepError]) -> String {
    errs.iter()
        .map(|e| e.to_string())
        .collect::<Vec<_>>()
        .join("; ")
}

/// Errors of the binding lifecycle.
#[derive(Debug, thiserror::Error)]
pub enum BindError {
    #[error("refusing to bind {bdf} to vfio-pci: {}", reasons.join("; "))]
    /// A readiness check failed; nothing was written.
    Refused {
        /// The device asked for.
        bdf: Bdf,
        /// Each failed readiness check, in words.
        reasons: Vec<String>,
    },
    #[error("{bdf}: cannot read sysfs: {source}")]
    /// Sysfs could not be read.
    Read {
        /// The device.
        bdf: Bdf,
        #[source]
        /// The OS error.
        source: io::Error,
    },
    #[error(transparent)]
    /// The record or the lock failed.
    Record(#[from] RecordError),
    #[error("binding {bdf} failed: {cause}; {}", if rollback_failures.is_empty() {
        "rolled back: every device is on its original driver".to_string()
    } else {
        format!("ROLLBACK INCOMPLETE ({}); the record is kept for `vm-accel restore`", list(rollback_failures))
    })]
    /// A step failed; what was done was rolled back (or the record kept for restore).
    Failed {
        /// The device asked for.
        bdf: Bdf,
        #[source]
        /// The step that failed.
        cause: Box<StepError>,
        /// Undo steps that failed too (empty: fully rolled back).
        rollback_failures: Vec<StepError>,
    },
    #[error("{bdf} was not bound by vm-accel (no record under {dir}); it has {state}")]
    /// Unbind of a device vm-accel did not bind.
    NotRecorded {
        /// The device.
        bdf: Bdf,
        /// The run directory searched.
        dir: PathBuf,
        /// Its driver state now.
        state: DriverState,
    },
    #[error("an earlier vm-accel operation on {bdf} did not finish ({phase:?}); run `vm-accel restore` first")]
    /// An earlier operation on the device did not finish.
    Interrupted {
        /// The device asked for.
        bdf: Bdf,
        /// Where the earlier operation stopped.
        phase: Phase,
    },
    #[error("returning {bdf} to its original drivers failed: {}; the record is kept for `vm-accel restore`", list(failures))]
    /// Returning the devices to their drivers failed.
    ReleaseFailed {
        /// The device asked for.
        bdf: Bdf,
        /// Every step that failed.
        failures: Vec<StepError>,
    },
}

/// What `prepare` will do with one device of the group.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    /// Move to vfio-pci.
    Bind,
    /// Already on vfio-pci: left as it is, and not recorded (vm-accel did not change it).
    AlreadyVfio,
    /// A bridge: stays with its driver.
    Bridge,
}

/// One device of the group in a [`BindPlan`].
#[derive(Debug, Clone, serde::Serialize)]
pub struct PlannedDevice {
    /// The device.
    pub bdf: Bdf,
    /// Its driver and driver_override now.
    pub original: DriverState,
    /// What bind does with it.
    pub action: Action,
    /// The writes, in order (empty unless `action` is `Bind`).
    pub ops: Vec<KernelOp>,
}

/// Everything `prepare` would do, computed from the current sysfs state without changing it.
#[derive(Debug, Clone, serde::Serialize)]
pub struct BindPlan {
    /// The device asked for.
    pub target: Bdf,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// Why binding is refused; empty when it may go ahead.
    pub refusals: Vec<String>,
    /// `modprobe vfio-pci` is needed first.
    pub load_module: bool,
    /// Every device of the group, the target first.
    pub devices: Vec<PlannedDevice>,
    /// Why there is nothing to do, when a real run would change nothing.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub note: Option<String>,
}

impl BindPlan {
    /// What the record must hold before the first write: each device this plan binds,
    /// with the driver state to restore.
    pub fn bind_records(&self) -> Vec<DeviceRecord> {
        self.devices
            .iter()
            .filter(|d| d.action == Action::Bind)
            .map(|d| DeviceRecord {
                bdf: d.bdf,
                original: d.original.clone(),
            })
            .collect()
    }

    /// Every kernel operation, in execution order (what `--dry-run` prints).
    pub fn ops(&self) -> Vec<KernelOp> {
        let mut ops = Vec::new();
        if self.load_module {
            ops.push(KernelOp::LoadModule {
                module: VFIO_PCI.to_string(),
            });
        }
        for d in &self.devices {
            ops.extend(d.ops.iter().cloned());
        }
        ops
    }
}

/// A device's state before and after an operation.
#[derive(Debug, Clone, serde::Serialize)]
pub struct DeviceOutcome {
    /// The device.
    pub bdf: Bdf,
    /// Its state before.
    pub before: DriverState,
    /// `None` when the device is no longer on the bus.
    pub after: Option<DriverState>,
}

/// What `prepare`/`release` did.
#[derive(Debug, Clone, serde::Serialize)]
pub struct Outcome {
    /// The device asked for.
    pub target: Bdf,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// False when there was nothing to do (already bound, or bound by someone else).
    pub changed: bool,
    /// Each device changed (or looked at), in order.
    pub devices: Vec<DeviceOutcome>,
    /// Why nothing changed, when nothing did.
    pub note: Option<String>,
}

/// Readiness checks run by `plan` besides the binder's own (device exists, has an IOMMU
/// group, is not a bridge). Each returned string is a reason to refuse.
pub type ReadinessHook = Box<dyn Fn(&Paths, Bdf) -> Vec<String>>;

/// vm-pci's host and device readiness checks: every `Fail` is a refusal, except what binding
/// fixes ("group not viable yet", "bound to a host driver") and the group and bridge checks,
/// which the binder makes itself. `in_use` (the host uses the device or a group member:
/// a mount, swap, an addressed interface, the console, an open device file) is a refusal.
pub fn vm_pci_readiness(paths: &Paths, bdf: Bdf) -> Vec<String> {
    vm_pci_readiness_failures(paths, bdf, &[])
}

/// [`vm_pci_readiness`] with the failures of the checks named in `allowed` (vm-pci check
/// ids, e.g. `reset`) accepted: the operator's explicit, logged decision.
pub fn vm_pci_readiness_allowing(allowed: Vec<String>) -> ReadinessHook {
    Box::new(move |paths, bdf| vm_pci_readiness_failures(paths, bdf, &allowed))
}

/// Failures no `--allow` can accept: without an IOMMU or without vfio-pci there is nothing
/// to bind to.
const NOT_ALLOWABLE: &[&str] = &["iommu_enabled", "vfio_modules"];

fn vm_pci_readiness_failures(paths: &Paths, bdf: Bdf, allowed: &[String]) -> Vec<String> {
    use vm_pci::{readiness, Inventory, Level, SysfsRoot};
    let root = SysfsRoot::new(paths.root());
    let inv = match Inventory::scan(&root) {
        Ok(inv) => inv,
        Err(e) => return vec![format!("cannot read the PCI inventory: {e}")],
    };
    let mut checks = readiness::host_checks(&inv);
    match readiness::device_checks(&inv, bdf) {
        Ok(c) => checks.extend(c),
        Err(e) => return vec![format!("{bdf}: {e}")],
    }
    checks
        .into_iter()
        .filter(|c| {
            c.level == Level::Fail
                && !matches!(c.id, "iommu_group" | "endpoint")
                && !readiness::FIXED_BY_BIND.contains(&c.id)
        })
        .filter(|c| {
            let ok = !NOT_ALLOWABLE.contains(&c.id) && allowed.iter().any(|a| a == c.id);
            if ok {
                log::warn!(
                    "{bdf}: readiness check {} failed but is allowed: {}",
                    c.id,
                    c.message
                );
            }
            !ok
        })
        .map(|c| {
            if NOT_ALLOWABLE.contains(&c.id) {
                format!("{}: {}", c.id, c.message)
            } else {
                format!("{}: {} (allow with --allow {})", c.id, c.message, c.id)
            }
        })
        .collect()
}

/// Runs the binding lifecycle against a [`Kernel`].
pub struct Binder<K: Kernel> {
    paths: Paths,
    kernel: K,
    store: RecordStore,
    probe_timeout: Duration,
    readiness: Option<ReadinessHook>,
}

impl<K: Kernel> std::fmt::Debug for Binder<K> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Binder")
            .field("paths", &self.paths)
            .field("store", &self.store)
            .field("probe_timeout", &self.probe_timeout)
            .finish_non_exhaustive()
    }
}

impl<K: Kernel> Binder<K> {
    /// A binder that refuses what [`vm_pci_readiness`] fails.
    pub fn new(paths: Paths, kernel: K, store: RecordStore) -> Binder<K> {
        Binder {
            paths,
            kernel,
            store,
            probe_timeout: Duration::from_secs(5),
            readiness: Some(Box::new(vm_pci_readiness)),
        }
    }
    /// How long to wait for a driver to take a device after a probe/bind (default 5 s).
    pub fn with_probe_timeout(mut self, t: Duration) -> Self {
        self.probe_timeout = t;
        self
    }
    /// Replaces the readiness checks of [`Binder::plan`] (`None`: only the binder's own).
    pub fn with_readiness(mut self, hook: Option<ReadinessHook>) -> Self {
        self.readiness = hook;
        self
    }
    /// Where the binder reads and writes sysfs.
    pub fn paths(&self) -> &Paths {
        &self.paths
    }
    /// The record and lock store.
    pub fn store(&self) -> &RecordStore {
        &self.store
    }
    /// The kernel the binder drives (tests inject faults through it).
    pub fn kernel_mut(&mut self) -> &mut K {
        &mut self.kernel
    }

    fn read(&self, bdf: Bdf) -> Result<DriverState, StepError> {
        self.paths
            .driver_state(bdf)
            .map_err(|source| StepError::Read { bdf, source })
    }

    /// Computes what `prepare(bdf)` would do. Reads only.
    pub fn plan(&self, bdf: Bdf) -> Result<BindPlan, BindError> {
        let read_err = |source| BindError::Read { bdf, source };
        // Existence first, so a typo reads as "no such device", not as a readiness failure.
        self.paths.device_dir(bdf).map_err(read_err)?;
        let mut refusals = Vec::new();
        let group = self.paths.iommu_group(bdf).map_err(read_err)?;
        let (iommu_group, members) = match group {
            Some((id, members)) => (Some(id), members),
            None => {
                refusals.push(format!(
                    "{bdf} has no IOMMU group: the IOMMU is off or absent (enable VT-d/AMD-Vi in firmware and boot with intel_iommu=on or amd_iommu=on)"
                ));
                (None, vec![bdf])
            }
        };
        if let Some(hook) = &self.readiness {
            refusals.extend(hook(&self.paths, bdf));
        }
        let mut devices = Vec::new();
        for m in members {
            let original = self
                .paths
                .driver_state(m)
                .map_err(|source| BindError::Read { bdf: m, source })?;
            let class = self
                .paths
                .class(m)
                .map_err(|source| BindError::Read { bdf: m, source })?;
            let action = if state::is_bridge_class(class) {
                Action::Bridge
            } else if original.driver.as_deref() == Some(VFIO_PCI) {
                Action::AlreadyVfio
            } else {
                Action::Bind
            };
            if m == bdf && action == Action::Bridge {
                refusals.push(format!(
                    "{bdf} is a bridge (class {class:#08x}); only endpoints are passed through"
                ));
            }
            let ops = if action == Action::Bind {
                self.bind_ops(m, &original)
            } else {
                Vec::new()
            };
            devices.push(PlannedDevice {
                bdf: m,
                original,
                action,
                ops,
            });
        }
        // The requested device first: it is the one the user cares about, and failing early
        // on it leaves the least to roll back.
        devices.sort_by_key(|d| (d.bdf != bdf, d.action == Action::Bridge));
        let load_module = !self.paths.driver_loaded(VFIO_PCI);
        Ok(BindPlan {
            target: bdf,
            iommu_group,
            refusals,
            load_module,
            devices,
            note: None,
        })
    }

    /// What [`Binder::prepare`] would do now, exactly, reading only: no lock is taken and
    /// nothing is created (not even the run directory). An unfinished earlier operation is
    /// the refusal a real run would give; a binding vm-accel already made is "nothing to do".
    pub fn preview(&self, bdf: Bdf) -> Result<BindPlan, BindError> {
        let rec = self.store.peek()?;
        let earlier = recorded(&rec, bdf, self.group_id(bdf))?;
        let mut plan = self.plan(bdf)?;
        if let Some(b) = earlier {
            for d in &mut plan.devices {
                d.ops.clear();
                if d.action == Action::Bind {
                    d.action = Action::AlreadyVfio;
                }
            }
            plan.load_module = false;
            plan.refusals.clear();
            plan.note = Some(format!(
                "already bound to vfio-pci by vm-accel (for {})",
                b.target
            ));
        }
        Ok(plan)
    }

    /// The IOMMU group of `bdf`, when it can be read (for matching the record).
    fn group_id(&self, bdf: Bdf) -> Option<u32> {
        self.paths.iommu_group(bdf).ok().flatten().map(|(id, _)| id)
    }

    fn bind_ops(&self, bdf: Bdf, st: &DriverState) -> Vec<KernelOp> {
        let mut ops = Vec::new();
        if st.driver_override.as_deref() != Some(VFIO_PCI) {
            ops.push(KernelOp::write(self.paths.driver_override(bdf), VFIO_PCI));
        }
        if let Some(d) = &st.driver {
            ops.push(KernelOp::write(self.paths.unbind(d), bdf.to_string()));
        }
        ops.push(KernelOp::write(self.paths.drivers_probe(), bdf.to_string()));
        ops
    }

    fn apply(&mut self, bdf: Bdf, op: &KernelOp) -> Result<(), StepError> {
        log::info!("{op}");
        let err = |source| StepError::Op {
            bdf,
            op: op.clone(),
            source,
        };
        // Whatever the kernel implementation, no write leaves the sysfs root.
        if let KernelOp::Write { path, .. } = op {
            kernel::confine(self.paths.root(), path).map_err(err)?;
        }
        self.kernel.apply(op).map_err(err)
    }

    /// Polls until `bdf` is bound to `want` (probing can be asynchronous).
    fn wait_for_driver(&self, bdf: Bdf, want: &str) -> Result<(), StepError> {
        let start = Instant::now();
        loop {
            let st = self.read(bdf)?;
            if st.driver.as_deref() == Some(want) {
                return Ok(());
            }
            if start.elapsed() >= self.probe_timeout {
                return Err(StepError::Verify {
                    bdf,
                    want: want.to_string(),
                    found: st,
                    timeout: self.probe_timeout,
                });
            }
            std::thread::sleep(Duration::from_millis(10));
        }
    }

    fn execute(&mut self, plan: &BindPlan) -> Result<(), StepError> {
        if plan.load_module {
            let op = KernelOp::LoadModule {
                module: VFIO_PCI.to_string(),
            };
            log::info!("{op}");
            self.kernel.apply(&op).map_err(|e| StepError::Module {
                reason: format!("`{op}` failed: {e}"),
            })?;
            if !self.paths.driver_loaded(VFIO_PCI) {
                return Err(StepError::Module {
                    reason: format!(
                        "`{op}` succeeded but {} does not exist (kernel built without CONFIG_VFIO_PCI?)",
                        self.paths.driver_dir(VFIO_PCI).display()
                    ),
                });
            }
        }
        for d in plan.devices.iter().filter(|d| d.action == Action::Bind) {
            for op in &d.ops {
                self.apply(d.bdf, op)?;
            }
            self.wait_for_driver(d.bdf, VFIO_PCI)?;
        }
        Ok(())
    }

    /// Puts one device back on `original` (driver and driver_override), from whatever state
    /// it is in now. Idempotent: a device already there gets no writes.
    fn restore_device(&mut self, bdf: Bdf, original: &DriverState) -> Result<(), StepError> {
        // A device removed since (hot-unplug, SR-IOV VFs disabled) has nothing left to
        // restore; when it comes back the kernel probes it afresh.
        if let Err(e) = self.paths.device_dir(bdf) {
            if e.kind() == io::ErrorKind::NotFound {
                log::warn!("{bdf} is gone from the bus; nothing to restore");
                return Ok(());
            }
        }
        let cur = self.read(bdf)?;
        // Check before any write: a device whose original driver is gone stays where it is
        // (on vfio-pci: owned, isolated) rather than ending driverless.
        if let Some(o) = &original.driver {
            if cur.driver.as_ref() != Some(o) && !self.paths.driver_loaded(o) {
                return Err(StepError::DriverGone {
                    bdf,
                    driver: o.clone(),
                });
            }
        }
        if cur.driver_override != original.driver_override {
            // A lone newline clears the override (`echo > driver_override`); a zero-byte
            // write would never reach the kernel's store function.
            let v = original
                .driver_override
                .clone()
                .unwrap_or_else(|| "\n".to_string());
            self.apply(bdf, &KernelOp::write(self.paths.driver_override(bdf), v))?;
        }
        if let Some(d) = &cur.driver {
            if Some(d) != original.driver.as_ref() {
                self.apply(bdf, &KernelOp::write(self.paths.unbind(d), bdf.to_string()))?;
            }
        }
        if let Some(o) = &original.driver {
            if self.read(bdf)?.driver.as_ref() != Some(o) {
                // An explicit bind, not drivers_probe: the device must end on exactly the
                // driver it had, even if another one would match it first.
                self.apply(bdf, &KernelOp::write(self.paths.bind(o), bdf.to_string()))?;
                self.wait_for_driver(bdf, o)?;
            }
        }
        let end = self.read(bdf)?;
        if &end != original {
            return Err(StepError::Verify {
                bdf,
                want: original.to_string(),
                found: end,
                timeout: Duration::ZERO,
            });
        }
        Ok(())
    }

    /// Restores devices in reverse order; returns the failures (every device is attempted).
    fn restore_all(&mut self, devices: &[DeviceRecord]) -> Vec<StepError> {
        let mut failures = Vec::new();
        for d in devices.iter().rev() {
            if let Err(e) = self.restore_device(d.bdf, &d.original) {
                log::error!("restoring {}: {e}", d.bdf);
                failures.push(e);
            }
        }
        failures
    }

    fn outcome(&self, devices: &[DeviceRecord]) -> Vec<DeviceOutcome> {
        devices
            .iter()
            .map(|d| DeviceOutcome {
                bdf: d.bdf,
                before: d.original.clone(),
                after: self.paths.driver_state(d.bdf).ok(),
            })
            .collect()
    }

    /// Binds `bdf` and the other endpoints of its IOMMU group to vfio-pci.
    pub fn prepare(&mut self, bdf: Bdf) -> Result<Outcome, BindError> {
        let lock = self.store.lock()?;
        let mut rec = self.store.load(&lock)?;
        if let Some(b) = recorded(&rec, bdf, self.group_id(bdf))? {
            let b = b.clone();
            return Ok(Outcome {
                target: bdf,
                iommu_group: b.iommu_group,
                changed: false,
                devices: self.outcome(&b.devices),
                note: Some(format!(
                    "already bound to vfio-pci by vm-accel (for {})",
                    b.target
                )),
            });
        }
        let plan = self.plan(bdf)?;
        if !plan.refusals.is_empty() {
            return Err(BindError::Refused {
                bdf,
                reasons: plan.refusals,
            });
        }
        let devices = plan.bind_records();
        if devices.is_empty() {
            return Ok(Outcome {
                target: bdf,
                iommu_group: plan.iommu_group,
                changed: false,
                devices: Vec::new(),
                note: Some(
                    "every endpoint of the group is already on vfio-pci (not bound by vm-accel, so `unbind` will not change it)"
                        .into(),
                ),
            });
        }
        rec.bindings.push(BindingRecord {
            target: bdf,
            iommu_group: plan.iommu_group,
            phase: Phase::Binding,
            devices: devices.clone(),
            pid: std::process::id(),
            created: record::now(),
        });
        self.store.save(&lock, &rec)?;
        match self.execute(&plan) {
            Ok(()) => {
                if let Some(b) = rec.bindings.iter_mut().find(|b| b.target == bdf) {
                    b.phase = Phase::Bound;
                }
                self.store.save(&lock, &rec)?;
                Ok(Outcome {
                    target: bdf,
                    iommu_group: plan.iommu_group,
                    changed: true,
                    devices: self.outcome(&devices),
                    note: None,
                })
            }
            Err(cause) => {
                log::warn!("binding {bdf} failed ({cause}); rolling back");
                let rollback_failures = self.restore_all(&devices);
                if rollback_failures.is_empty() {
                    rec.bindings.retain(|b| b.target != bdf);
                }
                // Keep the record when the rollback is incomplete: `restore` retries it.
                self.store.save(&lock, &rec)?;
                Err(BindError::Failed {
                    bdf,
                    cause: Box::new(cause),
                    rollback_failures,
                })
            }
        }
    }

    /// Returns the binding that contains `bdf` (the whole group bound with it) to the
    /// original drivers.
    pub fn release(&mut self, bdf: Bdf) -> Result<Outcome, BindError> {
        let lock = self.store.lock()?;
        let mut rec = self.store.load(&lock)?;
        let Some(idx) = rec.bindings.iter().position(|b| b.contains(bdf)) else {
            let state = self
                .paths
                .driver_state(bdf)
                .map_err(|source| BindError::Read { bdf, source })?;
            return Err(BindError::NotRecorded {
                bdf,
                dir: self.store.dir().to_path_buf(),
                state,
            });
        };
        self.release_at(&lock, &mut rec, idx)
    }

    fn release_at(
        &mut self,
        lock: &LockGuard,
        rec: &mut Record,
        idx: usize,
    ) -> Result<Outcome, BindError> {
        rec.bindings[idx].phase = Phase::Releasing;
        self.store.save(lock, rec)?;
        let b = rec.bindings[idx].clone();
        let failures = self.restore_all(&b.devices);
        if !failures.is_empty() {
            return Err(BindError::ReleaseFailed {
                bdf: b.target,
                failures,
            });
        }
        rec.bindings.remove(idx);
        self.store.save(lock, rec)?;
        Ok(Outcome {
            target: b.target,
            iommu_group: b.iommu_group,
            changed: true,
            devices: self.outcome(&b.devices),
            note: None,
        })
    }

    /// Restores every recorded binding, newest first (after a crash, or to clean a host).
    /// Returns one result per binding; bindings that fail stay recorded.
    pub fn restore(&mut self) -> Result<Vec<Result<Outcome, BindError>>, BindError> {
        let lock = self.store.lock()?;
        let mut rec = self.store.load(&lock)?;
        let mut results = Vec::new();
        let mut idx = rec.bindings.len();
        while idx > 0 {
            idx -= 1;
            results.push(self.release_at(&lock, &mut rec, idx));
        }
        Ok(results)
    }

    /// The current record (for `vm-accel restore --dry-run`-style listings), read without
    /// the lock and without creating anything.
    pub fn record(&self) -> Result<Record, BindError> {
        Ok(self.store.peek()?)
    }
}

/// The binding vm-accel already made that contains `bdf` or its IOMMU group `group`, or the
/// refusal when an earlier operation on it did not finish (the same answer for `prepare`
/// and its dry run).
fn recorded(
    rec: &Record,
    bdf: Bdf,
    group: Option<u32>,
) -> Result<Option<&BindingRecord>, BindError> {
    let found = rec
        .find(bdf)
        .or_else(|| group.and_then(|g| rec.bindings.iter().find(|b| b.iommu_group == Some(g))));
    match found {
        Some(b) if b.phase != Phase::Bound => Err(BindError::Interrupted {
            bdf,
            phase: b.phase,
        }),
        other => Ok(other),
    }
}

#[cfg(test)]
mod tests;

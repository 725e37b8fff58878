//! A sysfs-tree fuzzer (issue 10, section 7): random damage to a simulated host's tree
//! (FIFOs, links to device files, symlinks out of the root, garbage and oversized
//! attributes, directories where files belong, missing links), then everything vm-accel
//! does with a tree: scan, readiness with in-use evidence, bind plans and dry runs, real
//! binds (with rollback) and restore, and the binary's `list`, `check` and `bind --dry-run`.
//!
//! Asserted for every case: no panic, no hang (each case has a deadline), no write outside
//! the root (a sentinel directory outside, which the damage links into, is byte-identical
//! afterwards). `VM_ACCEL_FUZZ_CASES` sets the number of cases (default 128).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use proptest::prelude::*;
use vm_accel::vm_pci::{Inventory, Readiness, SysfsRoot};
use vm_accel::vm_vfio::bind::sim::{SimDevice, SimHost};
use vm_accel::vm_vfio::bind::{Binder, Paths, RecordStore, SysfsKernel};

/// A case that takes longer than this is a hang.
const CASE_DEADLINE: Duration = Duration::from_secs(30);

/// What can be done to one path of the tree.
#[derive(Debug, Clone)]
enum Damage {
    Fifo,
    DevZero,
    /// A symlink to the same name in the sentinel directory outside the root.
    OutOfRoot,
    /// A relative `../../..` symlink climbing out of the root.
    DotDotOut,
    Dangling,
    Garbage(Vec<u8>),
    Oversized,
    Directory,
    Remove,
}

/// Paths of the base tree that damage may hit (relative to the root).
const TARGETS: &[&str] = &[
    "devices/pci0000:41/0000:41:00.0/vendor",
    "devices/pci0000:41/0000:41:00.0/class",
    "devices/pci0000:41/0000:41:00.0/config",
    "devices/pci0000:41/0000:41:00.0/resource",
    "devices/pci0000:41/0000:41:00.0/driver_override",
    "devices/pci0000:41/0000:41:00.0/driver",
    "devices/pci0000:41/0000:41:00.0/iommu_group",
    "devices/pci0000:41/0000:41:00.0/reset_method",
    "devices/pci0000:41/0000:41:00.0/numa_node",
    "devices/pci0000:41/0000:41:00.1/driver_override",
    "devices/pci0000:41/0000:41:00.1/driver",
    "devices/pci0000:41/0000:41:00.1/class",
    "devices/pci0000:40/0000:40:01.0/class",
    "bus/pci/devices/0000:41:00.0",
    "bus/pci/devices/0000:41:00.1",
    "bus/pci/drivers/nvidia",
    "bus/pci/drivers/nvidia/unbind",
    "bus/pci/drivers/snd_hda_intel/unbind",
    "bus/pci/drivers/vfio-pci",
    "bus/pci/drivers_probe",
    "kernel/iommu_groups/5/devices/0000:41:00.0",
    "kernel/iommu_groups/5/reserved_regions",
    "kernel/iommu_groups/5/type",
    "class/iommu/dmar0/intel-iommu/ecap",
    "cmdline",
    "kernel-release",
    "proc/self/mountinfo",
    "proc/swaps",
    "proc/net/route",
];

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        Just(Damage::Fifo),
        Just(Damage::DevZero),
        Just(Damage::OutOfRoot),
        Just(Damage::DotDotOut),
        Just(Damage::Dangling),
        proptest::collection::vec(any::<u8>(), 0..200).prop_map(Damage::Garbage),
        Just(Damage::Oversized),
        Just(Damage::Directory),
        Just(Damage::Remove),
    ]
}

fn mkfifo(path: &Path) -> std::io::Result<()> {
    let c = std::ffi::CString::new(path.as_os_str().as_encoded_bytes())
        .map_err(std::io::Error::other)?;
    // SAFETY: a valid NUL-terminated path.
    if unsafe { libc::mkfifo(c.as_ptr(), 0o644) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

fn apply(root: &Path, outside: &Path, rel: &str, d: &Damage) -> std::io::Result<()> {
    let p = root.join(rel);
    if let Some(parent) = p.parent() {
        std::fs::create_dir_all(parent)?;
    }
    match std::fs::symlink_metadata(&p) {
        Ok(m) if m.is_dir() => std::fs::remove_dir_all(&p)?,
        Ok(_) => std::fs::remove_file(&p)?,
        Err(_) => {}
    }
    let name = p.file_name().map(|n| n.to_owned()).unwrap_or_default();
    match d {
        Damage::Fifo => mkfifo(&p),
        Damage::DevZero => std::os::unix::fs::symlink("/dev/zero", &p),
        Damage::OutOfRoot => std::os::unix::fs::symlink(outside.join(&name), &p),
        Damage::DotDotOut => {
            let depth = rel.matches('/').count() + 1;
            let mut target = "../".repeat(depth);
            target.push_str("outside/");
            target.push_str(&name.to_string_lossy());
            std::os::unix::fs::symlink(target, &p)
        }
        Damage::Dangling => std::os::unix::fs::symlink("/nonexistent/vm-accel-fuzz", &p),
        Damage::Garbage(bytes) => std::fs::write(&p, bytes),
        Damage::Oversized => std::fs::write(&p, vec![b'1'; 200 << 10]),
        Damage::Directory => std::fs::create_dir_all(p.join("x")),
        Damage::Remove => Ok(()),
    }
}

/// The sentinel directory: every target's name, as a file and as a driver-like directory.
fn make_outside(outside: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(outside)?;
    for rel in TARGETS {
        let name = rel.rsplit('/').next().unwrap_or(rel);
        std::fs::write(outside.join(name), format!("sentinel {name}\n"))?;
    }
    for d in ["nvidia", "vfio-pci", "0000:41:00.0", "0000:41:00.1"] {
        let dir = outside.join(format!("{d}.d"));
        std::fs::create_dir_all(&dir)?;
        for f in ["bind", "unbind", "driver_override", "new_id"] {
            std::fs::write(dir.join(f), "sentinel\n")?;
        }
    }
    Ok(())
}

/// Every file below `dir` with its contents (no links followed).
fn snapshot(dir: &Path) -> BTreeMap<PathBuf, Vec<u8>> {
    let mut out = BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(es) = std::fs::read_dir(&d) else {
            continue;
        };
        for e in es.flatten() {
            let p = e.path();
            match e.file_type() {
                Ok(t) if t.is_dir() => stack.push(p),
                Ok(t) if t.is_file() => {
                    out.insert(p.clone(), std::fs::read(&p).unwrap_or_default());
                }
                _ => {
                    out.insert(p, Vec::new());
                }
            }
        }
    }
    out
}

fn base_tree(root: &Path) -> std::io::Result<()> {
    std::fs::create_dir_all(root)?;
    SimHost::gpu_with_audio()
        .device(SimDevice::edu("0000:00:04.0", 7))
        .loaded("vfio-pci")
        .build(root)?;
    let proc = root.join("proc");
    std::fs::create_dir_all(proc.join("self"))?;
    std::fs::create_dir_all(proc.join("net"))?;
    std::fs::write(
        proc.join("self/mountinfo"),
        "1 0 259:0 / / rw - ext4 /dev/nvme0n1 rw\n",
    )?;
    std::fs::write(proc.join("swaps"), "Filename Type\n")?;
    std::fs::write(proc.join("net/route"), "Iface Destination\n")
}

/// Runs a binary with a deadline; a hang is a failure.
fn run_bin(root: &Path, run_dir: &Path, args: &[&str]) -> Result<(), String> {
    let mut child = Command::new(env!("CARGO_BIN_EXE_vm-accel"))
        .arg("--sysfs-root")
        .arg(root)
        .args(args)
        .args(["--json"])
        .env("VM_ACCEL_RUN_DIR", run_dir)
        .env("RUST_LOG", "off")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| e.to_string())?;
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().map_err(|e| e.to_string())? {
            let code = status.code();
            if !matches!(code, Some(0..=2)) {
                let mut err = String::new();
                if let Some(mut s) = child.stderr.take() {
                    use std::io::Read;
                    let _ = s.read_to_string(&mut err);
                }
                return Err(format!("{args:?} exited {status}: {err}"));
            }
            return Ok(());
        }
        if start.elapsed() > CASE_DEADLINE {
            let _ = child.kill();
            return Err(format!("{args:?} hung"));
        }
        std::thread::sleep(Duration::from_millis(5));
    }
}

/// Everything the library does with a tree, on a thread, so a panic or a hang is caught.
fn exercise(root: PathBuf, run_dir: PathBuf) -> Result<(), String> {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let sysfs = SysfsRoot::new(&root);
        for inv in [
            Inventory::scan(&sysfs),
            Inventory::scan_with(&sysfs, vm_accel::vm_pci::ConfigRead::Header),
        ]
        .into_iter()
        .flatten()
        {
            let r = Readiness::new(&inv);
            let _ = vm_accel::vm_pci::readiness::host_checks(&inv);
            for d in &inv.devices {
                let _ = r.device_checks(d.bdf);
            }
        }
        let bdfs: Vec<_> = ["0000:41:00.0", "0000:41:00.1", "0000:00:04.0"]
            .iter()
            .filter_map(|s| s.parse().ok())
            .collect();
        let store = RecordStore::new(&run_dir).with_lock_timeout(Duration::from_millis(200));
        let mut b = Binder::new(Paths::new(&root), SysfsKernel::for_tree(), store)
            .with_probe_timeout(Duration::from_millis(10));
        for bdf in bdfs {
            let _ = b.preview(bdf);
            let _ = b.prepare(bdf);
            let _ = b.restore();
        }
        let _ = tx.send(());
    });
    match rx.recv_timeout(CASE_DEADLINE) {
        Ok(()) => Ok(()),
        Err(mpsc::RecvTimeoutError::Timeout) => Err("library calls hung".into()),
        Err(mpsc::RecvTimeoutError::Disconnected) => Err("library calls panicked".into()),
    }
}

fn cases() -> u32 {
    std::env::var("VM_ACCEL_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(128)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: cases(), failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn damaged_trees_never_panic_hang_or_escape(
        hits in proptest::collection::vec((0..TARGETS.len(), damage()), 1..5),
        binary in any::<bool>(),
    ) {
        // On tmpfs when there is one: the record is fsync'ed at every step, as on /run.
        let t = if Path::new("/dev/shm").is_dir() {
            tempfile::tempdir_in("/dev/shm")
        } else {
            tempfile::tempdir()
        }
        .expect("tempdir");
        let root = t.path().join("sys");
        let outside = t.path().join("outside");
        base_tree(&root).expect("base tree");
        make_outside(&outside).expect("sentinel");
        for (i, d) in &hits {
            // Damage below an earlier damage (a file inside what is now a FIFO) cannot be
            // applied; the earlier damage stands.
            let _ = apply(&root, &outside, TARGETS[*i], d);
        }
        let before = snapshot(&outside);
        let run_dir = t.path().join("run");
        let r = exercise(root.clone(), run_dir.clone());
        prop_assert!(r.is_ok(), "{:?} with {:?}", r, hits);
        if binary {
            for args in [&["list"][..], &["check"], &["bind", "0000:41:00.0", "--dry-run"], &["restore", "--dry-run"]] {
                let r = run_bin(&root, &run_dir, args);
                prop_assert!(r.is_ok(), "{:?} with {:?}", r, hits);
            }
        }
        prop_assert_eq!(snapshot(&outside), before, "a write escaped the root with {:?}", hits);
    }
}

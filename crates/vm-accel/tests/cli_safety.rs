//! Host safety of the `vm-accel` binary (issue 10): output to closed pipes and full disks,
//! exit codes and JSON errors of every command, escaping, O(N) `check`, ready/preparable,
//! unreadable accelerators, read-only and faithful dry runs, bind without root.

use std::os::fd::{FromRawFd, OwnedFd};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use vm_pci::fixture::{DeviceSpec, TreeBuilder};
use vm_pci::Bdf;

fn bin() -> Command {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vm-accel"));
    c.env_remove("VM_ACCEL_SYSFS_ROOT")
        .env_remove("VM_ACCEL_RUN_DIR");
    c
}

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/sysfs")
        .join(name)
}

fn run(root: &Path, run_dir: &Path, args: &[&str]) -> Output {
    bin()
        .arg("--sysfs-root")
        .arg(root)
        .args(args)
        .env("VM_ACCEL_RUN_DIR", run_dir)
        .output()
        .expect("run vm-accel")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

fn json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            text(&out.stdout),
            text(&out.stderr)
        )
    })
}

/// The vm-pci synthetic IOMMU host (GPU+audio in group 1 on host drivers, a NIC on vfio-pci
/// in group 2, ...).
fn iommu_host() -> tempfile::TempDir {
    let t = tempfile::tempdir().expect("tempdir");
    vm_pci::fixture::iommu_host(t.path()).expect("fixture");
    t
}

/// Every command a user runs against a fixture, as argument lists.
fn commands() -> Vec<Vec<&'static str>> {
    vec![
        vec!["list"],
        vec!["list", "--json"],
        vec!["show", "0000:01:00.0"],
        vec!["show", "0000:01:00.0", "--json"],
        vec!["check"],
        vec!["check", "--json"],
        vec!["bind", "0000:01:00.0", "--dry-run"],
        vec!["bind", "0000:01:00.0", "--dry-run", "--json"],
        vec!["restore", "--dry-run"],
        vec!["restore", "--dry-run", "--json"],
    ]
}

#[test]
fn a_closed_pipe_is_a_quiet_exit_never_a_panic() {
    let t = iommu_host();
    for args in commands() {
        let mut fds = [0; 2];
        // SAFETY: pipe fills two descriptors we then own.
        assert_eq!(unsafe { libc::pipe(fds.as_mut_ptr()) }, 0);
        // SAFETY: fresh descriptors from pipe(), owned once each.
        let (r, w) = unsafe { (OwnedFd::from_raw_fd(fds[0]), OwnedFd::from_raw_fd(fds[1])) };
        drop(r); // `| head -0`: the reader is gone before the first write.
        let out = bin()
            .arg("--sysfs-root")
            .arg(t.path())
            .args(&args)
            .env("VM_ACCEL_RUN_DIR", t.path().join("run"))
            .env("RUST_LOG", "off")
            .stdout(Stdio::from(w))
            .stderr(Stdio::piped())
            .output()
            .expect("run");
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(141), "{args:?}: {err}");
        assert!(err.is_empty(), "quiet: {args:?}: {err}");
    }
}

#[test]
fn a_full_disk_is_an_error_and_exit_2_never_a_panic() {
    if !Path::new("/dev/full").exists() {
        return vm_accel_tests::hw::skip("dev_full", "no /dev/full");
    }
    let t = iommu_host();
    for args in commands() {
        let full = std::fs::OpenOptions::new()
            .write(true)
            .open("/dev/full")
            .expect("/dev/full");
        let out = bin()
            .arg("--sysfs-root")
            .arg(t.path())
            .args(&args)
            .env("VM_ACCEL_RUN_DIR", t.path().join("run"))
            .stdout(full)
            .output()
            .expect("run");
        let err = text(&out.stderr);
        assert!(!err.contains("panicked"), "{args:?}: {err}");
        assert_eq!(out.status.code(), Some(2), "{args:?}: {err}");
        assert!(err.contains("No space left on device"), "{args:?}: {err}");
    }
}

#[test]
fn errors_exit_2_with_json_on_stdout_for_every_command() {
    let t = iommu_host();
    let run_dir = t.path().join("run");
    let missing = "0000:09:00.0";
    let cases: Vec<(Vec<&str>, &str)> = vec![
        (vec!["show", missing, "--json"], "no PCI device"),
        (vec!["check", missing, "--json"], "no PCI device"),
        (vec!["bind", missing, "--json"], "No such file"),
        (vec!["bind", missing, "--dry-run", "--json"], "No such file"),
        (vec!["unbind", missing, "--json"], "No such file"),
    ];
    for (args, want) in cases {
        let out = run(t.path(), &run_dir, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        let v = json(&out);
        assert_eq!(v["ok"], false, "{args:?}");
        assert!(
            v["error"].as_str().unwrap_or("").contains(want),
            "{args:?}: {v}"
        );
        let cmd = args[0];
        assert!(
            v["schema"].as_str().unwrap_or("").contains(cmd),
            "under the command's own schema: {args:?}: {v}"
        );
    }
    // A bad root, for each command.
    for args in [
        vec!["list", "--json"],
        vec!["check", "--json"],
        vec!["bind", "0000:01:00.0", "--json"],
    ] {
        let out = run(Path::new("/nonexistent"), &run_dir, &args);
        assert_eq!(
            out.status.code(),
            Some(2),
            "{args:?}: {}",
            text(&out.stderr)
        );
        assert_eq!(json(&out)["ok"], false, "{args:?}");
    }
    // A malformed record.
    std::fs::create_dir_all(&run_dir).expect("run dir");
    std::fs::write(run_dir.join("bindings.json"), "{not json").expect("w");
    for args in [
        vec!["restore", "--json"],
        vec!["restore", "--dry-run", "--json"],
    ] {
        let out = run(t.path(), &run_dir, &args);
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        assert!(json(&out)["error"]
            .as_str()
            .unwrap_or("")
            .contains("not a vm-accel binding record"));
    }
    // A usage error with --json is JSON too.
    let out = run(t.path(), &run_dir, &["show", "0000:00:20.0", "--json"]);
    assert_eq!(out.status.code(), Some(2));
    let v = json(&out);
    assert_eq!(v["schema"], "vm-accel.show/v2");
    assert_eq!(v["ok"], false);
    assert!(
        v["error"].as_str().unwrap_or("").contains("below 0x20"),
        "{v}"
    );
    // Refusals and "not bound by vm-accel" are outcomes (1), not errors.
    std::fs::remove_file(run_dir.join("bindings.json")).expect("rm");
    let out = run(t.path(), &run_dir, &["unbind", "0000:01:00.0", "--json"]);
    assert_eq!(out.status.code(), Some(1), "{}", text(&out.stdout));
    let out = run(t.path(), &run_dir, &["bind", "0000:00:1f.0", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(1),
        "boot VGA refused: {}",
        text(&out.stdout)
    );
}

#[test]
fn unknown_allow_names_are_rejected() {
    let t = iommu_host();
    let out = run(
        t.path(),
        &t.path().join("run"),
        &["bind", "0000:01:00.0", "--dry-run", "--allow", "rest"],
    );
    assert_eq!(out.status.code(), Some(2));
    let err = text(&out.stderr);
    assert!(
        err.contains("unknown check \"rest\"") && err.contains("in_use"),
        "{err}"
    );
}

#[test]
fn control_characters_from_sysfs_are_escaped_in_tables() {
    let t = iommu_host();
    let dev = t
        .path()
        .join("devices/pci0000:00/0000:00:01.0/0000:01:00.0");
    let evil = "nv\u{1b}[2Jfake\nline";
    let ddir = t.path().join("bus/pci/drivers").join(evil);
    std::fs::create_dir_all(&ddir).expect("driver dir");
    std::fs::remove_file(dev.join("driver")).expect("rm");
    std::os::unix::fs::symlink(&ddir, dev.join("driver")).expect("link");
    std::fs::write(dev.join("driver_override"), "a\u{7}b\n").expect("w");
    let run_dir = t.path().join("run");
    for args in [
        vec!["list"],
        vec!["show", "0000:01:00.0"],
        vec!["check", "0000:01:00.0"],
    ] {
        let out = run(t.path(), &run_dir, &args);
        let s = text(&out.stdout);
        assert!(
            !s.contains('\u{1b}') && !s.contains('\u{7}'),
            "{args:?}: raw control chars: {s:?}"
        );
        assert!(s.contains("nv\\u{1b}[2Jfake\\nline"), "{args:?}: {s}");
    }
}

#[test]
fn check_output_grows_linearly_with_the_group() {
    fn size(n: u32) -> usize {
        let t = tempfile::tempdir().expect("tempdir");
        let mut tree = TreeBuilder::new(t.path()).expect("tree");
        tree.cmdline("intel_iommu=on").expect("cmdline");
        for i in 0..n {
            let b = Bdf::new(
                0,
                0x10 + (i / 256) as u8,
                ((i / 8) % 32) as u8,
                (i % 8) as u8,
            )
            .expect("bdf");
            tree.device(
                &DeviceSpec::endpoint(b, 0x10de, 0x2335, 0x030200)
                    .driver("nvidia")
                    .group(1),
            )
            .expect("device");
        }
        let out = run(t.path(), &t.path().join("run"), &["check"]);
        assert_eq!(out.status.code(), Some(1));
        out.stdout.len()
    }
    let (small, big) = (size(40), size(400));
    // Linear: 10x the devices, about 10x the output (a message listing every member made
    // it 100x).
    assert!(
        big < small * 13,
        "40 devices: {small} bytes, 400: {big} bytes"
    );
}

#[test]
fn ready_and_preparable() {
    let t = iommu_host();
    let run_dir = t.path().join("run");
    let out = run(t.path(), &run_dir, &["check", "0000:01:00.0", "--json"]);
    assert_eq!(out.status.code(), Some(1), "on nvidia: not ready");
    let v = json(&out);
    assert_eq!(v["ready"], false);
    assert_eq!(v["preparable"], true, "{v}");
    let d = &v["devices"][0];
    assert_eq!(
        (d["ready"].clone(), d["preparable"].clone()),
        (false.into(), true.into())
    );
    let out = run(t.path(), &run_dir, &["check", "0000:01:00.0"]);
    let s = text(&out.stdout);
    assert!(
        s.contains("0000:01:00.1 on snd_hda_intel (not in use)"),
        "{s}"
    );
    assert!(s.contains("vm-accel bind"), "{s}");
    let out = run(t.path(), &run_dir, &["check", "0000:02:00.0", "--json"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "on vfio-pci, group viable: {}",
        text(&out.stdout)
    );
    // In use: not even preparable.
    let p = t.path().join("proc/99/fd");
    std::fs::create_dir_all(&p).expect("proc");
    std::fs::write(t.path().join("proc/99/comm"), "Xorg\n").expect("w");
    std::fs::create_dir_all(
        t.path()
            .join("devices/pci0000:00/0000:00:01.0/0000:01:00.1/sound/card0"),
    )
    .expect("x");
    std::os::unix::fs::symlink("/dev/vfio/1", p.join("3")).expect("l");
    let v = json(&run(
        t.path(),
        &run_dir,
        &["check", "0000:01:00.0", "--json"],
    ));
    assert_eq!(v["preparable"], false, "{v}");
    assert_eq!(v["devices"][0]["in_use"][0]["kind"], "open_file");
}

#[test]
fn an_unreadable_accelerator_is_listed_and_not_ready() {
    let t = iommu_host();
    let gpu = t
        .path()
        .join("devices/pci0000:00/0000:00:01.0/0000:01:00.0");
    std::fs::write(gpu.join("vendor"), "garbage\n").expect("w");
    // Only the unreadable GPU is a (possible) accelerator besides 03:00.0.
    let out = run(t.path(), &t.path().join("run"), &["check"]);
    let s = text(&out.stdout);
    assert_eq!(out.status.code(), Some(1), "{s}");
    assert!(
        s.contains("0000:01:00.0 — UNREADABLE") && s.contains("vendor"),
        "{s}"
    );
    let v = json(&run(t.path(), &t.path().join("run"), &["check", "--json"]));
    assert_eq!(v["ready"], false);
    assert_eq!(v["unreadable"][0]["entry"], "0000:01:00.0");
    let out = run(t.path(), &t.path().join("run"), &["show", "0000:01:00.0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("exists but cannot be read"),
        "{}",
        text(&out.stderr)
    );
}

fn crashed_record(run_dir: &Path, driver: &str) {
    std::fs::create_dir_all(run_dir).expect("run dir");
    std::fs::write(
        run_dir.join("bindings.json"),
        format!(
            r#"{{"version":1,"bindings":[{{"target":"0000:01:00.0","iommu_group":1,"phase":"binding",
            "devices":[{{"bdf":"0000:01:00.0","original":{{"driver":"{driver}","driver_override":null}}}}],
            "pid":1,"created":0}}]}}"#
        ),
    )
    .expect("record");
}

#[test]
fn dry_runs_write_nothing_and_refuse_like_the_real_run() {
    let t = iommu_host();
    let run_dir = t.path().join("run");
    let out = run(t.path(), &run_dir, &["restore", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0));
    let out = run(t.path(), &run_dir, &["bind", "0000:01:00.0", "--dry-run"]);
    assert_eq!(out.status.code(), Some(0), "{}", text(&out.stdout));
    assert!(!run_dir.exists(), "a dry run created the run directory");
    crashed_record(&run_dir, "nvidia");
    let dry = run(t.path(), &run_dir, &["bind", "0000:01:00.1", "--dry-run"]);
    assert!(!run_dir.join("lock").exists(), "the dry run took no lock");
    let real = run(t.path(), &run_dir, &["bind", "0000:01:00.1"]);
    assert_eq!(real.status.code(), Some(1), "{}", text(&real.stderr));
    assert_eq!(
        dry.status.code(),
        real.status.code(),
        "{}",
        text(&dry.stderr)
    );
    assert!(
        text(&dry.stderr).contains("did not finish"),
        "{}",
        text(&dry.stderr)
    );
}

#[test]
fn a_crafted_record_cannot_make_restore_write_outside_sysfs() {
    let t = iommu_host();
    let outside = t.path().join("tmp/x");
    std::fs::create_dir_all(&outside).expect("outside");
    std::fs::write(outside.join("bind"), "").expect("w");
    let run_dir = t.path().join("run");
    crashed_record(&run_dir, "../../../../tmp/x");
    let out = run(t.path(), &run_dir, &["restore", "--json"]);
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(json(&out)["error"]
        .as_str()
        .unwrap_or("")
        .contains("not a driver name"));
    assert_eq!(
        std::fs::read_to_string(outside.join("bind")).expect("r"),
        ""
    );
}

#[test]
fn a_group_that_does_not_list_the_device_is_an_error_for_bind() {
    let t = iommu_host();
    std::fs::remove_file(t.path().join("kernel/iommu_groups/1/devices/0000:01:00.1")).expect("rm");
    let out = run(
        t.path(),
        &t.path().join("run"),
        &["bind", "0000:01:00.1", "--dry-run"],
    );
    assert_eq!(out.status.code(), Some(2), "{}", text(&out.stdout));
    assert!(
        text(&out.stderr).contains("does not list it"),
        "{}",
        text(&out.stderr)
    );
}

#[test]
fn bind_without_root_says_so_after_the_refusals() {
    if unsafe_geteuid() != 0 || !Path::new("/usr/bin/setpriv").exists() {
        return vm_accel_tests::hw::skip(
            "non_root_bind",
            "needs root and setpriv to drop to nobody",
        );
    }
    let t = iommu_host();
    // nobody must be able to reach the binary and the tree.
    let exe = PathBuf::from(env!("CARGO_BIN_EXE_vm-accel"));
    let copy = t.path().join("vm-accel");
    std::fs::copy(&exe, &copy).expect("copy binary");
    chmod_tree(t.path());
    let out = Command::new("/usr/bin/setpriv")
        .args(["--reuid=65534", "--regid=65534", "--clear-groups", "--"])
        .arg(&copy)
        .arg("--sysfs-root")
        .arg(t.path())
        .args(["bind", "0000:00:1f.0"])
        .env_remove("VM_ACCEL_RUN_DIR")
        .output()
        .expect("setpriv");
    let (s, e) = (text(&out.stdout), text(&out.stderr));
    assert_eq!(out.status.code(), Some(2), "{s}{e}");
    assert!(s.contains("refused: boot_vga"), "the refusal first: {s}");
    assert!(e.contains("needs root (or --run-dir"), "{e}");
}

fn unsafe_geteuid() -> u32 {
    // SAFETY: geteuid has no preconditions.
    unsafe { libc::geteuid() }
}

fn chmod_tree(p: &Path) {
    use std::os::unix::fs::PermissionsExt;
    let _ = std::fs::set_permissions(p, std::fs::Permissions::from_mode(0o755));
    if let Ok(es) = std::fs::read_dir(p) {
        for e in es.flatten() {
            if e.file_type().is_ok_and(|t| t.is_dir()) {
                chmod_tree(&e.path());
            }
        }
    }
}

#[test]
fn the_h200_capture_is_not_ready_while_on_nvidia() {
    let out = run(
        &fixture("h200-host"),
        Path::new("/nonexistent-run"),
        &["check"],
    );
    assert_eq!(out.status.code(), Some(1));
    let s = text(&out.stdout);
    assert!(
        s.lines()
            .any(|l| l.contains("FAIL driver") && l.contains("bound to host driver nvidia")),
        "a device on a host driver fails `driver`: {s}"
    );
}

//! The `vm-accel` binary's discovery commands, against fixtures and this host's /sys.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/sysfs")
        .join(name)
}

fn vm_accel(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vm-accel"))
        .args(args)
        .output()
        .expect("run vm-accel")
}

fn stdout_json(out: &Output) -> serde_json::Value {
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "not JSON ({e}): {}\nstderr: {}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        )
    })
}

/// Compares with a committed snapshot; `UPDATE_SNAPSHOTS=1` rewrites it.
fn assert_snapshot(name: &str, value: &serde_json::Value) {
    let path = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("tests/snapshots")
        .join(name);
    let text = serde_json::to_string_pretty(value).expect("serialize") + "\n";
    if std::env::var_os("UPDATE_SNAPSHOTS").is_some() {
        std::fs::write(&path, &text).expect("write snapshot");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{}: {e} (UPDATE_SNAPSHOTS=1 creates it)", path.display()));
    assert_eq!(
        text, want,
        "JSON schema changed: review, then UPDATE_SNAPSHOTS=1"
    );
}

#[test]
fn list_json_snapshot_h200() {
    let root = fixture("h200-host");
    let out = vm_accel(&["--sysfs-root", root.to_str().unwrap(), "list", "--json"]);
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_eq!(v["devices"][0]["bdf"], "0000:00:06.0", "accelerators first");
    assert_eq!(v["devices"][0]["largest_bar"]["size"], 256u64 << 30);
    assert_snapshot("list-h200-host.json", &v);
}

#[test]
fn list_table_h200() {
    let root = fixture("h200-host");
    let out = vm_accel(&["--sysfs-root", root.to_str().unwrap(), "list"]);
    assert!(out.status.success());
    let text = String::from_utf8_lossy(&out.stdout);
    let first = text.lines().nth(1).unwrap();
    assert!(
        first.starts_with("0000:00:06.0  10de:2335  3D controller"),
        "{first}"
    );
    assert!(
        first.contains("BAR2 256G") && first.contains("GH100 [H200 SXM 141GB]"),
        "{first}"
    );
    assert_eq!(text.lines().count(), 8);
}

#[test]
fn check_json_h200_fails_for_no_iommu() {
    let root = fixture("h200-host");
    let out = vm_accel(&["--sysfs-root", root.to_str().unwrap(), "check", "--json"]);
    assert_eq!(out.status.code(), Some(1), "a failing check exits 1");
    let v = stdout_json(&out);
    assert_eq!(v["ready"], false);
    assert_eq!(v["host"][0]["id"], "iommu_enabled");
    assert_eq!(v["host"][0]["level"], "fail");
    assert_eq!(v["devices"][0]["bdf"], "0000:00:06.0");
    assert_snapshot("check-h200-host.json", &v);
}

#[test]
fn show_json_h200_gpu() {
    let root = fixture("h200-host");
    let out = vm_accel(&[
        "--sysfs-root",
        root.to_str().unwrap(),
        "show",
        "0000:00:06.0",
        "--json",
    ]);
    assert!(out.status.success());
    let v = stdout_json(&out);
    assert_snapshot("show-h200-gpu.json", &v);
}

#[test]
fn check_passes_on_a_viable_device_and_explains_a_blocked_group() {
    let t = tempfile::tempdir().unwrap();
    vm_pci_fixture(t.path());
    let root = t.path().to_str().unwrap();
    let out = vm_accel(&["--sysfs-root", root, "check", "0000:02:00.0"]);
    assert_eq!(
        out.status.code(),
        Some(0),
        "{}",
        String::from_utf8_lossy(&out.stdout)
    );
    let out = vm_accel(&["--sysfs-root", root, "show", "0000:01:00.0", "--json"]);
    let v = stdout_json(&out);
    assert_eq!(v["group"]["iommu_group"], 1);
    assert_eq!(v["device"]["iommu_group"], 1);
    assert_eq!(v["group_viability"]["state"], "not_viable");
    let text =
        String::from_utf8_lossy(&vm_accel(&["--sysfs-root", root, "show", "0000:01:00.0"]).stdout)
            .to_string();
    assert!(
        text.contains("Access Control") || text.contains("MSI-X"),
        "{text}"
    );
    assert!(
        text.contains("iommu group 1: 0000:01:00.0, 0000:01:00.1"),
        "{text}"
    );
    let out = vm_accel(&["--sysfs-root", root, "check", "0000:00:1f.0"]);
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stdout).contains("boot VGA"));
}

fn vm_pci_fixture(dir: &Path) {
    vm_pci::fixture::iommu_host(dir).expect("write fixture");
}

#[test]
fn bad_input_is_a_clear_error() {
    let out = vm_accel(&["show", "0000:00:20.0"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("device must be below 0x20"));
    let root = fixture("h200-host");
    let out = vm_accel(&[
        "--sysfs-root",
        root.to_str().unwrap(),
        "show",
        "0000:00:1f.0",
    ]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("no PCI device 0000:00:1f.0"));
    let out = vm_accel(&["--sysfs-root", "/nonexistent", "list"]);
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("/nonexistent/bus/pci/devices"));
}

#[test]
fn list_works_on_this_host() {
    let out = vm_accel(&["list", "--json"]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v = stdout_json(&out);
    assert_eq!(v["schema"], "vm-accel.list/v1");
    // Every Linux host with PCI has at least one device; containers without /sys/bus/pci
    // would have failed above with a clear error instead.
    assert!(!v["devices"].as_array().unwrap().is_empty());
}

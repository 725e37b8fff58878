//! The `vm-accel` binary's bind/unbind/restore against a simulated host tree (vm-vfio's
//! fixture builder): what a user runs, as a separate process.

use std::path::Path;
use std::process::{Command, Output};
use std::time::Duration;

use vm_vfio::bind::sim::{SimDevice, SimHost};
use vm_vfio::bind::RecordStore;

fn host() -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("tempdir");
    std::fs::create_dir(dir.path().join("sys")).expect("mkdir");
    SimHost::new()
        .device(SimDevice::endpoint("0000:41:00.0", 5, Some("nvidia")))
        .device(SimDevice::bridge("0000:40:01.0", 5))
        .loaded("vfio-pci")
        .build(&dir.path().join("sys"))
        .expect("fixture");
    dir
}

fn vm_accel(dir: &Path, args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_vm-accel"))
        .arg("--sysfs-root")
        .arg(dir.join("sys"))
        .args(args)
        .env("VM_ACCEL_RUN_DIR", dir.join("run"))
        .output()
        .expect("run vm-accel")
}

#[test]
fn dry_run_through_the_binary() {
    let dir = host();
    let out = vm_accel(dir.path(), &["bind", "0000:41:00.0", "--dry-run"]);
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(out.status.success(), "{text}");
    let sys = dir.path().join("sys");
    assert!(
        text.contains(&format!(
            "echo 0000:41:00.0 > {}/bus/pci/drivers/nvidia/unbind",
            sys.display()
        )),
        "{text}"
    );
    assert!(
        text.contains("0000:40:01.0  bridge, stays on pcieport"),
        "{text}"
    );
}

#[test]
fn a_second_process_waits_for_the_lock_then_says_who_holds_it() {
    let dir = host();
    let store = RecordStore::new(dir.path().join("run"));
    let held = store.lock().expect("lock");
    let started = std::time::Instant::now();
    let out = vm_accel(
        dir.path(),
        &["bind", "0000:41:00.0", "--lock-timeout-ms", "300", "--json"],
    );
    assert_eq!(
        out.status.code(),
        Some(2),
        "a held lock is an error (docs/json-schema.md)"
    );
    assert!(started.elapsed() >= Duration::from_millis(300), "it waited");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let err = v["error"].as_str().unwrap_or_default();
    assert!(
        err.contains(&format!("(pid {})", std::process::id())),
        "names the holder: {err}"
    );
    drop(held);
    let out = vm_accel(dir.path(), &["restore", "--json"]);
    assert!(out.status.success(), "lock free again");
}

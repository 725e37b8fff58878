//! `vm-accel cuda ...` without a GPU: the binary starts on hosts without the NVIDIA driver,
//! and every CUDA command says why it cannot run instead of dying at load time.

use std::path::Path;
use std::process::{Command, Output};

fn vm_accel(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_vm-accel"));
    c.args(args).env_remove("LD_LIBRARY_PATH");
    for (k, v) in env {
        c.env(k, v);
    }
    c.output().expect("run vm-accel")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// A driver library that does not exist: what a passthrough host without the NVIDIA
/// driver looks like to the loader.
const NO_DRIVER: (&str, &str) = ("VM_CUDA_LIBRARY", "/nonexistent/libcuda.so.1");

#[test]
fn starts_without_the_driver_and_lists_devices() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sysfs/h200x2-host");
    let out = vm_accel(
        &["--sysfs-root", root.to_str().unwrap(), "list"],
        &[NO_DRIVER],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(text(&out.stdout).contains("H200") || text(&out.stdout).contains("10de"));
}

#[test]
fn cuda_info_without_the_driver_exits_2_and_says_why() {
    let out = vm_accel(&["cuda", "info"], &[NO_DRIVER]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    if cfg!(feature = "cuda") {
        assert!(
            err.contains("NVIDIA driver not found (/nonexistent/libcuda.so.1): "),
            "{err}"
        );
    } else {
        assert!(err.contains("--features cuda"), "{err}");
    }
    let out = vm_accel(&["cuda", "info", "--json"], &[NO_DRIVER]);
    assert_eq!(out.status.code(), Some(2));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert_eq!(v["devices"], serde_json::json!([]));
    if cfg!(feature = "cuda") {
        assert!(v["error"]
            .as_str()
            .unwrap()
            .starts_with("NVIDIA driver not found"));
    }
}

#[test]
fn cuda_check_without_the_driver_exits_2() {
    let out = vm_accel(&["cuda", "check", "--no-wait"], &[NO_DRIVER]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    // By PCI address: the same refusal, naming the device as given.
    let out = vm_accel(&["cuda", "check", "--device", "3b:00.0"], &[NO_DRIVER]);
    assert_eq!(out.status.code(), Some(2), "stderr: {}", text(&out.stderr));
    let err = text(&out.stderr);
    assert!(
        err.contains("health check of device 0000:3b:00.0 could not run"),
        "{err}"
    );
    if cfg!(feature = "cuda") {
        assert!(err.contains("NVIDIA driver not found"), "{err}");
    } else {
        assert!(err.contains("--features cuda"), "{err}");
    }
    // A deadline must be a positive number of seconds.
    let out = vm_accel(&["cuda", "check", "--deadline-s", "0"], &[NO_DRIVER]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("seconds in (0, 86400]"),
        "{}",
        text(&out.stderr)
    );
    // Neither an ordinal nor an address: a usage error (exit 2) that says what is expected.
    let out = vm_accel(&["cuda", "check", "--device", "gpu0"], &[NO_DRIVER]);
    assert_eq!(out.status.code(), Some(2));
    assert!(
        text(&out.stderr).contains("ordinal or a PCI address"),
        "{}",
        text(&out.stderr)
    );
}

/// The cuda build must not need libcuda.so.1 to start: no DT_NEEDED entry for it.
#[cfg(feature = "cuda")]
#[test]
fn binary_does_not_link_libcuda() {
    let out = Command::new("ldd")
        .arg(env!("CARGO_BIN_EXE_vm-accel"))
        .env_remove("LD_LIBRARY_PATH")
        .output();
    let out = match out {
        Ok(o) => o,
        Err(e) => panic!("ldd is needed for this test (libc-bin): {e}"),
    };
    assert!(out.status.success(), "ldd: {}", text(&out.stderr));
    let libs = text(&out.stdout);
    assert!(!libs.contains("libcuda"), "vm-accel links libcuda:\n{libs}");
}

#[test]
fn list_and_show_topology_without_the_driver_say_why() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../tests/fixtures/sysfs/h200x2-host");
    let root = root.to_str().unwrap();
    let out = vm_accel(
        &["--sysfs-root", root, "list", "--json", "--topology"],
        &[NO_DRIVER],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    let err = v["gpu_topology"]["error"].as_str().expect("error");
    if cfg!(feature = "cuda") {
        assert!(err.starts_with("NVIDIA driver not found"), "{err}");
    } else {
        assert!(err.contains("--features cuda"), "{err}");
    }
    // Without --topology the document is unchanged (no field, no driver start).
    let out = vm_accel(&["--sysfs-root", root, "list", "--json"], &[NO_DRIVER]);
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON");
    assert!(v.get("gpu_topology").is_none());
    let bdf = v["devices"][0]["bdf"].as_str().unwrap().to_string();
    let out = vm_accel(
        &["--sysfs-root", root, "show", &bdf, "--topology"],
        &[NO_DRIVER],
    );
    assert!(out.status.success(), "stderr: {}", text(&out.stderr));
    assert!(
        text(&out.stdout).contains("GPU topology: unavailable: "),
        "{}",
        text(&out.stdout)
    );
}

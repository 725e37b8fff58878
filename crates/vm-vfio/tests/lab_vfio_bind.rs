//! The binding lifecycle for real, through the `vm-accel` CLI: take a vfio-pci device back
//! to "no driver", `vm-accel bind` it, open it through VFIO, `vm-accel unbind` it, and check
//! it ends exactly as it was; then the same with `vm-accel restore`. Runs in the lab (the
//! lab puts `vm-accel` on PATH); skips elsewhere. Leaves the device on vfio-pci, as the
//! lab's init bound it, whatever happens.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod lab_common;

use std::path::{Path, PathBuf};

use lab_common::{device_under_test, lab_edu_bdfs, report, sys, write, BackToVfio};
use vm_pci::Bdf;
use vm_vfio::access::{BackendChoice, Device};
use vm_vfio::bind::DriverState;

/// [`lab_common::run`], with the command and its output in the lab report.
fn run(bin: &Path, args: &[&str]) -> (i32, serde_json::Value, String) {
    let (code, json, stderr) = lab_common::run(bin, args);
    report(&format!(
        "$ vm-accel {} -> {code}\n{json}\n{stderr}",
        args.join(" ")
    ));
    (code, json, stderr)
}

/// Takes `b` off vfio-pci to "no driver, no override": the state a fresh edu has.
fn make_unbound(b: Bdf) {
    write(&format!("/sys/bus/pci/devices/{b}/driver_override"), "\n");
    if sys().driver_state(b).unwrap().driver.is_some() {
        write("/sys/bus/pci/drivers/vfio-pci/unbind", &b.to_string());
    }
    assert_eq!(sys().driver_state(b).unwrap(), DriverState::default());
}

/// The edu the lifecycle is exercised on: the last one, so the first stays for others.
fn target(test: &str) -> Option<(Bdf, PathBuf)> {
    let first = device_under_test(test)?;
    let Some(bin) = vm_accel_tests::lab::vm_accel_bin() else {
        vm_accel_tests::hw::skip(test, "no vm-accel binary on PATH (or VM_ACCEL_BIN)");
        return None;
    };
    Some((lab_edu_bdfs().last().copied().unwrap_or(first), bin))
}

#[test]
fn bind_then_unbind_returns_the_device_exactly() {
    let Some((b, bin)) = target("bind_then_unbind_returns_the_device_exactly") else {
        return;
    };
    let _guard = BackToVfio(b);
    make_unbound(b);
    let bdf = b.to_string();

    // Readiness first: edu on q35's root bus has no reset method, which vm-pci fails.
    let (code, plan, _) = run(&bin, &["bind", &bdf, "--dry-run", "--json"]);
    let reset_missing = !Path::new(&format!("/sys/bus/pci/devices/{bdf}/reset_method")).exists();
    if reset_missing {
        assert_eq!(code, 1, "a device without reset is refused");
        assert!(plan["refusals"].to_string().contains("reset:"), "{plan}");
    }
    let (code, plan, _) = run(
        &bin,
        &["bind", &bdf, "--dry-run", "--json", "--allow", "reset"],
    );
    assert_eq!(code, 0, "{plan}");
    assert_eq!(
        plan["commands"][0],
        format!("echo vfio-pci > /sys/bus/pci/devices/{bdf}/driver_override")
    );
    assert_eq!(
        sys().driver_state(b).unwrap(),
        DriverState::default(),
        "dry run changed nothing"
    );

    let (code, out, err) = run(&bin, &["bind", &bdf, "--json", "--allow", "reset"]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out["ok"], true);
    assert_eq!(out["outcome"]["changed"], true);
    let st = sys().driver_state(b).unwrap();
    assert_eq!(st.driver.as_deref(), Some("vfio-pci"));
    assert_eq!(st.driver_override.as_deref(), Some("vfio-pci"));
    assert!(
        Path::new("/run/vm-accel/bindings.json").exists(),
        "the binding is recorded"
    );

    // What bind produced is a working VFIO device.
    {
        let d = Device::open_new(&sys(), b, BackendChoice::Auto).unwrap();
        assert_eq!(d.config_u16(0).unwrap(), lab_common::EDU_VENDOR);
    }

    // A second bind is a no-op; unbind returns it to no driver and no override.
    let (code, out, _) = run(&bin, &["bind", &bdf, "--json", "--allow", "reset"]);
    assert_eq!(
        (code, &out["outcome"]["changed"]),
        (0, &serde_json::Value::Bool(false))
    );
    let (code, out, err) = run(&bin, &["unbind", &bdf, "--json"]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(sys().driver_state(b).unwrap(), DriverState::default());
    assert!(
        !Path::new("/run/vm-accel/bindings.json").exists(),
        "record removed"
    );
    let (code, out, _) = run(&bin, &["unbind", &bdf, "--json"]);
    assert_eq!(code, 1);
    assert!(
        out["error"]
            .as_str()
            .unwrap_or("")
            .contains("not bound by vm-accel"),
        "{out}"
    );
}

#[test]
fn restore_returns_every_recorded_device() {
    let Some((b, bin)) = target("restore_returns_every_recorded_device") else {
        return;
    };
    let _guard = BackToVfio(b);
    make_unbound(b);
    let bdf = b.to_string();
    let (code, out, err) = run(&bin, &["bind", &bdf, "--json", "--allow", "reset"]);
    assert_eq!(code, 0, "{out} {err}");
    let (code, out, _) = run(&bin, &["restore", "--dry-run", "--json"]);
    assert_eq!(code, 0);
    assert_eq!(out["record"]["bindings"][0]["target"], bdf.as_str());
    let (code, out, err) = run(&bin, &["restore", "--json"]);
    assert_eq!(code, 0, "{out} {err}");
    assert_eq!(out["ok"], true);
    assert_eq!(sys().driver_state(b).unwrap(), DriverState::default());
}

#[test]
fn devices_without_a_reset_method_are_refused_unless_allowed() {
    let Some((_, bin)) = target("devices_without_a_reset_method_are_refused_unless_allowed") else {
        return;
    };
    let mut seen = 0;
    for b in lab_edu_bdfs() {
        // An edu on q35's root bus has no FLR, no PM reset and no parent bridge to reset.
        if Path::new(&format!("/sys/bus/pci/devices/{b}/reset_method")).exists() {
            continue;
        }
        seen += 1;
        let before = sys().driver_state(b).unwrap();
        let bdf = b.to_string();
        let (code, plan, _) = run(&bin, &["bind", &bdf, "--dry-run", "--json"]);
        assert_eq!(code, 1, "{plan}");
        assert_eq!(plan["refused"], true);
        assert!(
            plan["refusals"]
                .to_string()
                .contains("reset: no reset method"),
            "{plan}"
        );
        let (code, out, _) = run(&bin, &["bind", &bdf, "--json"]);
        assert_eq!(code, 1);
        assert!(
            out["error"]
                .as_str()
                .unwrap_or("")
                .contains("refusing to bind"),
            "{out}"
        );
        assert_eq!(
            sys().driver_state(b).unwrap(),
            before,
            "a refused bind writes nothing"
        );
        let (code, _, _) = run(
            &bin,
            &["bind", &bdf, "--dry-run", "--json", "--allow", "reset"],
        );
        assert_eq!(code, 0);
    }
    report(&format!(
        "{seen} edu device(s) without a reset method checked"
    ));
}

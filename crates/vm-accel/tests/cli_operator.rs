//! What an operator expects of the CLI: completions, `--sysfs-root` in the help, debug
//! logging that says what was read and decided, and hints that name the cargo feature.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn fixture(name: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../tests/fixtures/sysfs")
        .join(name)
}

fn vm_accel(args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_vm-accel"));
    cmd.args(args).env_remove("RUST_LOG");
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd.output().expect("run vm-accel")
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

#[test]
fn completions_for_bash_zsh_and_fish_name_every_command() {
    for (shell, marker) in [
        ("bash", "complete -F _vm__accel"),
        ("zsh", "#compdef vm-accel"),
        ("fish", "complete -c vm-accel"),
    ] {
        let out = vm_accel(&["completions", shell], &[]);
        assert!(out.status.success(), "{shell}: {}", text(&out.stderr));
        let script = text(&out.stdout);
        assert!(script.contains(marker), "{shell} script lacks {marker:?}");
        for cmd in ["list", "show", "check", "bind", "unbind", "restore", "cuda"] {
            assert!(script.contains(cmd), "{shell} script lacks `{cmd}`");
        }
        assert!(script.contains("sysfs-root"), "{shell}: --sysfs-root");
    }
    let out = vm_accel(&["completions", "powerpoint"], &[]);
    assert_eq!(
        out.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn sysfs_root_is_in_every_help() {
    for args in [
        &["--help"][..],
        &["list", "--help"],
        &["show", "--help"],
        &["check", "--help"],
        &["bind", "--help"],
    ] {
        let out = vm_accel(args, &[]);
        assert!(out.status.success());
        assert!(
            text(&out.stdout).contains("--sysfs-root <DIR>"),
            "`vm-accel {}` hides --sysfs-root",
            args.join(" ")
        );
    }
}

#[test]
fn debug_log_says_which_files_were_read_and_what_each_check_decided() {
    let root = fixture("h200-host");
    let root = root.to_str().unwrap();
    let out = vm_accel(
        &["--sysfs-root", root, "check", "0000:00:06.0"],
        &[("RUST_LOG", "debug")],
    );
    let log = text(&out.stderr);
    assert!(
        log.contains("0000:00:06.0: read ") && log.contains("devices/pci0000:00/0000:00:06.0"),
        "no per-device read line:\n{log}"
    );
    assert!(log.contains("4096 bytes of config space"), "{log}");
    assert!(
        log.contains("host: check iommu_enabled = FAIL"),
        "host decision missing:\n{log}"
    );
    assert!(
        log.contains("0000:00:06.0: check reset = PASS: reset methods: flr"),
        "device decision missing:\n{log}"
    );
    // And without RUST_LOG the same command logs nothing at debug level.
    let quiet = vm_accel(&["--sysfs-root", root, "check", "0000:00:06.0"], &[]);
    assert!(
        !text(&quiet.stderr).contains("DEBUG"),
        "{}",
        text(&quiet.stderr)
    );
}

#[test]
fn cuda_without_the_feature_tells_the_user_how_to_install_it() {
    if vm_accel::vm_cuda::BUILT_WITH_CUDA {
        return; // built with --features cuda: the hint does not apply
    }
    for args in [&["cuda", "info"][..], &["cuda", "check"]] {
        let out = vm_accel(args, &[]);
        assert_eq!(out.status.code(), Some(2));
        let err = text(&out.stderr);
        assert!(
            err.contains("cargo install vm-accel --features cuda"),
            "{}: {err}",
            args.join(" ")
        );
        assert!(!err.contains("vm-cuda's"), "a crate-user hint: {err}");
    }
}

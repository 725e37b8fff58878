//! Builds the lab's test binaries (and the extra binaries they need) for the guest.

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use anyhow::{bail, Context, Result};

use super::host::GUEST_TARGET;
use super::targets::LabTarget;

/// A test binary ready for the initramfs.
#[derive(Debug)]
pub struct BuiltTest {
    pub name: &'static str,
    pub exe: PathBuf,
    /// Test names the binary will report (`--list` with the same filter arguments), so
    /// a test that never reports a result is caught.
    pub expected: Vec<String>,
}

/// Extra binaries for the guest's PATH: (name, host path).
pub type ExtraBins = Vec<(String, PathBuf)>;

/// Builds every target and the binaries they need; returns tests and extra binaries.
pub fn build(
    workspace: &Path,
    targets: &[LabTarget],
    test_args: &[String],
) -> Result<(Vec<BuiltTest>, ExtraBins)> {
    let mut tests = Vec::new();
    let mut bins: ExtraBins = Vec::new();
    for t in targets {
        let mut args = vec!["test", "--no-run", "-p", t.package, "--test", t.test];
        let features = t.features.join(",");
        if !features.is_empty() {
            args.extend(["--features", &features]);
        }
        let exe = cargo_artifact(workspace, &args, |kind| kind == "test", t.test)?;
        let expected = list_tests(&exe, test_args)?;
        tests.push(BuiltTest {
            name: t.name,
            exe,
            expected,
        });
        for (package, bin) in t.bins {
            if bins.iter().any(|(b, _)| b == bin) {
                continue;
            }
            let exe = cargo_artifact(
                workspace,
                &["build", "-p", package, "--bin", bin],
                |k| k == "bin",
                bin,
            )?;
            bins.push((bin.to_string(), exe));
        }
    }
    Ok((tests, bins))
}

/// Runs cargo for the guest target and returns the executable of target `name`.
fn cargo_artifact(
    workspace: &Path,
    args: &[&str],
    kind_ok: impl Fn(&str) -> bool,
    name: &str,
) -> Result<PathBuf> {
    let cargo = std::env::var_os("CARGO").unwrap_or_else(|| "cargo".into());
    let output = Command::new(cargo)
        .current_dir(workspace)
        .args(args)
        .args([
            "--target",
            GUEST_TARGET,
            "--message-format=json-render-diagnostics",
        ])
        // Smaller binaries for the initramfs; backtraces keep file:line.
        .env("CARGO_PROFILE_DEV_DEBUG", "line-tables-only")
        .env("CARGO_PROFILE_TEST_DEBUG", "line-tables-only")
        .stderr(Stdio::inherit())
        .output()
        .context("running cargo")?;
    if !output.status.success() {
        bail!("cargo {} --target {GUEST_TARGET} failed", args.join(" "));
    }
    let mut found = None;
    for line in output.stdout.split(|&b| b == b'\n') {
        let Ok(msg) = serde_json::from_slice::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["target"]["name"] != name {
            continue;
        }
        let kinds = msg["target"]["kind"]
            .as_array()
            .cloned()
            .unwrap_or_default();
        if !kinds.iter().any(|k| k.as_str().is_some_and(&kind_ok)) {
            continue;
        }
        if let Some(exe) = msg["executable"].as_str() {
            found = Some(PathBuf::from(exe));
        }
    }
    found.with_context(|| format!("cargo {} built no executable named {name}", args.join(" ")))
}

/// The static musl test binary runs on the host too: ask it which tests it will run.
fn list_tests(exe: &Path, test_args: &[String]) -> Result<Vec<String>> {
    let out = Command::new(exe)
        .args(["--list", "--format", "terse"])
        .args(test_args)
        .output()
        .with_context(|| format!("running {} --list", exe.display()))?;
    if !out.status.success() {
        bail!(
            "{} --list failed: {}",
            exe.display(),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| l.strip_suffix(": test"))
        .map(str::to_string)
        .collect())
}

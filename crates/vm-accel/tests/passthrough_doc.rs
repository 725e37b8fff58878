//! docs/passthrough.md's example host as a committed fixture
//! (tests/fixtures/sysfs/gpu-audio-host, written by `vm_pci::fixture::gpu_audio_host`), and
//! the how-to's dry run reproduced on it with `--sysfs-root`.

// Test helpers: a panic with the reason is how a test reports failure.
#![allow(clippy::unwrap_used)]

use std::path::{Path, PathBuf};
use std::process::Command;

use vm_accel::vm_pci;

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn fixture() -> PathBuf {
    workspace().join("tests/fixtures/sysfs/gpu-audio-host")
}

/// Every file (contents), symlink (target) and directory below `dir`, relative to it.
fn tree(dir: &Path) -> Vec<(PathBuf, String)> {
    fn walk(base: &Path, dir: &Path, out: &mut Vec<(PathBuf, String)>) {
        let mut entries: Vec<_> = std::fs::read_dir(dir)
            .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        entries.sort();
        for p in entries {
            let rel = p.strip_prefix(base).unwrap().to_path_buf();
            let meta = std::fs::symlink_metadata(&p).unwrap();
            if meta.file_type().is_symlink() {
                let target = std::fs::read_link(&p).unwrap();
                out.push((rel, format!("-> {}", target.display())));
            } else if meta.is_dir() {
                out.push((rel, "dir".into()));
                walk(base, &p, out);
            } else {
                let bytes = std::fs::read(&p).unwrap();
                out.push((rel, String::from_utf8_lossy(&bytes).into_owned()));
            }
        }
    }
    let mut out = Vec::new();
    walk(dir, dir, &mut out);
    out
}

#[test]
fn committed_fixture_is_what_the_generator_writes() {
    let t = tempfile::tempdir().unwrap();
    vm_pci::fixture::gpu_audio_host(t.path()).expect("write fixture");
    if std::env::var_os("UPDATE_FIXTURES").is_some() {
        let _ = std::fs::remove_dir_all(fixture());
        vm_pci::fixture::gpu_audio_host(fixture()).expect("write committed fixture");
    }
    let want = tree(t.path());
    for (path, what) in &want {
        let dir = t.path().join(path);
        if what == "dir" {
            assert!(
                std::fs::read_dir(&dir).unwrap().next().is_some(),
                "{}: git drops empty directories, so a clone would lack it",
                path.display()
            );
        }
    }
    let have = tree(&fixture());
    assert_eq!(
        have, want,
        "tests/fixtures/sysfs/gpu-audio-host differs from vm_pci::fixture::gpu_audio_host: UPDATE_FIXTURES=1 rewrites it"
    );
}

/// The lines of the fenced block that follows `marker` in docs/passthrough.md.
fn doc_block(marker: &str) -> Vec<String> {
    let doc = std::fs::read_to_string(workspace().join("docs/passthrough.md")).unwrap();
    let mut lines = doc.lines().skip_while(|l| *l != marker);
    assert!(
        lines.next().is_some(),
        "docs/passthrough.md lost {marker:?}"
    );
    lines
        .take_while(|l| !l.starts_with("```"))
        .map(str::to_string)
        .collect()
}

fn run(args: &[&str]) -> (Option<i32>, Vec<String>) {
    let run_dir = tempfile::tempdir().unwrap();
    let root = fixture();
    let root = root.to_str().unwrap();
    let out = Command::new(env!("CARGO_BIN_EXE_vm-accel"))
        .args(["--sysfs-root", root])
        .args(args)
        .arg("--run-dir")
        .arg(run_dir.path())
        .output()
        .expect("run vm-accel");
    let text = String::from_utf8_lossy(&out.stdout).replace(root, "/sys");
    (
        out.status.code(),
        text.lines().map(str::to_string).collect(),
    )
}

#[test]
fn the_how_tos_dry_run_reproduces_on_the_fixture() {
    let want = doc_block("$ vm-accel bind 0000:41:00.0 --dry-run");
    let (code, have) = run(&["bind", "0000:41:00.0", "--dry-run"]);
    assert_eq!(code, Some(0), "{have:#?}");
    assert_eq!(
        have, want,
        "docs/passthrough.md section 3 no longer matches the CLI"
    );
}

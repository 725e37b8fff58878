//! `cargo xtask bench-list`: `vm-accel list --json` against `lspci -D -nn -k` on this host's
//! /sys, alternating runs in one process so both see the same machine state. Where the time
//! goes: `/bin/true` is the floor any process pays (fork + exec), `vm-accel --version` adds
//! vm-accel's process start (loader, relocations, runtime, argument parsing), and `list`
//! minus `--version` is the scan (sysfs reads, PCI ID lookups) and the JSON.

use std::path::PathBuf;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context as _};

#[derive(Debug, clap::Args)]
pub struct Args {
    /// Timed runs of each command (after 5 warm-up runs each).
    #[arg(long, default_value_t = 200)]
    pub runs: usize,
}

fn time_once(cmd: &mut Command) -> anyhow::Result<Duration> {
    let t = Instant::now();
    let status = cmd
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .with_context(|| format!("running {cmd:?}"))?;
    let d = t.elapsed();
    if !status.success() {
        bail!("{cmd:?} failed: {status}");
    }
    Ok(d)
}

fn median(v: &mut [Duration]) -> Duration {
    v.sort();
    v[v.len() / 2]
}

pub fn run(args: Args) -> anyhow::Result<()> {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let st = Command::new(&cargo)
        .current_dir(&root)
        .args(["build", "--release", "--quiet", "-p", "vm-accel"])
        .status()?;
    if !st.success() {
        bail!("building vm-accel failed");
    }
    let meta = Command::new(&cargo)
        .current_dir(&root)
        .args(["metadata", "--format-version", "1", "--no-deps"])
        .output()?;
    let v: serde_json::Value = serde_json::from_slice(&meta.stdout)?;
    let bin = PathBuf::from(v["target_directory"].as_str().context("target_directory")?)
        .join("release/vm-accel");
    if Command::new("lspci").arg("--version").output().is_err() {
        bail!("lspci not found: apt-get install pciutils");
    }
    let ours = || {
        let mut c = Command::new(&bin);
        c.args(["list", "--json"]);
        c
    };
    let lspci = || {
        let mut c = Command::new("lspci");
        c.args(["-D", "-nn", "-k"]);
        c
    };
    let start = || {
        let mut c = Command::new(&bin);
        c.arg("--version");
        c
    };
    let floor = || Command::new("true");
    for _ in 0..5 {
        time_once(&mut ours())?;
        time_once(&mut lspci())?;
    }
    let (mut a, mut b) = (Vec::with_capacity(args.runs), Vec::with_capacity(args.runs));
    let (mut s, mut f) = (Vec::with_capacity(args.runs), Vec::with_capacity(args.runs));
    for _ in 0..args.runs.max(1) {
        a.push(time_once(&mut ours())?);
        b.push(time_once(&mut lspci())?);
        s.push(time_once(&mut start())?);
        f.push(time_once(&mut floor())?);
    }
    let devices = std::fs::read_dir("/sys/bus/pci/devices")
        .map(|d| d.count())
        .unwrap_or(0);
    let (ma, mb) = (median(&mut a), median(&mut b));
    let (ms, mf) = (median(&mut s), median(&mut f));
    println!("host: {devices} PCI devices, {} timed runs each (median wall time, process start included)", args.runs);
    println!("vm-accel list --json : {:>8.3} ms", ma.as_secs_f64() * 1e3);
    println!("lspci -D -nn -k      : {:>8.3} ms", mb.as_secs_f64() * 1e3);
    println!(
        "ratio vm-accel/lspci : {:.2}",
        ma.as_secs_f64() / mb.as_secs_f64()
    );
    let ms_of = |d: Duration| d.as_secs_f64() * 1e3;
    println!("where vm-accel's time goes:");
    println!("  fork + exec (true)        : {:>8.3} ms", ms_of(mf));
    println!(
        "  process start (--version) : {:>8.3} ms",
        ms_of(ms.saturating_sub(mf))
    );
    println!(
        "  scan + JSON (list - --version): {:>8.3} ms",
        ms_of(ma.saturating_sub(ms))
    );
    Ok(())
}

//! Host safety on a real kernel (issue 10, section 7), in the lab guest:
//! - `vm-accel bind` killed with SIGKILL at random points, then `vm-accel restore`: every
//!   device back on exactly its original driver and driver_override;
//! - two `vm-accel bind` processes on one group at once: one binds, the other waits (and
//!   finds it bound) or is refused, and the group ends consistent;
//! - open / DMA-map / unmap / close cycles of a device: no growth in descriptors or mappings
//!   (200 per CI run, each ~50 ms under TCG; `--guest-env VM_ACCEL_LAB_CYCLES=10000` for the
//!   long run docs/reliability.md reports);
//! - a device whose VFIO group a process holds open is reported in use by `vm-accel check`,
//!   naming the pid and command.
//! - devices the guest's host really uses (Debian's kernel: a mounted virtio-blk disk, a
//!   swap disk, a virtio-net NIC with addresses, set up by the lab's init) are refused by
//!   `vm-accel bind` naming the use, and reported by `vm-accel check` (issue 10, section 1).
//!
//! Runs in the lab (the lab puts `vm-accel` on PATH); skips elsewhere. Leaves the device on
//! vfio-pci, as the lab's init bound it, whatever happens.

#![allow(clippy::unwrap_used)] // test helpers: a panic is the failure report

mod lab_common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use lab_common::{
    device_under_test, guest_memory, lab_edu_bdfs, report, run, sys, write, BackToVfio,
};
use vm_accel_tests::lab::{fd_count, map_count};
use vm_pci::Bdf;
use vm_vfio::access::{BackendChoice, Device};
use vm_vfio::bind::DriverState;

/// `vm-accel restore` first (what a killed bind leaves recorded), then [`BackToVfio`].
struct RestoreThenVfio {
    /// Held for its drop, which runs after this one's.
    _then: BackToVfio,
}

impl Drop for RestoreThenVfio {
    fn drop(&mut self) {
        let _ = Command::new(vm_accel_tests::lab::vm_accel_bin().unwrap_or_default())
            .arg("restore")
            .output();
    }
}

/// Puts `b` in `want` (no driver; the given override) from whatever state it is in.
fn set_state(b: Bdf, want: &DriverState) {
    assert!(
        want.driver.is_none(),
        "only driverless originals are set up"
    );
    let ov = want.driver_override.clone().unwrap_or_else(|| "\n".into());
    write(&format!("/sys/bus/pci/devices/{b}/driver_override"), &ov);
    if let Some(d) = sys().driver_state(b).unwrap().driver {
        write(&format!("/sys/bus/pci/drivers/{d}/unbind"), &b.to_string());
    }
    assert_eq!(&sys().driver_state(b).unwrap(), want);
}

fn target(test: &str) -> Option<(Bdf, PathBuf)> {
    let first = device_under_test(test)?;
    let Some(bin) = vm_accel_tests::lab::vm_accel_bin() else {
        vm_accel_tests::hw::skip(test, "no vm-accel binary on PATH (or VM_ACCEL_BIN)");
        return None;
    };
    Some((lab_edu_bdfs().last().copied().unwrap_or(first), bin))
}

/// A small deterministic generator (xorshift), seeded and reported so a run can be replayed.
struct Rng(u64);
impl Rng {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        self.0
    }
}

fn env_count(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
fn binds_killed_at_random_points_are_restored_exactly() {
    let Some((b, bin)) = target("binds_killed_at_random_points_are_restored_exactly") else {
        return;
    };
    let _guard = RestoreThenVfio {
        _then: BackToVfio(b),
    };
    let bdf = b.to_string();
    let originals = [
        DriverState::default(),
        DriverState {
            driver: None,
            driver_override: Some("pci-stub".into()),
        },
    ];
    // How long a whole bind takes here: kill points are spread over it (and a bit past).
    set_state(b, &originals[0]);
    let start = Instant::now();
    let (code, out, err) = run(&bin, &["bind", &bdf, "--json", "--allow", "reset"]);
    let full = start.elapsed();
    assert_eq!(code, 0, "{out} {err}");
    let (code, _, err) = run(&bin, &["restore", "--json"]);
    assert_eq!(code, 0, "{err}");
    let seed = 0x9e37_79b9_7f4a_7c15_u64 ^ u64::from(std::process::id());
    let mut rng = Rng(seed);
    let runs = env_count("VM_ACCEL_LAB_KILL_RUNS", 50);
    let window = full.as_micros() as u64 * 5 / 4 + 1;
    let (mut killed, mut finished, mut lost) = (0, 0, 0);
    for i in 0..runs {
        let original = &originals[i % originals.len()];
        set_state(b, original);
        let delay = Duration::from_micros(rng.next() % window);
        let mut child = Command::new(&bin)
            .args(["bind", &bdf, "--json", "--allow", "reset"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap();
        std::thread::sleep(delay);
        match child.try_wait().unwrap() {
            Some(_) => finished += 1,
            None => {
                child.kill().unwrap(); // SIGKILL
                killed += 1;
            }
        }
        child.wait().unwrap();
        let (code, out, err) = run(&bin, &["restore", "--json"]);
        assert_eq!(code, 0, "run {i} (kill after {delay:?}): {out} {err}");
        let now = sys().driver_state(b).unwrap();
        if &now != original {
            lost += 1;
            report(&format!(
                "run {i}: kill after {delay:?}: {b} ended as {now}, was {original}"
            ));
        }
        assert!(
            !Path::new("/run/vm-accel/bindings.json").exists(),
            "run {i}: restore left a record"
        );
    }
    report(&format!(
        "{runs} binds of {b}, SIGKILL at random points within {window} us (seed {seed:#x}): {killed} killed, {finished} finished first, {lost} devices lost"
    ));
    assert_eq!(lost, 0);
}

#[test]
fn two_concurrent_binds_leave_the_group_consistent() {
    let Some((b, bin)) = target("two_concurrent_binds_leave_the_group_consistent") else {
        return;
    };
    let _guard = RestoreThenVfio {
        _then: BackToVfio(b),
    };
    let bdf = b.to_string();
    let rounds = env_count("VM_ACCEL_LAB_CONCURRENT_ROUNDS", 10);
    let (mut waited, mut refused) = (0, 0);
    for round in 0..rounds {
        set_state(b, &DriverState::default());
        let spawn = || {
            Command::new(&bin)
                .args(["bind", &bdf, "--json", "--allow", "reset"])
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()
                .unwrap()
        };
        let (p1, p2) = (spawn(), spawn());
        let outs = [
            p1.wait_with_output().unwrap(),
            p2.wait_with_output().unwrap(),
        ];
        let mut changed = 0;
        for o in &outs {
            let v: serde_json::Value = serde_json::from_slice(&o.stdout).unwrap_or_default();
            match o.status.code() {
                Some(0) if v["outcome"]["changed"] == true => changed += 1,
                Some(0) => waited += 1, // waited for the lock, found it bound
                Some(2) => refused += 1, // the lock wait ran out
                c => panic!("round {round}: exit {c:?}: {v}"),
            }
        }
        assert_eq!(
            changed, 1,
            "round {round}: exactly one bind changes the host"
        );
        let st = sys().driver_state(b).unwrap();
        assert_eq!(st.driver.as_deref(), Some("vfio-pci"), "round {round}");
        let (code, rec, _) = run(&bin, &["restore", "--dry-run", "--json"]);
        assert_eq!(code, 0);
        assert_eq!(
            rec["record"]["bindings"].as_array().map(Vec::len),
            Some(1),
            "round {round}: one binding recorded: {rec}"
        );
        let (code, out, err) = run(&bin, &["unbind", &bdf, "--json"]);
        assert_eq!(code, 0, "{out} {err}");
        assert_eq!(sys().driver_state(b).unwrap(), DriverState::default());
    }
    report(&format!(
        "{rounds} rounds of two concurrent binds of {b}: one bound each time; the other waited and found it bound {waited} times, was refused {refused} times"
    ));
}

/// Memory pinned for DMA: vfio's type1 IOMMU charges it to the process's locked memory.
fn locked_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix("VmLck:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

#[test]
fn open_map_unmap_close_cycles_do_not_leak() {
    let Some(bdf) = device_under_test("open_map_unmap_close_cycles_do_not_leak") else {
        return;
    };
    let cycles = env_count("VM_ACCEL_LAB_CYCLES", 200);
    let mem = guest_memory();
    let cycle = || {
        let d = Device::open_new(&sys(), bdf, BackendChoice::Auto).unwrap();
        // SAFETY: the memory is only touched through vm-memory's volatile accessors.
        let m = unsafe { d.map_guest_memory(&mem) }.unwrap();
        m.unmap().unwrap();
        drop(d);
    };
    // The pinned-memory figure is live: it rises while guest memory is DMA-mapped.
    {
        let before = locked_kib();
        let d = Device::open_new(&sys(), bdf, BackendChoice::Auto).unwrap();
        // SAFETY: the memory is only touched through vm-memory's volatile accessors.
        let m = unsafe { d.map_guest_memory(&mem) }.unwrap();
        let mapped = locked_kib();
        m.unmap().unwrap();
        report(&format!("VmLck {before} KiB, {mapped} KiB while mapped"));
        assert!(
            mapped >= before + 4096,
            "4 MiB of guest memory pinned: {before} -> {mapped}"
        );
    }
    // Warm up: lazily created process state (allocator arenas, loggers) is not a leak.
    for _ in 0..50 {
        cycle();
    }
    let (fds, (maps, _), locked) = (fd_count(), map_count(), locked_kib());
    let start = Instant::now();
    for i in 1..=cycles {
        cycle();
        if i % 1000 == 0 {
            report(&format!(
                "{i} cycles in {:?}: fds {}, mappings {:?}, locked {} KiB, guest {}",
                start.elapsed(),
                fd_count(),
                map_count(),
                locked_kib(),
                std::fs::read_to_string("/proc/meminfo")
                    .unwrap_or_default()
                    .lines()
                    .find(|l| l.starts_with("MemAvailable"))
                    .unwrap_or("")
                    .split_whitespace()
                    .collect::<Vec<_>>()
                    .join(" ")
            ));
        }
    }
    let took = start.elapsed();
    let (fds_after, (maps_after, vfio_maps), locked_after) =
        (fd_count(), map_count(), locked_kib());
    report(&format!(
        "{cycles} open/map/unmap/close cycles of {bdf} in {took:?}: fds {fds} -> {fds_after}, mappings {maps} -> {maps_after} ({vfio_maps} of VFIO files), DMA-pinned (VmLck) {locked} -> {locked_after} KiB"
    ));
    assert_eq!(fds_after, fds, "descriptors leaked");
    assert_eq!(vfio_maps, 0, "a VFIO mapping outlived its device");
    assert_eq!(locked_after, locked, "pinned DMA memory leaked");
    // The allocator may take a new arena once; a per-cycle leak would add `cycles`.
    assert!(
        maps_after <= maps + 2,
        "mappings grew: {maps} -> {maps_after} over {cycles} cycles"
    );
}

#[test]
fn a_group_held_open_is_reported_in_use() {
    let Some(bdf) = device_under_test("a_group_held_open_is_reported_in_use") else {
        return;
    };
    let Some(bin) = vm_accel_tests::lab::vm_accel_bin() else {
        return vm_accel_tests::hw::skip("a_group_held_open_is_reported_in_use", "no vm-accel");
    };
    let s = bdf.to_string();
    let (_, before, _) = run(&bin, &["check", &s, "--json"]);
    assert_eq!(
        before["devices"][0]["in_use"],
        serde_json::json!([]),
        "{before}"
    );
    let d = Device::open_new(&sys(), bdf, BackendChoice::Auto).unwrap();
    let (code, v, _) = run(&bin, &["check", &s, "--json"]);
    let in_use = v["devices"][0]["in_use"].to_string();
    report(&format!("{s} held open: check says {in_use}"));
    assert_eq!(code, 1, "in use is not ready: {v}");
    assert!(
        in_use.contains(&format!("open by pid {}", std::process::id())),
        "{in_use}"
    );
    assert_eq!(v["devices"][0]["preparable"], false);
    drop(d);
}

/// A device the lab's init made the host use (Debian's kernel: a mounted virtio disk, a
/// swap disk, a virtio NIC with addresses), from `var`, and the vm-accel binary. `None`
/// after the skip; on the iommufd kernel (built without virtio) the lab has no such device.
fn host_use_device(test: &str, var: &str) -> Option<(String, PathBuf)> {
    if std::env::var("VM_ACCEL_LAB_KERNEL").as_deref() == Ok("iommufd") {
        report(&format!(
            "{test}: not on the iommufd kernel (no virtio drivers); runs on Debian's kernel"
        ));
        return None;
    }
    let Ok(bdf) = std::env::var(var) else {
        vm_accel_tests::hw::skip(test, &format!("{var} is not set (run `cargo xtask lab`)"));
        return None;
    };
    let Some(bin) = vm_accel_tests::lab::vm_accel_bin() else {
        vm_accel_tests::hw::skip(test, "no vm-accel binary on PATH (or VM_ACCEL_BIN)");
        return None;
    };
    Some((bdf, bin))
}

fn lab_var(name: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| panic!("{name} is set by the lab's init"))
}

fn driver_of(bdf: &str) -> Option<String> {
    std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/driver"))
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
}

fn sh(cmd: &str, args: &[&str]) {
    let out = Command::new(cmd).args(args).output().unwrap();
    assert!(
        out.status.success(),
        "{cmd} {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `bind` of the real `bdf` is refused for being in use, naming every one of `names`, and
/// leaves it on its driver; `--allow in_use` gets past that check (dry run: the guest keeps
/// its disk); `check` reports the same evidence, of `kind`, and says not preparable.
fn assert_refused_in_use(bin: &Path, bdf: &str, kind: &str, names: &[&str]) {
    let driver = driver_of(bdf);
    assert!(
        driver.as_deref().is_some_and(|d| d != "vfio-pci"),
        "{bdf} is on a host driver: {driver:?}"
    );
    for dry in [false, true] {
        let mut args = vec!["bind", bdf, "--json", "--allow", "reset"];
        if dry {
            args.push("--dry-run");
        }
        let (code, v, err) = run(bin, &args);
        let text = v.to_string();
        report(&format!("vm-accel {}: exit {code}: {text}", args.join(" ")));
        assert_eq!(code, 1, "refused: {text} {err}");
        assert!(text.contains("in_use"), "names the check: {text}");
        assert!(
            text.contains("--allow in_use"),
            "names the override: {text}"
        );
        for n in names {
            assert!(text.contains(n), "names {n}: {text}");
        }
        assert_eq!(driver_of(bdf), driver, "{bdf} stays on its driver");
    }
    let (code, v, err) = run(
        bin,
        &[
            "bind",
            bdf,
            "--dry-run",
            "--json",
            "--allow",
            "reset",
            "--allow",
            "in_use",
        ],
    );
    assert_eq!(code, 0, "--allow in_use gets past the check: {v} {err}");
    assert!(v.to_string().contains("vfio-pci"), "plans the bind: {v}");
    assert_eq!(driver_of(bdf), driver, "a dry run changes nothing");

    let (code, v, _) = run(bin, &["check", bdf, "--json"]);
    let dev = &v["devices"][0];
    report(&format!(
        "vm-accel check {bdf}: exit {code}: in_use {}",
        dev["in_use"]
    ));
    assert_eq!(code, 1, "not ready: {v}");
    assert_eq!(dev["preparable"], false, "{v}");
    let evidence = dev["in_use"].as_array().cloned().unwrap_or_default();
    let of_kind: Vec<String> = evidence
        .iter()
        .filter(|e| e["kind"] == kind && e["bdf"] == bdf)
        .map(|e| e["message"].as_str().unwrap_or_default().to_string())
        .collect();
    assert!(!of_kind.is_empty(), "{kind} evidence: {v}");
    for n in names {
        assert!(
            of_kind.iter().any(|m| m.contains(n)),
            "{kind} names {n}: {v}"
        );
    }
}

/// The control: without the use, nothing is reported and a dry-run bind goes through, so
/// the refusal above is the use's doing.
fn assert_not_in_use(bin: &Path, bdf: &str) {
    let (_, v, _) = run(bin, &["check", bdf, "--json"]);
    assert_eq!(v["devices"][0]["in_use"], serde_json::json!([]), "{v}");
    let (code, v, err) = run(
        bin,
        &["bind", bdf, "--dry-run", "--json", "--allow", "reset"],
    );
    assert_eq!(code, 0, "{v} {err}");
}

#[test]
fn a_mounted_disk_is_not_taken() {
    let test = "a_mounted_disk_is_not_taken";
    let Some((bdf, bin)) = host_use_device(test, "VM_ACCEL_LAB_DISK_BDF") else {
        return;
    };
    let (disk, point) = (
        lab_var("VM_ACCEL_LAB_DISK"),
        lab_var("VM_ACCEL_LAB_DISK_MOUNT"),
    );
    let mounted = format!("{disk} mounted on {point}");
    assert_refused_in_use(&bin, &bdf, "mounted", &[&mounted]);
    sh("umount", &[&point]);
    assert_not_in_use(&bin, &bdf);
    sh("mount", &["-t", "ext2", &format!("/dev/{disk}"), &point]);
}

#[test]
fn a_swap_disk_is_not_taken() {
    let test = "a_swap_disk_is_not_taken";
    let Some((bdf, bin)) = host_use_device(test, "VM_ACCEL_LAB_SWAP_BDF") else {
        return;
    };
    let dev = format!("/dev/{}", lab_var("VM_ACCEL_LAB_SWAP"));
    let swap = format!("{} is swap ({dev})", lab_var("VM_ACCEL_LAB_SWAP"));
    assert_refused_in_use(&bin, &bdf, "swap", &[&swap]);
    sh("swapoff", &[&dev]);
    assert_not_in_use(&bin, &bdf);
    sh("swapon", &[&dev]);
}

#[test]
fn a_nic_with_an_address_is_not_taken() {
    let test = "a_nic_with_an_address_is_not_taken";
    let Some((bdf, bin)) = host_use_device(test, "VM_ACCEL_LAB_NIC_BDF") else {
        return;
    };
    let nic = lab_var("VM_ACCEL_LAB_NIC");
    let (v4, v6) = (
        lab_var("VM_ACCEL_LAB_NIC_ADDR"),
        lab_var("VM_ACCEL_LAB_NIC_ADDR6"),
    );
    let iface = format!("network interface {nic} ");
    assert_refused_in_use(&bin, &bdf, "network", &[&iface, &v4, &v6]);
    sh("ip", &["addr", "flush", "dev", &nic]);
    assert_not_in_use(&bin, &bdf);
    // An IPv4 /32 gets no subnet route, so /proc/net/route never names the interface: only
    // the kernel's address list (getifaddrs) shows the NIC carries an address.
    let host = "10.77.0.1";
    sh("ip", &["addr", "add", &format!("{host}/32"), "dev", &nic]);
    assert_refused_in_use(&bin, &bdf, "network", &[&iface, host]);
    sh("ip", &["addr", "flush", "dev", &nic]);
    assert_not_in_use(&bin, &bdf);
    sh("ip", &["addr", "add", &format!("{v4}/24"), "dev", &nic]);
    sh(
        "ip",
        &["-6", "addr", "add", &format!("{v6}/64"), "dev", &nic],
    );
}

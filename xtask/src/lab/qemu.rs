//! Boots the lab guest and follows its serial console.

use std::io::{BufRead, BufReader, Read, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};

use super::Accel;

/// How to boot the guest.
#[derive(Debug)]
pub struct Boot<'a> {
    pub kernel: &'a Path,
    pub initramfs: &'a Path,
    pub accel: Accel,
    pub edu_devices: u8,
    pub memory_mib: u32,
    /// Where the host-use disks' images go (the run directory): a virtio-blk disk the guest
    /// mounts, one it uses as swap, and a virtio-net NIC it gives an address. `None` (the
    /// iommufd kernel, which has no virtio drivers): no such devices.
    pub host_use_disks: Option<&'a Path>,
    pub boot_timeout: Duration,
    pub timeout: Duration,
    /// A booted guest silent on its console this long is hung as a whole (each test binary
    /// has its own, shorter, in-guest timeout that prints when it fires).
    pub stall: Duration,
    pub verbose: bool,
}

/// Why the guest stopped.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum End {
    /// Init printed @@LAB-DONE and QEMU exited.
    Done,
    /// QEMU exited before @@LAB-DONE (crash, abort, guest panic).
    QemuExited(String),
    BootTimeout(Duration),
    Timeout(Duration),
    /// The booted guest printed nothing for this long: the whole guest is stuck (not one
    /// test binary, which the in-guest timeout would have ended and reported).
    GuestHang(Duration),
}

/// What one boot produced.
#[derive(Debug)]
pub struct Outcome {
    pub end: End,
    pub serial: Vec<String>,
    pub serial_log: PathBuf,
    pub qemu_stderr: String,
    pub to_ready: Option<Duration>,
    pub to_done: Option<Duration>,
}

/// Serial number of the lab's MSI-X device (QEMU `nvme`, PCI 1b36:0010).
pub const MSIX_SERIAL: &str = "vm-accel-lab";
/// Size of the large-BAR device's BAR2 (QEMU `ivshmem-plain`, PCI 1af4:1110), in GiB.
pub const LARGE_BAR_GIB: u64 = 64;

/// The host-use disks: (drive id, also the image's name; serial the guest finds it by).
pub const HOST_USE_DISKS: [(&str, &str); 2] = [("labdisk", "lab-mounted"), ("labswap", "lab-swap")];
/// Size of each host-use disk image (sparse: only what the guest writes takes space).
const HOST_USE_DISK_MIB: u64 = 16;
/// MAC address of the host-use NIC (locally administered).
pub const HOST_USE_MAC: &str = "52:54:00:1a:b0:01";

/// Creates the host-use disks' sparse images in `dir`.
pub fn create_host_use_disks(dir: &Path) -> Result<()> {
    for (id, _) in HOST_USE_DISKS {
        let path = dir.join(format!("{id}.img"));
        let f =
            std::fs::File::create(&path).with_context(|| format!("creating {}", path.display()))?;
        f.set_len(HOST_USE_DISK_MIB << 20)
            .with_context(|| format!("sizing {}", path.display()))?;
    }
    Ok(())
}

pub fn command_line(boot: &Boot<'_>) -> Vec<String> {
    let mut args: Vec<String> = vec!["-M".into(), "q35,kernel-irqchip=split".into()];
    match boot.accel {
        Accel::Tcg => args.extend(["-accel", "tcg", "-cpu", "max"].map(String::from)),
        // arch-capabilities off: nested KVM hosts refuse to set that MSR and QEMU aborts.
        Accel::Kvm => {
            args.extend(["-accel", "kvm", "-cpu", "host,-arch-capabilities"].map(String::from))
        }
    }
    args.extend(
        [
            "-m",
            &boot.memory_mib.to_string(),
            "-smp",
            "2",
            "-nodefaults",
            "-display",
            "none",
            "-monitor",
            "none",
            "-serial",
            "stdio",
            "-no-reboot",
            "-device",
            "intel-iommu,intremap=on,caching-mode=on",
        ]
        .map(String::from),
    );
    // Each edu lands in its own IOMMU group. The first sits on the root bus (no reset
    // method at all, like many integrated devices); the rest sit behind their own PCIe root
    // port, as a GPU does, where the kernel can reset them through the port (bus reset).
    for i in 0..boot.edu_devices {
        if i == 0 {
            args.extend(["-device".into(), "edu".into()]);
        } else {
            args.extend([
                "-device".into(),
                format!("pcie-root-port,id=rp{i},chassis={i},slot={i}"),
                "-device".into(),
                format!("edu,bus=rp{i}"),
            ]);
        }
    }
    // One MSI-X device, after the edus so that their addresses do not move: QEMU's NVMe
    // controller puts its MSI-X table and PBA inside BAR0, after the registers, as GPUs do,
    // so the table/PBA hole sits between mmap'able pages. No drive: no namespace, nothing
    // for a driver to use, and the guest has no nvme driver anyway (vfio-pci takes it).
    let rp = boot.edu_devices;
    args.extend([
        "-device".into(),
        format!("pcie-root-port,id=rp{rp},chassis={rp},slot={rp}"),
        "-device".into(),
        format!("nvme,serial={MSIX_SERIAL},bus=rp{rp}"),
    ]);
    // The large-BAR device, last so that nothing before it moves: ivshmem-plain's BAR2 is
    // a 64-bit prefetchable BAR as large as its memory backend, here 64 GiB of sparse
    // anonymous memory (reserve=off: MAP_NORESERVE, so only the pages touched are real;
    // TCG touches only what the guest accesses). Behind its own root port, alone in its
    // IOMMU group. The 64-bit hole is widened so the firmware's window holds it.
    let rp = boot.edu_devices + 1;
    args.extend([
        "-global".into(),
        format!("q35-pcihost.pci-hole64-size={}G", 2 * LARGE_BAR_GIB),
        "-object".into(),
        format!("memory-backend-ram,id=largebar,size={LARGE_BAR_GIB}G,reserve=off,share=on"),
        "-device".into(),
        format!("pcie-root-port,id=rp{rp},chassis={rp},slot={rp}"),
        "-device".into(),
        format!("ivshmem-plain,memdev=largebar,bus=rp{rp}"),
    ]);
    // The devices the host "uses" (lab_host_safety proves vm-accel refuses to take them),
    // last so that nothing before them moves, each behind its own root port like the
    // others: two virtio-blk disks (sparse images in the run directory; init formats and
    // mounts one, makes the other swap) and a virtio-net NIC on a hub with no other port
    // (it reaches nothing, not even the host).
    if let Some(dir) = boot.host_use_disks {
        let mut rp = boot.edu_devices + 2;
        for (id, serial) in HOST_USE_DISKS {
            args.extend([
                "-drive".into(),
                format!(
                    "if=none,id={id},format=raw,file={}",
                    dir.join(format!("{id}.img")).display()
                ),
                "-device".into(),
                format!("pcie-root-port,id=rp{rp},chassis={rp},slot={rp}"),
                "-device".into(),
                format!("virtio-blk-pci,drive={id},serial={serial},bus=rp{rp}"),
            ]);
            rp += 1;
        }
        args.extend([
            "-netdev".into(),
            "hubport,id=labnet,hubid=0".into(),
            "-device".into(),
            format!("pcie-root-port,id=rp{rp},chassis={rp},slot={rp}"),
            "-device".into(),
            format!("virtio-net-pci,netdev=labnet,mac={HOST_USE_MAC},bus=rp{rp}"),
        ]);
    }
    args.extend([
        "-kernel".into(),
        boot.kernel.display().to_string(),
        "-initrd".into(),
        boot.initramfs.display().to_string(),
        "-append".into(),
        "console=ttyS0 intel_iommu=on panic=-1 quiet loglevel=4".into(),
    ]);
    args
}

/// Boots, streams the console into `run_dir/serial.log`, enforces the timeouts.
pub fn run(boot: &Boot<'_>, run_dir: &Path) -> Result<Outcome> {
    let args = command_line(boot);
    let serial_log = run_dir.join("serial.log");
    std::fs::write(
        run_dir.join("qemu-cmdline.txt"),
        format!("qemu-system-x86_64 {}\n", args.join(" ")),
    )?;
    let mut log = std::fs::File::create(&serial_log)?;
    let started = Instant::now();
    let mut child = Command::new("qemu-system-x86_64")
        .args(&args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .context("starting qemu-system-x86_64")?;
    let (tx, rx) = mpsc::channel::<String>();
    let stdout = child.stdout.take().context("qemu stdout")?;
    std::thread::spawn(move || {
        let mut reader = BufReader::new(stdout);
        let mut buf = Vec::new();
        while reader.read_until(b'\n', &mut buf).is_ok_and(|n| n > 0) {
            let line = String::from_utf8_lossy(&buf)
                .trim_end_matches(['\n', '\r'])
                .to_string();
            buf.clear();
            if tx.send(line).is_err() {
                break;
            }
        }
    });
    let mut stderr = child.stderr.take().context("qemu stderr")?;
    let stderr_thread = std::thread::spawn(move || {
        let mut s = String::new();
        let _ = stderr.read_to_string(&mut s);
        s
    });

    let mut serial = Vec::new();
    let (mut to_ready, mut to_done) = (None, None);
    let mut last_line = Instant::now();
    let end = loop {
        let elapsed = started.elapsed();
        if to_ready.is_some() && last_line.elapsed() >= boot.stall {
            kill(&mut child);
            break End::GuestHang(boot.stall);
        }
        let deadline = if to_ready.is_none() {
            boot.boot_timeout
        } else {
            boot.timeout
        };
        if elapsed >= deadline {
            kill(&mut child);
            break if to_ready.is_none() {
                End::BootTimeout(deadline)
            } else {
                End::Timeout(deadline)
            };
        }
        match rx.recv_timeout((deadline - elapsed).min(Duration::from_millis(500))) {
            Ok(line) => {
                last_line = Instant::now();
                writeln!(log, "{line}")?;
                if boot.verbose {
                    println!("guest| {line}");
                }
                if line.starts_with("@@LAB-READY") && to_ready.is_none() {
                    to_ready = Some(started.elapsed());
                }
                if line.starts_with("@@LAB-DONE") {
                    to_done = Some(started.elapsed());
                }
                serial.push(line);
            }
            Err(mpsc::RecvTimeoutError::Timeout) => {}
            Err(mpsc::RecvTimeoutError::Disconnected) => {
                // Console closed: QEMU is exiting. Give it a moment for its status.
                let status = wait_for(&mut child, Duration::from_secs(10));
                break match (to_done, status) {
                    (Some(_), Some(s)) if s.success() => End::Done,
                    (_, Some(s)) => End::QemuExited(s.to_string()),
                    (_, None) => {
                        kill(&mut child);
                        End::QemuExited("closed its console but did not exit".into())
                    }
                };
            }
        }
    };
    let qemu_stderr = stderr_thread.join().unwrap_or_default();
    std::fs::write(run_dir.join("qemu-stderr.log"), &qemu_stderr)?;
    Ok(Outcome {
        end,
        serial,
        serial_log,
        qemu_stderr,
        to_ready,
        to_done,
    })
}

fn wait_for(child: &mut Child, limit: Duration) -> Option<ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(s)) = child.try_wait() {
            return Some(s);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    None
}

fn kill(child: &mut Child) {
    let _ = child.kill();
    let _ = child.wait();
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_msix_and_large_bar_devices_come_after_the_edus_behind_their_own_root_ports() {
        let boot = Boot {
            kernel: Path::new("vmlinux"),
            initramfs: Path::new("initrd"),
            accel: Accel::Tcg,
            edu_devices: 3,
            memory_mib: 1024,
            host_use_disks: None,
            boot_timeout: Duration::from_secs(1),
            timeout: Duration::from_secs(1),
            stall: Duration::from_secs(1),
            verbose: false,
        };
        let args = command_line(&boot);
        let devices: Vec<&str> = args
            .windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| w[1].as_str())
            .collect();
        // Appended last, so the edus (then the nvme) keep the addresses the tests and docs
        // name.
        assert_eq!(
            devices[devices.len() - 4..],
            [
                "pcie-root-port,id=rp3,chassis=3,slot=3",
                "nvme,serial=vm-accel-lab,bus=rp3",
                "pcie-root-port,id=rp4,chassis=4,slot=4",
                "ivshmem-plain,memdev=largebar,bus=rp4"
            ]
        );
        // The large BAR's backend is sparse (MAP_NORESERVE) and fits the 64-bit hole.
        let object = args
            .windows(2)
            .find(|w| w[0] == "-object")
            .map(|w| w[1].as_str());
        assert_eq!(
            object,
            Some("memory-backend-ram,id=largebar,size=64G,reserve=off,share=on")
        );
        assert!(args.iter().any(|a| a == "q35-pcihost.pci-hole64-size=128G"));
        // The host-use devices come after everything else, each behind its own new port.
        let with = command_line(&Boot {
            host_use_disks: Some(Path::new("/run-dir")),
            ..boot
        });
        let with_devices: Vec<&str> = with
            .windows(2)
            .filter(|w| w[0] == "-device")
            .map(|w| w[1].as_str())
            .collect();
        assert_eq!(with_devices[..devices.len()], devices[..]);
        assert_eq!(
            with_devices[devices.len()..],
            [
                "pcie-root-port,id=rp5,chassis=5,slot=5",
                "virtio-blk-pci,drive=labdisk,serial=lab-mounted,bus=rp5",
                "pcie-root-port,id=rp6,chassis=6,slot=6",
                "virtio-blk-pci,drive=labswap,serial=lab-swap,bus=rp6",
                "pcie-root-port,id=rp7,chassis=7,slot=7",
                "virtio-net-pci,netdev=labnet,mac=52:54:00:1a:b0:01,bus=rp7"
            ]
        );
        assert!(with
            .iter()
            .any(|a| a == "if=none,id=labdisk,format=raw,file=/run-dir/labdisk.img"));
        // A hub port with no other port on the hub: the NIC reaches nothing.
        assert!(with.iter().any(|a| a == "hubport,id=labnet,hubid=0"));
        assert!(!with
            .iter()
            .any(|a| a.starts_with("user") || a.contains("netdev user")));
        let ports: Vec<&str> = devices
            .iter()
            .filter(|d| d.starts_with("pcie-root-port"))
            .copied()
            .collect();
        assert_eq!(ports.len(), 4, "{ports:?}");
        for (i, p) in ports.iter().enumerate() {
            assert!(
                ports[i + 1..]
                    .iter()
                    .all(|q| q.split(',').nth(2) != p.split(',').nth(2)),
                "chassis numbers are unique: {ports:?}"
            );
        }
    }
}

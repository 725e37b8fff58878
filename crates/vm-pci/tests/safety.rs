//! Host safety of discovery (issue 10): bounded, non-blocking reads; live-sysfs detection by
//! what the root is; inconsistent groups; unreadable devices named; in-use evidence of each
//! kind on fixture trees; messages that stay O(1) in the size of a group.

use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use vm_pci::fixture::{DeviceSpec, TreeBuilder};
use vm_pci::readiness::{is_preparable, is_ready};
use vm_pci::{Bdf, Inventory, Level, ProcRoot, Readiness, SysfsRoot, UsageKind};

fn bdf(s: &str) -> Bdf {
    s.parse().expect("valid test BDF")
}

/// Runs `f` on a thread and fails the test if it does not return in time: a blocking read
/// must fail the test, not hang the suite.
fn within<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        let _ = tx.send(f());
    });
    rx.recv_timeout(Duration::from_secs(10))
        .expect("hung: a read blocked for 10 s")
}

fn mkfifo(path: &Path) {
    let _ = std::fs::remove_file(path);
    let c = std::ffi::CString::new(path.to_str().expect("utf-8 path")).expect("no NUL");
    // SAFETY: a valid NUL-terminated path; mkfifo touches nothing else.
    let rc = unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
    assert_eq!(rc, 0, "mkfifo {}", path.display());
}

/// A host with an IOMMU, vfio-pci, and one GPU (group 1, nvidia) plus its audio function.
fn host(t: &Path) -> TreeBuilder {
    let mut tree = TreeBuilder::new(t).expect("tree");
    tree.cmdline("intel_iommu=on")
        .and_then(|t| t.intel_iommu("dmar0", 0x8))
        .and_then(|t| t.module("vfio"))
        .and_then(|t| t.module("vfio_iommu_type1"))
        .and_then(|t| t.module("vfio_pci"))
        .and_then(|t| t.driver("vfio-pci"))
        .expect("host");
    tree.device(
        &DeviceSpec::endpoint(bdf("0000:01:00.0"), 0x10de, 0x2335, 0x030200)
            .driver("nvidia")
            .group(1),
    )
    .expect("gpu");
    tree.device(
        &DeviceSpec::endpoint(bdf("0000:01:00.1"), 0x10de, 0x22a3, 0x040300)
            .driver("snd_hda_intel")
            .group(1),
    )
    .expect("audio");
    tree
}

fn gpu_dir(t: &Path) -> PathBuf {
    t.join("devices/pci0000:00/0000:01:00.0")
}

#[test]
fn fifo_attributes_never_block_and_name_the_file() {
    for attr in [
        "vendor",
        "config",
        "driver_override",
        "resource",
        "numa_node",
    ] {
        let t = tempfile::tempdir().expect("tempdir");
        host(t.path());
        mkfifo(&gpu_dir(t.path()).join(attr));
        let root = SysfsRoot::new(t.path());
        let inv = within(move || Inventory::scan(&root).map(|i| (i.devices.len(), i.unreadable)));
        let (n, unreadable) = inv.expect("scan");
        match attr {
            // Required: the device is listed as unreadable, with the file and why.
            "vendor" | "config" | "resource" => {
                assert_eq!(n, 1, "{attr}");
                assert!(
                    unreadable[0].error.contains(attr) && unreadable[0].error.contains("FIFO"),
                    "{attr}: {:?}",
                    unreadable[0]
                );
            }
            // Optional: the device stays.
            _ => assert_eq!((n, unreadable.len()), (2, 0), "{attr}"),
        }
    }
}

#[test]
fn device_files_and_huge_attributes_are_refused_not_read() {
    let t = tempfile::tempdir().expect("tempdir");
    host(t.path());
    let dir = gpu_dir(t.path());
    std::fs::remove_file(dir.join("vendor")).expect("rm");
    std::os::unix::fs::symlink("/dev/zero", dir.join("vendor")).expect("link");
    std::fs::write(dir.join("class"), vec![b'0'; 1 << 20]).expect("big");
    let root = SysfsRoot::new(t.path());
    let inv = within(move || Inventory::scan(&root)).expect("scan");
    assert!(
        inv.unreadable[0].error.contains("character device"),
        "{:?}",
        inv.unreadable
    );
    assert!(
        inv.unreadable[0].accelerator.is_none(),
        "class unreadable too: may be an accelerator"
    );
    let e = vm_pci::read_bounded(&dir.join("class"), vm_pci::MAX_ATTR_LEN).unwrap_err();
    assert!(e.to_string().contains("larger than"), "{e}");
    // A directory where an attribute should be.
    std::fs::remove_file(dir.join("class")).expect("rm");
    std::fs::create_dir(dir.join("class")).expect("dir");
    let e = vm_pci::read_text(&dir.join("class")).unwrap_err();
    assert!(e.to_string().contains("directory"), "{e}");
}

#[test]
fn fifo_links_and_group_files_never_block() {
    let t = tempfile::tempdir().expect("tempdir");
    host(t.path());
    let dir = gpu_dir(t.path());
    std::fs::remove_file(dir.join("driver")).expect("rm");
    mkfifo(&dir.join("driver"));
    mkfifo(&t.path().join("kernel/iommu_groups/1/type"));
    mkfifo(&t.path().join("cmdline"));
    let root = SysfsRoot::new(t.path());
    let r = within(move || {
        let inv = Inventory::scan(&root)?;
        let checks = vm_pci::readiness::device_checks(&inv, bdf("0000:01:00.1"))?;
        Ok::<_, vm_pci::Error>((inv.unreadable.len(), checks.len()))
    });
    let (unreadable, checks) = r.expect("scan and check");
    assert_eq!(unreadable, 1, "the GPU with a FIFO driver link");
    assert!(checks > 0);
}

#[test]
fn an_unreadable_device_says_so_not_no_such_device() {
    let t = tempfile::tempdir().expect("tempdir");
    host(t.path());
    std::fs::write(gpu_dir(t.path()).join("vendor"), "zz\n").expect("write");
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).expect("scan");
    let e = inv.require(bdf("0000:01:00.0")).unwrap_err().to_string();
    assert!(e.contains("exists but cannot be read"), "{e}");
    assert!(e.contains("vendor"), "names the file: {e}");
    let e = inv.require(bdf("0000:09:00.0")).unwrap_err().to_string();
    assert!(e.contains("no PCI device"), "{e}");
}

#[test]
fn a_malformed_optional_attribute_keeps_the_device() {
    let t = tempfile::tempdir().expect("tempdir");
    host(t.path());
    let dir = gpu_dir(t.path());
    std::fs::write(dir.join("revision"), "0xfff\n").expect("w");
    std::fs::write(dir.join("subsystem_vendor"), "garbage\n").expect("w");
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).expect("scan");
    let gpu = inv.require(bdf("0000:01:00.0")).expect("still listed");
    assert_eq!((gpu.revision, gpu.subsystem_vendor_id), (None, None));
}

#[test]
fn live_sysfs_is_recognised_by_what_it_is_not_its_name() {
    if !Path::new("/sys/bus").is_dir() {
        return vm_accel_tests::hw::skip("live_sysfs", "no sysfs mounted at /sys");
    }
    assert!(SysfsRoot::new("/sys").is_live());
    assert!(SysfsRoot::new("/sys/../sys").is_live());
    assert!(SysfsRoot::new("/sys/").is_live());
    let t = tempfile::tempdir().expect("tempdir");
    let link = t.path().join("sys-link");
    std::os::unix::fs::symlink("/sys", &link).expect("symlink");
    assert!(SysfsRoot::new(&link).is_live(), "a symlink to /sys is live");
    assert!(
        !SysfsRoot::new(t.path()).is_live(),
        "a plain directory is not"
    );
}

#[test]
fn a_group_that_does_not_list_the_device_fails() {
    let t = tempfile::tempdir().expect("tempdir");
    host(t.path());
    // 01:00.1 names group 1, but group 1 lists only 01:00.0.
    std::fs::remove_file(t.path().join("kernel/iommu_groups/1/devices/0000:01:00.1")).expect("rm");
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).expect("scan");
    let checks = vm_pci::readiness::device_checks(&inv, bdf("0000:01:00.1")).expect("checks");
    let c = checks
        .iter()
        .find(|c| c.id == "iommu_group")
        .expect("check");
    assert_eq!(c.level, Level::Fail);
    assert!(c.message.contains("does not list it"), "{}", c.message);
}

/// Adds a fake /proc to the tree and returns its path.
fn proc_dir(t: &Path) -> PathBuf {
    let p = t.join("proc");
    std::fs::create_dir_all(p.join("self")).expect("proc");
    std::fs::create_dir_all(p.join("net")).expect("net");
    std::fs::write(
        p.join("self/mountinfo"),
        "22 1 0:21 / /proc rw - proc proc rw\n",
    )
    .expect("w");
    std::fs::write(p.join("swaps"), "Filename Type Size Used Priority\n").expect("w");
    std::fs::write(p.join("net/route"), "Iface Destination Gateway\n").expect("w");
    p
}

/// An NVMe controller 0000:02:00.0 (nvme driver, group 2) with namespace nvme0n1 and
/// partition nvme0n1p1, and a NIC 0000:03:00.0 (group 3) with interface eth0.
fn storage_host(t: &Path) -> (PathBuf, PathBuf) {
    let mut tree = host(t);
    tree.device(
        &DeviceSpec::endpoint(bdf("0000:02:00.0"), 0x1b36, 0x0010, 0x010802)
            .driver("nvme")
            .group(2),
    )
    .expect("nvme");
    tree.device(
        &DeviceSpec::endpoint(bdf("0000:03:00.0"), 0x8086, 0x10d3, 0x020000)
            .driver("e1000e")
            .group(3),
    )
    .expect("nic");
    let ns = t.join("devices/pci0000:00/0000:02:00.0/nvme/nvme0/nvme0n1");
    std::fs::create_dir_all(ns.join("holders")).expect("ns");
    std::fs::write(ns.join("dev"), "259:0\n").expect("w");
    std::fs::create_dir_all(ns.join("nvme0n1p1/holders")).expect("part");
    std::fs::write(ns.join("nvme0n1p1/dev"), "259:1\n").expect("w");
    std::fs::write(
        t.join("devices/pci0000:00/0000:02:00.0/nvme/nvme0/dev"),
        "241:0\n",
    )
    .expect("w");
    let eth = t.join("devices/pci0000:00/0000:03:00.0/net/eth0");
    std::fs::create_dir_all(&eth).expect("eth");
    std::fs::write(eth.join("flags"), "0x1003\n").expect("w");
    std::fs::write(eth.join("operstate"), "up\n").expect("w");
    (ns, eth)
}

fn in_use_kinds(t: &Path, b: &str) -> (Vec<UsageKind>, Vec<vm_pci::Check>) {
    let inv = Inventory::scan(&SysfsRoot::new(t)).expect("scan");
    let r = Readiness::new(&inv);
    let kinds = r.in_use(bdf(b)).iter().map(|u| u.kind).collect();
    (kinds, r.device_checks(bdf(b)).expect("checks"))
}

fn in_use_check(checks: &[vm_pci::Check]) -> &vm_pci::Check {
    checks
        .iter()
        .find(|c| c.id == "in_use")
        .expect("in_use check")
}

#[test]
fn in_use_mounted_partition_by_major_minor() {
    let t = tempfile::tempdir().expect("tempdir");
    storage_host(t.path());
    let p = proc_dir(t.path());
    let (kinds, _) = in_use_kinds(t.path(), "0000:02:00.0");
    assert!(kinds.is_empty(), "nothing mounted yet: {kinds:?}");
    std::fs::write(
        p.join("self/mountinfo"),
        "22 1 0:21 / /proc rw - proc proc rw\n30 1 259:1 / /var rw,relatime - ext4 /dev/nvme0n1p1 rw\n",
    )
    .expect("w");
    let (kinds, checks) = in_use_kinds(t.path(), "0000:02:00.0");
    assert_eq!(kinds, vec![UsageKind::Mounted]);
    let c = in_use_check(&checks);
    assert_eq!(c.level, Level::Fail);
    assert!(
        c.message.contains("nvme0n1p1 mounted on /var"),
        "{}",
        c.message
    );
    assert!(!is_preparable(&checks), "bind must not take a mounted disk");
}

#[test]
fn in_use_swap_and_holders() {
    let t = tempfile::tempdir().expect("tempdir");
    let (ns, _) = storage_host(t.path());
    let p = proc_dir(t.path());
    std::fs::write(
        p.join("swaps"),
        "Filename Type Size Used Priority\n/dev/nvme0n1p1 partition 1024 0 -2\n",
    )
    .expect("w");
    assert_eq!(
        in_use_kinds(t.path(), "0000:02:00.0").0,
        vec![UsageKind::Swap]
    );
    std::fs::write(p.join("swaps"), "Filename Type Size Used Priority\n").expect("w");
    std::fs::create_dir_all(ns.join("holders/dm-0")).expect("holder");
    let (kinds, checks) = in_use_kinds(t.path(), "0000:02:00.0");
    assert_eq!(kinds, vec![UsageKind::Holder]);
    assert!(in_use_check(&checks)
        .message
        .contains("nvme0n1 held by dm-0"));
}

#[test]
fn in_use_network_interface_with_address_or_route_when_up() {
    let t = tempfile::tempdir().expect("tempdir");
    let (_, eth) = storage_host(t.path());
    let p = proc_dir(t.path());
    // Up, but only the automatic link-local address: not in use.
    std::fs::write(
        p.join("net/if_inet6"),
        "fe800000000000000000000000000001 02 40 20 80 eth0\n",
    )
    .expect("w");
    assert!(in_use_kinds(t.path(), "0000:03:00.0").0.is_empty());
    std::fs::write(
        p.join("net/route"),
        "Iface Destination Gateway\neth0 0002000A 00000000\n",
    )
    .expect("w");
    assert_eq!(
        in_use_kinds(t.path(), "0000:03:00.0").0,
        vec![UsageKind::Network]
    );
    let (_, checks) = in_use_kinds(t.path(), "0000:03:00.0");
    assert!(
        in_use_check(&checks)
            .message
            .contains("network interface eth0 is up with routes"),
        "{checks:?}"
    );
    // An IPv4 address is named: a local address (fib_trie) inside the subnet eth0 routes.
    std::fs::write(
        p.join("net/route"),
        "Iface Destination Gateway Flags RefCnt Use Metric Mask MTU Window IRTT\n\
         eth0 0002000A 00000000 0001 0 0 0 00FFFFFF 0 0 0\n",
    )
    .expect("w");
    std::fs::write(
        p.join("net/fib_trie"),
        "Local:\n  +-- 10.0.2.0/24 2 0 2\n     |-- 10.0.2.15\n        /32 host LOCAL\n",
    )
    .expect("w");
    let (_, checks) = in_use_kinds(t.path(), "0000:03:00.0");
    assert!(
        in_use_check(&checks)
            .message
            .contains("network interface eth0 is up with address 10.0.2.15 and routes"),
        "{checks:?}"
    );
    std::fs::write(p.join("net/route"), "Iface Destination Gateway\n").expect("w");
    std::fs::write(
        p.join("net/if_inet6"),
        "20010db8000000000000000000000001 02 40 00 80 eth0\n",
    )
    .expect("w");
    let (kinds, checks) = in_use_kinds(t.path(), "0000:03:00.0");
    assert_eq!(kinds, vec![UsageKind::Network]);
    assert!(
        in_use_check(&checks)
            .message
            .contains("network interface eth0 is up with address 2001:db8::1"),
        "{checks:?}"
    );
    // Down: an address on a down link carries nothing.
    std::fs::write(eth.join("flags"), "0x1002\n").expect("w");
    assert!(in_use_kinds(t.path(), "0000:03:00.0").0.is_empty());
}

#[test]
fn in_use_console_boot_vga_and_fbcon() {
    let t = tempfile::tempdir().expect("tempdir");
    host(t.path());
    proc_dir(t.path());
    let fb = gpu_dir(t.path()).join("graphics/fb0");
    std::fs::create_dir_all(&fb).expect("fb");
    assert!(
        in_use_kinds(t.path(), "0000:01:00.0").0.is_empty(),
        "no fbcon bound"
    );
    let vt = t.path().join("class/vtconsole/vtcon1");
    std::fs::create_dir_all(&vt).expect("vt");
    std::fs::write(vt.join("name"), "(M) frame buffer device\n").expect("w");
    std::fs::write(vt.join("bind"), "1\n").expect("w");
    assert_eq!(
        in_use_kinds(t.path(), "0000:01:00.0").0,
        vec![UsageKind::Console]
    );
    std::fs::write(gpu_dir(t.path()).join("boot_vga"), "1\n").expect("w");
    assert_eq!(
        in_use_kinds(t.path(), "0000:01:00.0").0,
        vec![UsageKind::Console, UsageKind::Console]
    );
}

#[test]
fn in_use_open_device_files_name_pid_and_command() {
    let t = tempfile::tempdir().expect("tempdir");
    host(t.path());
    let p = proc_dir(t.path());
    std::fs::create_dir_all(gpu_dir(t.path()).join("drm/card1")).expect("drm");
    let fd = p.join("4242/fd");
    std::fs::create_dir_all(&fd).expect("fd");
    std::fs::write(p.join("4242/comm"), "Xorg\n").expect("w");
    std::os::unix::fs::symlink("/dev/null", fd.join("0")).expect("l");
    assert!(in_use_kinds(t.path(), "0000:01:00.0").0.is_empty());
    std::os::unix::fs::symlink("/dev/dri/card1", fd.join("7")).expect("l");
    let (kinds, checks) = in_use_kinds(t.path(), "0000:01:00.0");
    assert_eq!(kinds, vec![UsageKind::OpenFile]);
    let m = &in_use_check(&checks).message;
    assert!(m.contains("/dev/dri/card1 open by pid 4242 (Xorg)"), "{m}");
    // The audio function shares group 1: binding it would move the GPU too.
    let (kinds, _) = in_use_kinds(t.path(), "0000:01:00.1");
    assert_eq!(kinds, vec![UsageKind::OpenFile], "group members count");

    // nvidia: the driver's minor map names the node; /dev/vfio/N is a VMM on the group.
    std::fs::remove_file(fd.join("7")).expect("rm");
    std::os::unix::fs::symlink("/dev/nvidia3", fd.join("8")).expect("l");
    let info = p.join("driver/nvidia/gpus/0000:01:00.0");
    std::fs::create_dir_all(&info).expect("info");
    std::fs::write(info.join("information"), "Model: H200\nDevice Minor: 2\n").expect("w");
    assert!(
        in_use_kinds(t.path(), "0000:01:00.0").0.is_empty(),
        "nvidia3 is another GPU"
    );
    std::fs::write(info.join("information"), "Model: H200\nDevice Minor: 3\n").expect("w");
    assert_eq!(
        in_use_kinds(t.path(), "0000:01:00.0").0,
        vec![UsageKind::OpenFile]
    );
    std::fs::remove_file(fd.join("8")).expect("rm");
    std::os::unix::fs::symlink("/dev/vfio/1", fd.join("9")).expect("l");
    assert_eq!(
        in_use_kinds(t.path(), "0000:01:00.0").0,
        vec![UsageKind::OpenFile]
    );
}

#[test]
fn in_use_is_read_from_the_given_proc_root_only() {
    let t = tempfile::tempdir().expect("tempdir");
    host(t.path());
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).expect("scan");
    let r = Readiness::with_proc(&inv, None);
    let checks = r.device_checks(bdf("0000:01:00.0")).expect("checks");
    let c = in_use_check(&checks);
    assert_eq!(c.level, Level::Warn, "cannot tell is not 'not in use'");
    let r = Readiness::with_proc(&inv, Some(&ProcRoot::new(t.path().join("nowhere"))));
    assert!(r.in_use(bdf("0000:01:00.0")).is_empty());
}

#[test]
fn ready_means_on_vfio_pci_with_a_viable_group() {
    let t = tempfile::tempdir().expect("tempdir");
    host(t.path());
    proc_dir(t.path());
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).expect("scan");
    let checks = vm_pci::readiness::device_checks(&inv, bdf("0000:01:00.0")).expect("c");
    assert!(!is_ready(&checks), "on nvidia: {checks:#?}");
    assert!(is_preparable(&checks));
    let gv = checks.iter().find(|c| c.id == "group_viable").expect("gv");
    assert_eq!(gv.level, Level::Fail);
    assert!(
        gv.message
            .contains("0000:01:00.1 on snd_hda_intel (not in use)")
            && gv.message.contains("vm-accel bind 0000:01:00.0"),
        "{}",
        gv.message
    );
}

#[test]
fn group_messages_stay_short_for_huge_groups() {
    let t = tempfile::tempdir().expect("tempdir");
    let mut tree = host(t.path());
    for i in 0..300u32 {
        let b = Bdf::new(0, 0x10 + (i / 32) as u8, (i % 32) as u8, 0).expect("bdf");
        tree.device(
            &DeviceSpec::endpoint(b, 0x10de, 0x2335, 0x030200)
                .driver("nvidia")
                .group(1),
        )
        .expect("member");
    }
    let inv = Inventory::scan(&SysfsRoot::new(t.path())).expect("scan");
    let r = Readiness::new(&inv);
    let mut longest = 0;
    for d in inv.devices.iter() {
        for c in r.device_checks(d.bdf).expect("checks") {
            longest = longest.max(c.message.len());
        }
    }
    assert!(
        longest < 600,
        "a message grew with the group: {longest} bytes"
    );
}

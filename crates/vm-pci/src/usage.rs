//! What the host is using a device for: the evidence that makes taking it away unsafe.
//!
//! Pure evidence gathering: sysfs below a [`SysfsRoot`] says what hangs below a PCI function
//! (block devices, network interfaces, framebuffers, DRM nodes); a [`ProcRoot`] (`/proc` on a
//! live host, a directory in a fixture) says what of that the host uses (mounts, swap, open
//! device files, routes and addresses). Nothing here decides; readiness turns the evidence
//! into the `in_use` check, which `bind` refuses on and `check` reports.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, Ipv6Addr};
use std::path::{Path, PathBuf};

use serde::Serialize;

use crate::device::PciDevice;
use crate::sysfs::{read_prefix, read_text, SysfsRoot};
use crate::Bdf;

/// The procfs directory evidence is read from: `/proc` for the live sysfs; a fixture keeps a
/// fake one (`<root>/proc`) with `self/mountinfo`, `swaps`, `net/*` and `<pid>/fd/*` links.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcRoot {
    path: PathBuf,
    /// This host's own /proc: what procfs does not list (IPv4 addresses per interface) is
    /// asked of the kernel directly.
    live: bool,
}

impl ProcRoot {
    /// A procfs (or a fixture's fake one) at `path`.
    pub fn new(path: impl Into<PathBuf>) -> ProcRoot {
        ProcRoot {
            path: path.into(),
            live: false,
        }
    }
    /// Where it is.
    pub fn path(&self) -> &Path {
        &self.path
    }
    /// The proc root that describes the same host as `root`: `/proc` when `root` is the live
    /// sysfs, `<root>/proc` when a fixture has one, else none (no evidence can be gathered,
    /// and the `in_use` check says so).
    pub fn for_sysfs(root: &SysfsRoot) -> Option<ProcRoot> {
        if root.is_live() {
            return Some(ProcRoot {
                path: "/proc".into(),
                live: true,
            });
        }
        let captured = root.path().join("proc");
        captured.is_dir().then(|| ProcRoot::new(captured))
    }
}

/// What a device is used for.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum UsageKind {
    /// A block device below it (or a partition) is mounted.
    Mounted,
    /// ... used as swap.
    Swap,
    /// ... held by device-mapper, md or LVM (`holders/`).
    Holder,
    /// A network interface below it is up and has an address or a route.
    Network,
    /// It carries the host console (boot VGA, fbcon framebuffer).
    Console,
    /// A process holds one of its device files open.
    OpenFile,
}

/// One piece of evidence that the host uses a device.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct InUse {
    /// The device the evidence is about (the target or a member of its group).
    pub bdf: Bdf,
    /// What kind of use.
    pub kind: UsageKind,
    /// What exactly, in words (`nvme0n1p1 mounted on /var`, `/dev/nvidia0 open by pid 42 (python3)`).
    pub message: String,
}

impl std::fmt::Display for InUse {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}: {}", self.bdf, self.message)
    }
}

#[derive(Debug, Clone)]
struct Mount {
    /// `major:minor` of the mounted device.
    dev: String,
    source: String,
    point: String,
}

#[derive(Debug, Clone)]
struct OpenFile {
    pid: u32,
    comm: String,
    target: String,
}

/// Everything host-wide the evidence needs, gathered once (scanning /proc/*/fd is the costly
/// part), then asked per device with [`HostUsage::of_device`].
#[derive(Debug, Clone, Default)]
pub struct HostUsage {
    proc_root: Option<PathBuf>,
    mounts: Vec<Mount>,
    swaps: Vec<String>,
    open_files: Vec<OpenFile>,
    route_ifaces: BTreeSet<String>,
    addr_ifaces: BTreeSet<String>,
    /// The addresses to name per interface: IPv6 from if_inet6; IPv4 from getifaddrs(3) on
    /// the live host, and in a fixture (procfs lists no IPv4 address per interface) the
    /// host's local addresses (fib_trie) inside a subnet the interface routes.
    addresses: BTreeMap<String, BTreeSet<String>>,
    fbcon_bound: bool,
    /// Processes whose descriptors could not be listed (not root, or they exited).
    unreadable_procs: usize,
}

/// Bounds for pathological trees: how deep and how wide a device's directory is walked.
const MAX_WALK_DEPTH: usize = 6;
const MAX_WALK_ENTRIES: usize = 4096;
/// /proc/self/mountinfo and friends: large hosts have thousands of mounts.
const MAX_PROC_TABLE: u64 = 8 << 20;

fn read_table(path: &Path) -> Option<String> {
    read_prefix(path, MAX_PROC_TABLE)
        .ok()
        .map(|b| String::from_utf8_lossy(&b).into_owned())
}

impl HostUsage {
    /// Reads the host-wide evidence: mounts, swaps, routes and addresses, console state and
    /// every process's open device files. `proc` `None`: nothing from /proc is known.
    pub fn gather(root: &SysfsRoot, proc: Option<&ProcRoot>) -> HostUsage {
        let mut u = HostUsage {
            fbcon_bound: fbcon_bound(root),
            ..HostUsage::default()
        };
        let Some(proc) = proc else {
            return u;
        };
        let p = proc.path();
        u.proc_root = Some(p.to_path_buf());
        if let Some(t) = read_table(&p.join("self/mountinfo")) {
            u.mounts = parse_mountinfo(&t);
        }
        if let Some(t) = read_table(&p.join("swaps")) {
            u.swaps = t
                .lines()
                .skip(1)
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect();
        }
        if let Some(t) = read_table(&p.join("net/route")) {
            u.route_ifaces.extend(
                t.lines()
                    .skip(1)
                    .filter_map(|l| l.split_whitespace().next())
                    .map(str::to_string),
            );
            // A fixture has only files: its IPv4 addresses are the local ones (fib_trie)
            // inside a subnet an interface routes. The live host asks the kernel below.
            let local = if proc.live {
                BTreeSet::new()
            } else {
                read_table(&p.join("net/fib_trie"))
                    .map(|f| local_ipv4(&f))
                    .unwrap_or_default()
            };
            for (iface, dest, mask) in ipv4_subnets(&t) {
                for a in local.iter().filter(|a| u32::from(**a) & mask == dest) {
                    u.addresses
                        .entry(iface.clone())
                        .or_default()
                        .insert(a.to_string());
                }
            }
        }
        if let Some(t) = read_table(&p.join("net/ipv6_route")) {
            // dest prefix ... iface; fe80::/64 and multicast routes exist on every up link.
            for l in t.lines() {
                let f: Vec<&str> = l.split_whitespace().collect();
                if let (Some(dest), Some(iface)) = (f.first(), f.last()) {
                    if !dest.starts_with("fe80") && !dest.starts_with("ff") && *iface != "lo" {
                        u.route_ifaces.insert(iface.to_string());
                    }
                }
            }
        }
        if let Some(t) = read_table(&p.join("net/if_inet6")) {
            // address index prefix scope flags iface; scope 20 is link-local (automatic).
            for l in t.lines() {
                let f: Vec<&str> = l.split_whitespace().collect();
                if f.len() >= 6 && f[3] != "20" {
                    u.addr_ifaces.insert(f[5].to_string());
                    if let Ok(bits) = u128::from_str_radix(f[0], 16) {
                        u.addresses
                            .entry(f[5].to_string())
                            .or_default()
                            .insert(Ipv6Addr::from(bits).to_string());
                    }
                }
            }
        }
        if proc.live {
            // The kernel's own list, which also has the addresses that route nothing (a
            // /32, an address whose subnet route was deleted) and names each interface.
            for (iface, a) in live_ipv4_addresses() {
                u.addr_ifaces.insert(iface.clone());
                u.addresses.entry(iface).or_default().insert(a.to_string());
            }
        }
        u.scan_fds(p);
        u
    }

    fn scan_fds(&mut self, proc: &Path) {
        let Ok(entries) = std::fs::read_dir(proc) else {
            return;
        };
        for e in entries.flatten() {
            let Some(pid) = e.file_name().to_str().and_then(|n| n.parse::<u32>().ok()) else {
                continue;
            };
            let fd_dir = e.path().join("fd");
            let Ok(fds) = std::fs::read_dir(&fd_dir) else {
                self.unreadable_procs += 1;
                continue;
            };
            let mut comm = None;
            for fd in fds.flatten() {
                let Ok(target) = std::fs::read_link(fd.path()) else {
                    continue;
                };
                let target = target.to_string_lossy().into_owned();
                if !target.starts_with("/dev/") {
                    continue;
                }
                let comm = comm
                    .get_or_insert_with(|| {
                        read_text(&e.path().join("comm"))
                            .map(|s| s.trim().to_string())
                            .unwrap_or_else(|_| "?".into())
                    })
                    .clone();
                self.open_files.push(OpenFile { pid, comm, target });
            }
        }
    }

    /// What evidence could not be gathered (empty when everything was visible).
    pub fn blind_spots(&self) -> Vec<String> {
        let mut v = Vec::new();
        if self.proc_root.is_none() {
            v.push(
                "no /proc for this sysfs root: mounts, swap, addresses and open files not checked"
                    .to_string(),
            );
        } else if self.unreadable_procs > 0 {
            v.push(format!(
                "the open files of {} processes could not be listed (run as root)",
                self.unreadable_procs
            ));
        }
        v
    }

    /// The evidence that the host uses `dev`.
    pub fn of_device(&self, dev: &PciDevice) -> Vec<InUse> {
        let mut out = Vec::new();
        let mut push = |kind, message: String| {
            out.push(InUse {
                bdf: dev.bdf,
                kind,
                message,
            })
        };
        let below = Below::walk(&dev.sysfs_dir);
        if dev.boot_vga {
            push(
                UsageKind::Console,
                "the boot VGA device (the firmware console draws on it)".into(),
            );
        }
        if self.fbcon_bound {
            for fb in &below.framebuffers {
                push(
                    UsageKind::Console,
                    format!("framebuffer {fb} carries the console (fbcon is bound)"),
                );
            }
        }
        for b in &below.blocks {
            for m in &self.mounts {
                let by_source = Path::new(&m.source).file_name().and_then(|n| n.to_str())
                    == Some(b.name.as_str());
                if b.dev.as_deref() == Some(m.dev.as_str()) || by_source {
                    push(
                        UsageKind::Mounted,
                        format!("{} mounted on {}", b.name, m.point),
                    );
                }
            }
            for s in &self.swaps {
                if Path::new(s).file_name().and_then(|n| n.to_str()) == Some(b.name.as_str()) {
                    push(UsageKind::Swap, format!("{} is swap ({s})", b.name));
                }
            }
            if !b.holders.is_empty() {
                push(
                    UsageKind::Holder,
                    format!("{} held by {}", b.name, b.holders.join(", ")),
                );
            }
        }
        for n in &below.net {
            if !n.up {
                continue;
            }
            let addr = self.addr_ifaces.contains(&n.name);
            let route = self.route_ifaces.contains(&n.name);
            if addr || route {
                let named: Vec<&str> = self
                    .addresses
                    .get(&n.name)
                    .map(|a| a.iter().map(String::as_str).collect())
                    .unwrap_or_default();
                let addresses = match named.len() {
                    0 => "an address".to_string(),
                    1 => format!("address {}", named[0]),
                    _ => format!("addresses {}", named.join(", ")),
                };
                let what = match (addr || !named.is_empty(), route) {
                    (true, true) => format!("{addresses} and routes"),
                    (true, false) => addresses,
                    _ => "routes".to_string(),
                };
                push(
                    UsageKind::Network,
                    format!("network interface {} is up with {what}", n.name),
                );
            }
        }
        let files = self.device_files(dev, &below);
        for f in &self.open_files {
            if files.matches(&f.target) {
                push(
                    UsageKind::OpenFile,
                    format!("{} open by pid {} ({})", f.target, f.pid, f.comm),
                );
            }
        }
        out.dedup();
        out
    }

    fn device_files(&self, dev: &PciDevice, below: &Below) -> DeviceFiles {
        let mut exact: BTreeSet<String> = BTreeSet::new();
        for name in &below.drm {
            exact.insert(format!("/dev/dri/{name}"));
        }
        for fb in &below.framebuffers {
            exact.insert(format!("/dev/{fb}"));
        }
        for b in &below.blocks {
            exact.insert(format!("/dev/{}", b.name));
        }
        for v in &below.vfio_cdevs {
            exact.insert(format!("/dev/vfio/devices/{v}"));
        }
        if let Some(g) = dev.iommu_group {
            exact.insert(format!("/dev/vfio/{g}"));
        }
        let mut any_nvidia = false;
        if dev.driver.as_deref() == Some("nvidia") {
            match self.nvidia_minor(dev.bdf) {
                Some(m) => {
                    exact.insert(format!("/dev/nvidia{m}"));
                }
                // Without the driver's minor map, any GPU node may be this one: say so
                // rather than miss it.
                None => any_nvidia = true,
            }
        }
        DeviceFiles { exact, any_nvidia }
    }

    /// The minor of `/dev/nvidiaN` for a GPU, from the nvidia driver's /proc entry.
    fn nvidia_minor(&self, bdf: Bdf) -> Option<u32> {
        let p = self
            .proc_root
            .as_ref()?
            .join("driver/nvidia/gpus")
            .join(bdf.to_string())
            .join("information");
        let text = read_text(&p).ok()?;
        text.lines()
            .find_map(|l| l.strip_prefix("Device Minor:"))
            .and_then(|v| v.trim().parse().ok())
    }
}

struct DeviceFiles {
    exact: BTreeSet<String>,
    any_nvidia: bool,
}

impl DeviceFiles {
    fn matches(&self, target: &str) -> bool {
        if self.exact.contains(target) {
            return true;
        }
        self.any_nvidia
            && target
                .strip_prefix("/dev/nvidia")
                .is_some_and(|n| !n.is_empty() && n.bytes().all(|b| b.is_ascii_digit()))
    }
}

/// `mountinfo`: `id parent major:minor root mountpoint options ... - fstype source superopts`.
/// (interface, destination, mask) of the IPv4 subnets /proc/net/route lists (not the default
/// route). Addresses are the kernel's raw big-endian words printed as host-order hex.
fn ipv4_subnets(route: &str) -> Vec<(String, u32, u32)> {
    let word = |s: &str| {
        u32::from_str_radix(s, 16)
            .ok()
            .map(|x| u32::from(Ipv4Addr::from(x.to_le_bytes())))
    };
    route
        .lines()
        .skip(1)
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let (dest, mask) = (word(f.get(1)?)?, word(f.get(7)?)?);
            (mask != 0).then(|| (f[0].to_string(), dest, mask))
        })
        .collect()
}

/// Every IPv4 address of this host's interfaces with the interface's name (an alias label
/// such as `eth0:1` counts for `eth0`), from getifaddrs(3). Empty when the call fails.
fn live_ipv4_addresses() -> Vec<(String, Ipv4Addr)> {
    let mut head: *mut libc::ifaddrs = std::ptr::null_mut();
    // SAFETY: `head` is a valid out-pointer; on success the list is freed below.
    if unsafe { libc::getifaddrs(&mut head) } != 0 {
        log::debug!(
            "getifaddrs: {}: IPv4 addresses only through routes",
            std::io::Error::last_os_error()
        );
        return Vec::new();
    }
    let mut out = Vec::new();
    let mut cur = head;
    while !cur.is_null() {
        // SAFETY: `cur` is a node of the list getifaddrs returned, not yet freed.
        let ifa = unsafe { &*cur };
        cur = ifa.ifa_next;
        if ifa.ifa_addr.is_null() || ifa.ifa_name.is_null() {
            continue;
        }
        // SAFETY: a non-null ifa_addr points to a sockaddr whose family says its type.
        if i32::from(unsafe { (*ifa.ifa_addr).sa_family }) != libc::AF_INET {
            continue;
        }
        // SAFETY: AF_INET: the sockaddr is a sockaddr_in.
        let sin = unsafe { &*ifa.ifa_addr.cast::<libc::sockaddr_in>() };
        let addr = Ipv4Addr::from(u32::from_be(sin.sin_addr.s_addr));
        // SAFETY: ifa_name is a NUL-terminated string owned by the list.
        let label = unsafe { std::ffi::CStr::from_ptr(ifa.ifa_name) }.to_string_lossy();
        let iface = label.split(':').next().unwrap_or_default().to_string();
        out.push((iface, addr));
    }
    // SAFETY: `head` came from getifaddrs and is freed once; no node is used after this.
    unsafe { libc::freeifaddrs(head) };
    out
}

/// The host's local IPv4 addresses: /proc/net/fib_trie's leaves followed by `/32 host LOCAL`.
fn local_ipv4(fib_trie: &str) -> BTreeSet<Ipv4Addr> {
    let mut out = BTreeSet::new();
    let mut leaf = None;
    for l in fib_trie.lines() {
        let t = l.trim();
        if let Some(a) = t.strip_prefix("|-- ") {
            leaf = a.trim().parse::<Ipv4Addr>().ok();
        } else if t.starts_with("/32 host LOCAL") {
            out.extend(leaf.filter(|a| !a.is_loopback()));
        }
    }
    out
}

fn parse_mountinfo(text: &str) -> Vec<Mount> {
    text.lines()
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            let dev = f.get(2)?;
            let point = f.get(4)?;
            let dash = f.iter().position(|x| *x == "-")?;
            let source = f.get(dash + 2).copied().unwrap_or("");
            Some(Mount {
                dev: dev.to_string(),
                source: source.to_string(),
                point: unescape_octal(point),
            })
        })
        .collect()
}

/// mountinfo escapes space, tab, newline and backslash as `\ooo`.
fn unescape_octal(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        if b[i] == b'\\'
            && i + 3 < b.len()
            && b[i + 1..i + 4].iter().all(|c| (b'0'..=b'7').contains(c))
        {
            let v = (b[i + 1] - b'0') * 64 + (b[i + 2] - b'0') * 8 + (b[i + 3] - b'0');
            out.push(v);
            i += 4;
        } else {
            out.push(b[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// Whether fbcon owns a virtual console (`class/vtconsole/vtcon*/name` says "frame buffer"
/// and `bind` is 1): then a framebuffer device carries the console.
fn fbcon_bound(root: &SysfsRoot) -> bool {
    let dir = root.path().join("class/vtconsole");
    let Ok(entries) = std::fs::read_dir(&dir) else {
        return false;
    };
    entries.flatten().any(|e| {
        let p = e.path();
        let name = read_text(&p.join("name")).unwrap_or_default();
        let bind = read_text(&p.join("bind")).unwrap_or_default();
        name.contains("frame buffer") && bind.trim() == "1"
    })
}

#[derive(Debug, Default)]
struct Block {
    name: String,
    /// `major:minor` from its `dev` attribute.
    dev: Option<String>,
    holders: Vec<String>,
}

#[derive(Debug, Default)]
struct Net {
    name: String,
    up: bool,
}

/// What sysfs shows below a device's directory.
#[derive(Debug, Default)]
struct Below {
    blocks: Vec<Block>,
    net: Vec<Net>,
    drm: Vec<String>,
    framebuffers: Vec<String>,
    vfio_cdevs: Vec<String>,
}

fn dir_names(dir: &Path) -> Vec<String> {
    let mut v: Vec<String> = std::fs::read_dir(dir)
        .map(|es| {
            es.flatten()
                .map(|e| e.file_name().to_string_lossy().into_owned())
                .collect()
        })
        .unwrap_or_default();
    v.sort();
    v
}

impl Below {
    /// Walks the device's directory (real directories only, never following links out of
    /// it, bounded in depth and entries).
    fn walk(dir: &Path) -> Below {
        let mut below = Below::default();
        let mut budget = MAX_WALK_ENTRIES;
        below.visit(dir, 0, &mut budget);
        below
    }

    fn visit(&mut self, dir: &Path, depth: usize, budget: &mut usize) {
        if depth > MAX_WALK_DEPTH {
            return;
        }
        let Ok(entries) = std::fs::read_dir(dir) else {
            return;
        };
        for e in entries.flatten() {
            if *budget == 0 {
                return;
            }
            *budget -= 1;
            let Ok(ft) = e.file_type() else { continue };
            if !ft.is_dir() {
                continue;
            }
            let name = e.file_name().to_string_lossy().into_owned();
            let path = e.path();
            let parent = dir.file_name().and_then(|n| n.to_str()).unwrap_or("");
            // Block devices and their partitions: a `dev` attribute and a `holders/` dir.
            if path.join("holders").is_dir() && path.join("dev").exists() {
                self.blocks.push(Block {
                    dev: read_text(&path.join("dev"))
                        .ok()
                        .map(|s| s.trim().to_string()),
                    holders: dir_names(&path.join("holders")),
                    name: name.clone(),
                });
            }
            match parent {
                "net" => {
                    let flags = read_text(&path.join("flags")).ok().and_then(|s| {
                        let t = s.trim();
                        u64::from_str_radix(t.trim_start_matches("0x"), 16).ok()
                    });
                    let oper = read_text(&path.join("operstate")).unwrap_or_default();
                    let up = match flags {
                        Some(f) => f & 1 != 0,
                        None => oper.trim() == "up",
                    };
                    self.net.push(Net {
                        name: name.clone(),
                        up,
                    });
                    continue;
                }
                "drm" if name.starts_with("card") || name.starts_with("renderD") => {
                    self.drm.push(name.clone());
                }
                "graphics" if name.starts_with("fb") => self.framebuffers.push(name.clone()),
                "vfio-dev" => self.vfio_cdevs.push(name.clone()),
                _ => {}
            }
            self.visit(&path, depth + 1, budget);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mountinfo_fields() {
        let m = parse_mountinfo(
            "36 35 259:1 / /mnt\\040data rw,noatime shared:1 - ext4 /dev/nvme0n1p1 rw\n",
        );
        assert_eq!(m.len(), 1);
        assert_eq!(m[0].dev, "259:1");
        assert_eq!(m[0].point, "/mnt data");
        assert_eq!(m[0].source, "/dev/nvme0n1p1");
        assert!(parse_mountinfo("garbage\n\n").is_empty());
    }

    #[test]
    fn live_ipv4_addresses_include_the_loopback() {
        let all = live_ipv4_addresses();
        assert!(
            all.iter()
                .any(|(i, a)| i == "lo" && *a == Ipv4Addr::LOCALHOST),
            "{all:?}"
        );
    }

    #[test]
    fn ipv4_addresses_are_local_addresses_inside_an_interfaces_subnet() {
        // As Linux 6.1 prints them on x86 (the words are raw big-endian values).
        let route =
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n\
                     eth0\t000200C0\t00000000\t0001\t0\t0\t0\t00FFFFFF\t0\t0\t0\n\
                     eth0\t00000000\t010200C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n\
                     short\n";
        let subnets = ipv4_subnets(route);
        assert_eq!(
            subnets,
            [(
                "eth0".to_string(),
                u32::from(Ipv4Addr::new(192, 0, 2, 0)),
                0xffff_ff00
            )]
        );
        let trie = "Main:\n  +-- 0.0.0.0/0 3 0 5\n     |-- 192.0.2.0\n        /24 link UNICAST\n\
                    Local:\n     |-- 127.0.0.1\n        /32 host LOCAL\n     |-- 192.0.2.1\n\
                    \x20       /32 host LOCAL\n     |-- 192.0.2.255\n        /32 link BROADCAST\n\
                    \x20    |-- garbage\n        /32 host LOCAL\n";
        assert_eq!(
            local_ipv4(trie).into_iter().collect::<Vec<_>>(),
            [Ipv4Addr::new(192, 0, 2, 1)]
        );
    }
}

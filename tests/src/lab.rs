//! What the lab's tests share besides the edu model: the devices the lab bound, waiting for
//! an eventfd, and printing evidence libtest does not capture.

use std::io::Write;
use std::os::fd::AsRawFd;
use std::time::Duration;

use vmm_sys_util::eventfd::EventFd;

/// Every edu device the lab bound to vfio-pci (`VM_ACCEL_LAB_EDU_BDFS`, comma-separated).
pub fn edu_bdfs() -> Vec<String> {
    std::env::var("VM_ACCEL_LAB_EDU_BDFS")
        .unwrap_or_default()
        .split(',')
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .collect()
}

/// Waits until `efd` is signalled and returns its count (`None` after `limit`).
pub fn wait_eventfd(efd: &EventFd, limit: Duration) -> Option<u64> {
    let mut pfd = libc::pollfd {
        fd: efd.as_raw_fd(),
        events: libc::POLLIN,
        revents: 0,
    };
    let ms = i32::try_from(limit.as_millis()).unwrap_or(i32::MAX);
    // SAFETY: one valid pollfd, for the duration of the call.
    let n = unsafe { libc::poll(&mut pfd, 1, ms) };
    if n == 1 {
        efd.read().ok()
    } else {
        None
    }
}

/// Prints a result line straight to stderr (libtest captures print!; evidence and bench
/// numbers must reach the lab's serial log).
pub fn report(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// Open file descriptors of this process (a leak test's first figure).
pub fn fd_count() -> usize {
    std::fs::read_dir("/proc/self/fd").map_or(0, |d| d.count())
}

/// Mappings of this process: (all, those of VFIO files, i.e. BAR mmaps).
pub fn map_count() -> (usize, usize) {
    let maps = std::fs::read_to_string("/proc/self/maps").unwrap_or_default();
    (
        maps.lines().count(),
        maps.lines().filter(|l| l.contains("vfio")).count(),
    )
}

/// The `vm-accel` binary a lab test drives: `VM_ACCEL_BIN`, else the first on `PATH` (the
/// lab puts it there for targets that carry it).
pub fn vm_accel_bin() -> Option<std::path::PathBuf> {
    if let Some(p) = std::env::var_os("VM_ACCEL_BIN") {
        return Some(p.into());
    }
    std::env::var_os("PATH")?
        .to_str()?
        .split(':')
        .map(|d| std::path::Path::new(d).join("vm-accel"))
        .find(|p| p.exists())
}

/// The vfio-pci device the lab named in `var` (e.g. `VM_ACCEL_LAB_MSIX_BDF`), or `None`
/// after reporting the skip; `what` says what such a device is, for the skip message.
pub fn vfio_device_from_env(test: &str, var: &str, what: &str) -> Option<String> {
    let Ok(bdf) = std::env::var(var) else {
        crate::hw::skip(
            test,
            &format!("{var} is not set (set it to {what}, or run `cargo xtask lab`)"),
        );
        return None;
    };
    if !std::path::Path::new("/dev/vfio").exists() {
        crate::hw::skip(test, "no /dev/vfio on this host");
        return None;
    }
    Some(bdf)
}

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

//! Who else is using a GPU: the per-GPU lock health checks take, and the processes that
//! hold the GPU's device node open.
//!
//! A health check measures bandwidth; on a GPU another process is using it measures the
//! sharing, not the GPU. So checks take an exclusive lock per GPU (an `flock` on
//! `<run dir>/gpu-<bdf>.lock`: concurrent checks queue, or report busy when asked not to
//! wait), and list the processes with `/dev/nvidiaN` open, to report "busy" rather than
//! "unhealthy" when a result could be the sharing's fault.
//!
//! The proc root is a parameter so fixture trees test the scan. Limits of the scan: a CUDA
//! process may hold the device node of every GPU it can see, not only the ones it computes
//! on, so a listed process *may* be using this GPU; that is why it only ever turns a
//! slow or out-of-memory result into "busy", never a wrong one.

use std::fs::File;
use std::io::{Read, Seek, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use crate::error::{Error, Result};

/// A process holding a GPU's device node open.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize)]
pub struct GpuUser {
    /// Process id.
    pub pid: u32,
    /// `/proc/PID/comm` (empty when unreadable: the process may have exited).
    pub comm: String,
}

/// The minor number of the GPU at `bdf` (`/dev/nvidia<minor>`), from the NVIDIA driver's
/// `<proc>/driver/nvidia/gpus/<bdf>/information` ("Device Minor: N"). `None` without the
/// driver or for a malformed file.
pub fn device_minor(proc_root: &Path, bdf: &str) -> Option<u32> {
    let path = proc_root
        .join("driver/nvidia/gpus")
        .join(bdf)
        .join("information");
    let text = std::fs::read_to_string(path).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("Device Minor:"))
        .and_then(|v| v.trim().parse().ok())
}

/// The device node of the GPU at `bdf`, when the driver says which it is.
pub fn device_node(proc_root: &Path, bdf: &str) -> Option<PathBuf> {
    device_minor(proc_root, bdf).map(|m| PathBuf::from(format!("/dev/nvidia{m}")))
}

/// Processes (other than those in `exclude`) with a file descriptor open on `target`,
/// sorted by pid. Processes that vanish or whose fds cannot be read are skipped: the scan
/// never fails, it reports what it could see.
pub fn processes_with_open(proc_root: &Path, target: &Path, exclude: &[u32]) -> Vec<GpuUser> {
    let Ok(entries) = std::fs::read_dir(proc_root) else {
        return Vec::new();
    };
    let mut users: Vec<GpuUser> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| !exclude.contains(pid))
        .filter(|pid| has_open(&proc_root.join(pid.to_string()).join("fd"), target))
        .map(|pid| GpuUser {
            pid,
            comm: std::fs::read_to_string(proc_root.join(pid.to_string()).join("comm"))
                .map(|c| c.trim_end().to_string())
                .unwrap_or_default(),
        })
        .collect();
    users.sort_by_key(|u| u.pid);
    users
}

fn has_open(fd_dir: &Path, target: &Path) -> bool {
    let Ok(fds) = std::fs::read_dir(fd_dir) else {
        return false;
    };
    fds.flatten()
        .any(|fd| std::fs::read_link(fd.path()).is_ok_and(|t| t == target))
}

/// Other processes using the GPU at `bdf`: those with its device node open, less this
/// process and the checks queued on its lock (`lock_path`; they wait, they do not compute).
pub fn other_users(proc_root: &Path, bdf: &str, lock_path: Option<&Path>) -> Vec<GpuUser> {
    let Some(node) = device_node(proc_root, bdf) else {
        log::debug!(
            "no NVIDIA driver entry for {bdf} under {}",
            proc_root.display()
        );
        return Vec::new();
    };
    let mut exclude = vec![std::process::id()];
    if let Some(lock) = lock_path {
        exclude.extend(
            processes_with_open(proc_root, lock, &exclude)
                .into_iter()
                .map(|u| u.pid),
        );
    }
    processes_with_open(proc_root, &node, &exclude)
}

/// An exclusive lock on one GPU for the life of this value (`flock`, released on drop or
/// when the process dies, so a crashed check never leaves a GPU locked).
#[derive(Debug)]
pub struct GpuLock {
    _file: File,
    path: PathBuf,
}

/// Whether [`GpuLock::acquire`] waits for a lock another process holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Wait {
    /// Queue behind the holder.
    Yes,
    /// Return [`Error::Busy`] at once.
    No,
}

impl GpuLock {
    /// The lock file of the GPU at `bdf` under `run_dir`.
    pub fn path(run_dir: &Path, bdf: &str) -> PathBuf {
        run_dir.join(format!("gpu-{bdf}.lock"))
    }

    /// Locks the GPU at `bdf` (creating `run_dir` if needed). With [`Wait::No`] a lock held
    /// elsewhere is [`Error::Busy`] naming the holder's pid, as written in the lock file.
    pub fn acquire(run_dir: &Path, bdf: &str, wait: Wait) -> Result<Self> {
        let io = |what: &'static str, path: &Path| {
            let path = path.to_path_buf();
            move |source| Error::Lock {
                operation: what,
                path,
                source,
            }
        };
        std::fs::create_dir_all(run_dir).map_err(io(
            "creating the run directory (another --run-dir?)",
            run_dir,
        ))?;
        let path = Self::path(run_dir, bdf);
        let file = File::options()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path);
        // A lock file another user (root) created: flock works on a read-only descriptor
        // too; only the holder's pid cannot be written then.
        let mut file = match file {
            Err(e) if e.kind() == std::io::ErrorKind::PermissionDenied => File::open(&path),
            other => other,
        }
        .map_err(io("opening the GPU lock (another --run-dir?)", &path))?;
        let op = match wait {
            Wait::Yes => libc::LOCK_EX,
            Wait::No => libc::LOCK_EX | libc::LOCK_NB,
        };
        loop {
            // SAFETY: flock on a descriptor this function owns; no memory is passed.
            if unsafe { libc::flock(file.as_raw_fd(), op) } == 0 {
                break;
            }
            let e = std::io::Error::last_os_error();
            match e.raw_os_error() {
                Some(libc::EINTR) => continue,
                Some(libc::EWOULDBLOCK) => {
                    let mut text = String::new();
                    let holder: Option<u32> = file
                        .read_to_string(&mut text)
                        .ok()
                        .and_then(|_| text.trim().parse().ok());
                    return Err(Error::Busy {
                        bdf: bdf.to_string(),
                        reason: match holder {
                            Some(pid) => format!("locked by another health check (pid {pid})"),
                            None => "locked by another health check".into(),
                        },
                    });
                }
                _ => return Err(io("locking the GPU", &path)(e)),
            }
        }
        // Who holds it, for the busy message of the next one; best effort.
        let _ = file
            .set_len(0)
            .and_then(|()| file.rewind())
            .and_then(|()| writeln!(file, "{}", std::process::id()));
        Ok(Self { _file: file, path })
    }

    /// The lock file.
    pub fn lock_path(&self) -> &Path {
        &self.path
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::os::unix::fs::symlink;

    /// A proc tree: `pids` as (pid, comm, fd targets), plus the driver's GPU entries.
    fn proc_tree(pids: &[(u32, &str, &[&str])], gpus: &[(&str, &str)]) -> tempfile::TempDir {
        let d = tempfile::tempdir().expect("tempdir");
        for (pid, comm, fds) in pids {
            let p = d.path().join(pid.to_string());
            std::fs::create_dir_all(p.join("fd")).expect("mkdir");
            std::fs::write(p.join("comm"), format!("{comm}\n")).expect("comm");
            for (i, t) in fds.iter().enumerate() {
                symlink(t, p.join("fd").join(i.to_string())).expect("symlink");
            }
        }
        for (bdf, info) in gpus {
            let g = d.path().join("driver/nvidia/gpus").join(bdf);
            std::fs::create_dir_all(&g).expect("mkdir");
            std::fs::write(g.join("information"), info).expect("info");
        }
        // Entries that are not processes, or not readable as such, are ignored.
        std::fs::create_dir_all(d.path().join("self")).expect("mkdir");
        std::fs::write(d.path().join("12345"), "not a dir").expect("file");
        d
    }

    const INFO0: &str = "Model: \t\t NVIDIA H200\nIRQ:   \t\t 35\nGPU UUID: \t GPU-a0\nDevice Minor: \t 0\nBus Location: \t 0000:00:06.0\n";
    const INFO1: &str =
        "Model: \t\t NVIDIA H200\nDevice Minor: \t 1\nBus Location: \t 0000:00:07.0\n";

    #[test]
    fn minor_from_the_driver_information_file() {
        let d = proc_tree(&[], &[("0000:00:06.0", INFO0), ("0000:00:07.0", INFO1)]);
        assert_eq!(device_minor(d.path(), "0000:00:06.0"), Some(0));
        assert_eq!(device_minor(d.path(), "0000:00:07.0"), Some(1));
        assert_eq!(device_minor(d.path(), "0000:00:08.0"), None);
        let bad = proc_tree(&[], &[("0000:00:06.0", "Device Minor: x\n")]);
        assert_eq!(device_minor(bad.path(), "0000:00:06.0"), None);
    }

    #[test]
    fn users_of_one_gpu_with_pid_and_command() {
        let d = proc_tree(
            &[
                (
                    700,
                    "python3",
                    &["/dev/nvidiactl", "/dev/nvidia1", "/dev/nvidia0"],
                ),
                (42, "trainer", &["/dev/nvidia0"]),
                (43, "other-gpu", &["/dev/nvidia1", "/dev/nvidiactl"]),
                (44, "bash", &["/dev/pts/0", "/dev/nvidia10"]),
            ],
            &[("0000:00:06.0", INFO0), ("0000:00:07.0", INFO1)],
        );
        let users = other_users(d.path(), "0000:00:06.0", None);
        assert_eq!(
            users,
            vec![
                GpuUser {
                    pid: 42,
                    comm: "trainer".into()
                },
                GpuUser {
                    pid: 700,
                    comm: "python3".into()
                },
            ]
        );
        let pids: Vec<u32> = other_users(d.path(), "0000:00:07.0", None)
            .iter()
            .map(|u| u.pid)
            .collect();
        assert_eq!(pids, vec![43, 700]);
        // No driver entry for the GPU (driver absent): nothing can be said, nobody listed.
        assert!(other_users(d.path(), "0000:00:08.0", None).is_empty());
        assert!(other_users(Path::new("/nonexistent/proc"), "0000:00:06.0", None).is_empty());
    }

    #[test]
    fn queued_checks_and_this_process_are_not_users() {
        let me = std::process::id();
        let lock = "/run/vm-accel/gpu-0000:00:06.0.lock";
        let d = proc_tree(
            &[
                (me, "vm-accel", &["/dev/nvidia0"]),
                (51, "vm-accel", &["/dev/nvidia0", lock]),
                (52, "trainer", &["/dev/nvidia0"]),
            ],
            &[("0000:00:06.0", INFO0)],
        );
        let users = other_users(d.path(), "0000:00:06.0", Some(Path::new(lock)));
        assert_eq!(
            users,
            vec![GpuUser {
                pid: 52,
                comm: "trainer".into()
            }]
        );
    }

    #[test]
    fn second_lock_without_waiting_is_busy_and_names_the_holder() {
        let run = tempfile::tempdir().expect("tempdir");
        let dir = run.path().join("nested/run");
        let held = GpuLock::acquire(&dir, "0000:00:06.0", Wait::No).expect("first lock");
        assert!(held.lock_path().ends_with("gpu-0000:00:06.0.lock"));
        // flock locks belong to the open file description: a second open in this process
        // conflicts exactly as another process would.
        match GpuLock::acquire(&dir, "0000:00:06.0", Wait::No) {
            Err(Error::Busy { bdf, reason }) => {
                assert_eq!(bdf, "0000:00:06.0");
                assert!(
                    reason.contains(&format!("pid {}", std::process::id())),
                    "{reason}"
                );
            }
            other => panic!("expected Busy, got {other:?}"),
        }
        // Another GPU is not affected.
        GpuLock::acquire(&dir, "0000:00:07.0", Wait::No).expect("other GPU");
        drop(held);
        GpuLock::acquire(&dir, "0000:00:06.0", Wait::No).expect("released on drop");
    }

    #[test]
    fn waiting_lock_queues_until_the_holder_lets_go() {
        let run = tempfile::tempdir().expect("tempdir");
        let held = GpuLock::acquire(run.path(), "0000:00:06.0", Wait::Yes).expect("lock");
        let dir = run.path().to_path_buf();
        let (tx, rx) = std::sync::mpsc::channel();
        let waiter = std::thread::spawn(move || {
            let l = GpuLock::acquire(&dir, "0000:00:06.0", Wait::Yes);
            tx.send(()).expect("send");
            l.map(drop)
        });
        assert!(
            rx.recv_timeout(std::time::Duration::from_millis(200))
                .is_err(),
            "the second lock must wait while the first is held"
        );
        drop(held);
        rx.recv_timeout(std::time::Duration::from_secs(10))
            .expect("the waiter gets the lock once it is released");
        waiter.join().expect("join").expect("lock after release");
    }

    #[test]
    fn unusable_run_dir_is_an_io_error() {
        let f = tempfile::NamedTempFile::new().expect("tempfile");
        match GpuLock::acquire(f.path(), "0000:00:06.0", Wait::No) {
            Err(Error::Lock { .. }) => {}
            other => panic!("expected Lock, got {other:?}"),
        }
    }
}

//! The persistent record of what vm-accel changed, and the host-wide lock.
//!
//! The record is written *before* the first sysfs write of a binding (write-ahead), so a
//! process that dies half-way leaves enough behind for `restore` to put every device back.
//! It lives on tmpfs (`/run/vm-accel` by default): a reboot resets the bindings it describes,
//! so it must not survive one.

use std::fs::File;
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use vm_pci::Bdf;

use super::state::DriverState;

/// Where the record and the lock live on a live host.
pub const DEFAULT_RUN_DIR: &str = "/run/vm-accel";
const RECORD_FILE: &str = "bindings.json";
const LOCK_FILE: &str = "lock";
const RECORD_VERSION: u32 = 1;
/// A record holds a few lines per bound device; anything this large is not one.
const MAX_RECORD_LEN: u64 = 4 << 20;

/// Errors of the record and the lock; each names the file.
#[derive(Debug, thiserror::Error)]
pub enum RecordError {
    #[error("{path}: {source}")]
    /// The file could not be read or written.
    Io {
        /// The file.
        path: PathBuf,
        #[source]
        /// The OS error.
        source: io::Error,
    },
    #[error("{path}: not a vm-accel binding record: {reason}")]
    /// The record is not one vm-accel wrote.
    Malformed {
        /// The record file.
        path: PathBuf,
        /// What is wrong with it.
        reason: String,
    },
    #[error(
        "another vm-accel process{} holds {path}; waited {waited:?} (bindings are changed by one process at a time)",
        holder.map(|p| format!(" (pid {p})")).unwrap_or_default()
    )]
    /// Another process held the lock too long.
    Locked {
        /// The lock file.
        path: PathBuf,
        /// The process holding it, when known.
        holder: Option<u32>,
        /// How long this process waited.
        waited: Duration,
    },
}

fn io_err(path: &Path) -> impl FnOnce(io::Error) -> RecordError + '_ {
    move |source| RecordError::Io {
        path: path.to_path_buf(),
        source,
    }
}

/// Where a binding stands.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Writes in progress (or interrupted): some devices may be half-way.
    Binding,
    /// Every recorded device is on vfio-pci.
    Bound,
    /// Being returned to the original drivers (or interrupted doing so).
    Releasing,
}

/// A device vm-accel changed, with what it had before.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct DeviceRecord {
    /// The device.
    pub bdf: Bdf,
    /// Its driver and driver_override before vm-accel changed it.
    pub original: DriverState,
}

/// One `prepare`: the requested device and every device of its group that was changed, in
/// the order they were changed.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct BindingRecord {
    /// The device asked for.
    pub target: Bdf,
    /// Its IOMMU group.
    pub iommu_group: Option<u32>,
    /// How far the operation got.
    pub phase: Phase,
    /// The devices changed, in order.
    pub devices: Vec<DeviceRecord>,
    /// The process that made it (diagnostics only).
    pub pid: u32,
    /// Seconds since the epoch when it was made.
    pub created: u64,
}

impl BindingRecord {
    /// Whether `bdf` is the target or one of the changed devices.
    pub fn contains(&self, bdf: Bdf) -> bool {
        self.target == bdf || self.devices.iter().any(|d| d.bdf == bdf)
    }
}

#[derive(Debug, Clone, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
/// What `/run/vm-accel/bindings.json` holds: every binding not yet released.
pub struct Record {
    /// Format version.
    pub version: u32,
    /// Bindings not yet released, oldest first.
    pub bindings: Vec<BindingRecord>,
}

impl Record {
    /// The binding that involves `bdf`.
    pub fn find(&self, bdf: Bdf) -> Option<&BindingRecord> {
        self.bindings.iter().find(|b| b.contains(bdf))
    }
}

/// The run directory: record + lock.
#[derive(Debug, Clone)]
pub struct RecordStore {
    dir: PathBuf,
    lock_timeout: Duration,
}

/// Holds the host-wide binding lock until dropped (the kernel releases a flock when the
/// process dies, so a crash never leaves it held).
#[derive(Debug)]
pub struct LockGuard {
    _file: File,
}

impl RecordStore {
    /// A store in `dir` (created on first write).
    pub fn new(dir: impl Into<PathBuf>) -> RecordStore {
        RecordStore {
            dir: dir.into(),
            lock_timeout: Duration::from_secs(10),
        }
    }
    /// How long [`RecordStore::lock`] waits for another process (default 10 s).
    pub fn with_lock_timeout(mut self, t: Duration) -> RecordStore {
        self.lock_timeout = t;
        self
    }
    /// The run directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }
    /// `<dir>/bindings.json`.
    pub fn record_path(&self) -> PathBuf {
        self.dir.join(RECORD_FILE)
    }
    /// `<dir>/lock`.
    pub fn lock_path(&self) -> PathBuf {
        self.dir.join(LOCK_FILE)
    }

    /// Takes the exclusive lock, waiting up to the lock timeout for another holder.
    pub fn lock(&self) -> Result<LockGuard, RecordError> {
        std::fs::create_dir_all(&self.dir).map_err(io_err(&self.dir))?;
        let path = self.lock_path();
        let mut file = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(false)
            .open(&path)
            .map_err(io_err(&path))?;
        let start = Instant::now();
        loop {
            // SAFETY: flock on a descriptor we own; no memory is passed.
            let rc = unsafe { libc::flock(file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) };
            if rc == 0 {
                break;
            }
            let e = io::Error::last_os_error();
            if e.raw_os_error() != Some(libc::EWOULDBLOCK) {
                return Err(io_err(&path)(e));
            }
            if start.elapsed() >= self.lock_timeout {
                let holder = std::fs::read_to_string(&path)
                    .ok()
                    .and_then(|s| s.trim().parse().ok());
                return Err(RecordError::Locked {
                    path,
                    holder,
                    waited: start.elapsed(),
                });
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        // The pid is advisory (for the error above); the flock is what excludes.
        let _ = file.set_len(0);
        let _ = write!(file, "{}", std::process::id());
        Ok(LockGuard { _file: file })
    }

    /// The current record (empty when there is none). Needs the lock held.
    pub fn load(&self, _lock: &LockGuard) -> Result<Record, RecordError> {
        self.read()
    }

    /// The current record, read without the lock and without creating anything (dry runs:
    /// they write nothing and wait for no one). The record is replaced by rename, so an
    /// unlocked read sees the old or the new one, never a torn one.
    pub fn peek(&self) -> Result<Record, RecordError> {
        self.read()
    }

    fn read(&self) -> Result<Record, RecordError> {
        let path = self.record_path();
        let text = match vm_pci::read_bounded(&path, MAX_RECORD_LEN) {
            Ok(t) => String::from_utf8_lossy(&t).into_owned(),
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                return Ok(Record {
                    version: RECORD_VERSION,
                    bindings: Vec::new(),
                })
            }
            Err(e) => return Err(io_err(&path)(e)),
        };
        let rec: Record = serde_json::from_str(&text).map_err(|e| RecordError::Malformed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if rec.version != RECORD_VERSION {
            return Err(RecordError::Malformed {
                path,
                reason: format!(
                    "version {} (this vm-accel reads {RECORD_VERSION})",
                    rec.version
                ),
            });
        }
        // Driver names become paths that restore writes to: a crafted record must not
        // steer a write out of sysfs.
        for b in &rec.bindings {
            for d in &b.devices {
                d.original
                    .validate()
                    .map_err(|reason| RecordError::Malformed {
                        path: path.clone(),
                        reason: format!("{}: {reason}", d.bdf),
                    })?;
            }
        }
        Ok(rec)
    }

    /// Replaces the record atomically (temp file, fsync, rename); removes the file when the
    /// record is empty. Needs the lock held.
    pub fn save(&self, _lock: &LockGuard, rec: &Record) -> Result<(), RecordError> {
        let path = self.record_path();
        if rec.bindings.is_empty() {
            return match std::fs::remove_file(&path) {
                Err(e) if e.kind() != io::ErrorKind::NotFound => Err(io_err(&path)(e)),
                _ => Ok(()),
            };
        }
        let tmp = self.dir.join(format!("{RECORD_FILE}.tmp"));
        let text = serde_json::to_string_pretty(rec).map_err(|e| RecordError::Malformed {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        {
            let mut f = File::create(&tmp).map_err(io_err(&tmp))?;
            f.write_all(text.as_bytes()).map_err(io_err(&tmp))?;
            f.sync_all().map_err(io_err(&tmp))?;
        }
        std::fs::rename(&tmp, &path).map_err(io_err(&path))
    }
}

/// Seconds since the epoch, for the record.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Record {
        Record {
            version: RECORD_VERSION,
            bindings: vec![BindingRecord {
                target: "0000:00:03.0".parse().unwrap(),
                iommu_group: Some(3),
                phase: Phase::Bound,
                devices: vec![DeviceRecord {
                    bdf: "0000:00:03.0".parse().unwrap(),
                    original: DriverState {
                        driver: Some("nvidia".into()),
                        driver_override: None,
                    },
                }],
                pid: 1,
                created: 0,
            }],
        }
    }

    #[test]
    fn roundtrip_and_empty_removes_file() {
        let t = tempfile::tempdir().unwrap();
        let s = RecordStore::new(t.path().join("run"));
        let g = s.lock().unwrap();
        assert!(s.load(&g).unwrap().bindings.is_empty());
        s.save(&g, &sample()).unwrap();
        assert_eq!(s.load(&g).unwrap(), sample());
        s.save(&g, &Record::default()).unwrap();
        assert!(!s.record_path().exists());
    }

    #[test]
    fn malformed_record_is_an_error_not_an_empty_one() {
        let t = tempfile::tempdir().unwrap();
        let s = RecordStore::new(t.path());
        let g = s.lock().unwrap();
        std::fs::write(s.record_path(), "{not json").unwrap();
        let e = s.load(&g).unwrap_err();
        assert!(matches!(e, RecordError::Malformed { .. }), "{e}");
        std::fs::write(s.record_path(), r#"{"version":99,"bindings":[]}"#).unwrap();
        assert!(s.load(&g).unwrap_err().to_string().contains("version 99"));
    }

    #[test]
    fn lock_is_exclusive_across_open_files() {
        // flock locks belong to the open file description, so a second open in the same
        // process contends exactly like a second process would.
        let t = tempfile::tempdir().unwrap();
        let s = RecordStore::new(t.path()).with_lock_timeout(Duration::from_millis(120));
        let g = s.lock().unwrap();
        let e = s.lock().unwrap_err();
        match &e {
            RecordError::Locked { holder, .. } => assert_eq!(*holder, Some(std::process::id())),
            other => panic!("expected Locked, got {other}"),
        }
        drop(g);
        s.lock().unwrap();
    }
}

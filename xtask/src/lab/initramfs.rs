//! The guest's initramfs: an uncompressed newc cpio (no decompression under TCG), cached
//! under a hash of its inputs.

use std::path::{Path, PathBuf};

use anyhow::{Context, Result};

use super::build::BuiltTest;
use super::kernel::GuestKernel;

const BUSYBOX: &str = "/bin/busybox";
const INIT: &str = include_str!("../../../lab/init");

/// Everything that goes into the initramfs.
#[derive(Debug)]
pub struct Inputs<'a> {
    pub kernel: &'a GuestKernel,
    pub tests: &'a [BuiltTest],
    pub bins: &'a [(String, PathBuf)],
    /// `KEY=VALUE` exported in the guest before the tests.
    pub env: &'a [(String, String)],
    /// Arguments for every test binary.
    pub test_args: &'a [String],
}

/// Returns the cached initramfs for these inputs, building it when any input changed.
pub fn build(cache: &Path, inputs: &Inputs<'_>) -> Result<PathBuf> {
    let files = file_list(inputs);
    let mut key = Vec::new();
    key.extend_from_slice(INIT.as_bytes());
    key.extend_from_slice(text_files(inputs).concat().as_slice());
    for (guest, host, _) in &files {
        let meta =
            std::fs::metadata(host).with_context(|| format!("reading {}", host.display()))?;
        let mtime = meta
            .modified()?
            .duration_since(std::time::UNIX_EPOCH)?
            .as_nanos();
        key.extend_from_slice(
            format!("{guest} {} {} {mtime}\n", host.display(), meta.len()).as_bytes(),
        );
    }
    let hash = super::sha256_hex(&key)?;
    let dir = cache.join("initramfs");
    let out = dir.join(format!("{}.cpio", &hash[..16]));
    if out.exists() {
        log::info!("initramfs up to date: {}", out.display());
        return Ok(out);
    }
    std::fs::create_dir_all(&dir)?;
    prune(&dir, 4);
    let mut cpio = Cpio::default();
    for d in [
        "bin",
        "sbin",
        "usr",
        "usr/bin",
        "usr/sbin",
        "dev",
        "proc",
        "sys",
        "tmp",
        "run",
        "lab",
        "lab/modules",
        "lab/tests",
        "lab/bin",
    ] {
        cpio.dir(d);
    }
    cpio.char_dev("dev/console", 5, 1);
    cpio.file("init", INIT.as_bytes(), 0o755);
    cpio.symlink("bin/sh", "busybox");
    let [plan, args, env] = text_files(inputs);
    cpio.file("lab/plan", &plan, 0o644);
    cpio.file("lab/args", &args, 0o644);
    cpio.file("lab/env", &env, 0o644);
    for (guest, host, mode) in &files {
        let data = std::fs::read(host).with_context(|| format!("reading {}", host.display()))?;
        cpio.file(guest, &data, *mode);
    }
    let tmp = out.with_extension(format!("tmp{}", std::process::id()));
    std::fs::write(&tmp, cpio.finish()).with_context(|| format!("writing {}", tmp.display()))?;
    std::fs::rename(&tmp, &out)?;
    log::info!("initramfs built: {}", out.display());
    Ok(out)
}

/// Keeps the `keep` newest archives (a few MiB each). Not just the newest one: another lab
/// run may be about to boot the one before.
fn prune(dir: &Path, keep: usize) {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return;
    };
    let mut files: Vec<(std::time::SystemTime, PathBuf)> = entries
        .flatten()
        .filter_map(|e| Some((e.metadata().ok()?.modified().ok()?, e.path())))
        .collect();
    files.sort();
    let excess = files.len().saturating_sub(keep);
    for (_, old) in &files[..excess] {
        let _ = std::fs::remove_file(old);
    }
}

/// (path in the guest, path on the host, mode) of every copied file.
fn file_list(inputs: &Inputs<'_>) -> Vec<(String, PathBuf, u32)> {
    let mut files = vec![("bin/busybox".to_string(), PathBuf::from(BUSYBOX), 0o755)];
    for (i, m) in inputs.kernel.modules.iter().enumerate() {
        let name = m
            .file_name()
            .map(|n| n.to_string_lossy().into_owned())
            .unwrap_or_default();
        // The init script loads /lab/modules/*.ko in glob order: number them.
        files.push((format!("lab/modules/{i:02}-{name}"), m.clone(), 0o644));
    }
    for t in inputs.tests {
        files.push((format!("lab/tests/{}", t.name), t.exe.clone(), 0o755));
    }
    for (name, path) in inputs.bins {
        files.push((format!("lab/bin/{name}"), path.clone(), 0o755));
    }
    files
}

/// /lab/plan, /lab/args, /lab/env.
fn text_files(inputs: &Inputs<'_>) -> [Vec<u8>; 3] {
    let plan: String = inputs
        .tests
        .iter()
        .map(|t| format!("{}\n", t.name))
        .collect();
    let args: String = inputs.test_args.iter().map(|a| format!("{a}\n")).collect();
    let env: String = inputs
        .env
        .iter()
        .map(|(k, v)| format!("export {k}='{}'\n", v.replace('\'', "'\\''")))
        .collect();
    [plan.into_bytes(), args.into_bytes(), env.into_bytes()]
}

/// A newc ("070701") cpio archive writer: all the kernel's initramfs unpacker needs.
#[derive(Debug, Default)]
struct Cpio {
    out: Vec<u8>,
    ino: u32,
}

impl Cpio {
    fn entry(&mut self, name: &str, mode: u32, data: &[u8], rdev: (u32, u32)) {
        self.ino += 1;
        let fields = [
            self.ino,
            mode,
            0,
            0,
            1,
            0,
            data.len() as u32,
            0,
            0,
            rdev.0,
            rdev.1,
            name.len() as u32 + 1,
            0,
        ];
        self.out.extend_from_slice(b"070701");
        for f in fields {
            self.out.extend_from_slice(format!("{f:08x}").as_bytes());
        }
        self.out.extend_from_slice(name.as_bytes());
        self.out.push(0);
        self.pad();
        self.out.extend_from_slice(data);
        self.pad();
    }

    fn pad(&mut self) {
        while !self.out.len().is_multiple_of(4) {
            self.out.push(0);
        }
    }

    fn dir(&mut self, name: &str) {
        self.entry(name, 0o040_755, &[], (0, 0));
    }

    fn file(&mut self, name: &str, data: &[u8], perm: u32) {
        self.entry(name, 0o100_000 | perm, data, (0, 0));
    }

    fn symlink(&mut self, name: &str, target: &str) {
        self.entry(name, 0o120_777, target.as_bytes(), (0, 0));
    }

    fn char_dev(&mut self, name: &str, major: u32, minor: u32) {
        self.entry(name, 0o020_600, &[], (major, minor));
    }

    fn finish(mut self) -> Vec<u8> {
        self.entry("TRAILER!!!", 0, &[], (0, 0));
        self.out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn field(rec: &[u8], i: usize) -> u32 {
        let s = std::str::from_utf8(&rec[6 + i * 8..14 + i * 8]).expect("ascii");
        u32::from_str_radix(s, 16).expect("hex")
    }

    #[test]
    fn newc_records_are_aligned_and_end_with_the_trailer() {
        let mut c = Cpio::default();
        c.dir("lab");
        c.file("lab/x", b"hello", 0o644);
        c.char_dev("dev/console", 5, 1);
        let out = c.finish();
        // Walk the records back.
        let (mut off, mut names) = (0, Vec::new());
        while off < out.len() {
            let rec = &out[off..];
            assert_eq!(&rec[..6], b"070701");
            let (size, namesize) = (field(rec, 6) as usize, field(rec, 11) as usize);
            let name = std::str::from_utf8(&rec[110..110 + namesize - 1]).expect("name");
            names.push((
                name.to_string(),
                field(rec, 1),
                field(rec, 9),
                field(rec, 10),
            ));
            let data_at = (110 + namesize).div_ceil(4) * 4;
            if name == "lab/x" {
                assert_eq!(&rec[data_at..data_at + size], b"hello");
            }
            off += (data_at + size).div_ceil(4) * 4;
        }
        assert_eq!(off, out.len());
        let n: Vec<&str> = names.iter().map(|n| n.0.as_str()).collect();
        assert_eq!(n, ["lab", "lab/x", "dev/console", "TRAILER!!!"]);
        assert_eq!(names[2].1 & 0o170_000, 0o020_000, "character device");
        assert_eq!((names[2].2, names[2].3), (5, 1));
    }
}

//! Launch geometry and its validation against device and kernel limits (pure logic).

use crate::device::Limits;
use crate::error::{Error, Result};

/// Grid or block dimensions.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Dim3 {
    /// Extent along x.
    pub x: u32,
    /// Extent along y.
    pub y: u32,
    /// Extent along z.
    pub z: u32,
}

impl Dim3 {
    /// One along every dimension.
    pub const ONE: Self = Self { x: 1, y: 1, z: 1 };

    /// x × y × z (no overflow: computed in u64).
    pub fn volume(&self) -> u64 {
        u64::from(self.x) * u64::from(self.y) * u64::from(self.z)
    }
}

impl From<u32> for Dim3 {
    fn from(x: u32) -> Self {
        Self { x, y: 1, z: 1 }
    }
}
impl From<(u32, u32)> for Dim3 {
    fn from((x, y): (u32, u32)) -> Self {
        Self { x, y, z: 1 }
    }
}
impl From<(u32, u32, u32)> for Dim3 {
    fn from((x, y, z): (u32, u32, u32)) -> Self {
        Self { x, y, z }
    }
}

/// Grid, block and dynamic shared memory of one launch.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LaunchConfig {
    /// Blocks in the grid.
    pub grid: Dim3,
    /// Threads in a block.
    pub block: Dim3,
    /// Dynamic shared memory per block, in bytes. Above 48 KiB the kernel must opt in
    /// first (`Kernel::set_max_dynamic_shared_bytes`).
    pub shared_mem_bytes: u32,
}

impl LaunchConfig {
    /// A launch of `grid` blocks of `block` threads, without dynamic shared memory.
    pub fn new(grid: impl Into<Dim3>, block: impl Into<Dim3>) -> Self {
        Self {
            grid: grid.into(),
            block: block.into(),
            shared_mem_bytes: 0,
        }
    }

    /// Sets the dynamic shared memory per block.
    pub fn with_shared_mem(mut self, bytes: u32) -> Self {
        self.shared_mem_bytes = bytes;
        self
    }

    /// A 1-D launch with one thread per element: `ceil(n / block)` blocks of `block`.
    pub fn for_elements(n: u64, block: u32) -> Result<Self> {
        if block == 0 {
            return Err(Error::InvalidArgument {
                operation: "LaunchConfig::for_elements",
                reason: "block size 0".into(),
            });
        }
        let blocks = n.div_ceil(u64::from(block)).max(1);
        let grid = u32::try_from(blocks).map_err(|_| Error::InvalidArgument {
            operation: "LaunchConfig::for_elements",
            reason: format!("{n} elements need {blocks} blocks of {block}, more than a grid holds"),
        })?;
        Ok(Self::new(grid, block))
    }
}

/// What bounds a particular kernel's launches: the device limits plus the kernel's own
/// (registers cap its threads per block; its dynamic shared memory limit).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KernelLimits {
    /// The device's limits.
    pub device: Limits,
    /// Most threads per block for this kernel (its register use permitting).
    pub max_threads_per_block: u32,
    /// Dynamic shared memory this kernel may use now.
    pub max_dynamic_shared_bytes: u32,
}

/// Checks `cfg` against `limits`; the error names `kernel` and the violated limit.
pub fn validate(kernel: &str, cfg: &LaunchConfig, limits: &KernelLimits) -> Result<()> {
    if let Some(reason) = violation(cfg, limits) {
        return Err(Error::LaunchConfig {
            kernel: kernel.to_string(),
            reason,
        });
    }
    Ok(())
}

#[inline]
fn violation(cfg: &LaunchConfig, l: &KernelLimits) -> Option<String> {
    let (g, b, d) = (cfg.grid, cfg.block, &l.device);
    if g.volume() == 0 || b.volume() == 0 {
        return Some(format!(
            "grid ({}, {}, {}) and block ({}, {}, {}) must be non-zero in every dimension",
            g.x, g.y, g.z, b.x, b.y, b.z
        ));
    }
    for (axis, (v, max)) in ["x", "y", "z"].iter().zip([
        (b.x, d.max_block_dim[0]),
        (b.y, d.max_block_dim[1]),
        (b.z, d.max_block_dim[2]),
    ]) {
        if v > max {
            return Some(format!(
                "block.{axis} = {v} exceeds the device maximum {max}"
            ));
        }
    }
    for (axis, (v, max)) in ["x", "y", "z"].iter().zip([
        (g.x, d.max_grid_dim[0]),
        (g.y, d.max_grid_dim[1]),
        (g.z, d.max_grid_dim[2]),
    ]) {
        if v > max {
            return Some(format!(
                "grid.{axis} = {v} exceeds the device maximum {max}"
            ));
        }
    }
    let threads = b.volume();
    let max_threads = u64::from(d.max_threads_per_block.min(l.max_threads_per_block));
    if threads > max_threads {
        return Some(format!(
            "{threads} threads per block exceed the limit {max_threads} (device {}, kernel {} given its registers)",
            d.max_threads_per_block, l.max_threads_per_block
        ));
    }
    if cfg.shared_mem_bytes > l.max_dynamic_shared_bytes {
        let hint = if cfg.shared_mem_bytes <= d.max_shared_per_block_optin {
            format!(
                "; the device allows up to {} after opting in with Kernel::set_max_dynamic_shared_bytes",
                d.max_shared_per_block_optin
            )
        } else {
            format!(
                " (device maximum with opt-in: {})",
                d.max_shared_per_block_optin
            )
        };
        return Some(format!(
            "{} bytes of dynamic shared memory exceed the kernel's limit {}{hint}",
            cfg.shared_mem_bytes, l.max_dynamic_shared_bytes
        ));
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn h100() -> KernelLimits {
        KernelLimits {
            device: Limits {
                max_threads_per_block: 1024,
                max_block_dim: [1024, 1024, 64],
                max_grid_dim: [2_147_483_647, 65535, 65535],
                max_shared_per_block: 48 * 1024,
                max_shared_per_block_optin: 227 * 1024,
                warp_size: 32,
            },
            max_threads_per_block: 1024,
            max_dynamic_shared_bytes: 48 * 1024,
        }
    }

    #[test]
    fn accepts_valid_configs() {
        validate("k", &LaunchConfig::new(1, 1), &h100()).expect("ok");
        validate(
            "k",
            &LaunchConfig::new((65535, 65535, 65535), (32, 32, 1)),
            &h100(),
        )
        .expect("ok");
        validate(
            "k",
            &LaunchConfig::new(1, 256).with_shared_mem(48 * 1024),
            &h100(),
        )
        .expect("ok");
    }

    #[test]
    fn rejects_invalid_configs_with_reasons() {
        let l = h100();
        let reason = |cfg: LaunchConfig| match validate("k", &cfg, &l) {
            Err(Error::LaunchConfig { kernel, reason }) => {
                assert_eq!(kernel, "k");
                reason
            }
            other => panic!("expected a launch config error, got {other:?}"),
        };
        assert!(reason(LaunchConfig::new(0, 1)).contains("non-zero"));
        assert!(reason(LaunchConfig::new(1, (1, 1, 65))).contains("block.z = 65"));
        assert!(reason(LaunchConfig::new((1, 65536), 1)).contains("grid.y = 65536"));
        assert!(reason(LaunchConfig::new(1, (32, 33))).contains("1056 threads"));
        let r = reason(LaunchConfig::new(1, 1).with_shared_mem(96 * 1024));
        assert!(r.contains("opting in"), "{r}");
        let r = reason(LaunchConfig::new(1, 1).with_shared_mem(300 * 1024));
        assert!(r.contains("device maximum with opt-in"), "{r}");
        let mut regs = l;
        regs.max_threads_per_block = 512;
        assert!(matches!(
            validate("k", &LaunchConfig::new(1, 1024), &regs),
            Err(Error::LaunchConfig { .. })
        ));
    }

    #[test]
    fn for_elements_rounds_up() {
        let c = LaunchConfig::for_elements(1000, 256).expect("ok");
        assert_eq!((c.grid.x, c.block.x), (4, 256));
        assert_eq!(LaunchConfig::for_elements(0, 256).expect("ok").grid.x, 1);
        assert!(LaunchConfig::for_elements(u64::MAX, 1).is_err());
        assert!(LaunchConfig::for_elements(1, 0).is_err());
    }
}

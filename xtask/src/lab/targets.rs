//! The lab's test targets: one line per test binary that runs inside the guest.
//!
//! To add a test: write `crates/<crate>/tests/lab_<what>.rs` (or `tests/tests/lab_*.rs`),
//! make it skip through `vm_accel_tests::hw::skip` when `/dev/vfio` or
//! `VM_ACCEL_TEST_BDF` is missing, then add one [`LabTarget`] line below.

/// A test binary the lab builds for the guest and runs there.
#[derive(Debug, Clone, Copy)]
pub struct LabTarget {
    /// What `--test NAME` selects; also the binary's name inside the guest.
    pub name: &'static str,
    /// Cargo package that owns the test target.
    pub package: &'static str,
    /// Integration test target (`cargo test --test <test>`).
    pub test: &'static str,
    /// Cargo features to enable for the build.
    pub features: &'static [&'static str],
    /// Binaries (`package`, `bin`) built for the guest too and put on its `PATH`
    /// (e.g. the `vm-accel` CLI for a bind/unbind test).
    pub bins: &'static [(&'static str, &'static str)],
    /// Part of `--all` (and of a plain `cargo xtask lab`).
    pub in_all: bool,
    /// Needs `--kernel iommufd` (/dev/iommu, /dev/vfio/devices/*): left out of `--all`
    /// with the Debian kernel.
    pub iommufd: bool,
}

/// Every lab target. Keep one line each.
#[rustfmt::skip]
pub const TARGETS: &[LabTarget] = &[
    LabTarget { name: "lab_raw_vfio", package: "vm-accel-tests", test: "lab_raw_vfio", features: &[], bins: &[], in_all: true, iommufd: false },
    LabTarget { name: "lab_iommufd", package: "vm-accel-tests", test: "lab_iommufd", features: &[], bins: &[], in_all: true, iommufd: true },
    LabTarget { name: "kvm_smoke", package: "vm-accel-tests", test: "kvm_smoke", features: &[], bins: &[], in_all: true, iommufd: false },
    LabTarget { name: "lab_pci", package: "vm-accel-tests", test: "lab_pci", features: &[], bins: &[], in_all: true, iommufd: false },
    LabTarget { name: "lab_dma_bench", package: "vm-accel-tests", test: "lab_dma_bench", features: &[], bins: &[], in_all: false, iommufd: false },
    LabTarget { name: "lab_vfio_legacy", package: "vm-vfio", test: "lab_vfio_legacy", features: &[], bins: &[], in_all: true, iommufd: false },
    LabTarget { name: "lab_vfio_iommufd", package: "vm-vfio", test: "lab_vfio_iommufd", features: &[], bins: &[], in_all: true, iommufd: true },
    LabTarget { name: "lab_vfio_msix", package: "vm-vfio", test: "lab_vfio_msix", features: &[], bins: &[], in_all: true, iommufd: false },
    LabTarget { name: "lab_attach_irq", package: "vm-accel", test: "lab_attach_irq", features: &[], bins: &[], in_all: true, iommufd: false },
    LabTarget { name: "lab_mini_vmm", package: "vm-accel", test: "lab_mini_vmm", features: &[], bins: &[], in_all: true, iommufd: false },
    LabTarget { name: "lab_large_bar_bench", package: "vm-accel", test: "lab_large_bar_bench", features: &[], bins: &[], in_all: false, iommufd: false },
    LabTarget { name: "lab_vfio_bind", package: "vm-vfio", test: "lab_vfio_bind", features: &[], bins: &[("vm-accel", "vm-accel")], in_all: true, iommufd: false },
    LabTarget { name: "lab_attach", package: "vm-accel", test: "lab_attach", features: &[], bins: &[("vm-accel", "vm-accel")], in_all: true, iommufd: false },
    LabTarget { name: "lab_attach_iommufd", package: "vm-accel", test: "lab_attach", features: &[], bins: &[("vm-accel", "vm-accel")], in_all: true, iommufd: true },
    LabTarget { name: "lab_attach_bench", package: "vm-accel-tests", test: "lab_attach_bench", features: &[], bins: &[], in_all: false, iommufd: false },
    LabTarget { name: "lab_host_safety", package: "vm-vfio", test: "lab_host_safety", features: &[], bins: &[("vm-accel", "vm-accel")], in_all: true, iommufd: false },
    // Fails on purpose: proves that a failing, dying or hanging guest test fails the lab.
    LabTarget { name: "lab_broken", package: "vm-accel-tests", test: "lab_broken", features: &[], bins: &[], in_all: false, iommufd: false },
];

/// Resolves `--test` names (none: every `in_all` target the kernel can run).
pub fn select(names: &[String], iommufd_kernel: bool) -> anyhow::Result<Vec<LabTarget>> {
    if names.is_empty() {
        return Ok(TARGETS
            .iter()
            .filter(|t| t.in_all && (iommufd_kernel || !t.iommufd))
            .copied()
            .collect());
    }
    names
        .iter()
        .map(|n| {
            let t = TARGETS
                .iter()
                .find(|t| t.name == n)
                .copied()
                .ok_or_else(|| {
                    let known: Vec<_> = TARGETS.iter().map(|t| t.name).collect();
                    anyhow::anyhow!("no lab target {n:?}; known: {}", known.join(", "))
                })?;
            if t.iommufd && !iommufd_kernel {
                anyhow::bail!("lab target {n} needs --kernel iommufd");
            }
            Ok(t)
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_are_unique_and_targets_are_lab_tests() {
        for (i, t) in TARGETS.iter().enumerate() {
            assert!(
                TARGETS[i + 1..].iter().all(|u| u.name != t.name),
                "duplicate {}",
                t.name
            );
            assert!(
                !t.name.contains(['/', ' ']),
                "{} is used as a file name in the guest",
                t.name
            );
        }
    }

    #[test]
    fn all_leaves_out_iommufd_targets_on_debian_and_broken_everywhere() {
        let debian = select(&[], false).expect("select");
        assert!(debian.iter().all(|t| !t.iommufd && t.in_all));
        let iommufd = select(&[], true).expect("select");
        assert!(iommufd.len() > debian.len());
        assert!(iommufd.iter().all(|t| t.name != "lab_broken"));
        assert!(select(&["lab_iommufd".into()], false).is_err());
        assert!(select(&["no_such_target".into()], true).is_err());
    }
}

//! The iommufd/cdev VFIO path, inside `cargo xtask lab --kernel iommufd` (Debian's kernels
//! lack CONFIG_IOMMUFD and VFIO_DEVICE_CDEV): /dev/iommu + /dev/vfio/devices/vfioN, an IOAS
//! instead of a container, and the same checks as the legacy path (lab_support/checks.rs).
//! Skips outside the lab or on a kernel without iommufd.

mod lab_support;

use lab_support::*;

fn iommufd_device(test: &str) -> Option<(String, std::path::PathBuf)> {
    let (bdf, sysfs) = lab_device(test)?;
    if !std::path::Path::new("/dev/iommu").exists() {
        vm_accel_tests::hw::skip(
            test,
            "no /dev/iommu (kernel without CONFIG_IOMMUFD; use --kernel iommufd)",
        );
        return None;
    }
    Some((bdf, sysfs))
}

#[test]
fn device_cdev_exists_for_the_bound_device() {
    let Some((bdf, sysfs)) = iommufd_device("device_cdev_exists_for_the_bound_device") else {
        return;
    };
    let entries: Vec<_> = std::fs::read_dir(sysfs.join("vfio-dev"))
        .expect("vfio-dev directory of a vfio-pci device")
        .map(|e| e.expect("entry").file_name().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        entries.len(),
        1,
        "{bdf}: one vfio-dev entry, got {entries:?}"
    );
    let cdev = std::path::Path::new("/dev/vfio/devices").join(&entries[0]);
    assert!(cdev.exists(), "{} missing", cdev.display());
}

macro_rules! iommufd_test {
    ($name:ident) => {
        #[test]
        fn $name() {
            let Some((bdf, sysfs)) = iommufd_device(stringify!($name)) else {
                return;
            };
            checks::$name(&Edu::open_iommufd(&sysfs), &bdf);
        }
    };
}

iommufd_test!(bar0_identification_by_region_read_and_mmap);
iommufd_test!(dma_both_ways_with_completion_msi);
iommufd_test!(iommu_blocks_dma_to_an_unmapped_iova);

//! Raw VFIO through vfio-ioctls against QEMU's `edu` device, inside `cargo xtask lab`, on
//! the legacy container/group path: BAR0 by region read and by mmap, DMA both ways through
//! the (emulated) IOMMU with a vm-memory GuestMemoryMmap, the completion MSI on an EventFd,
//! and the IOMMU refusing DMA to an IOVA that is no longer mapped (lab_support/checks.rs).
//! Outside the lab (no VM_ACCEL_TEST_BDF or /dev/vfio) every test reports skipped.

mod lab_support;

use lab_support::*;

macro_rules! container_test {
    ($name:ident) => {
        #[test]
        fn $name() {
            let Some((bdf, sysfs)) = lab_device(stringify!($name)) else {
                return;
            };
            checks::$name(&Edu::open_container(&sysfs), &bdf);
        }
    };
}

container_test!(bar0_identification_by_region_read_and_mmap);
container_test!(dma_both_ways_with_completion_msi);
container_test!(iommu_blocks_dma_to_an_unmapped_iova);

#[test]
fn every_edu_device_is_alone_in_its_iommu_group() {
    let Some(_) = lab_device("every_edu_device_is_alone_in_its_iommu_group") else {
        return;
    };
    let bdfs = lab_edu_bdfs();
    assert!(
        bdfs.len() >= 2,
        "the lab boots several edu devices, got {bdfs:?}"
    );
    let mut groups = Vec::new();
    for bdf in &bdfs {
        let link = std::fs::read_link(format!("/sys/bus/pci/devices/{bdf}/iommu_group"))
            .expect("iommu_group link");
        let group = link
            .file_name()
            .expect("group id")
            .to_string_lossy()
            .into_owned();
        let members = std::fs::read_dir(format!("/sys/kernel/iommu_groups/{group}/devices"))
            .expect("group devices")
            .count();
        assert_eq!(members, 1, "{bdf} shares group {group}");
        assert!(
            std::path::Path::new(&format!("/dev/vfio/{group}")).exists(),
            "/dev/vfio/{group}"
        );
        groups.push(group);
    }
    groups.sort();
    groups.dedup();
    assert_eq!(groups.len(), bdfs.len(), "distinct groups");
}

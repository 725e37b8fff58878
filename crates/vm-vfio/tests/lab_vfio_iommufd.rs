//! vm-vfio's device access through iommufd (/dev/iommu + /dev/vfio/devices/vfioN) against a
//! real vfio-pci device. Needs a kernel with CONFIG_IOMMUFD and CONFIG_VFIO_DEVICE_CDEV
//! (`cargo xtask lab --kernel iommufd`). Skips without /dev/vfio or `VM_ACCEL_TEST_BDF`.

mod lab_common;

use vm_vfio::access::{BackendChoice, BackendKind, Device};

vfio_suite!(BackendKind::Iommufd);

#[test]
fn auto_picks_iommufd_when_the_kernel_has_it() {
    let Some(bdf) = lab_common::device_under_test("auto_picks_iommufd_when_the_kernel_has_it")
    else {
        return;
    };
    let kind = Device::pick_backend(&lab_common::sys(), bdf, BackendChoice::Auto).unwrap();
    assert_eq!(
        kind,
        BackendKind::Iommufd,
        "/dev/iommu and the device cdev exist"
    );
}

#[test]
fn legacy_and_iommufd_contexts_coexist_for_different_devices() {
    let Some(_) =
        lab_common::device_under_test("legacy_and_iommufd_contexts_coexist_for_different_devices")
    else {
        return;
    };
    let edus = lab_common::lab_edu_bdfs();
    if edus.len() < 2 {
        lab_common::report("one device only: nothing to pair");
        return;
    }
    let a = lab_common::open(edus[0], BackendChoice::Force(BackendKind::Legacy));
    let b = lab_common::open(edus[1], BackendChoice::Force(BackendKind::Iommufd));
    assert_eq!(a.config_u16(0).unwrap(), b.config_u16(0).unwrap());
}

//! vm-vfio's device access through the legacy container (/dev/vfio/vfio + group) against a
//! real vfio-pci device (`VM_ACCEL_TEST_BDF`; the lab's edu gets the DMA/MSI tests too).
//! Skips without /dev/vfio or the variable.

mod lab_common;

use vm_vfio::access::BackendKind;

vfio_suite!(BackendKind::Legacy);

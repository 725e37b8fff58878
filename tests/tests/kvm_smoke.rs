//! KVM smoke test: a VM made with kvm-ioctls runs a few real-mode instructions and the
//! exits (port output, MMIO write, HLT) carry the right values. Needs /dev/kvm; reports
//! skipped without it. Runs on the host (hw-test `kvm-smoke`) and inside the VFIO lab guest.

use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::{Kvm, VcpuExit};
use vm_memory::{Bytes, GuestAddress, GuestMemoryBackend, GuestMemoryMmap};

const CODE_GPA: u64 = 0x1000;
const DATA_GPA: u64 = 0x2000;
/// Outside guest RAM: writes there exit to the VMM as MMIO.
const MMIO_GPA: u64 = 0x3000;

#[test]
fn kvm_runs_real_mode_code() {
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            return vm_accel_tests::hw::skip("kvm_runs_real_mode_code", &format!("/dev/kvm: {e}"))
        }
    };
    assert!(kvm.get_api_version() >= 12);
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    let mem: GuestMemoryMmap =
        GuestMemoryMmap::from_ranges(&[(GuestAddress(CODE_GPA), 0x2000)]).expect("guest RAM");
    let code: &[u8] = &[
        0xba, 0xf8, 0x03, // mov dx, 0x3f8
        0xa0, 0x00, 0x20, // mov al, [0x2000]
        0xee, // out dx, al
        0xc6, 0x06, 0x00, 0x30, 0x5a, // mov byte [0x3000], 0x5a
        0xf4, // hlt
    ];
    mem.write_slice(code, GuestAddress(CODE_GPA))
        .expect("write code");
    mem.write_obj(0x42u8, GuestAddress(DATA_GPA))
        .expect("write data");
    let host = mem
        .get_host_address(GuestAddress(CODE_GPA))
        .expect("host address");
    let region = kvm_userspace_memory_region {
        slot: 0,
        guest_phys_addr: CODE_GPA,
        memory_size: 0x2000,
        userspace_addr: host as u64,
        flags: 0,
    };
    // SAFETY: the region is backed by `mem`, which outlives the VM (dropped after it).
    unsafe { vm.set_user_memory_region(region) }.expect("KVM_SET_USER_MEMORY_REGION");

    let mut vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    let mut sregs = vcpu.get_sregs().expect("KVM_GET_SREGS");
    sregs.cs.base = 0;
    sregs.cs.selector = 0;
    sregs.ds.base = 0;
    sregs.ds.selector = 0;
    vcpu.set_sregs(&sregs).expect("KVM_SET_SREGS");
    let mut regs = vcpu.get_regs().expect("KVM_GET_REGS");
    regs.rip = CODE_GPA;
    regs.rflags = 2;
    vcpu.set_regs(&regs).expect("KVM_SET_REGS");

    let mut seen = Vec::new();
    for _ in 0..16 {
        match vcpu.run().expect("KVM_RUN") {
            VcpuExit::IoOut(port, data) => seen.push(format!("out {port:#x} {data:x?}")),
            VcpuExit::MmioWrite(addr, data) => seen.push(format!("mmio {addr:#x} {data:x?}")),
            VcpuExit::Hlt => {
                seen.push("hlt".into());
                break;
            }
            other => panic!("unexpected exit {other:?} after {seen:?}"),
        }
    }
    assert_eq!(
        seen,
        vec![
            "out 0x3f8 [42]".to_string(),
            format!("mmio {MMIO_GPA:#x} [5a]"),
            "hlt".to_string()
        ]
    );
}

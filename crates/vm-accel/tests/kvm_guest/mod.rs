//! Shared by vm-accel's KVM tests: a VM with an in-kernel irqchip and one vCPU whose LAPIC
//! IRR shows what was delivered, and MSI-X table helpers over `Interrupts`.
#![allow(dead_code)] // each test binary uses a different part

use std::sync::Arc;
use std::time::{Duration, Instant};

use kvm_ioctls::{Kvm, VcpuFd, VmFd};
use vm_accel::attach::{ConfigEvent, GsiRoutes, Interrupts, MsixLayout};

/// A VM with an in-kernel irqchip and one vCPU whose LAPIC accepts fixed interrupts.
pub struct Guest {
    // Kept open for the VM's life.
    _kvm: Kvm,
    pub vm: Arc<VmFd>,
    pub vcpu: VcpuFd,
}

pub const LAPIC_SVR: usize = 0xf0;
pub const LAPIC_IRR: usize = 0x200;
/// MSI address of LAPIC 0 (physical destination mode).
pub const MSI_ADDR: u64 = 0xfee0_0000;

pub fn guest(test: &str, irqchip: bool) -> Option<Guest> {
    if !std::path::Path::new("/dev/kvm").exists() {
        vm_accel_tests::hw::skip(test, "/dev/kvm is missing");
        return None;
    }
    let kvm = match Kvm::new() {
        Ok(k) => k,
        Err(e) => {
            vm_accel_tests::hw::skip(test, &format!("cannot open /dev/kvm: {e}"));
            return None;
        }
    };
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    if irqchip {
        vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    }
    let vcpu = vm.create_vcpu(0).expect("KVM_CREATE_VCPU");
    if irqchip {
        let mut lapic = vcpu.get_lapic().expect("KVM_GET_LAPIC");
        // Software-enable the LAPIC (SVR bit 8, spurious vector 0xff).
        for (i, b) in 0x1ffu32.to_le_bytes().iter().enumerate() {
            lapic.regs[LAPIC_SVR + i] = *b as _;
        }
        vcpu.set_lapic(&lapic).expect("KVM_SET_LAPIC");
    }
    Some(Guest {
        _kvm: kvm,
        vm: Arc::new(vm),
        vcpu,
    })
}

impl Guest {
    pub fn routes(&self) -> Arc<GsiRoutes> {
        GsiRoutes::new(self.vm.clone(), 24..=4095).expect("GsiRoutes")
    }

    pub fn irr(&self, vector: u8) -> bool {
        let lapic = self.vcpu.get_lapic().expect("KVM_GET_LAPIC");
        let reg = LAPIC_IRR + usize::from(vector / 32) * 0x10;
        let word = u32::from_le_bytes([0, 1, 2, 3].map(|i| lapic.regs[reg + i] as u8));
        word & (1 << (vector % 32)) != 0
    }

    /// Waits for `vector` in the IRR: irqfd injection is asynchronous (up to 1 s).
    pub fn delivered(&self, vector: u8) -> bool {
        let start = Instant::now();
        while start.elapsed() < Duration::from_secs(1) {
            if self.irr(vector) {
                return true;
            }
            std::thread::sleep(Duration::from_millis(5));
        }
        false
    }

    /// `vector` is still not in the IRR after giving an injection time to land.
    pub fn not_delivered(&self, vector: u8) -> bool {
        std::thread::sleep(Duration::from_millis(100));
        !self.irr(vector)
    }
}

pub fn msix_layout(table_size: u16) -> MsixLayout {
    MsixLayout {
        offset: 0x70,
        table_size,
        table_bar: 0,
        table_offset: 0,
        pba_bar: 0,
        pba_offset: 0x8000,
    }
}

/// Programs MSI-X entry `i` for LAPIC vector `vector`, with its mask bit.
pub fn program(irq: &mut Interrupts, i: u64, vector: u8, masked: bool) {
    irq.msix_table_write(i * 16, &(MSI_ADDR as u32).to_le_bytes())
        .expect("address low");
    irq.msix_table_write(i * 16 + 4, &0u32.to_le_bytes())
        .expect("address high");
    irq.msix_table_write(i * 16 + 8, &u32::from(vector).to_le_bytes())
        .expect("data");
    mask(irq, i, masked);
}

pub fn mask(irq: &mut Interrupts, i: u64, masked: bool) {
    irq.msix_table_write(i * 16 + 12, &u32::from(masked).to_le_bytes())
        .expect("vector control");
}

pub fn msix_control(irq: &mut Interrupts, enabled: bool, function_mask: bool) {
    irq.on_config_event(&ConfigEvent::Msix {
        enabled,
        function_mask,
    })
    .expect("MSI-X control");
}

pub fn pba_bit(irq: &Interrupts, vector: u64) -> bool {
    let mut q = [0u8; 8];
    irq.pba_read(vector / 64 * 8, &mut q);
    u64::from_le_bytes(q) & (1 << (vector % 64)) != 0
}

//! `vm-accel attach-test BDF`: proves a VMM could attach a vfio-pci device on this host now,
//! by doing it: a throwaway KVM VM with guest RAM, the device attached through the same
//! library API a VMM uses (KVM VFIO registration, guest RAM DMA-mapped, BARs as memory
//! slots, interrupts prepared), then detached, with the time each step took.

use std::process::ExitCode;
use std::sync::Arc;

use crate::attach::{AttachOptions, AttachVm, AttachedDevice, BarInfo, VmLayout};
use kvm_bindings::kvm_userspace_memory_region;
use kvm_ioctls::Kvm;
use serde::Serialize;
use vm_memory::{GuestAddress, GuestMemoryBackend, GuestMemoryMmap};
use vm_pci::Bdf;
use vm_vfio::access::{BackendChoice, BackendKind, IrqIndex};
use vm_vfio::bind::Paths;

use super::{CmdResult, Global};

#[derive(Debug, Clone, Copy, clap::ValueEnum)]
pub enum Backend {
    /// iommufd where the kernel has it, else the legacy container.
    Auto,
    Legacy,
    Iommufd,
}

#[derive(Debug, clap::Args)]
pub struct AttachTestArgs {
    /// A device on vfio-pci (`vm-accel bind` puts it there).
    pub bdf: Bdf,
    /// VFIO path.
    #[arg(long, value_enum, default_value_t = Backend::Auto)]
    pub backend: Backend,
    /// Guest RAM of the test VM, DMA-mapped at attach (MiB).
    #[arg(long, default_value_t = 256)]
    pub ram_mib: u64,
}

#[derive(Debug, Serialize)]
struct Report {
    schema: &'static str,
    bdf: String,
    backend: String,
    kvm_vfio_registered: bool,
    guest_ram_mib: u64,
    timings_us: Timings,
    bars: Vec<BarInfo>,
    msi_vectors: u32,
    msix_vectors: u32,
    detach_errors: Vec<String>,
    reset_on_detach: bool,
    attached: bool,
}

#[derive(Debug, Serialize)]
struct Timings {
    open_and_kvm_vfio_add: u128,
    dma_map: u128,
    memslots: u128,
    total: u128,
    detach: u128,
}

pub fn attach_test(g: &Global, a: AttachTestArgs) -> CmdResult {
    let choice = match a.backend {
        Backend::Auto => BackendChoice::Auto,
        Backend::Legacy => BackendChoice::Force(BackendKind::Legacy),
        Backend::Iommufd => BackendChoice::Force(BackendKind::Iommufd),
    };
    let kvm = Kvm::new().map_err(|e| anyhow::anyhow!("open /dev/kvm: {e}"))?;
    let vm = Arc::new(
        kvm.create_vm()
            .map_err(|e| anyhow::anyhow!("KVM_CREATE_VM: {e}"))?,
    );
    vm.create_irq_chip()
        .map_err(|e| anyhow::anyhow!("KVM_CREATE_IRQCHIP: {e}"))?;
    let ram = a
        .ram_mib
        .checked_mul(1 << 20)
        .filter(|&b| b > 0)
        .ok_or_else(|| anyhow::anyhow!("--ram-mib {} is not a usable size", a.ram_mib))?;
    let mem = GuestMemoryMmap::from_ranges(&[(GuestAddress(0), ram as usize)])
        .map_err(|e| anyhow::anyhow!("guest RAM of {} MiB: {e}", a.ram_mib))?;
    let host = mem
        .get_host_address(GuestAddress(0))
        .map_err(|e| anyhow::anyhow!("guest RAM: {e}"))?;
    // SAFETY: `mem` is declared before `avm`, which owns the VM: the VM (and its slot) is
    // closed before the memory is unmapped. No vCPU ever runs in this VM.
    unsafe {
        vm.set_user_memory_region(kvm_userspace_memory_region {
            slot: 0,
            flags: 0,
            guest_phys_addr: 0,
            memory_size: ram,
            userspace_addr: host as u64,
        })
    }
    .map_err(|e| anyhow::anyhow!("KVM_SET_USER_MEMORY_REGION (guest RAM): {e}"))?;
    let avm = AttachVm::new(vm, &mem, VmLayout::default())?;
    let paths = Paths::new(&g.sysfs_root);
    let dev = AttachedDevice::attach_vfio(&avm, &paths, a.bdf, choice, &AttachOptions::default())?;
    let vfio = dev
        .vfio()
        .ok_or_else(|| anyhow::anyhow!("attached without VFIO"))?;
    let backend = vfio.backend();
    let kvm_vfio_registered = avm.check_device_registered(vfio)?;
    let msi_vectors = vfio.irq(IrqIndex::Msi).map_or(0, |i| i.count);
    let msix_vectors = vfio.irq(IrqIndex::Msix).map_or(0, |i| i.count);
    let t = dev.timings();
    let bars = dev.bars();
    let start = std::time::Instant::now();
    let report = dev.detach();
    let detach = start.elapsed();
    let r = Report {
        schema: "vm-accel.attach-test/v1",
        bdf: a.bdf.to_string(),
        backend: backend.to_string(),
        kvm_vfio_registered,
        guest_ram_mib: a.ram_mib,
        timings_us: Timings {
            open_and_kvm_vfio_add: t.open_and_kvm_vfio_add.as_micros(),
            dma_map: t.dma_map.as_micros(),
            memslots: t.memslots.as_micros(),
            total: t.total.as_micros(),
            detach: detach.as_micros(),
        },
        bars,
        msi_vectors,
        msix_vectors,
        detach_errors: report.errors.iter().map(|e| e.to_string()).collect(),
        reset_on_detach: report.reset,
        attached: true,
    };
    let ok = r.kvm_vfio_registered && r.detach_errors.is_empty();
    if g.json {
        super::print_json(&r)?;
    } else {
        outln!(
            "{}: attached through the {} in {:.1} ms (open + KVM VFIO add {:.1} ms, DMA map of {} MiB {:.1} ms, memory slots {:.1} ms); detached in {:.1} ms",
            r.bdf,
            r.backend,
            ms(r.timings_us.total),
            ms(r.timings_us.open_and_kvm_vfio_add),
            r.guest_ram_mib,
            ms(r.timings_us.dma_map),
            ms(r.timings_us.memslots),
            ms(r.timings_us.detach),
        );
        for b in &r.bars {
            outln!(
                "  BAR{}: {:#x} bytes at guest {:#x} ({}-bit{}), {} memory slot(s)",
                b.index,
                b.size,
                b.gpa,
                if b.is_64bit { 64 } else { 32 },
                if b.prefetchable { ", prefetchable" } else { "" },
                b.slots.len()
            );
        }
        outln!(
            "  interrupts: {} MSI, {} MSI-X vectors; registered with the KVM VFIO device: {}",
            r.msi_vectors,
            r.msix_vectors,
            if r.kvm_vfio_registered { "yes" } else { "NO" }
        );
        for e in &r.detach_errors {
            outln!("  detach error: {e}");
        }
    }
    Ok(if ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn ms(us: u128) -> f64 {
    us as f64 / 1000.0
}

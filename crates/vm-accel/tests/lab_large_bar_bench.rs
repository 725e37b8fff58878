//! Benchmark (not part of `--all`): attaching the lab's 64 GiB BAR (QEMU ivshmem-plain,
//! `VM_ACCEL_LAB_LARGE_BAR_BDF`) with the BAR mmap aligned to 1 GiB (`MmapAlign::Huge`,
//! attach's default, so the kernel can use huge pfnmaps) and without (`MmapAlign::Page`), in
//! the same run, alternating, 5 rounds each: attach's own split (open + KVM VFIO add, DMA
//! map of the mini VMM's 4 MiB of RAM, BAR mmaps + memory slots), detach, and the mini VMM's
//! large-BAR program (the guest reads and writes the BAR's far end through the slot: the
//! first touches fault the BAR's pages in). Prints `BENCH` lines with medians and the
//! Page/Huge ratios; asserts only that everything succeeds.
//! `cargo xtask lab --test lab_large_bar_bench` (and with `--kernel iommufd`).

#[allow(dead_code)]
#[path = "../examples/mini_vmm/guest.rs"]
mod guest;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/scenarios.rs"]
mod scenarios;
#[allow(dead_code)]
#[path = "../examples/mini_vmm/vmm.rs"]
mod vmm;

use std::path::Path;
use std::time::{Duration, Instant};

use vm_accel::attach::{AttachOptions, AttachedDevice};
use vm_accel_tests::lab::report;
use vm_pci::Bdf;
use vm_vfio::access::{BackendChoice, MmapAlign};
use vm_vfio::bind::Paths;

const ROUNDS: usize = 5;

#[derive(Default)]
struct Times {
    open: Vec<Duration>,
    dma: Vec<Duration>,
    slots: Vec<Duration>,
    attach: Vec<Duration>,
    guest: Vec<Duration>,
    detach: Vec<Duration>,
}

fn median(v: &[Duration]) -> f64 {
    let mut ms: Vec<f64> = v.iter().map(|d| d.as_secs_f64() * 1e3).collect();
    ms.sort_by(f64::total_cmp);
    ms.get(ms.len() / 2).copied().unwrap_or(f64::NAN)
}

fn round(bdf: Bdf, align: MmapAlign, t: &mut Times) {
    let mut vm = vmm::Vm::new().expect("VM");
    let avm = vm.attach_vm().expect("AttachVm");
    let opts = AttachOptions {
        mmap_align: align,
        ..AttachOptions::default()
    };
    let start = Instant::now();
    let mut dev =
        AttachedDevice::attach_vfio(&avm, &Paths::new("/sys"), bdf, BackendChoice::Auto, &opts)
            .unwrap_or_else(|e| panic!("attach {bdf} ({align:?}): {e}"));
    t.attach.push(start.elapsed());
    let timings = dev.timings();
    t.open.push(timings.open_and_kvm_vfio_add);
    t.dma.push(timings.dma_map);
    t.slots.push(timings.memslots);
    report(&format!("attached {timings:?}; guest"));
    let g = Instant::now();
    scenarios::large_bar(&mut vm, &mut dev, 2).unwrap_or_else(|e| panic!("{align:?}: {e:#}"));
    t.guest.push(g.elapsed());
    report("detach");
    let d = Instant::now();
    let r = dev.detach();
    t.detach.push(d.elapsed());
    assert!(r.errors.is_empty(), "detach: {:?}", r.errors);
}

#[test]
fn large_bar_attach_with_and_without_1_gib_alignment() {
    let test = "large_bar_attach_with_and_without_1_gib_alignment";
    let _ = env_logger::builder().is_test(true).try_init();
    let Ok(bdf) = std::env::var("VM_ACCEL_LAB_LARGE_BAR_BDF") else {
        vm_accel_tests::hw::skip(
            test,
            "VM_ACCEL_LAB_LARGE_BAR_BDF is not set (run `cargo xtask lab`)",
        );
        return;
    };
    if !Path::new("/dev/kvm").exists() {
        vm_accel_tests::hw::skip(test, "no /dev/kvm");
        return;
    }
    let bdf: Bdf = bdf.parse().expect("BDF");
    let rounds: usize = std::env::var("VM_ACCEL_BENCH_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(ROUNDS);
    let (mut huge, mut page) = (Times::default(), Times::default());
    for i in 0..rounds {
        report(&format!("round {i}: huge"));
        round(bdf, MmapAlign::Huge, &mut huge);
        report(&format!("round {i}: page"));
        round(bdf, MmapAlign::Page, &mut page);
    }
    let kernel = std::env::var("VM_ACCEL_LAB_KERNEL").unwrap_or_default();
    for (name, t) in [("huge", &huge), ("page", &page)] {
        report(&format!(
            "BENCH large_bar kernel={kernel} align={name} rounds={rounds} median_ms: open+kvm_vfio_add={:.1} dma_map={:.1} bar_mmap+slots={:.1} attach={:.1} guest_far_end={:.1} detach={:.1}",
            median(&t.open),
            median(&t.dma),
            median(&t.slots),
            median(&t.attach),
            median(&t.guest),
            median(&t.detach)
        ));
    }
    report(&format!(
        "BENCH large_bar kernel={kernel} page_vs_huge: bar_mmap+slots={:.2}x attach={:.2}x guest_far_end={:.2}x detach={:.2}x",
        median(&page.slots) / median(&huge.slots),
        median(&page.attach) / median(&huge.attach),
        median(&page.guest) / median(&huge.guest),
        median(&page.detach) / median(&huge.detach)
    ));
}

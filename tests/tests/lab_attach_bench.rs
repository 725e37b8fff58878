//! Benchmark (not part of `--all`): where attach spends its time, inside the lab guest
//! (`cargo xtask lab --memory 6144 --test lab_attach_bench`, and with `--kernel iommufd`
//! for the iommufd path). For 1, 2 and 4 GiB of fresh (never touched) guest RAM, on 4 KiB
//! pages and on 2 MiB hugetlbfs pages, it attaches an edu through vm-accel and reports
//! open + KVM VFIO add, DMA map and memory slot times, next to a raw vfio-ioctls map of the
//! same amount of fresh memory in the same run, before and after ours (mean) (the baseline: the kernel's pinning speed with no
//! layer of ours). Prints `BENCH` lines; asserts only that everything succeeds.
//! `VM_ACCEL_BENCH_RAM_MIB=512,1024` picks other sizes.

mod lab_support;

use std::sync::Arc;
use std::time::Instant;

use kvm_ioctls::Kvm;
use lab_support::*;
use vm_accel::attach::{AttachOptions, AttachVm, AttachedDevice, VmLayout};
use vm_accel::vm_vfio::access::BackendChoice;
use vm_accel::vm_vfio::bind::Paths;
use vm_memory::mmap::MmapRegionBuilder;
use vm_memory::{GuestAddress, GuestMemoryMmap, GuestRegionMmap};

const HUGE: usize = 2 << 20;

/// Fresh guest RAM of `bytes`: anonymous 4 KiB pages, or hugetlbfs 2 MiB pages.
fn fresh(bytes: usize, huge: bool) -> Option<GuestMemoryMmap> {
    let mut flags = libc::MAP_PRIVATE | libc::MAP_ANONYMOUS | libc::MAP_NORESERVE;
    if huge {
        flags |= libc::MAP_HUGETLB;
    }
    let region = MmapRegionBuilder::new(bytes)
        .with_mmap_prot(libc::PROT_READ | libc::PROT_WRITE)
        .with_mmap_flags(flags)
        .with_hugetlbfs(huge)
        .build()
        .ok()?;
    let r = GuestRegionMmap::new(region, GuestAddress(0))?;
    GuestMemoryMmap::from_regions(vec![r]).ok()
}

fn reserve_hugepages(bytes: usize) -> bool {
    let want = bytes / HUGE + 8;
    let _ = std::fs::write("/proc/sys/vm/nr_hugepages", want.to_string());
    let got: usize = std::fs::read_to_string("/proc/sys/vm/nr_hugepages")
        .ok()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or(0);
    got >= want
}

#[test]
fn attach_time_by_guest_ram_size_and_page_size() {
    let Some((bdf, sysfs)) = lab_device("attach_time_by_guest_ram_size_and_page_size") else {
        return;
    };
    let bdf: vm_pci::Bdf = bdf.parse().expect("BDF");
    let sizes: Vec<usize> = std::env::var("VM_ACCEL_BENCH_RAM_MIB")
        .unwrap_or_else(|_| "1024,2048,4096".into())
        .split(',')
        .filter_map(|s| s.trim().parse::<usize>().ok())
        .map(|m| m << 20)
        .collect();
    let iommufd = std::path::Path::new("/dev/iommu").exists();
    let kvm = Kvm::new().expect("/dev/kvm");
    for huge in [false, true] {
        for &bytes in &sizes {
            let pages = if huge { "2M-hugetlbfs" } else { "4K" };
            if huge && !reserve_hugepages(bytes) {
                report(&format!(
                    "BENCH attach pages={pages} ram_mib={} skipped: not enough hugepages",
                    bytes >> 20
                ));
                continue;
            }
            // Baseline: raw vfio-ioctls, one map of the same amount of fresh memory, once
            // before and once after ours (the kernel's page allocator warms up over a run).
            let raw_map = || {
                let mem = fresh(bytes, huge)?;
                let edu = if iommufd {
                    Edu::open_iommufd(&sysfs)
                } else {
                    Edu::open_container(&sysfs)
                };
                let t = Instant::now();
                edu.map(&mem);
                let took = t.elapsed();
                edu.unmap(&mem);
                Some(took)
            };
            let Some(raw_before) = raw_map() else {
                report(&format!(
                    "BENCH attach pages={pages} ram_mib={} skipped: no memory",
                    bytes >> 20
                ));
                continue;
            };

            let Some(mem) = fresh(bytes, huge) else {
                continue;
            };
            let vm = Arc::new(kvm.create_vm().expect("VM"));
            vm.create_irq_chip().expect("irqchip");
            let avm = AttachVm::new(vm, &mem, VmLayout::default()).expect("AttachVm");
            let opts = AttachOptions {
                reset_on_attach: false,
                ..AttachOptions::default()
            };
            let a = AttachedDevice::attach_vfio(
                &avm,
                &Paths::new("/sys"),
                bdf,
                BackendChoice::Auto,
                &opts,
            )
            .expect("attach");
            let tm = a.timings();
            let path = a
                .vfio()
                .map(|d| d.backend().to_string())
                .unwrap_or_default();
            assert!(a.detach().errors.is_empty());
            drop(avm);
            drop(mem);
            let raw = (raw_before + raw_map().unwrap_or(raw_before)) / 2;
            let gib = bytes as f64 / f64::from(1u32 << 30);
            report(&format!(
                "BENCH attach path={path:?} pages={pages} ram_mib={} open_kvm_add_ms={:.1} dma_map_ms={:.1} memslots_ms={:.2} total_ms={:.1} dma_s_per_gib={:.3} raw_map_ms={:.1} ours_vs_raw={:.2}x",
                bytes >> 20,
                ms(tm.open_and_kvm_vfio_add),
                ms(tm.dma_map),
                ms(tm.memslots),
                ms(tm.total),
                tm.dma_map.as_secs_f64() / gib,
                ms(raw),
                tm.dma_map.as_secs_f64() / raw.as_secs_f64(),
            ));
        }
    }
}

fn ms(d: std::time::Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

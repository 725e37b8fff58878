//! Benchmark (not part of `--all`): VFIO DMA-map time of 256 MiB of vm-memory guest RAM in
//! one region vs many, inside the lab guest (`cargo xtask lab --test lab_dma_bench`).
//! Prints `BENCH` lines; asserts only that every map and unmap succeeds.

mod lab_support;

use std::time::Instant;

use lab_support::*;
use vm_memory::{Bytes, GuestAddress, GuestMemoryMmap};

const TOTAL: usize = 256 << 20;
const ROUNDS: usize = 3;

#[test]
fn dma_map_256_mib_one_region_vs_many() {
    let Some((_, sysfs)) = lab_device("dma_map_256_mib_one_region_vs_many") else {
        return;
    };
    let thp = std::fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
        .unwrap_or_else(|_| "n/a".into());
    report(&format!("BENCH transparent_hugepage: {}", thp.trim()));
    bench("container", &Edu::open_container(&sysfs));
    if std::path::Path::new("/dev/iommu").exists() {
        // A fresh open: the container above was dropped, releasing the group.
        bench("iommufd", &Edu::open_iommufd(&sysfs));
    }
}

fn bench(path: &str, edu: &Edu) {
    // The one-region map is the baseline the others are compared with, in the same run.
    let mut baseline_ms = None;
    for regions in [1usize, 64, 1024, 4096] {
        let each = TOTAL / regions;
        let ranges: Vec<_> = (0..regions)
            .map(|i| (GuestAddress((i * each) as u64), each))
            .collect();
        let (mut map_ms, mut unmap_ms) = (Vec::new(), Vec::new());
        for _ in 0..ROUNDS {
            let mem = GuestMemoryMmap::from_ranges(&ranges).expect("guest RAM");
            // Touch every page first, as a running guest would have: what is measured is
            // the VFIO map (pinning + IOMMU page tables), not first-touch page faults.
            let zeros = vec![0u8; 1 << 20];
            for off in (0..TOTAL).step_by(zeros.len()) {
                mem.write_slice(&zeros, GuestAddress(off as u64))
                    .expect("touch");
            }
            let t = Instant::now();
            edu.map(&mem);
            map_ms.push(t.elapsed().as_secs_f64() * 1e3);
            let t = Instant::now();
            edu.unmap(&mem);
            unmap_ms.push(t.elapsed().as_secs_f64() * 1e3);
        }
        let med = |v: &mut Vec<f64>| {
            v.sort_by(f64::total_cmp);
            v[v.len() / 2]
        };
        let map = med(&mut map_ms);
        let base = *baseline_ms.get_or_insert(map);
        report(&format!(
            "BENCH dma_map path={path} total=256MiB regions={regions} region_size={}KiB map_ms_median={map:.1} unmap_ms_median={:.1} map_vs_1_region={:.2}x rounds={ROUNDS}",
            each >> 10,
            med(&mut unmap_ms),
            map / base
        ));
    }
}

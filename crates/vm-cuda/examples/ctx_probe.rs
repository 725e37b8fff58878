//! Where a multi-GPU check's time goes, step by step: the driver's start, each device's
//! primary context, and large allocations and frees, one device at a time vs all devices
//! at once from one thread each. Explains `check --all` against the single-GPU check
//! (docs/benchmarks.md); it is not a comparison with C.
//!
//!   ctx_probe seq|par|one N [alloc GiB]
//!   ctx_probe again N       (device 0's context started and released N times)
//!
//! Output: `PROBE <what> <ms> ms` lines, and `STAMP` lines with wall-clock start/end in
//! seconds so that two processes run side by side can be lined up.

use std::time::{Instant, SystemTime, UNIX_EPOCH};

use vm_cuda::*;

fn wall() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_secs_f64())
        .unwrap_or(0.0)
}

fn timed<T>(what: &str, f: impl FnOnce() -> T) -> T {
    let (w0, t0) = (wall(), Instant::now());
    let r = f();
    let ms = t0.elapsed().as_secs_f64() * 1e3;
    println!("PROBE {what} {ms:.1} ms");
    println!("STAMP {what} {w0:.4} {:.4}", wall());
    r
}

/// Context, then `gib` GiB allocated, written once and freed, on one device.
fn one_device(d: Device, gib: usize) -> Result<()> {
    let o = d.ordinal();
    let ctx = timed(&format!("gpu{o}_context"), || Context::new(d))?;
    if gib > 0 {
        let words = gib << 28;
        let mut b = timed(&format!("gpu{o}_alloc_{gib}g"), || {
            DeviceBuffer::<u32>::alloc(&ctx, words)
        })?;
        timed(&format!("gpu{o}_memset_{gib}g"), || b.memset_u32(7))?;
        timed(&format!("gpu{o}_free_{gib}g"), || drop(b));
        let small = timed(&format!("gpu{o}_alloc_2g_after"), || {
            DeviceBuffer::<u32>::alloc(&ctx, 1 << 29)
        })?;
        timed(&format!("gpu{o}_free_2g"), || drop(small));
    }
    timed(&format!("gpu{o}_release"), || drop(ctx));
    Ok(())
}

fn main() -> std::result::Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let mode = args.first().map(String::as_str).unwrap_or("seq");
    let num = |i: usize| args.get(i).and_then(|v| v.parse::<usize>().ok());
    timed("cuInit", device::init)?;
    let devices = timed("device_list", Device::all)?;
    match mode {
        "seq" => {
            let gib = num(1).unwrap_or(0);
            timed("all_seq", || {
                devices.iter().try_for_each(|d| one_device(*d, gib))
            })?
        }
        "par" => {
            let gib = num(1).unwrap_or(0);
            timed("all_par", || {
                std::thread::scope(|s| {
                    let hs: Vec<_> = devices
                        .iter()
                        .map(|d| s.spawn(move || one_device(*d, gib)))
                        .collect();
                    hs.into_iter()
                        .map(|h| h.join().expect("probe thread"))
                        .collect::<Result<Vec<()>>>()
                })
            })?;
        }
        "one" => {
            let n = num(1).unwrap_or(0);
            let gib = num(2).unwrap_or(0);
            let d = *devices.get(n).ok_or("no such device")?;
            one_device(d, gib)?
        }
        "again" => {
            for i in 0..num(1).unwrap_or(3) {
                let ctx = timed(&format!("gpu0_context_{i}"), || Context::new(devices[0]))?;
                timed(&format!("gpu0_release_{i}"), || drop(ctx));
            }
        }
        other => return Err(format!("unknown mode {other}: seq|par|one N [GiB]|again N").into()),
    }
    Ok(())
}

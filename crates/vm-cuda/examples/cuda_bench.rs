//! vm-cuda's side of the benchmarks against the C driver API (bench/cuda/driver_bench.c):
//! the same work, measured the same way (host clock around the work, median of reps).
//!
//! Run through bench/cuda/run.sh, which alternates this with the C program and prints the
//! Rust/C ratios. Output: `RESULT rust <metric> <value> <unit>` lines.

use std::time::Instant;

use vm_cuda::*;

const PTX: &str = include_str!("../kernels/bench.ptx");
const LAUNCHES: u32 = 100_000;
const REPS: usize = 7;
const GIB: usize = 1 << 30;

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        0.5 * (v[n / 2 - 1] + v[n / 2])
    }
}

fn report(metric: &str, value: f64, unit: &str) {
    println!("RESULT rust {metric} {value:.6} {unit}");
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let ordinal = std::env::var("VM_ACCEL_CUDA_DEVICE")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let ctx = Context::for_ordinal(ordinal)?;
    println!("device {ordinal}: {}", ctx.device().name()?);
    let module = Module::from_ptx(&ctx, PTX, &JitOptions::default())?;
    let empty = module.kernel("empty")?;
    let four = module.kernel("four_params")?;
    let stream = Stream::new(&ctx, StreamOptions::default())?;

    // Empty-kernel launch cost on a stream.
    let none = KernelArgs::new();
    let one = LaunchConfig::new(1, 1);
    for _ in 0..1000 {
        empty.launch(&stream, &one, &none)?;
    }
    stream.synchronize()?;
    let mut t = Vec::new();
    for _ in 0..REPS {
        let t0 = Instant::now();
        for _ in 0..LAUNCHES {
            empty.launch(&stream, &one, &none)?;
        }
        stream.synchronize()?;
        t.push(t0.elapsed().as_secs_f64() / f64::from(LAUNCHES) * 1e6);
    }
    report("launch_empty", median(t), "us");

    // Launch with four parameters (checked against the PTX signature every launch).
    let d_out = DeviceBuffer::<f32>::zeroed(&ctx, 1024)?;
    let d_in = DeviceBuffer::<f32>::zeroed(&ctx, 1024)?;
    let args = KernelArgs::new()
        .buffer(&d_out)
        .buffer(&d_in)
        .u32(0)
        .f32(2.0);
    let warp = LaunchConfig::new(1, 32);
    for _ in 0..1000 {
        four.launch(&stream, &warp, &args)?;
    }
    stream.synchronize()?;
    let mut t = Vec::new();
    for _ in 0..REPS {
        let t0 = Instant::now();
        for _ in 0..LAUNCHES {
            four.launch(&stream, &warp, &args)?;
        }
        stream.synchronize()?;
        t.push(t0.elapsed().as_secs_f64() / f64::from(LAUNCHES) * 1e6);
    }
    report("launch_4param", median(t), "us");

    // D2D 1 GiB, synchronous: complete on return.
    let mut a = DeviceBuffer::<u8>::alloc(&ctx, GIB)?;
    let mut b = DeviceBuffer::<u8>::alloc(&ctx, GIB)?;
    a.memset_u32(0x5A5A_5A5A)?;
    b.copy_from_device(&a)?;
    let mut t = Vec::new();
    for _ in 0..REPS {
        let t0 = Instant::now();
        b.copy_from_device(&a)?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
    }
    report("d2d_sync_1g", median(t), "ms");

    // D2D 1 GiB async on the stream: 8 back-to-back copies, then one wait.
    let mut t = Vec::new();
    for _ in 0..REPS {
        let t0 = Instant::now();
        for _ in 0..8 {
            b.copy_from_device_async(&a, &stream)?;
        }
        stream.synchronize()?;
        t.push(t0.elapsed().as_secs_f64() / 8.0 * 1e3);
    }
    report("d2d_async_1g", median(t), "ms");

    // H2D / D2H 1 GiB through pinned host memory.
    let mut h = PinnedBuffer::<u8>::zeroed(&ctx, GIB)?;
    h.as_mut_slice()?.fill(0x3C);
    {
        let hs = h.as_slice()?;
        a.copy_from_host(hs)?;
        let mut t = Vec::new();
        for _ in 0..REPS {
            let t0 = Instant::now();
            a.copy_from_host(hs)?;
            t.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        report("h2d_pinned_1g", median(t), "ms");
    }
    {
        let hm = h.as_mut_slice()?;
        a.copy_to_host(hm)?;
        let mut t = Vec::new();
        for _ in 0..REPS {
            let t0 = Instant::now();
            a.copy_to_host(hm)?;
            t.push(t0.elapsed().as_secs_f64() * 1e3);
        }
        report("d2h_pinned_1g", median(t), "ms");
    }

    // PTX load (warm JIT cache), signature parsing included.
    for _ in 0..3 {
        drop(Module::from_ptx(&ctx, PTX, &JitOptions::default())?);
    }
    let mut t = Vec::new();
    for _ in 0..31 {
        let t0 = Instant::now();
        let m = Module::from_ptx(&ctx, PTX, &JitOptions::default())?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(m);
    }
    report("ptx_load", median(t), "ms");
    Ok(())
}

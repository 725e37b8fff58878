//! vm-cuda's side of the benchmarks against the C driver API (bench/cuda/driver_bench.c):
//! the same work, measured the same way (host clock around the work, median of reps).
//!
//! Run through bench/cuda/run.sh, which alternates this with the C program and prints the
//! Rust/C ratios. Output: `RESULT rust <metric> <value> <unit>` lines.

use std::ffi::c_void;
use std::ptr::null_mut;
use std::time::Instant;

use cust::sys as cu;
use vm_cuda::*;

const PTX: &str = include_str!("../kernels/bench.ptx");
const LAUNCHES: u32 = 100_000;
/// Launches per timed batch: fits the driver's launch queue, so enqueueing never waits.
const BATCH: u32 = 1000;
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

/// Per-launch host time of `f` over LAUNCHES launches, in batches of BATCH (the queue is
/// drained between batches, untimed).
fn batched(stream: &Stream, mut f: impl FnMut() -> vm_cuda::Result<()>) -> vm_cuda::Result<f64> {
    let mut busy = 0.0;
    for _ in 0..LAUNCHES / BATCH {
        let t0 = Instant::now();
        for _ in 0..BATCH {
            f()?;
        }
        busy += t0.elapsed().as_secs_f64();
        stream.synchronize()?;
    }
    Ok(busy / f64::from(LAUNCHES) * 1e6)
}

fn check_raw(r: cu::CUresult) -> vm_cuda::Result<()> {
    if r == cu::CUresult::CUDA_SUCCESS {
        Ok(())
    } else {
        Err(vm_cuda::Error::Driver {
            operation: "raw driver call",
            code: vm_cuda::DriverCode(r as u32),
        })
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
    context_starts()?;
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
    // Host-side cost only: batches that fit the launch queue, only the enqueueing timed.
    // Each rep also times the same batches through the raw driver call from this process
    // (no checks): checked/raw is vm-cuda's own overhead, free of process-to-process noise.
    let mut t = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..REPS {
        t.push(batched(&stream, || empty.launch(&stream, &one, &none))?);
        raw.push(batched(&stream, || {
            // SAFETY: live function and stream handles of the current context; `empty`
            // takes no parameters.
            check_raw(unsafe {
                cu::cuLaunchKernel(
                    empty.as_raw(),
                    1,
                    1,
                    1,
                    1,
                    1,
                    1,
                    0,
                    stream.as_raw(),
                    null_mut(),
                    null_mut(),
                )
            })
        })?);
    }
    report("launch_empty_raw", median(raw), "us");
    report("launch_empty", median(t), "us");
    // Throughput: 100k launches back to back, then the wait.
    let mut t = Vec::new();
    for _ in 0..REPS {
        let t0 = Instant::now();
        for _ in 0..LAUNCHES {
            empty.launch(&stream, &one, &none)?;
        }
        stream.synchronize()?;
        t.push(t0.elapsed().as_secs_f64() / f64::from(LAUNCHES) * 1e6);
    }
    report("launch_empty_sync", median(t), "us");

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
    let (mut p_out, mut p_in, mut p_n, mut p_a) =
        (d_out.device_ptr(), d_in.device_ptr(), 0u32, 2.0f32);
    let mut raw_params: [*mut c_void; 4] = [
        (&mut p_out as *mut u64).cast(),
        (&mut p_in as *mut u64).cast(),
        (&mut p_n as *mut u32).cast(),
        (&mut p_a as *mut f32).cast(),
    ];
    let mut t = Vec::new();
    let mut raw = Vec::new();
    for _ in 0..REPS {
        t.push(batched(&stream, || four.launch(&stream, &warp, &args))?);
        raw.push(batched(&stream, || {
            // SAFETY: live handles; four pointers to values of the kernel's parameter types.
            check_raw(unsafe {
                cu::cuLaunchKernel(
                    four.as_raw(),
                    1,
                    1,
                    1,
                    32,
                    1,
                    1,
                    0,
                    stream.as_raw(),
                    raw_params.as_mut_ptr(),
                    null_mut(),
                )
            })
        })?);
    }
    report("launch_4param_raw", median(raw), "us");
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
    let mut log = vec![0u8; 16 * 1024];
    let mut t = Vec::new();
    let mut raw = Vec::new();
    let image = std::ffi::CString::new(PTX)?;
    for _ in 0..31 {
        let t0 = Instant::now();
        let m = Module::from_ptx(&ctx, PTX, &JitOptions::default())?;
        t.push(t0.elapsed().as_secs_f64() * 1e3);
        drop(m);
        // The same load through the raw driver call, with the same options.
        let mut opts = [
            cu::CUjit_option::CU_JIT_ERROR_LOG_BUFFER,
            cu::CUjit_option::CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES,
        ];
        let mut vals: [*mut c_void; 2] = [
            log.as_mut_ptr().cast(),
            std::ptr::without_provenance_mut(log.len()),
        ];
        let mut module: cu::CUmodule = null_mut();
        let t0 = Instant::now();
        // SAFETY: NUL-terminated PTX, two options with their values, a live log buffer.
        check_raw(unsafe {
            cu::cuModuleLoadDataEx(
                &mut module,
                image.as_ptr().cast(),
                2,
                opts.as_mut_ptr(),
                vals.as_mut_ptr(),
            )
        })?;
        raw.push(t0.elapsed().as_secs_f64() * 1e3);
        // SAFETY: loaded just above.
        check_raw(unsafe { cu::cuModuleUnload(module) })?;
    }
    report("ptx_load_raw", median(raw), "ms");
    let n = 10_000;
    let t0 = Instant::now();
    for _ in 0..n {
        std::hint::black_box(vm_cuda::ptx::parse_entries(std::hint::black_box(PTX))?);
    }
    report(
        "ptx_parse",
        t0.elapsed().as_secs_f64() / f64::from(n) * 1e3,
        "ms",
    );
    report("ptx_load", median(t), "ms");
    drop((a, b, h));
    peer_copies()
}

/// What `check --all` pays before its checks: starting the primary context of one device,
/// then of every device at once from one thread each (as `check --all` does). No C
/// counterpart: this explains the parallel check's time, it is not a vm-cuda overhead.
fn context_starts() -> Result<(), Box<dyn std::error::Error>> {
    let devices = Device::all()?;
    let t0 = Instant::now();
    drop(Context::new(devices[0])?);
    report("ctx_start_one", t0.elapsed().as_secs_f64() * 1e3, "ms");
    let t0 = Instant::now();
    let started: Vec<vm_cuda::Result<Context>> = std::thread::scope(|s| {
        let hs: Vec<_> = devices
            .iter()
            .map(|d| s.spawn(move || Context::new(*d)))
            .collect();
        hs.into_iter()
            .map(|h| h.join().expect("context thread"))
            .collect()
    });
    report(
        &format!("ctx_start_all_{}_parallel", devices.len()),
        t0.elapsed().as_secs_f64() * 1e3,
        "ms",
    );
    for c in started {
        drop(c?);
    }
    Ok(())
}

/// Peer copies of 1 GiB between every ordered pair with peer access, as driver_bench.c.
fn peer_copies() -> Result<(), Box<dyn std::error::Error>> {
    let devices = Device::all()?;
    for s in &devices {
        for d in &devices {
            if s == d {
                continue;
            }
            let (si, di) = (s.ordinal(), d.ordinal());
            if !d.can_access_peer(s)? {
                println!("peer {si} -> {di}: no peer access, skipped");
                continue;
            }
            let sctx = Context::new(*s)?;
            let dctx = Context::new(*d)?;
            sctx.enable_peer_access(&dctx)?;
            dctx.enable_peer_access(&sctx)?;
            let mut src = DeviceBuffer::<u8>::alloc(&sctx, GIB)?;
            src.memset_u32(0x1122_3344)?;
            let mut dst = DeviceBuffer::<u8>::alloc(&dctx, GIB)?;
            let stream = Stream::new(&dctx, StreamOptions::default())?;
            dst.copy_from_peer(&src)?;
            let mut t = Vec::new();
            for _ in 0..REPS {
                let t0 = Instant::now();
                dst.copy_from_peer(&src)?;
                t.push(t0.elapsed().as_secs_f64() * 1e3);
            }
            report(&format!("peer_sync_{si}to{di}_1g"), median(t), "ms");
            let mut t = Vec::new();
            for _ in 0..REPS {
                let t0 = Instant::now();
                for _ in 0..8 {
                    dst.copy_from_peer_async(&src, &stream)?;
                }
                stream.synchronize()?;
                t.push(t0.elapsed().as_secs_f64() / 8.0 * 1e3);
            }
            report(&format!("peer_async_{si}to{di}_1g"), median(t), "ms");
        }
    }
    Ok(())
}

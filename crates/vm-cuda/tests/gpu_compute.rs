//! vm-cuda on a real GPU: devices, PTX, checked launches, streams, events, health check.
//! Skips (visibly, with the driver's reason) where there is no GPU; see common::gpu.

mod common;

use vm_cuda::health::{self, HealthOptions};
use vm_cuda::*;

#[repr(C)]
#[derive(Debug, Clone, Copy)]
struct Affine {
    scale: f64,
    offset: f32,
    n: u32,
    tag: u64,
}
// SAFETY: repr(C), every field Pod, no padding (8 + 4 + 4 + 8 bytes).
unsafe impl Pod for Affine {}

fn test_module(ctx: &Context) -> Module {
    Module::from_ptx(ctx, common::TEST_PTX, &JitOptions::default()).expect("test PTX loads")
}

fn stream(ctx: &Context) -> Stream {
    Stream::new(ctx, StreamOptions::default()).expect("stream")
}

#[test]
fn device_identity_and_limits() {
    let Some(ctx) = common::gpu("device_identity_and_limits") else {
        return;
    };
    assert!(Device::count().expect("count") >= 1);
    let info = ctx.device().info().expect("device info");
    eprintln!("{info:#?}");
    assert!(!info.name.is_empty());
    assert!(info.total_memory_bytes > 1 << 30);
    assert!(
        info.compute_capability >= (7, 0),
        "{:?}",
        info.compute_capability
    );
    assert!(info.sm_count > 0 && info.memory_clock_khz > 0 && info.memory_bus_width_bits > 0);
    let peak = info
        .peak_memory_bandwidth_gbs()
        .expect("peak bandwidth known");
    assert!(peak > 100.0, "{peak} GB/s");
    let uuid = info.uuid.expect("UUID reported");
    assert!(uuid.starts_with("GPU-") && uuid.len() == 40, "{uuid}");
    assert_eq!(info.pci_bdf.len(), 12, "{}", info.pci_bdf);
    assert_eq!(info.limits.warp_size, 32);
    assert!(info.limits.max_shared_per_block_optin >= info.limits.max_shared_per_block);
    let (major, _) = driver_version().expect("driver version");
    assert!(major >= 11);
    let mem = ctx.memory_info().expect("memory info");
    assert!(mem.free_bytes <= mem.total_bytes && mem.total_bytes > 0);
    assert!(matches!(
        Device::get(4096),
        Err(Error::InvalidDevice { ordinal: 4096, .. })
    ));
}

#[test]
fn module_signatures_and_attributes() {
    let Some(ctx) = common::gpu("module_signatures_and_attributes") else {
        return;
    };
    let m = test_module(&ctx);
    let names: Vec<_> = m
        .signatures()
        .expect("parsed")
        .iter()
        .map(|s| s.name.clone())
        .collect();
    assert_eq!(names, ["all_widths", "affine", "smem_sum"]);
    let k = m.kernel("all_widths").expect("kernel");
    let a = k.attributes();
    assert!(a.max_threads_per_block >= 32 && a.num_regs > 0, "{a:?}");
    assert_eq!(a.static_shared_bytes, 0);
    assert!(matches!(
        m.kernel("nope"),
        Err(Error::KernelNotFound { .. })
    ));
    let path = std::env::temp_dir().join(format!("vm-cuda-test-{}.ptx", std::process::id()));
    std::fs::write(&path, common::TEST_PTX).expect("write PTX");
    let from_file = Module::from_ptx_file(
        &ctx,
        &path,
        &JitOptions {
            info_log: true,
            ..Default::default()
        },
    );
    let _ = std::fs::remove_file(&path);
    from_file.expect("PTX file loads");
    assert!(matches!(
        Module::from_ptx_file(
            &ctx,
            std::path::Path::new("/nonexistent.ptx"),
            &JitOptions::default()
        ),
        Err(Error::Io { .. })
    ));
}

#[test]
fn jit_failure_carries_the_compiler_log() {
    let Some(ctx) = common::gpu("jit_failure_carries_the_compiler_log") else {
        return;
    };
    let bad = ".version 8.0\n.target sm_80\n.address_size 64\n.visible .entry broken()\n{\n\tnot_an_instruction.u32 %r1, 1;\n\tret;\n}\n";
    match Module::from_ptx(&ctx, bad, &JitOptions::default()) {
        Err(Error::Jit { code, log }) => {
            eprintln!("JIT error {code}: {log}");
            assert!(!log.is_empty(), "empty JIT log");
            assert!(
                log.contains("not_an_instruction") || log.to_lowercase().contains("error"),
                "{log}"
            );
        }
        other => panic!("expected a JIT error, got {other:?}"),
    }
}

#[test]
fn scalars_of_every_width_arrive_intact() {
    let Some(ctx) = common::gpu("scalars_of_every_width_arrive_intact") else {
        return;
    };
    let m = test_module(&ctx);
    let k = m.kernel("all_widths").expect("kernel");
    let out = DeviceBuffer::<u64>::zeroed(&ctx, 8).expect("alloc");
    let s = stream(&ctx);
    let args = KernelArgs::new()
        .u8(0xAB)
        .i16(-1234)
        .i32(-123_456_789)
        .i64(-0x1234_5678_9ABC)
        .f32(3.5)
        .f64(-2.25e100)
        .u16(0xBEEF)
        .buffer(&out);
    k.launch(&s, &LaunchConfig::new(1, 32), &args)
        .expect("launch");
    s.synchronize().expect("sync");
    let v = out.to_vec().expect("read back");
    assert_eq!(v[0], 0xAB);
    assert_eq!(v[1] as i64, -1234);
    assert_eq!(v[2] as i64, -123_456_789);
    assert_eq!(v[3] as i64, -0x1234_5678_9ABC);
    assert_eq!(v[4] as u32, 3.5f32.to_bits());
    assert_eq!(v[5], (-2.25e100f64).to_bits());
    assert_eq!(v[6], 0xBEEF);
    assert_eq!(v[7], 0xC0FFEE);
}

#[test]
fn structs_pass_by_value() {
    let Some(ctx) = common::gpu("structs_pass_by_value") else {
        return;
    };
    let m = test_module(&ctx);
    let k = m.kernel("affine").expect("kernel");
    let n = 1000u32;
    let x: Vec<f32> = (0..n).map(|i| i as f32).collect();
    let dx = DeviceBuffer::from_slice(&ctx, &x).expect("x");
    // n results, then the 8-byte tag as two floats' worth of space.
    let dy = DeviceBuffer::<f32>::zeroed(&ctx, n as usize + 2).expect("y");
    let p = Affine {
        scale: 2.0,
        offset: 0.5,
        n,
        tag: 0x0123_4567_89AB_CDEF,
    };
    let s = stream(&ctx);
    k.launch(
        &s,
        &LaunchConfig::for_elements(u64::from(n), 128).expect("cfg"),
        &KernelArgs::new().pod(&p).buffer(&dx).buffer(&dy),
    )
    .expect("launch");
    s.synchronize().expect("sync");
    let y = dy.to_vec().expect("read");
    for i in 0..n as usize {
        assert_eq!(y[i], x[i] * 2.0 + 0.5, "element {i}");
    }
    let tag = u64::from(y[n as usize].to_bits()) | (u64::from(y[n as usize + 1].to_bits()) << 32);
    assert_eq!(tag, p.tag);
}

#[test]
fn mismatched_arguments_never_reach_the_gpu() {
    let Some(ctx) = common::gpu("mismatched_arguments_never_reach_the_gpu") else {
        return;
    };
    let m = test_module(&ctx);
    let s = stream(&ctx);
    let k = m.kernel("affine").expect("kernel");
    let buf = DeviceBuffer::<f32>::zeroed(&ctx, 4).expect("alloc");
    let cfg = LaunchConfig::new(1, 1);
    // Too few arguments.
    let e = k
        .launch(&s, &cfg, &KernelArgs::new().buffer(&buf))
        .expect_err("count");
    assert!(
        matches!(&e, Error::KernelArgs { kernel, param: None, .. } if kernel == "affine"),
        "{e}"
    );
    // A struct of the right size but the wrong alignment.
    let e = k
        .launch(
            &s,
            &cfg,
            &KernelArgs::new().pod(&[0u32; 6]).buffer(&buf).buffer(&buf),
        )
        .expect_err("alignment");
    assert!(
        e.to_string().contains("parameter 0 (`affine_param_0`)"),
        "{e}"
    );
    // A float where a pointer goes.
    let e = k
        .launch(
            &s,
            &cfg,
            &KernelArgs::new()
                .pod(&Affine {
                    scale: 1.0,
                    offset: 0.0,
                    n: 0,
                    tag: 0,
                })
                .f32(1.0)
                .buffer(&buf),
        )
        .expect_err("size");
    assert!(
        e.to_string().contains("parameter 1 (`affine_param_1`)"),
        "{e}"
    );
    // The stream is still healthy: nothing was launched.
    s.synchronize().expect("stream unaffected");
}

#[test]
fn launch_limits_and_large_dynamic_shared_memory() {
    let Some(ctx) = common::gpu("launch_limits_and_large_dynamic_shared_memory") else {
        return;
    };
    let m = test_module(&ctx);
    let mut k = m.kernel("smem_sum").expect("kernel");
    let s = stream(&ctx);
    let out = DeviceBuffer::<u64>::zeroed(&ctx, 1).expect("alloc");
    let limits = *ctx.limits();
    let too_many = LaunchConfig::new(1, limits.max_threads_per_block + 1);
    assert!(matches!(
        k.launch(&s, &too_many, &KernelArgs::new().u32(1).buffer(&out)),
        Err(Error::LaunchConfig { .. })
    ));
    assert!(matches!(
        k.launch(
            &s,
            &LaunchConfig::new(0, 32),
            &KernelArgs::new().u32(1).buffer(&out)
        ),
        Err(Error::LaunchConfig { .. })
    ));
    let big = 96 * 1024u32;
    assert!(limits.max_shared_per_block_optin >= big, "{limits:?}");
    let words = big / 4;
    let cfg = LaunchConfig::new(2, 256).with_shared_mem(big);
    let e = k
        .launch(&s, &cfg, &KernelArgs::new().u32(words).buffer(&out))
        .expect_err("needs opt-in");
    assert!(e.to_string().contains("opting in"), "{e}");
    assert!(k
        .set_max_dynamic_shared_bytes(limits.max_shared_per_block_optin + 1)
        .is_err());
    k.set_max_dynamic_shared_bytes(big).expect("opt in");
    assert_eq!(k.attributes().max_dynamic_shared_bytes, big);
    k.launch(&s, &cfg, &KernelArgs::new().u32(words).buffer(&out))
        .expect("launch with 96 KiB");
    s.synchronize().expect("sync");
    let per_block = u64::from(words) * u64::from(words - 1) / 2;
    assert_eq!(out.to_vec().expect("read")[0], 2 * per_block);
}

#[test]
fn stream_priorities_and_events() {
    let Some(ctx) = common::gpu("stream_priorities_and_events") else {
        return;
    };
    let (least, greatest) = ctx.stream_priority_range().expect("range");
    assert!(greatest <= least);
    let hi = Stream::new(
        &ctx,
        StreamOptions {
            non_blocking: true,
            priority: greatest,
        },
    )
    .expect("high priority");
    assert_eq!(hi.priority().expect("priority"), greatest);
    assert!(matches!(
        Stream::new(
            &ctx,
            StreamOptions {
                non_blocking: true,
                priority: greatest - 1
            }
        ),
        Err(Error::InvalidArgument { .. })
    ));
    let lo = stream(&ctx);

    // Work on `hi` waits for an event recorded on `lo`: the copy must see the memset.
    let n = 64 << 20;
    let mut a = DeviceBuffer::<u32>::alloc(&ctx, n).expect("a");
    let mut b = DeviceBuffer::<u32>::zeroed(&ctx, n).expect("b");
    let start = Event::new(&ctx, EventOptions::default()).expect("event");
    let done = Event::new(&ctx, EventOptions::default()).expect("event");
    start.record(&lo).expect("record");
    a.memset_u32_async(0x1234_5678, &lo).expect("memset");
    done.record(&lo).expect("record");
    hi.wait_event(&done).expect("wait");
    b.copy_from_device_async(&a, &hi).expect("copy");
    hi.synchronize().expect("sync");
    assert!(done.is_complete().expect("query"));
    assert!(hi.is_idle().expect("idle"));
    let ms = Event::elapsed_ms(&start, &done).expect("elapsed");
    assert!(ms > 0.0, "{ms} ms");
    let mut tail = vec![0u32; 1024];
    b.copy_range_to_host(n - 1024, &mut tail).expect("read");
    assert!(tail.iter().all(|&w| w == 0x1234_5678));
    let untimed = Event::new(
        &ctx,
        EventOptions {
            timing: false,
            blocking_sync: true,
        },
    )
    .expect("event");
    assert!(Event::elapsed_ms(&start, &untimed).is_err());
}

#[test]
fn objects_move_between_threads() {
    let Some(ctx) = common::gpu("objects_move_between_threads") else {
        return;
    };
    let m = test_module(&ctx);
    let k = m.kernel("all_widths").expect("kernel");
    let out = DeviceBuffer::<u64>::zeroed(&ctx, 8).expect("alloc");
    let s = stream(&ctx);
    // A fresh thread has no current context: every operation must make its own current.
    std::thread::spawn(move || {
        let args = KernelArgs::new()
            .u8(1)
            .i16(2)
            .i32(3)
            .i64(4)
            .f32(5.0)
            .f64(6.0)
            .u16(7)
            .buffer(&out);
        k.launch(&s, &LaunchConfig::new(1, 1), &args)
            .expect("launch on another thread");
        s.synchronize().expect("sync");
        assert_eq!(out.to_vec().expect("read")[7], 0xC0FFEE);
    })
    .join()
    .expect("thread");
}

#[test]
fn health_check_passes() {
    let Some(_ctx) = common::gpu("health_check_passes") else {
        return;
    };
    let opts = HealthOptions {
        memory_fraction: 0.1,
        copy_bytes: 256 << 20,
        ..Default::default()
    };
    let r = health::run(common::ordinal(), &opts).expect("health check runs");
    for c in &r.checks {
        eprintln!(
            "{:<16} {} {:>8.1} ms  {}",
            c.name,
            if c.passed { "PASS" } else { "FAIL" },
            c.elapsed_ms,
            c.detail
        );
    }
    assert!(r.passed, "{:#?}", r.checks);
    assert_eq!(r.checks.len(), 4);
    assert!(r.tested_memory_bytes > 0);
    let bw = r.bandwidth.expect("bandwidth measured");
    assert!(
        bw.traffic_gbs > 0.0 && bw.fraction_of_peak.expect("peak known") <= 1.2,
        "{bw:?}"
    );
}

//! vm-cuda memory on a real GPU: sync/async copies, sub-ranges, memset, pinned buffers.

mod common;

use vm_cuda::*;

fn stream(ctx: &Context) -> Stream {
    Stream::new(ctx, StreamOptions::default()).expect("stream")
}

#[test]
fn host_round_trip_and_size_checks() {
    let Some(ctx) = common::gpu("host_round_trip_and_size_checks") else {
        return;
    };
    let data: Vec<u32> = (0..10_000).map(|i| i * 7 + 3).collect();
    let mut d = DeviceBuffer::from_slice(&ctx, &data).expect("alloc");
    assert_eq!(d.to_vec().expect("read"), data);
    // Sizes must match: no truncation either way.
    assert!(matches!(
        d.copy_from_host(&data[..9_999]),
        Err(Error::SizeMismatch {
            src: 9_999,
            dst: 10_000,
            ..
        })
    ));
    let mut small = vec![0u32; 10];
    assert!(matches!(
        d.copy_to_host(&mut small),
        Err(Error::SizeMismatch { .. })
    ));
    // Explicit sub-ranges, bounds-checked.
    d.copy_range_from_host(100, &[1, 2, 3])
        .expect("range write");
    let mut three = [0u32; 3];
    d.copy_range_to_host(100, &mut three).expect("range read");
    assert_eq!(three, [1, 2, 3]);
    assert!(matches!(
        d.copy_range_to_host(9_998, &mut three),
        Err(Error::OutOfBounds {
            offset: 9_998,
            len: 3,
            size: 10_000,
            ..
        })
    ));
    assert!(matches!(
        d.copy_range_from_host(usize::MAX, &[1]),
        Err(Error::OutOfBounds { .. })
    ));
    // Empty buffers are fine and do nothing.
    let mut e = DeviceBuffer::<u8>::alloc(&ctx, 0).expect("empty");
    e.copy_from_host(&[]).expect("empty copy");
    assert!(e.to_vec().expect("empty read").is_empty());
}

#[test]
fn device_copies_whole_and_ranges() {
    let Some(ctx) = common::gpu("device_copies_whole_and_ranges") else {
        return;
    };
    let a: Vec<u64> = (0..4096).collect();
    let src = DeviceBuffer::from_slice(&ctx, &a).expect("src");
    let mut dst = DeviceBuffer::<u64>::zeroed(&ctx, 4096).expect("dst");
    dst.copy_from_device(&src).expect("d2d");
    assert_eq!(dst.to_vec().expect("read"), a);
    let mut short = DeviceBuffer::<u64>::zeroed(&ctx, 4095).expect("short");
    assert!(matches!(
        short.copy_from_device(&src),
        Err(Error::SizeMismatch {
            src: 4096,
            dst: 4095,
            ..
        })
    ));
    short
        .copy_range_from_device(10, &src, 1000, 20)
        .expect("range d2d");
    let mut got = [0u64; 20];
    short.copy_range_to_host(10, &mut got).expect("read");
    assert_eq!(got.to_vec(), (1000..1020).collect::<Vec<u64>>());
    assert!(matches!(
        short.copy_range_from_device(0, &src, 4090, 7),
        Err(Error::OutOfBounds { .. })
    ));
    assert!(matches!(
        short.copy_range_from_device(4090, &src, 0, 6),
        Err(Error::OutOfBounds { .. })
    ));
    let s = stream(&ctx);
    let mut d2 = DeviceBuffer::<u64>::zeroed(&ctx, 4096).expect("d2");
    d2.copy_range_from_device_async(0, &src, 2048, 2048, &s)
        .expect("async range");
    s.synchronize().expect("sync");
    assert_eq!(d2.to_vec().expect("read")[..2048], a[2048..]);
}

/// `copy_from_device` must be complete when it returns, unlike a bare cuMemcpyDtoD: a
/// non-blocking stream (which does not wait for the legacy stream) reads the destination
/// right after it and must see every byte.
#[test]
fn synchronous_device_copy_is_complete_on_return() {
    let Some(ctx) = common::gpu("synchronous_device_copy_is_complete_on_return") else {
        return;
    };
    let n = 128 << 20; // 512 MiB of u32
    let mut src = DeviceBuffer::<u32>::alloc(&ctx, n).expect("src");
    src.memset_u32(0xA5A5_0001).expect("memset");
    let mut dst = DeviceBuffer::<u32>::zeroed(&ctx, n).expect("dst");
    let s = stream(&ctx);
    let mut host = PinnedBuffer::<u32>::zeroed(&ctx, n).expect("pinned");
    // Physical lower bound, not a speed check: moving the bytes (read + write) cannot take
    // less than traffic / peak bandwidth. A copy that returns sooner did not wait for them.
    let peak = ctx
        .device()
        .info()
        .expect("info")
        .peak_memory_bandwidth_bytes_per_s
        .expect("peak");
    let floor = std::time::Duration::from_secs_f64(2.0 * dst.byte_len() as f64 / peak);
    for round in 0..3u32 {
        src.memset_u32(0xA5A5_0000 + round).expect("memset");
        let t = std::time::Instant::now();
        dst.copy_from_device(&src).expect("sync d2d");
        let took = t.elapsed();
        assert!(
            took >= floor,
            "round {round}: returned after {took:?}, the bytes need at least {floor:?}"
        );
        dst.copy_to_pinned_async(&mut host, &s)
            .expect("d2h on a non-blocking stream");
        let v = host.as_slice().expect("waits for the transfer");
        let bad = v.iter().position(|&w| w != 0xA5A5_0000 + round);
        assert_eq!(
            bad, None,
            "round {round}: stale word after a synchronous copy"
        );
    }
}

#[test]
fn async_pinned_transfers_and_memset() {
    let Some(ctx) = common::gpu("async_pinned_transfers_and_memset") else {
        return;
    };
    let n = 1 << 20;
    let s = stream(&ctx);
    let data: Vec<f32> = (0..n).map(|i| i as f32 * 0.5).collect();
    let mut up = PinnedBuffer::from_slice(&ctx, &data).expect("pinned");
    let mut d = DeviceBuffer::<f32>::alloc(&ctx, n).expect("dev");
    d.copy_from_pinned_async(&mut up, &s).expect("h2d async");
    // Host access waits for the transfer; writing now must not change what was sent.
    up.as_mut_slice().expect("waits").fill(-1.0);
    let mut down = PinnedBuffer::<f32>::zeroed(&ctx, n).expect("pinned");
    d.copy_to_pinned_async(&mut down, &s).expect("d2h async");
    assert_eq!(down.as_slice().expect("waits"), &data[..]);
    let mut wrong = PinnedBuffer::<f32>::zeroed(&ctx, n - 1).expect("pinned");
    assert!(matches!(
        d.copy_to_pinned_async(&mut wrong, &s),
        Err(Error::SizeMismatch { .. })
    ));

    let mut bytes = DeviceBuffer::<u8>::alloc(&ctx, 4099).expect("bytes");
    bytes.memset_bytes(0x7E).expect("memset");
    assert!(bytes.to_vec().expect("read").iter().all(|&b| b == 0x7E));
    assert!(
        matches!(bytes.memset_u32(1), Err(Error::InvalidArgument { .. })),
        "4099 bytes are not whole words"
    );
    let mut words = DeviceBuffer::<u32>::alloc(&ctx, 4099).expect("words");
    words
        .memset_u32_async(0xDEAD_BEEF, &s)
        .expect("memset async");
    s.synchronize().expect("sync");
    assert!(words
        .to_vec()
        .expect("read")
        .iter()
        .all(|&w| w == 0xDEAD_BEEF));
    words.memset_bytes_async(0, &s).expect("memset async");
    s.synchronize().expect("sync");
    assert!(words.to_vec().expect("read").iter().all(|&w| w == 0));
}

#[test]
fn one_gib_copies() {
    let Some(ctx) = common::gpu("one_gib_copies") else {
        return;
    };
    let n = 1 << 28; // 1 GiB of u32
    let mut a = DeviceBuffer::<u32>::alloc(&ctx, n).expect("a");
    let mut b = DeviceBuffer::<u32>::zeroed(&ctx, n).expect("b");
    a.memset_u32(0x0BAD_F00D).expect("memset");
    b.copy_from_device(&a).expect("1 GiB d2d");
    let mut host = PinnedBuffer::<u32>::zeroed(&ctx, n).expect("1 GiB pinned");
    b.copy_to_host(host.as_mut_slice().expect("host"))
        .expect("1 GiB d2h");
    assert!(host
        .as_slice()
        .expect("host")
        .iter()
        .all(|&w| w == 0x0BAD_F00D));
    host.as_mut_slice().expect("host").fill(7);
    a.copy_from_host(host.as_slice().expect("host"))
        .expect("1 GiB h2d");
    let mut tail = [0u32; 16];
    a.copy_range_to_host(n - 16, &mut tail).expect("read");
    assert_eq!(tail, [7; 16]);
}

/* C baseline for vm-cuda's benchmarks: the CUDA driver API doing the same work as
 * crates/vm-cuda/examples/cuda_bench.rs, measured the same way (host clock, median of reps).
 *
 * Build (GPU machine): gcc -O2 -o driver_bench driver_bench.c -I/usr/local/cuda/include \
 *                      /usr/local/nvidia/lib64/libcuda.so.1
 * Run: driver_bench <bench.ptx>   (device: $VM_ACCEL_CUDA_DEVICE, default 0)
 * Output: one `RESULT <side> <metric> <value> <unit>` line per measurement. */
#include <string.h>

#include "ck.h"

static int cmp_double(const void* a, const void* b) {
    double x = *(const double*)a, y = *(const double*)b;
    return (x > y) - (x < y);
}

static double median(double* v, int n) {
    qsort(v, n, sizeof *v, cmp_double);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

static void report(const char* metric, double value, const char* unit) {
    printf("RESULT c %s %.6f %s\n", metric, value, unit);
    fflush(stdout);
}

#define LAUNCHES 100000
#define BATCH 1000
#define REPS 7
#define GIB (1ull << 30)

static char jit_log[16384];

int main(int argc, char** argv) {
    if (argc < 2) {
        fprintf(stderr, "usage: %s bench.ptx\n", argv[0]);
        return 2;
    }
    FILE* f = fopen(argv[1], "rb");
    if (!f) { perror(argv[1]); return 1; }
    fseek(f, 0, SEEK_END);
    long len = ftell(f);
    fseek(f, 0, SEEK_SET);
    char* ptx = malloc(len + 1);
    if (!ptx || fread(ptx, 1, len, f) != (size_t)len) { fprintf(stderr, "reading %s failed\n", argv[1]); return 1; }
    ptx[len] = 0;
    fclose(f);

    const char* ord_env = getenv("VM_ACCEL_CUDA_DEVICE");
    int ordinal = ord_env ? atoi(ord_env) : 0;

    CK(cuInit(0));
    CUdevice dev;
    CK(cuDeviceGet(&dev, ordinal));
    char name[256];
    CK(cuDeviceGetName(name, sizeof name, dev));
    printf("device %d: %s\n", ordinal, name);
    CUcontext ctx;
    CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    CK(cuCtxSetCurrent(ctx));

    /* Same JIT options as vm_cuda::Module::from_ptx's defaults: an error log buffer. */
    CUjit_option opts[2] = {CU_JIT_ERROR_LOG_BUFFER, CU_JIT_ERROR_LOG_BUFFER_SIZE_BYTES};
    void* vals[2] = {jit_log, (void*)(size_t)sizeof jit_log};

    CUmodule mod;
    CK(cuModuleLoadDataEx(&mod, ptx, 2, opts, vals));
    CUfunction empty, four;
    CK(cuModuleGetFunction(&empty, mod, "empty"));
    CK(cuModuleGetFunction(&four, mod, "four_params"));

    CUstream stream;
    CK(cuStreamCreateWithPriority(&stream, CU_STREAM_NON_BLOCKING, 0));

    double t[32];

    /* Empty-kernel launch cost on a stream, two ways:
     * launch_empty: host-side cost only: 100 batches of 1000 launches, each small enough
     *   for the launch queue, only the enqueueing timed (the queue drained between batches);
     * launch_empty_sync: 100k launches back to back plus the final wait (throughput). */
    for (int i = 0; i < 1000; i++) CK(cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL));
    CK(cuStreamSynchronize(stream));
    for (int r = 0; r < REPS; r++) {
        double busy = 0;
        for (int b = 0; b < LAUNCHES / BATCH; b++) {
            double t0 = now_s();
            for (int i = 0; i < BATCH; i++) CK(cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL));
            busy += now_s() - t0;
            CK(cuStreamSynchronize(stream));
        }
        t[r] = busy / LAUNCHES * 1e6;
    }
    report("launch_empty", median(t, REPS), "us");
    for (int r = 0; r < REPS; r++) {
        double t0 = now_s();
        for (int i = 0; i < LAUNCHES; i++) CK(cuLaunchKernel(empty, 1, 1, 1, 1, 1, 1, 0, stream, NULL, NULL));
        CK(cuStreamSynchronize(stream));
        t[r] = (now_s() - t0) / LAUNCHES * 1e6;
    }
    report("launch_empty_sync", median(t, REPS), "us");

    /* Launch with four parameters. */
    CUdeviceptr d_out, d_in;
    CK(cuMemAlloc(&d_out, 4096));
    CK(cuMemAlloc(&d_in, 4096));
    unsigned int n = 0;
    float a = 2.0f;
    void* params[4] = {&d_out, &d_in, &n, &a};
    for (int i = 0; i < 1000; i++) CK(cuLaunchKernel(four, 1, 1, 1, 32, 1, 1, 0, stream, params, NULL));
    CK(cuStreamSynchronize(stream));
    for (int r = 0; r < REPS; r++) {
        double busy = 0;
        for (int b = 0; b < LAUNCHES / BATCH; b++) {
            double t0 = now_s();
            for (int i = 0; i < BATCH; i++) CK(cuLaunchKernel(four, 1, 1, 1, 32, 1, 1, 0, stream, params, NULL));
            busy += now_s() - t0;
            CK(cuStreamSynchronize(stream));
        }
        t[r] = busy / LAUNCHES * 1e6;
    }
    report("launch_4param", median(t, REPS), "us");

    /* D2D 1 GiB: synchronous (copy, then wait for it: cuMemcpyDtoD alone returns early). */
    CUdeviceptr d_a, d_b;
    CK(cuMemAlloc(&d_a, GIB));
    CK(cuMemAlloc(&d_b, GIB));
    CK(cuMemsetD32(d_a, 0x5A5A5A5Au, GIB / 4));
    CK(cuCtxSynchronize());
    CK(cuMemcpyDtoD(d_b, d_a, GIB));
    CK(cuStreamSynchronize(0));
    for (int r = 0; r < REPS; r++) {
        double t0 = now_s();
        CK(cuMemcpyDtoD(d_b, d_a, GIB));
        CK(cuStreamSynchronize(0));
        t[r] = (now_s() - t0) * 1e3;
    }
    report("d2d_sync_1g", median(t, REPS), "ms");

    /* D2D 1 GiB async on the stream: 8 back-to-back copies, then one wait. */
    for (int r = 0; r < REPS; r++) {
        double t0 = now_s();
        for (int i = 0; i < 8; i++) CK(cuMemcpyDtoDAsync(d_b, d_a, GIB, stream));
        CK(cuStreamSynchronize(stream));
        t[r] = (now_s() - t0) / 8 * 1e3;
    }
    report("d2d_async_1g", median(t, REPS), "ms");

    /* H2D / D2H 1 GiB through pinned host memory. */
    void* h;
    CK(cuMemHostAlloc(&h, GIB, CU_MEMHOSTALLOC_PORTABLE));
    memset(h, 0x3C, GIB);
    CK(cuMemcpyHtoD(d_a, h, GIB));
    for (int r = 0; r < REPS; r++) {
        double t0 = now_s();
        CK(cuMemcpyHtoD(d_a, h, GIB));
        t[r] = (now_s() - t0) * 1e3;
    }
    report("h2d_pinned_1g", median(t, REPS), "ms");
    CK(cuMemcpyDtoH(h, d_a, GIB));
    for (int r = 0; r < REPS; r++) {
        double t0 = now_s();
        CK(cuMemcpyDtoH(h, d_a, GIB));
        t[r] = (now_s() - t0) * 1e3;
    }
    report("d2h_pinned_1g", median(t, REPS), "ms");

    /* PTX load (warm: the driver's JIT cache holds it after the first load). */
    CUmodule m2;
    /* The driver writes the log length back into vals[1]: reset it before every load, or
     * later loads run with a 0-byte log buffer (less work than vm-cuda's loads do). */
    for (int i = 0; i < 3; i++) {
        vals[1] = (void*)(size_t)sizeof jit_log;
        CK(cuModuleLoadDataEx(&m2, ptx, 2, opts, vals));
        CK(cuModuleUnload(m2));
    }
    for (int r = 0; r < 31; r++) {
        vals[1] = (void*)(size_t)sizeof jit_log;
        double t0 = now_s();
        CK(cuModuleLoadDataEx(&m2, ptx, 2, opts, vals));
        t[r] = (now_s() - t0) * 1e3;
        CK(cuModuleUnload(m2));
    }
    report("ptx_load", median(t, 31), "ms");

    /* Peer copies 1 GiB between every ordered pair of devices with peer access (enabled
     * both ways), on the destination's context: cuMemcpyPeer then a wait (it can return
     * early, like cuMemcpyDtoD), and 8 back-to-back cuMemcpyPeerAsync then one wait. */
    int ndev = 0;
    CK(cuDeviceGetCount(&ndev));
    for (int s = 0; s < ndev; s++) {
        for (int d = 0; d < ndev; d++) {
            if (s == d) continue;
            CUdevice sdev, ddev;
            CK(cuDeviceGet(&sdev, s));
            CK(cuDeviceGet(&ddev, d));
            int can = 0;
            CK(cuDeviceCanAccessPeer(&can, ddev, sdev));
            if (!can) { printf("peer %d -> %d: no peer access, skipped\n", s, d); continue; }
            CUcontext sctx, dctx;
            CK(cuDevicePrimaryCtxRetain(&sctx, sdev));
            CK(cuDevicePrimaryCtxRetain(&dctx, ddev));
            CUdeviceptr p_src, p_dst;
            CK(cuCtxSetCurrent(sctx));
            CUresult e = cuCtxEnablePeerAccess(dctx, 0);
            if (e != CUDA_SUCCESS && e != CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) CK(e);
            CK(cuMemAlloc(&p_src, GIB));
            CK(cuMemsetD32(p_src, 0x11223344u, GIB / 4));
            CK(cuCtxSynchronize());
            CK(cuCtxSetCurrent(dctx));
            e = cuCtxEnablePeerAccess(sctx, 0);
            if (e != CUDA_SUCCESS && e != CUDA_ERROR_PEER_ACCESS_ALREADY_ENABLED) CK(e);
            CK(cuMemAlloc(&p_dst, GIB));
            CUstream ps;
            CK(cuStreamCreate(&ps, CU_STREAM_NON_BLOCKING));
            CK(cuMemcpyPeer(p_dst, dctx, p_src, sctx, GIB));
            CK(cuStreamSynchronize(0));
            char name[64];
            for (int r = 0; r < REPS; r++) {
                double t0 = now_s();
                CK(cuMemcpyPeer(p_dst, dctx, p_src, sctx, GIB));
                CK(cuStreamSynchronize(0));
                t[r] = (now_s() - t0) * 1e3;
            }
            snprintf(name, sizeof name, "peer_sync_%dto%d_1g", s, d);
            report(name, median(t, REPS), "ms");
            for (int r = 0; r < REPS; r++) {
                double t0 = now_s();
                for (int i = 0; i < 8; i++) CK(cuMemcpyPeerAsync(p_dst, dctx, p_src, sctx, GIB, ps));
                CK(cuStreamSynchronize(ps));
                t[r] = (now_s() - t0) / 8 * 1e3;
            }
            snprintf(name, sizeof name, "peer_async_%dto%d_1g", s, d);
            report(name, median(t, REPS), "ms");
            CK(cuStreamDestroy(ps));
            CK(cuMemFree(p_dst));
            CK(cuCtxSetCurrent(sctx));
            CK(cuMemFree(p_src));
            CK(cuDevicePrimaryCtxRelease(sdev));
            CK(cuDevicePrimaryCtxRelease(ddev));
        }
    }
    CK(cuCtxSetCurrent(ctx));

    CK(cuMemFreeHost(h));
    CK(cuMemFree(d_a));
    CK(cuMemFree(d_b));
    CK(cuMemFree(d_in));
    CK(cuMemFree(d_out));
    CK(cuStreamDestroy(stream));
    CK(cuModuleUnload(mod));
    CK(cuDevicePrimaryCtxRelease(dev));
    free(ptx);
    return 0;
}

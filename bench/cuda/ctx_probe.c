/* How long the driver takes to start a context, one device at a time and all devices at
 * once (one thread each), for each kind of context the driver API offers: the primary
 * context (what vm-cuda and the runtime use), a private context (cuCtxCreate), and a green
 * context (cuGreenCtxCreate, CUDA >= 12.4, "lightweight"). Each start is followed by its
 * first work (1 MiB alloc + memset + sync + free), timed apart, so lazy set-up is counted.
 * The C baseline for docs/benchmarks.md's `check --all` analysis: no vm-cuda in it.
 *
 * Build (GPU machine): gcc -O2 -o ctx_probe ctx_probe.c -I/usr/local/cuda/include \
 *                      /usr/local/nvidia/lib64/libcuda.so.1 -lpthread
 * Run: ctx_probe seq|par primary|private|green [GiB]
 * With GiB, each device then allocates GiB, writes it once and frees it (what the health
 * check's pattern test does), timed apart: frees are where parallel checks wait.
 * Output: `CTX <mode> <kind> gpu<N> start <ms> first_work <ms> [alloc <ms> write <ms>
 * free <ms>] release <ms>` per device and `CTX <mode> <kind> all <ms>` (start of the first
 * to the end of the last start). */
#include <pthread.h>
#include <string.h>

#include "ck.h"

static double now_ms(void) { return now_s() * 1e3; }

typedef struct {
    int ordinal;
    const char* kind;
    size_t gib;
    double t0, t_started, t_worked, t_alloc, t_write, t_free, t_released;
} job_t;

static void* run(void* arg) {
    job_t* j = arg;
    CUdevice dev;
    CK(cuDeviceGet(&dev, j->ordinal));
    CUcontext ctx = NULL;
#if CUDA_VERSION >= 12040
    CUgreenCtx green = NULL;
#endif
    j->t0 = now_ms();
    if (!strcmp(j->kind, "primary")) {
        CK(cuDevicePrimaryCtxRetain(&ctx, dev));
    } else if (!strcmp(j->kind, "private")) {
#if CUDA_VERSION >= 13000
        CK(cuCtxCreate(&ctx, NULL, 0, dev));
#else
        CK(cuCtxCreate(&ctx, 0, dev));
#endif
    } else {
#if CUDA_VERSION >= 12040
        CUdevResource sm;
        CUdevResourceDesc desc;
        CK(cuDeviceGetDevResource(dev, &sm, CU_DEV_RESOURCE_TYPE_SM));
        CK(cuDevResourceGenerateDesc(&desc, &sm, 1));
        CK(cuGreenCtxCreate(&green, desc, dev, CU_GREEN_CTX_DEFAULT_STREAM));
        CK(cuCtxFromGreenCtx(&ctx, green));
#else
        fprintf(stderr, "green contexts need CUDA 12.4\n");
        exit(2);
#endif
    }
    CK(cuCtxSetCurrent(ctx));
    j->t_started = now_ms();
    CUdeviceptr p;
    CK(cuMemAlloc(&p, 1 << 20));
    CK(cuMemsetD32(p, 0x5a5a5a5a, (1 << 20) / 4));
    CK(cuCtxSynchronize());
    CK(cuMemFree(p));
    j->t_worked = now_ms();
    j->t_alloc = j->t_write = j->t_free = j->t_worked;
    if (j->gib) {
        CUdeviceptr big;
        size_t bytes = j->gib << 30;
        CK(cuMemAlloc(&big, bytes));
        j->t_alloc = now_ms();
        CK(cuMemsetD32(big, 0xa5a5a5a5, bytes / 4));
        CK(cuCtxSynchronize());
        j->t_write = now_ms();
        CK(cuMemFree(big));
        j->t_free = now_ms();
    }
    CK(cuCtxSetCurrent(NULL));
    if (!strcmp(j->kind, "primary")) {
        CK(cuDevicePrimaryCtxRelease(dev));
    } else if (!strcmp(j->kind, "private")) {
        CK(cuCtxDestroy(ctx));
    } else {
#if CUDA_VERSION >= 12040
        CK(cuGreenCtxDestroy(green));
#endif
    }
    j->t_released = now_ms();
    return NULL;
}

int main(int argc, char** argv) {
    const char* mode = argc > 1 ? argv[1] : "seq";
    const char* kind = argc > 2 ? argv[2] : "primary";
    size_t gib = argc > 3 ? (size_t)strtoul(argv[3], NULL, 10) : 0;
    double t = now_ms();
    CK(cuInit(0));
    printf("CTX %s %s cuInit %.1f\n", mode, kind, now_ms() - t);
    int n;
    CK(cuDeviceGetCount(&n));
    job_t* jobs = calloc(n, sizeof *jobs);
    pthread_t* th = calloc(n, sizeof *th);
    for (int i = 0; i < n; i++) {
        jobs[i].ordinal = i;
        jobs[i].kind = kind;
        jobs[i].gib = gib;
    }
    if (!strcmp(mode, "par")) {
        for (int i = 0; i < n; i++) pthread_create(&th[i], NULL, run, &jobs[i]);
        for (int i = 0; i < n; i++) pthread_join(th[i], NULL);
    } else {
        for (int i = 0; i < n; i++) run(&jobs[i]);
    }
    double first = jobs[0].t0, last = jobs[0].t_started;
    for (int i = 0; i < n; i++) {
        job_t* j = &jobs[i];
        printf("CTX %s %s gpu%d start %.1f first_work %.1f", mode, kind, i, j->t_started - j->t0,
               j->t_worked - j->t_started);
        if (gib)
            printf(" alloc %.1f write %.1f free %.1f", j->t_alloc - j->t_worked,
                   j->t_write - j->t_alloc, j->t_free - j->t_write);
        printf(" release %.1f\n", j->t_released - j->t_free);
        if (j->t0 < first) first = j->t0;
        if (j->t_started > last) last = j->t_started;
    }
    printf("CTX %s %s all %.1f\n", mode, kind, last - first);
    return 0;
}

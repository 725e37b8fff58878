/* What the C baselines share: a driver call that exits with its error name on failure, and
 * a monotonic clock in seconds. Included by driver_bench.c and ctx_probe.c. */
#ifndef VM_ACCEL_BENCH_CK_H
#define VM_ACCEL_BENCH_CK_H

#include <cuda.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#define CK(call)                                                                      \
    do {                                                                              \
        CUresult r_ = (call);                                                         \
        if (r_ != CUDA_SUCCESS) {                                                     \
            const char* n_ = NULL;                                                    \
            cuGetErrorName(r_, &n_);                                                  \
            fprintf(stderr, "%s failed: %d (%s)\n", #call, (int)r_, n_ ? n_ : "?");   \
            exit(1);                                                                  \
        }                                                                             \
    } while (0)

static inline double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec * 1e-9;
}

#endif

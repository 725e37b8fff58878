#!/bin/sh
# Regenerates the PTX that vm-cuda keeps as text beside each .cu (run where nvcc is, e.g. the
# GPU machine): compute_80 PTX, which the driver JIT-compiles for any GPU from Ampere on.
set -eu
NVCC=${NVCC:-/usr/local/cuda/bin/nvcc}
cd "$(dirname "$0")/../../crates/vm-cuda/kernels"
for cu in *.cu; do
    "$NVCC" -ptx -arch=compute_80 -o "${cu%.cu}.ptx" "$cu"
done
"$NVCC" --version | tail -2

#!/bin/sh
# Runs the CUDA benchmarks side by side on a GPU host: the C driver-API baseline (built here
# with gcc) and vm-cuda's cuda_bench, alternating, then prints the Rust/C ratios.
#   bench/cuda/run.sh <path to cuda_bench binary> [rounds] [out dir]
set -eu
here=$(cd "$(dirname "$0")" && pwd)
rust_bench=$1
[ -x "$rust_bench" ] || { echo "no executable cuda_bench at $rust_bench" >&2; exit 2; }
rounds=${2:-3}
out=${3:-/tmp/vm-cuda-bench}
mkdir -p "$out"
CUDA_INC=${CUDA_INC:-/usr/local/cuda/include}
LIBCUDA=${LIBCUDA:-/usr/local/nvidia/lib64/libcuda.so.1}
gcc -O2 -Wall -o "$out/driver_bench" "$here/driver_bench.c" -I"$CUDA_INC" "$LIBCUDA"
ptx="$here/../../crates/vm-cuda/kernels/bench.ptx"
# Both sides on the same CPU core: the launch path is CPU-bound, and thread migration
# between cores was the largest source of run-to-run spread.
pin=""
if command -v taskset >/dev/null 2>&1; then pin="taskset -c ${BENCH_CPU:-2}"; fi
i=1
while [ "$i" -le "$rounds" ]; do
    $pin "$out/driver_bench" "$ptx" | tee "$out/c.$i.txt"
    $pin "$rust_bench" | tee "$out/rust.$i.txt"
    i=$((i + 1))
done
python3 "$here/compare.py" "$out"/c.*.txt "$out"/rust.*.txt | tee "$out/table.md"

#!/bin/bash
# Context start on every GPU: each kind of driver context, one device after the other vs
# all at once, and the primary context under the driver's environment settings that size
# what a context sets up; then a 35 GiB alloc/write/free per GPU, one after the other, from
# two threads and from two processes (one GPU each), with the default work queues and one.
# The C probe is built here with gcc (GPU machine).
#   bench/cuda/ctx-run.sh OUT [ROUNDS]
# Reads the GPUs' state only; changes no setting (the variables apply to this process).
set -u
OUT=$1
R=${2:-3}
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/nvidia/lib64}
CUDA_INC=${CUDA_INC:-/usr/local/cuda/include}
LIBCUDA=${LIBCUDA:-/usr/local/nvidia/lib64/libcuda.so.1}
gcc -O2 -Wall -o "$OUT/ctx_probe_c" "$here/ctx_probe.c" -I"$CUDA_INC" "$LIBCUDA" -lpthread || exit 2
P=$OUT/ctx_probe_c
for i in $(seq "$R"); do
  echo "== round $i"
  for kind in primary private green; do
    for mode in seq par; do "$P" $mode $kind | grep -v cuInit; done
  done
  for v in CUDA_DEVICE_MAX_CONNECTIONS=1 CUDA_DEVICE_MAX_COPY_CONNECTIONS=1 CUDA_MODULE_LOADING=EAGER CUDA_SCALE_LAUNCH_QUEUES=0.25x "CUDA_DEVICE_MAX_CONNECTIONS=1 CUDA_DEVICE_MAX_COPY_CONNECTIONS=1"; do
    echo "-- $v"; env $v "$P" seq primary | grep -v cuInit; env $v "$P" par primary | grep all
  done
done
for i in $(seq "$R"); do
  for conn in 8 1; do
    echo "== round $i, 35 GiB, CUDA_DEVICE_MAX_CONNECTIONS=$conn"
    export CUDA_DEVICE_MAX_CONNECTIONS=$conn
    "$P" seq primary 35 | grep -v cuInit
    "$P" par primary 35 | grep -v cuInit
    echo "-- two processes, one GPU each"
    CUDA_VISIBLE_DEVICES=0 "$P" seq primary 35 > "$OUT/p0" &
    CUDA_VISIBLE_DEVICES=1 "$P" seq primary 35 > "$OUT/p1" &
    wait
    sed 's/^/p0 /' "$OUT/p0" | grep gpu; sed 's/^/p1 /' "$OUT/p1" | grep gpu
  done
  unset CUDA_DEVICE_MAX_CONNECTIONS
done

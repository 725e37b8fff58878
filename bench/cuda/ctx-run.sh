#!/bin/bash
# Context start on every GPU: each kind of driver context, one device after the other vs
# all at once, and the primary context under the driver's environment settings that size
# what a context sets up. The C probe is built here with gcc (GPU machine).
#   bench/cuda/ctx-run.sh OUT [ROUNDS] [rust ctx_probe binary]
# Reads the GPUs' state only; changes no setting (the variables apply to this process).
set -u
OUT=$1
R=${2:-3}
RP=${3:-}
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
  if [ -n "$RP" ]; then echo "-- rust: one context started and released 3 times"; "$RP" again 3 | grep PROBE; fi
done

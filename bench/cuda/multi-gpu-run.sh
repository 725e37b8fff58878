#!/bin/bash
# Everything issue 11 measures on a GPU host, in one go (the GPU machine has no cargo):
#   bench/cuda/multi-gpu-run.sh DIR OUT
# DIR holds prebuilt x86-64 binaries: vm-accel (release, --features cuda), cuda_bench
# (release example) and bundle/ (cargo xtask hw-test --bundle). Logs go to OUT.
# Steps: GPUs and links as nvidia-smi sees them; the hw-test cuda suite; `cuda info`;
# the binary without a driver; single-GPU check vs `check --all` (alternating, 3 each);
# two concurrent checks of one GPU; --no-wait against a running check; a check while
# another process hammers the GPU; the C-vs-Rust benchmarks incl. peer copies (BENCH_ROUNDS,
# 3 by default, 0 to leave them out). JSON
# documents and benchmark files end up in OUT/results.tgz.
set -u
G=$(cd "$1" && pwd)
OUT=$2
mkdir -p "$OUT"
here=$(cd "$(dirname "$0")" && pwd)
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/nvidia/lib64}
V=$G/vm-accel
RUN=$(mktemp -d)
step() { printf '\n==== %s (%s)\n' "$*" "$(date +%T)"; }
now() { date +%s.%N; }

step "host"
nvidia-smi -L; nvidia-smi topo -m; nvidia-smi --query-gpu=index,pci.bus_id,clocks.sm,clocks.mem,utilization.gpu --format=csv
uname -r; nproc

step "no driver: the cuda build starts, cuda info exits 2"
ldd "$V" | grep -i cuda || echo "ldd: no libcuda in $V"
VM_CUDA_LIBRARY=/nonexistent/libcuda.so.1 "$V" cuda info; echo "exit $?"

step "cuda info (first without LD_LIBRARY_PATH: the loader's own search path)"
env -u LD_LIBRARY_PATH "$V" cuda info > "$RUN/info-noldpath.txt"; echo "exit $?"; head -2 "$RUN/info-noldpath.txt"
"$V" cuda info; echo "exit $?"
"$V" cuda info --json > "$RUN/info.json"; echo "exit $?"
"$V" list --accelerators --topology; echo "exit $?"
"$V" show "$(nvidia-smi --query-gpu=pci.bus_id --format=csv,noheader -i 0 | tr 'A-F' 'a-f' | sed 's/^0000\(....\)/\1/')" --topology | tail -8

step "hw-test cuda suite (bundle)"
timeout 240 "$G/bundle/run.sh" --suite cuda --require gpu; echo "exit $?"

step "single-GPU check vs check --all (alternating)"
for i in 1 2 3 4 5; do
  t0=$(now); "$V" cuda check --device 0 --run-dir "$RUN" --json > "$RUN/check0.$i.json"; rc=$?; t1=$(now)
  "$V" cuda check --all --run-dir "$RUN" --json > "$RUN/checkall.$i.json"; rc2=$?; t2=$(now)
  python3 - "$RUN/check0.$i.json" "$RUN/checkall.$i.json" "$t0" "$t1" "$t2" "$rc" "$rc2" <<'PY'
import json, sys
one, allr = json.load(open(sys.argv[1])), json.load(open(sys.argv[2]))
t0, t1, t2 = map(float, sys.argv[3:6])
print(f"TIMING single exit={sys.argv[6]} verdict={one['verdict']} wall={t1-t0:.3f}s check={one['elapsed_ms']:.0f}ms"
      f" | all exit={sys.argv[7]} verdict={allr['verdict']} wall={t2-t1:.3f}s devices={allr['devices_elapsed_ms']:.0f}ms"
      f" peers={allr['peers_elapsed_ms']:.0f}ms | ratio wall={(t2-t1)/(t1-t0):.3f} devices/check={allr['devices_elapsed_ms']/one['elapsed_ms']:.3f}")
for d in allr["devices"]:
    r = d["report"]
    print(f"  device {d['ordinal']}: {r['verdict']} {r['elapsed_ms']:.0f} ms", [(c['name'], c['passed'], c['detail']) for c in r['checks']])
for p in allr["peers"]["pairs"]:
    print(f"  peer {p['src']}->{p['dst']}: {p['passed']} {p['gbs']} GB/s {p['link']['link']} rank {p['link']['performance_rank']}")
print("  peers skipped:", allr["peers"]["skipped"])
PY
done
"$V" cuda check --all --run-dir "$RUN"; echo "exit $?"
t0=$(now); "$V" cuda check --device 1 --run-dir "$RUN" | tail -1; t1=$(now); python3 -c "print(f\"device 1 alone: wall {$t1 - $t0:.3f} s\")"

step "two concurrent checks of GPU 0 (they queue; both must pass)"
"$V" cuda check --device 0 --run-dir "$RUN" > "$RUN/c1.txt" 2>&1 & p1=$!
"$V" cuda check --device 0 --run-dir "$RUN" > "$RUN/c2.txt" 2>&1 & p2=$!
wait $p1; echo "first exit $?"; wait $p2; echo "second exit $?"
cat "$RUN/c1.txt" "$RUN/c2.txt"

step "--no-wait while another check runs: busy, exit 3"
rm -f "$RUN"/gpu-*.lock
"$V" cuda check --device 0 --run-dir "$RUN" > "$RUN/c3.txt" 2>&1 & p3=$!
# Until the running check holds the lock (it writes its pid once it does).
for _ in $(seq 100); do [ -s "$(ls "$RUN"/gpu-*.lock 2>/dev/null | head -1)" ] && break; sleep 0.1; done
"$V" cuda check --device 0 --run-dir "$RUN" --no-wait --json; echo "exit $?"
wait $p3; echo "running check exit $?"

step "a check while another process copies memory on GPU 0 (busy, not unhealthy)"
python3 -c '
import torch, time, sys
x = torch.empty(2**30, dtype=torch.uint8, device="cuda:0"); y = torch.empty_like(x)
print("hog ready", flush=True)
t = time.time()
while time.time() - t < 25:
    y.copy_(x)
torch.cuda.synchronize()
' & hog=$!
python3 -c '
import torch, time
x = torch.ones(1, device="cuda:1"); print("gpu1 user ready", flush=True); time.sleep(25)
' & other=$!
sleep 8
echo "fds of the GPU-1-only process ($other) on /dev/nvidia*:"; ls -l /proc/$other/fd 2>/dev/null | grep -o '/dev/nvidia[0-9a-z-]*' | sort | uniq -c
"$V" cuda check --device 0 --run-dir "$RUN"; echo "exit $?"
"$V" cuda check --device 0 --run-dir "$RUN" --json > "$RUN/check-shared.json"; echo "exit $?"
kill $hog $other 2>/dev/null; wait $hog $other 2>/dev/null

if [ "${BENCH_ROUNDS:-3}" -gt 0 ]; then
step "benchmarks: C driver API vs vm-cuda (${BENCH_ROUNDS:-3} rounds, alternating)"
timeout 360 sh "$here/run.sh" "$G/cuda_bench" "${BENCH_ROUNDS:-3}" "$RUN/bench"; echo "exit $?"
grep -h "ctx_start" "$RUN"/bench/rust.*.txt
fi
tar czf "$OUT/results.tgz" -C "$RUN" .
step "done"

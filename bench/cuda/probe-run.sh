#!/bin/bash
# Where `check --all`'s extra time goes on a multi-GPU host (issue 11's 1.2x goal):
#   bench/cuda/probe-run.sh DIR OUT [ROUNDS]
# DIR holds prebuilt x86-64 binaries: vm-accel (release, --features cuda) and ctx_probe
# (release example of vm-cuda). Runs, alternating, ROUNDS times each:
#  - ctx_probe: driver start, contexts and 35 GiB alloc/write/free, one device after the
#    other vs all at once from threads, and one process per device side by side;
#  - vm-accel: the single-GPU check vs `check --all` vs one `check --device N` process per
#    GPU side by side, each with its RUST_LOG=vm_cuda=debug step timeline.
# Reads the GPUs' state only; changes no setting.
set -u
G=$(cd "$1" && pwd)
OUT=$2
R=${3:-3}
mkdir -p "$OUT"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/nvidia/lib64}
V=$G/vm-accel
P=$G/ctx_probe
RUN=$(mktemp -d)
n=$(nvidia-smi -L | wc -l)
step() { printf '\n==== %s (%s)\n' "$*" "$(date +%T.%N | cut -c1-12)"; }
now() { date +%s.%N; }

step "host"
nvidia-smi -L; nvidia-smi topo -m
nvidia-smi --query-gpu=index,persistence_mode,compute_mode,clocks.sm,clocks.mem,memory.used --format=csv
uname -r; nproc

for i in $(seq "$R"); do
  step "round $i: ctx_probe"
  for gib in 0 35; do
    echo "-- seq $gib GiB"; "$P" seq "$gib" | grep PROBE
    echo "-- par $gib GiB"; "$P" par "$gib" | grep PROBE
    echo "-- one process, device 0, $gib GiB"; "$P" one 0 "$gib" | grep PROBE
    echo "-- one process per device side by side, $gib GiB"
    for d in $(seq 0 $((n - 1))); do "$P" one "$d" "$gib" > "$RUN/p$d.txt" & done; wait
    for d in $(seq 0 $((n - 1))); do sed "s/^/  p$d /" "$RUN/p$d.txt"; done
    echo "-- one process per device, CUDA_VISIBLE_DEVICES=that one, $gib GiB"
    for d in $(seq 0 $((n - 1))); do CUDA_VISIBLE_DEVICES=$d "$P" one 0 "$gib" > "$RUN/v$d.txt" & done; wait
    for d in $(seq 0 $((n - 1))); do sed "s/^/  v$d /" "$RUN/v$d.txt"; done
  done

  step "round $i: vm-accel checks"
  t0=$(now); RUST_LOG=vm_cuda=debug "$V" cuda check --device 0 --run-dir "$RUN" --json > "$RUN/one.$i.json" 2> "$OUT/one.$i.log"; t1=$(now)
  RUST_LOG=vm_cuda=debug "$V" cuda check --all --run-dir "$RUN" --json > "$RUN/all.$i.json" 2> "$OUT/all.$i.log"; t2=$(now)
  for d in $(seq 0 $((n - 1))); do
    RUST_LOG=vm_cuda=debug "$V" cuda check --device "$d" --run-dir "$RUN" --json > "$RUN/proc$d.$i.json" 2> "$OUT/proc$d.$i.log" &
  done; wait; t3=$(now)
  python3 - "$RUN" "$i" "$n" "$t0" "$t1" "$t2" "$t3" <<'PY'
import json, sys
run, i, n = sys.argv[1], sys.argv[2], int(sys.argv[3])
t0, t1, t2, t3 = map(float, sys.argv[4:8])
one = json.load(open(f"{run}/one.{i}.json")); a = json.load(open(f"{run}/all.{i}.json"))
procs = [json.load(open(f"{run}/proc{d}.{i}.json")) for d in range(n)]
print(f"RATIO single: wall {t1-t0:.3f}s check {one['elapsed_ms']:.0f}ms {one['verdict']}")
print(f"RATIO all: wall {t2-t1:.3f}s devices {a['devices_elapsed_ms']:.0f}ms peers {a['peers_elapsed_ms']:.0f}ms {a['verdict']}"
      f" -> devices/check {a['devices_elapsed_ms']/one['elapsed_ms']:.3f}")
for d in a["devices"]:
    r = d["report"]; print(f"   all gpu{d['ordinal']} {r['elapsed_ms']:.0f}ms", [(c['name'], round(c['elapsed_ms'],1)) for c in r['checks']])
print(f"RATIO procs side by side: wall {t3-t2:.3f}s checks", [round(p['elapsed_ms']) for p in procs], [p['verdict'] for p in procs],
      f"-> max/check {max(p['elapsed_ms'] for p in procs)/one['elapsed_ms']:.3f} wall/wall {(t3-t2)/(t1-t0):.3f}")
for p in procs:
    print(f"   proc {p['device']['ordinal'] if 'ordinal' in p['device'] else '?'} ", [(c['name'], round(c['elapsed_ms'],1)) for c in p['checks']])
print("   single", [(c['name'], round(c['elapsed_ms'],1)) for c in one['checks']])
PY
done
step "timelines of the last round"
for f in one all proc0 proc1; do echo "-- $f"; grep "GPU" "$OUT/$f.$R.log" | sed 's/^\[[^]]*\] //'; done
tar czf "$OUT/results.tgz" -C "$RUN" .
step "done"

#!/bin/bash
# The single-GPU check vs `check --all` (issue 11's goal: --all <= 1.2x), for several
# variants ("arms") of the binary and the driver settings, alternating, ROUNDS times:
#   bench/cuda/check-all-run.sh OUT ROUNDS NAME=BINARY[,VAR=VALUE...] ...
# e.g. base=/x/vm-accel.base  conn1=/x/vm-accel.base,CUDA_DEVICE_MAX_CONNECTIONS=1
# Each check runs with RUST_LOG=vm_cuda=debug; the step timelines of the last round are
# printed. Lines `ARM <name> single|all ...` hold the figures; a summary ends the output.
set -u
OUT=$1; R=$2; shift 2
mkdir -p "$OUT"; rm -f "$OUT/arms.txt"
export LD_LIBRARY_PATH=${LD_LIBRARY_PATH:-/usr/local/nvidia/lib64}
RUN=$(mktemp -d)
now() { date +%s.%N; }
for i in $(seq "$R"); do
  for arm in "$@"; do
    name=${arm%%=*}; rest=${arm#*=}; bin=${rest%%,*}; vars=""
    [ "$rest" != "$bin" ] && vars=$(echo "${rest#*,}" | tr ',' ' ')
    t0=$(now); env $vars RUST_LOG=vm_cuda=debug "$bin" cuda check --device 0 --run-dir "$RUN" --json > "$RUN/$name.one.$i.json" 2> "$OUT/$name.one.$i.log"; t1=$(now)
    env $vars RUST_LOG=vm_cuda=debug "$bin" cuda check --all --run-dir "$RUN" --json > "$RUN/$name.all.$i.json" 2> "$OUT/$name.all.$i.log"; t2=$(now)
    python3 - "$RUN" "$name" "$i" "$t0" "$t1" "$t2" <<'PY'
import json, sys
run, name, i = sys.argv[1:4]; t0, t1, t2 = map(float, sys.argv[4:7])
one = json.load(open(f"{run}/{name}.one.{i}.json")); a = json.load(open(f"{run}/{name}.all.{i}.json"))
bw = lambda r: round(r["bandwidth"]["fraction_of_peak"] * 100) if r.get("bandwidth") else None
print(f"ARM {name} single {one['verdict']} check_ms {one['elapsed_ms']:.1f} wall_s {t1-t0:.3f} d2d% {bw(one)}")
print(f"ARM {name} all {a['verdict']} devices_ms {a['devices_elapsed_ms']:.1f} peers_ms {a['peers_elapsed_ms']:.1f} wall_s {t2-t1:.3f}"
      f" ratio {a['devices_elapsed_ms']/one['elapsed_ms']:.3f} wall_ratio {(t2-t1)/(t1-t0):.3f}"
      f" d2d% {','.join(str(bw(d['report'])) for d in a['devices'])} peer_gbs {','.join(str(round(p['gbs'] or 0)) for p in a['peers']['pairs'])}")
PY
  done 2>&1 | tee -a "$OUT/arms.txt"
done
echo; echo "==== timelines, round $R"
for arm in "$@"; do name=${arm%%=*}; for k in one all; do echo "-- $name $k"; grep "GPU" "$OUT/$name.$k.$R.log" | sed 's/^\[[^]]*\] //'; done; done
echo; echo "==== summary (median [min, max] over rounds)"
python3 - "$OUT" <<'PY'
import re, sys, statistics as st, collections
rows = collections.defaultdict(lambda: collections.defaultdict(list))
for line in open(sys.argv[1] + "/arms.txt"):
    if not line.startswith("ARM "): continue
    f = line.split(); name, kind = f[1], f[2]
    for k, v in zip(f[4::2], f[5::2]):
        try: rows[name][f"{kind}.{k}"].append(float(v))
        except ValueError: pass
for name, d in rows.items():
    s = lambda k: f"{st.median(d[k]):.3f} [{min(d[k]):.3f}, {max(d[k]):.3f}]" if d[k] else "-"
    print(f"{name}: single check_ms {s('single.check_ms')} | all devices_ms {s('all.devices_ms')} | ratio {s('all.ratio')} | wall single {s('single.wall_s')} all {s('all.wall_s')} wall_ratio {s('all.wall_ratio')}")
PY

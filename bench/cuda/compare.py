#!/usr/bin/env python3
"""Reads the RESULT lines of alternating driver_bench (C) and cuda_bench (Rust) runs
(files c.N.txt / rust.N.txt, N = round) and prints, per metric, the median of each side,
the ratio of the medians and the median of the per-round (paired) ratios Rust/C, as a
Markdown table. Exits 1 if a metric is missing."""
import os
import re
import statistics
import sys
from collections import defaultdict

GOALS = {  # metric: (goal text, predicate on the time ratio Rust/C)
    "launch_empty": ("<= 1.03", lambda r: r <= 1.03),
    "launch_empty_sync": ("-", None),
    "launch_4param": ("<= 1.03", lambda r: r <= 1.03),
    "d2d_sync_1g": ("bandwidth >= 0.99 (time <= 1.0101)", lambda r: r <= 1 / 0.99),
    "d2d_async_1g": ("bandwidth >= 0.99 (time <= 1.0101)", lambda r: r <= 1 / 0.99),
    "h2d_pinned_1g": ("-", None),
    "d2h_pinned_1g": ("-", None),
    "ptx_load": ("<= 1.05", lambda r: r <= 1.05),
}
PEER_GOAL = ("bandwidth >= 0.99 (time <= 1.0101)", lambda r: r <= 1 / 0.99)

vals = defaultdict(list)           # (side, metric) -> [values]
per_round = defaultdict(dict)      # (side, metric) -> {round: value}
units = {}
device = None
for path in sys.argv[1:]:
    m = re.search(r"\.(\d+)\.txt$", os.path.basename(path))
    rnd = int(m.group(1)) if m else 0
    for line in open(path):
        if line.startswith("device ") and device is None:
            device = line.split(":", 1)[1].strip()
        parts = line.split()
        if len(parts) == 5 and parts[0] == "RESULT":
            _, side, metric, value, unit = parts
            vals[(side, metric)].append(float(value))
            per_round[(side, metric)][rnd] = float(value)
            units[metric] = unit

# Peer copies: one metric per ordered pair the C side measured (none on one GPU).
for side, metric in sorted(vals):
    if side == "c" and metric.startswith("peer_"):
        GOALS[metric] = PEER_GOAL

missing = False
print(f"device: {device}")
print("| metric | C (median) | Rust (median) | Rust/C (medians) | Rust/C paired: median [min, max] | GB/s C / Rust | goal | met |")
print("|---|---|---|---|---|---|---|---|")
for metric, (goal, ok) in GOALS.items():
    c, r = vals.get(("c", metric)), vals.get(("rust", metric))
    if not c or not r:
        print(f"| {metric} | {c} | {r} | missing | | | {goal} | |")
        missing = True
        continue
    mc, mr = statistics.median(c), statistics.median(r)
    unit = units[metric]
    ratio = mr / mc
    pc, pr = per_round[("c", metric)], per_round[("rust", metric)]
    paired = [pr[k] / pc[k] for k in sorted(pc) if k in pr]
    pmed = statistics.median(paired)
    gbs = ""
    if metric.endswith("_1g"):  # GB/s of the 1 GiB copies
        gbs = f"{2**30 / (mc / 1e3) / 1e9:.0f} / {2**30 / (mr / 1e3) / 1e9:.0f}"
    met = "" if ok is None else ("yes" if ok(pmed) else "NO")
    print(f"| {metric} | {mc:.4f} {unit} | {mr:.4f} {unit} | {ratio:.3f} | {pmed:.3f} [{min(paired):.3f}, {max(paired):.3f}] | {gbs} | {goal} | {met} |")
print()
print("In-process overhead of vm-cuda's checked call over the raw driver call (same process,")
print("interleaved reps; Rust side only):")
print()
print("| metric | raw driver call (median) | vm-cuda (median) | vm-cuda/raw per round: median [min, max] |")
print("|---|---|---|---|")
for metric in GOALS:
    pr, pw = per_round.get(("rust", metric)), per_round.get(("rust", metric + "_raw"))
    if not pr or not pw:
        continue
    ratios = [pr[k] / pw[k] for k in sorted(pr) if k in pw]
    unit = units[metric]
    print(f"| {metric} | {statistics.median(pw.values()):.4f} {unit} | {statistics.median(pr.values()):.4f} {unit} | "
          f"{statistics.median(ratios):.3f} [{min(ratios):.3f}, {max(ratios):.3f}] |")
if ("rust", "ptx_parse") in vals:
    print(f"\nPTX signature parsing alone (bench.ptx): {statistics.median(vals[('rust', 'ptx_parse')]) * 1e3:.2f} us")
print()
print(f"rounds: {max(len(v) for v in vals.values()) if vals else 0} per side, alternating C then Rust")
sys.exit(1 if missing else 0)

#!/usr/bin/env python3
"""Reads RESULT lines of driver_bench (C) and cuda_bench (Rust) runs, prints the median of
each metric per side and the Rust/C ratio as a Markdown table."""
import statistics
import sys
from collections import defaultdict

GOALS = {  # metric: (goal text, predicate on the time ratio Rust/C)
    "launch_empty": ("<= 1.03", lambda r: r <= 1.03),
    "launch_4param": ("<= 1.03", lambda r: r <= 1.03),
    "d2d_sync_1g": ("bandwidth >= 0.99 (time <= 1.0101)", lambda r: r <= 1 / 0.99),
    "d2d_async_1g": ("bandwidth >= 0.99 (time <= 1.0101)", lambda r: r <= 1 / 0.99),
    "h2d_pinned_1g": ("-", None),
    "d2h_pinned_1g": ("-", None),
    "ptx_load": ("<= 1.05", lambda r: r <= 1.05),
}

vals = defaultdict(list)
units = {}
device = None
for path in sys.argv[1:]:
    for line in open(path):
        if line.startswith("device ") and device is None:
            device = line.split(":", 1)[1].strip()
        parts = line.split()
        if len(parts) == 5 and parts[0] == "RESULT":
            _, side, metric, value, unit = parts
            vals[(side, metric)].append(float(value))
            units[metric] = unit

print(f"device: {device}")
print("| metric | C (median) | Rust (median) | Rust/C time | GB/s C / Rust | goal | met |")
print("|---|---|---|---|---|---|---|")
for metric, (goal, ok) in GOALS.items():
    c, r = vals.get(("c", metric)), vals.get(("rust", metric))
    if not c or not r:
        print(f"| {metric} | {c} | {r} | missing | | {goal} | |")
        continue
    mc, mr = statistics.median(c), statistics.median(r)
    unit = units[metric]
    ratio = mr / mc
    gbs = ""
    if metric.endswith("_1g"):
        gbs = f"{2**30 / (mc / 1e3) / 1e9:.0f} / {2**30 / (mr / 1e3) / 1e9:.0f}"
    met = "" if ok is None else ("yes" if ok(ratio) else "NO")
    print(f"| {metric} | {mc:.4f} {unit} | {mr:.4f} {unit} | {ratio:.3f} | {gbs} | {goal} | {met} |")
print(f"runs per side: {max(len(v) for v in vals.values()) if vals else 0}")

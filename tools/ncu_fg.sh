#!/usr/bin/env bash
# Profiles the FG-Attn forward kernel (hunyuan-720p, M = 128, random mask at sparsity 0.7) for key groups N = 1
# (16-byte cp.async gather), 8 and 16 (TMA row boxes) and prints the gather-relevant metrics side by side: SOL,
# issue/stall reasons, LSU and L2/DRAM traffic, shared-memory bank conflicts, outstanding requests.
#   tools/ncu_fg.sh [N ...]        (default: 1 8 16); binaries from .carry/bin; CSVs to $OUT
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.carry/bin
groups=${*:-"1 8 16"}
for n in $groups; do
  timeout 200 ncu --clock-control none --set full -k regex:fg_forward_kernel -c 1 --csv --page details \
    .carry/bin/tileattn bench --fg --fg-kind random --fg-sparsity 0.7 --fg-key-group "$n" --warmup 0 --reps 1 \
    > "$OUT/ncu_fg_n$n.csv" 2> "$OUT/ncu_fg_n$n.err"
  echo "N=$n: rc=$?"
done
python3 - "$OUT" $groups <<'PY'
import csv, io, sys
out, groups = sys.argv[1], sys.argv[2:]
tables = []
for n in groups:
    lines = open(f"{out}/ncu_fg_n{n}.csv").read().splitlines()
    start = next((i for i, l in enumerate(lines) if l.startswith('"ID"')), None)
    if start is None:
        tables.append({}); continue
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    tables.append({(r["Section Name"], r["Metric Name"]): (r["Metric Value"], r["Metric Unit"]) for r in rows})
sections = ("Speed Of Light", "Memory Workload", "Scheduler", "Warp State", "Compute Workload", "Occupancy")
keys = [k for k in tables[0] if any(s in k[0] for s in sections)]
print(f"{'metric':<72} " + " ".join(f"{'N=' + n:>16}" for n in groups))
for k in keys:
    vals = [t.get(k, ("-", ""))[0] for t in tables]
    print(f"{(k[0][:24] + ': ' + k[1])[:72]:<72} " + " ".join(f"{v:>16}" for v in vals) + f"  {tables[0][k][1]}")
PY

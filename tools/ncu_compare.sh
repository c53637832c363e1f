#!/usr/bin/env bash
# Profiles the production STA kernel (video-query CTAs, window 3x3x3) for two text configurations and prints the
# metrics side by side. Usage: tools/ncu_compare.sh TEXT_A VALID_A TEXT_B VALID_B
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.carry/bin
for cfg in "$1 $2" "$3 $4"; do
  set -- $cfg
  timeout 280 ncu --clock-control none --set full -k regex:sta_forward_kernel -s 1 -c 1 --csv --page details \
    .carry/bin/sta_variants 1 profile $1 $2 > "$OUT/ncu_text$1_valid$2.csv" 2> "$OUT/ncu_text$1_valid$2.err"
  echo "text $1 valid $2: rc=$?"
done
python3 - "$OUT" <<'PY'
import csv, glob, io, sys
files = sorted(glob.glob(sys.argv[1] + "/ncu_text*.csv"))
tables = []
for f in files:
    lines = open(f).read().splitlines()
    start = next(i for i, l in enumerate(lines) if l.startswith('"ID"'))
    rows = list(csv.DictReader(io.StringIO("\n".join(lines[start:]))))
    tables.append({(r["Section Name"], r["Metric Name"]): (r["Metric Value"], r["Metric Unit"]) for r in rows})
keys = [k for k in tables[0] if any(s in k[0] for s in ("Speed Of Light", "Memory Workload", "Scheduler", "Warp State",
                                                          "Occupancy", "Compute Workload", "Launch"))]
print(f"{'metric':<70} " + " ".join(f"{f.split('/')[-1][4:-4]:>22}" for f in files))
for k in keys:
    vals = [t.get(k, ("-", ""))[0] for t in tables]
    print(f"{(k[0][:22] + ': ' + k[1])[:70]:<70} " + " ".join(f"{v:>22}" for v in vals) + f"  {tables[0][k][1]}")
PY

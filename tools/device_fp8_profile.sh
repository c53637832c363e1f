#!/usr/bin/env bash
# One device call: the 8-bit STA forward's speed at hunyuan-720p (CLI, interleaved with the bf16 kernel: windows
# 3x3x3 and 5x5x5, text 0 and 256), then one ncu profile of its kernel (3x3x3, no text) to see what binds.
#   OUT=dir tools/device_fp8_profile.sh BIN [ROUNDS]
set -uo pipefail
bin=$1 rounds=${2:-5}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$bin
echo "=== timing, $rounds interleaved rounds $(date +%T)"
for r in $(seq 1 "$rounds"); do
  for p in native fp8; do
    for text in 0 256; do
      "$bin/tileattn" bench --windows 3x3x3,5x5x5 --text $text --precision $p --reps 10 \
        --json "$OUT/.r${r}_${p}_t${text}.json" > /dev/null 2>&1 || echo "bench $p text $text failed"
    done
  done
done
python3 - "$OUT" <<'PY' | tee "$OUT/fp8_timing.md"
import glob, json, os, statistics, sys
out = sys.argv[1]
runs = {}
for f in sorted(glob.glob(out + "/.r*.json")):
    _, p, t = os.path.basename(f)[1:-5].split("_")
    for k, v in json.load(open(f)).items():
        if isinstance(v, (int, float)):
            runs.setdefault((p, t, k), []).append(v)
print("| precision | text | key | median ms | min | max | n |\n|---|---|---|---|---|---|---|")
for (p, t, k), v in sorted(runs.items()):
    print(f"| {p} | {t} | {k} | {statistics.median(v):.3f} | {min(v):.3f} | {max(v):.3f} | {len(v)} |")
json.dump({f"{p}_{t}_{k}": statistics.median(v) for (p, t, k), v in runs.items()}, open(out + "/fp8_timing.json", "w"), indent=1)
PY
rm -f "$OUT"/.r*.json
echo "=== ncu $(date +%T)"
# Every kernel of one fp8 call (the pre-pass's four and the attention kernel): durations.
timeout 120 ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
  "$bin/tileattn" bench --windows 3x3x3 --precision fp8 --warmup 0 --reps 1 > "$OUT/ncu_durations.csv" 2>/dev/null
echo "durations rc=$?"
# The attention kernel: where its warps stall, how busy each pipe is.
timeout 200 ncu --clock-control none --section SpeedOfLight --section ComputeWorkloadAnalysis --section WarpStateStats \
  --section SchedulerStats --section InstructionStats -k regex:sta_fp8_forward -c 1 --csv --page raw \
  "$bin/tileattn" bench --windows 3x3x3 --precision fp8 --warmup 0 --reps 1 > "$OUT/ncu_fp8.csv" 2>/dev/null
echo "ncu rc=$?"
python3 tools/ncu_fp8_report.py "$OUT/ncu_durations.csv" "$OUT/ncu_fp8.csv" | tee "$OUT/ncu_summary.txt"
echo "=== done $(date +%T)"

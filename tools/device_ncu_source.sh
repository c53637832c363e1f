#!/usr/bin/env bash
# One device call: ncu's per-instruction view (stall reasons sampled per SASS line) of the STA forward kernels at
# hunyuan-720p 3x3x3, the 8-bit one and the bf16 one, so their softmax loops can be compared line by line.
#   OUT=dir tools/device_ncu_source.sh BIN [KERNELS]     KERNELS: "fp8 native" (default)
# Writes $OUT/ncu_source.tgz (the reports and their source pages as CSV) and a summary per kernel
# (tools/ncu_source_report.py: stall samples by opcode and the hottest lines).
set -uo pipefail
bin=$1 kernels=${2:-fp8 native}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$bin
work=$(mktemp -d)
for p in $kernels; do
  name=sta_forward; [ "$p" = fp8 ] && name=sta_fp8_forward
  echo "=== ncu $p $(date +%T)"
  timeout 240 ncu --clock-control none --section SourceCounters --section WarpStateStats --section SpeedOfLight \
    --import-source yes -k regex:"${name}_kernel" -c 1 -o "$work/$p" \
    "$bin/tileattn" bench --windows 3x3x3 --precision $p --warmup 0 --reps 1 > "$work/$p.log" 2>&1
  echo "ncu rc=$?"; tail -3 "$work/$p.log"
  timeout 120 ncu -i "$work/$p.ncu-rep" --page source --csv --print-source sass > "$work/${p}_source.csv" 2> "$work/${p}_source.err"
  echo "source page rc=$? $(wc -l < "$work/${p}_source.csv") lines"
  python3 tools/ncu_source_report.py "$work/${p}_source.csv" | tee "$OUT/ncu_source_$p.txt" | head -80
done
tar -C "$work" -czf "$OUT/ncu_source.tgz" . && ls -la "$OUT"
echo "=== done $(date +%T)"

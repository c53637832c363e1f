#!/usr/bin/env bash
# One device call for issue #15's remaining figures: the pre-pass's kernels (ncu durations), the FP8 entry in the
# peers' interleaved run (../shared/peers carried as .peers), and the diffusers HunyuanVideo 720p step with FP8 STA
# (device_e2e.sh hunyuan-fp8; .whl carried). Everything goes to $OUT.
#   OUT=dir tools/device_fp8_final.sh [PEERS_BUDGET_S] [E2E_TIMEOUT_S]
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
bin=$PWD/.carry/bin
export LD_LIBRARY_PATH=$bin PYTHONUNBUFFERED=1 TILEATTN_LIBRARY=$bin/libtileattn.so
echo "=== pre-pass $(date +%T)"
timeout 60 ncu --clock-control none --metrics gpu__time_duration.sum --csv --page raw \
  "$bin/tileattn" bench --windows 3x3x3 --precision fp8 --warmup 0 --reps 1 2>/dev/null > /tmp/durations.csv
python3 tools/ncu_fp8_report.py /tmp/durations.csv | tee "$OUT/prepass.txt"
echo "=== e2e $(date +%T)"
E2E_ROUNDS=1 E2E_TIMEOUT=${2:-260} OUT=$OUT tools/device_e2e.sh hunyuan-fp8
echo "=== peers $(date +%T)"
rm -rf /tmp/peer
python3 -m pip install -q --no-index --no-deps --no-compile --target /tmp/peer .peers/*.whl \
  && PYTHONPATH=/tmp/peer:$PWD/python timeout $(( ${1:-150} + 60 )) python3 tools/peers_fp8.py --out "$OUT" \
     --peers tileattn,tileattn_fp8,cudnn,fv_bsa,fi_fa3,fv_sta --text 0 --rounds 5 --time-budget "${1:-150}" \
     > "$OUT/peers.log" 2>&1
echo "peers rc=$?"; tail -30 "$OUT/peers.log"
echo "=== done $(date +%T)"

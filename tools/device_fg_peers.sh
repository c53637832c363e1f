#!/usr/bin/env bash
# One device call for issue 17 part 1: FG-Attn against FlashInfer (BlockSparseAttentionWrapper, FA3, given exactly
# FG's masks), cuDNN dense and FlexAttention in one interleaved run of bench/bench_fg.py. Needs .carry/bin/libtileattn.so
# (tools/pack_device.sh) and the peer wheels in .peers/ (a copy of ../shared/peers; carry both). Installs the FlashInfer
# and apache_tvm_ffi wheels into /tmp/site (no network), then runs the sweep under a time budget; the JSON
# ($OUT/h200-hunyuan-720p-fg.json), rewritten after every configuration, and the log go to $OUT.
#   tools/device_fg_peers.sh [extra bench_fg.py arguments, e.g. --key-groups 1,16 --sparsities 0.7]
#   BUDGET (s, default 420): no configuration starts that would end past it; TIMEOUT (s, default 520): hard limit
#   (SIGINT: the JSON keeps the finished configurations); FLEX_BLOCKS (default 128, the best block size in every
#   configuration of the last run; "128,64" tries both at a compilation each).
# Exit status: bench_fg.py's (3: FlashInfer disagreed with FG somewhere, see "failures" in the JSON; 124/130: timeout).
set -uo pipefail
cd "$(dirname "$0")/.." || exit 2
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
export LD_LIBRARY_PATH=$PWD/.carry/bin:${LD_LIBRARY_PATH:-}
export TILEATTN_LIBRARY=${TILEATTN_LIBRARY:-$PWD/.carry/bin/libtileattn.so}
[ -f "$TILEATTN_LIBRARY" ] || { echo "no $TILEATTN_LIBRARY: build and carry .carry/bin (tools/pack_device.sh)"; exit 2; }
t0=$SECONDS
if ls .peers/flashinfer_python-*.whl .peers/apache_tvm_ffi-*.whl >/dev/null 2>&1; then
  rm -rf /tmp/site
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site \
    .peers/flashinfer_python-*.whl .peers/apache_tvm_ffi-*.whl 2>&1 | tail -3
  export PYTHONPATH=/tmp/site:$PWD/python${PYTHONPATH:+:$PYTHONPATH}
else
  echo "no FlashInfer wheels in .peers/: the FlashInfer columns will be skipped"
  export PYTHONPATH=$PWD/python${PYTHONPATH:+:$PYTHONPATH}
fi
python3 -c "import flashinfer; print('flashinfer', flashinfer.__version__, 'at', flashinfer.__file__)" 2>&1 | tail -1
echo "setup took $((SECONDS - t0)) s"
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
  | tee "$OUT/gpu.txt"
timeout -s INT -k 15 "${TIMEOUT:-520}" python3 bench/bench_fg.py --out "$OUT" --time-budget "${BUDGET:-420}" \
  --flex-block-sizes "${FLEX_BLOCKS:-128}" "$@" 2>&1 | tee "$OUT/bench_fg.log" | grep -v Warning
rc=${PIPESTATUS[0]}
echo "bench_fg.py rc=$rc after $((SECONDS - t0)) s"
exit "$rc"

#!/usr/bin/env bash
# One device call checking a restructured build against the previous one (issue 13): the GPU suites and pytest on the
# new build, then a same-run timing of both builds (tools/device_compare_builds.sh). Optionally a third build that
# differs only in the FG kernel (FG_VARIANT=dir): its FG tests, and its FG times against the new build's.
#   tools/device_refactor_check.sh BEFORE_DIR AFTER_DIR [ROUNDS]
# Needs the diffusers wheels in .whl (README's device notes) for pytest. Logs and JSON go to $OUT.
set -uo pipefail
before=$1 after=$2 rounds=${3:-4}
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader | tee "$OUT/gpu.txt"
echo "=== gpu tests ($after) $(date +%T)"
LD_LIBRARY_PATH=$after timeout 300 "$after/tileattn_gpu_tests" > "$OUT/gpu_tests.log" 2>&1
echo "rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests.log" | tr '\n' ' ')"; grep -E "^\[  FAILED" "$OUT/gpu_tests.log"
if [ -n "${FG_VARIANT:-}" ]; then
  echo "=== FG tests ($FG_VARIANT) $(date +%T)"
  LD_LIBRARY_PATH=$FG_VARIANT timeout 200 "$after/tileattn_gpu_tests" --gtest_filter='Fg*' > "$OUT/gpu_tests_fg_variant.log" 2>&1
  echo "rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests_fg_variant.log" | tr '\n' ' ')"
  grep -E "^\[  FAILED" "$OUT/gpu_tests_fg_variant.log"
fi
echo "=== pytest ($after) $(date +%T)"
if python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl; then
  (export PYTHONPATH=/tmp/site:$PWD/python TILEATTN_LIBRARY=$PWD/$after/libtileattn.so TILEATTN_CLI=$PWD/$after/tileattn
   export LD_LIBRARY_PATH=$PWD/$after  # the CLI's RUNPATH is the build machine's folder
   cd python/tests && timeout 300 python3 -m pytest -q -p no:cacheprovider . > "$OUT/pytest.log" 2>&1; echo "rc=$?")
  tail -3 "$OUT/pytest.log"
fi
echo "=== timing: $before vs $after, $rounds rounds $(date +%T)"
OUT=$OUT tools/device_compare_builds.sh "$before" "$after" "$rounds" | tail -30
if [ -n "${FG_VARIANT:-}" ]; then
  echo "=== FG timing: $after vs $FG_VARIANT $(date +%T)"
  ONLY=fg NAME=fg_variant OUT=$OUT tools/device_compare_builds.sh "$after" "$FG_VARIANT" 3 | tail -10
fi
echo "=== done $(date +%T)"

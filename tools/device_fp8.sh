#!/usr/bin/env bash
# One device call for the FP8 STA forward (issue #15): its accuracy cases against the fp64 reference (per case, with
# the bf16 kernel's figures beside them), its hunyuan-720p timing against the bf16 kernel (interleaved, CUDA events),
# memcheck on the small cases, the rest of the GPU suite, and optionally a same-run timing of two builds.
#   [STEPS="fp8 memcheck suite compare"] tools/device_fp8.sh BIN [BEFORE_DIR] [ROUNDS]
# BIN holds libtileattn.so, the tileattn CLI and tileattn_gpu_tests of this build. Logs go to $OUT (few files).
set -uo pipefail
bin=$1 before=${2:-} rounds=${3:-6}
steps=" ${STEPS:-fp8 memcheck suite compare} "
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$bin
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw,temperature.gpu --format=csv,noheader | tee "$OUT/gpu.txt"
if [[ $steps == *" fp8 "* ]]; then
  echo "=== fp8 tests $(date +%T)"
  timeout 360 "$bin/tileattn_gpu_tests" --gtest_filter='StaForwardGpu.Fp8*' > "$OUT/fp8_tests.log" 2>&1
  echo "rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/fp8_tests.log" | tr '\n' ' ')"
  grep -E "FAILED|hunyuan-720p|Failure" "$OUT/fp8_tests.log" | head -40
fi
if [[ $steps == *" memcheck "* ]]; then
  echo "=== memcheck, fp8 fixed shapes $(date +%T)"
  timeout 240 compute-sanitizer --tool memcheck --print-limit 5 "$bin/tileattn_gpu_tests" \
    --gtest_filter='StaForwardGpu.Fp8FixedShapes' > /tmp/memcheck.log 2>&1
  echo "rc=$?"; grep -E "ERROR SUMMARY|PASSED|FAILED" /tmp/memcheck.log | tail -3; tail -30 /tmp/memcheck.log > "$OUT/memcheck_tail.log"
fi
if [[ $steps == *" suite "* ]]; then
  echo "=== the rest of the GPU suite $(date +%T)"
  timeout 300 "$bin/tileattn_gpu_tests" --gtest_filter='-StaForwardGpu.Fp8*' > "$OUT/gpu_tests.log" 2>&1
  echo "rc=$? $(grep -E '^\[  (PASSED|FAILED)' "$OUT/gpu_tests.log" | tr '\n' ' ')"; grep -E "^\[  FAILED" "$OUT/gpu_tests.log"
fi
if [[ $steps == *" compare "* && -n $before ]]; then
  echo "=== timing: $before vs $bin, $rounds rounds $(date +%T)"
  ONLY="${ONLY:-sta sta_text}" OUT=$OUT tools/device_compare_builds.sh "$before" "$bin" "$rounds" | tail -16
fi
echo "=== done $(date +%T)"

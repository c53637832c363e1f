#!/usr/bin/env bash
# One device call: checks, sanitizers and timings on the lent GPU. Binaries come prebuilt in .carry/bin (built on
# the dev machine by tools/pack_device.sh); results and logs go to $OUT.
#   tools/device_run.sh [tests] [sanitize] [bench] [sass] [cli]   (default: all)
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export LD_LIBRARY_PATH=$PWD/.carry/bin:${LD_LIBRARY_PATH:-}
export TILEATTN_LIBRARY=$PWD/.carry/bin/libtileattn.so
export PYTHONUNBUFFERED=1
steps=${*:-"tests sanitize cli bench sass"}
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv | tee "$OUT/gpu.txt"
for s in $steps; do
  echo "=== $s"
  case $s in
    tests)
      timeout 300 .carry/bin/tileattn_gpu_tests 2>&1 | tee "$OUT/gpu_tests.log" | grep -E "^\[|rel L2|FAIL|Failure|Expected|Which is|seed" | tail -80 ;;
    sanitize)
      for tool in memcheck racecheck synccheck; do
        timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 .carry/bin/tileattn_gpu_tests \
          --gtest_filter='*SmallFixedShapes*' > "$OUT/sanitize_$tool.log" 2>&1
        echo "$tool rc=$? $(grep -E 'ERROR SUMMARY|hazard' "$OUT/sanitize_$tool.log" | tail -2 | tr '\n' ' ')"
      done ;;
    variants)
      timeout 300 .carry/bin/sta_variants 10 2>&1 | tee "$OUT/variants.log" ;;
    python)
      TILEATTN_PREBUILT_LIBRARY=$PWD/.carry/bin/libtileattn.so python3 -m pip install --no-build-isolation --no-deps \
        --quiet ./python 2>&1 | tail -3
      (cd /tmp && python3 -c "import tileattn, sys; print('installed at', tileattn.__file__)")
      (cd python/tests && unset TILEATTN_LIBRARY && timeout 400 python3 -m pytest -q -p no:cacheprovider . 2>&1 \
        | tee "$OUT/pytest.log" | tail -40) ;;
    cli)
      timeout 400 .carry/bin/tileattn 2>&1 | tee "$OUT/main_job.log" ;;
    bench)
      timeout 550 python3 bench/bench_sta.py --out "$OUT" 2>&1 | tee "$OUT/bench.log" | grep -v Warning ;;
    sass)
      cuobjdump --dump-sass .carry/bin/libtileattn.so > "$OUT/sass.txt" 2>&1
      grep -oE "HGMMA\.[0-9A-Za-z.]+|UTMALDG\.[0-9A-Z.]+|UTMASTG\.[0-9A-Z.]+|SYNCS\.[A-Z.]+|USETMAXREG[.A-Z]*|LDL|STL" \
        "$OUT/sass.txt" | sort | uniq -c | sort -rn | head -30 ;;
  esac
done

#!/usr/bin/env bash
# One device call: checks, sanitizers and timings on the lent GPU. Binaries come prebuilt in .carry/bin (built on
# the dev machine by tools/pack_device.sh); results and logs go to $OUT.
#   tools/device_run.sh [tests] [fgtests] [sanitize] [bench] [fgbench] [sass] [cli] [python] [calibrate]
#   (default: tests sanitize cli bench sass; FG_FILTER / SANITIZE_FILTER / FG_BENCH_ARGS adjust the FG steps)
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
    fgtests)
      timeout 300 .carry/bin/tileattn_gpu_tests --gtest_filter="${FG_FILTER:-Fg*:*Dynamic*:StaForwardGpu.SmallFixedShapes}" \
        2>&1 | tee "$OUT/gpu_tests_fg.log" | grep -E "^\[|rel L2|FAIL|Failure|Expected|Which is|seed" | tail -80 ;;
    sanitize)
      for tool in memcheck racecheck synccheck; do
        timeout 300 compute-sanitizer --tool $tool --error-exitcode 9 .carry/bin/tileattn_gpu_tests \
          --gtest_filter="${SANITIZE_FILTER:-StaForwardGpu.SmallFixedShapes:StaBackwardGpu.SanitizerSubset:FgForwardGpu.MalformedPlanIsClampedAndSkipped:FgForwardGpu.SyntheticPlans:DynamicMaskGpu.EdgeShapes}" \
          > "$OUT/sanitize_$tool.log" 2>&1
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
    calibrate)
      # Synthetic captures at the hunyuan-720p shape (2 layers x 2 prompts, bf16, ~2.1 GB each), calibrated on the GPU
      # at two budgets and with FastVideo's rule; reports in $OUT/calibration/<run>/.
      cap=/tmp/tileattn_captures; rm -rf "$cap"; mkdir -p "$OUT/calibration"
      t0=$SECONDS
      timeout 300 .carry/bin/tileattn synth "$cap" --video 30x48x80 --tile 6x8x8 --text-len 256 --heads 24 \
        --head-dim 128 --layers 2 --steps 1 --prompts 2 --seed 1 2>&1 | tee "$OUT/calibration/synth.log"
      echo "synth took $((SECONDS - t0)) s; $(du -sh "$cap" | cut -f1) of captures" | tee -a "$OUT/calibration/synth.log"
      cands=1x3x3,3x3x3,3x3x5,3x5x5,5x3x5,5x5x5,3x5x7,5x5x9
      for run in t0.6 t0.8 argmin; do
        case $run in t*) rule=(--target-sparsity ${run#t}) ;; argmin) rule=(--rule argmin) ;; esac
        mkdir -p "$OUT/calibration/$run"
        timeout 400 .carry/bin/tileattn calibrate "$cap" --candidates $cands "${rule[@]}" --device gpu \
          -o "$OUT/calibration/$run/windows.json" 2>&1 | tee "$OUT/calibration/$run/calibrate.log"
      done
      rm -rf "$cap"
      tar -C "$OUT" -czf "$OUT/calibration.tar.gz" calibration && rm -rf "$OUT/calibration" ;;  # one file comes back
    bench)
      timeout 550 python3 bench/bench_sta.py --out "$OUT" --backward 2>&1 | tee "$OUT/bench.log" | grep -v Warning ;;
    fgbench)
      timeout 550 python3 bench/bench_fg.py --out "$OUT" ${FG_BENCH_ARGS:-} 2>&1 | tee "$OUT/bench_fg.log" | grep -v Warning ;;
    sass)
      cuobjdump --dump-sass .carry/bin/libtileattn.so > "$OUT/sass.txt" 2>&1
      grep -oE "HGMMA\.[0-9A-Za-z.]+|UTMALDG\.[0-9A-Z.]+|UTMASTG\.[0-9A-Z.]+|SYNCS\.[A-Z.]+|USETMAXREG[.A-Z]*|LDL|STL" \
        "$OUT/sass.txt" | sort | uniq -c | sort -rn | head -30 ;;
  esac
done

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
  rm -rf /tmp/fgv; mkdir -p /tmp/fgv
  for r in 1 2 3; do
    for dir in "$after" "$FG_VARIANT"; do
      tag=$([ "$dir" = "$after" ] && echo after || echo variant)
      LD_LIBRARY_PATH=$dir "$after/tileattn" bench --fg --fg-kind random,local --fg-sparsity 0.7 --fg-key-group 1,3,16 \
        --warmup 3 --reps 10 --json "/tmp/fgv/${tag}_r$r.json" > /dev/null 2>&1 || echo "$tag round $r failed"
    done
  done
  python3 - "$OUT" <<'EOF'
import glob, json, statistics, sys
out = sys.argv[1]
t = {}
for tag in ("after", "variant"):
    for p in glob.glob(f"/tmp/fgv/{tag}_r*.json"):
        for k, v in json.load(open(p)).items():
            if k.startswith("tileattn_fg_") and k.endswith("_fwd_ms"):
                t.setdefault(k, {"after": [], "variant": []})[tag].append(v)
res = {k: {"after_ms": statistics.median(v["after"]), "variant_ms": statistics.median(v["variant"])} for k, v in t.items()}
for k, v in sorted(res.items()):
    print(f"{k:<40} {v['after_ms']:>9.2f} {v['variant_ms']:>9.2f} {v['variant_ms'] / v['after_ms']:>7.3f}")
json.dump(res, open(f"{out}/fg_variant.json", "w"), indent=1)
EOF
fi
echo "=== done $(date +%T)"

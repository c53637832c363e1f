#!/usr/bin/env bash
# The mask builders at hunyuan-720p (issue #17 part 3, docs/PERF.md "Mask builders at 720p") on the lent GPU:
#  1. timings: the synthetic builders (random, local) and the dynamic estimator (top_k, target_sparsity, top_p) at
#     N = 1, 8, 16, 64, each with its correctness check (FgSyntheticGpu.HunyuanScaleTimingAndSampledRows,
#     DynamicMaskGpu.HunyuanScaleBuildersAgainstReplay: "TIMING {json}" lines);
#  2. correctness: the rest of the synthetic and dynamic-mask GPU suites on fresh random inputs, then memcheck and
#     racecheck on a few small cases (SANITIZE=0 skips them);
#  3. optional: FgMaskCache (python/tileattn/fg.py) around dynamic_fg_plan and synthetic_fg_plan over 50 steps,
#     when torch with CUDA imports.
# Usage (on the device, in the repository copy):
#   OUT=/some/dir tools/device_mask_builders.sh BIN_DIR
# BIN_DIR holds libtileattn.so, tileattn (CLI) and tileattn_gpu_tests built from this tree (e.g. tools/pack_device.sh's
# .carry/bin). Writes into $OUT (7 files at most): gpu.txt, timing.log, suites.log, sanitize.log, cache.log (step 3
# only), mask_builders.json, mask_builders.md. Exit status: 0 when every step passed, else the first failing step's.
# GPU time: about 2-3 minutes; each step is bounded by a timeout (120 + 150 + 2 x 90 + 60 s at most).
set -euo pipefail
BIN=$(cd "${1:?usage: OUT=dir $0 BIN_DIR}" && pwd)
OUT=${OUT:-/tmp/out}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)
cd "$(dirname "$0")/.."
for f in libtileattn.so tileattn_gpu_tests; do
  [ -e "$BIN/$f" ] || { echo "device_mask_builders: $BIN/$f is missing" >&2; exit 2; }
done
export LD_LIBRARY_PATH=$BIN:${LD_LIBRARY_PATH:-}
export TILEATTN_LIBRARY=$BIN/libtileattn.so
nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,temperature.gpu,power.draw --format=csv \
  > "$OUT/gpu.txt" 2>&1 || echo "nvidia-smi failed" >> "$OUT/gpu.txt"

TIMING_TESTS="FgSyntheticGpu.HunyuanScaleTimingAndSampledRows:DynamicMaskGpu.HunyuanScaleBuildersAgainstReplay"
status=0
t0=$SECONDS
timing_rc=0
timeout 120 "$BIN/tileattn_gpu_tests" --gtest_filter="$TIMING_TESTS" > "$OUT/timing.log" 2>&1 || timing_rc=$?
echo "timing tests: rc=$timing_rc in $((SECONDS - t0)) s"
[ "$status" -ne 0 ] || status=$timing_rc

t0=$SECONDS
suites_rc=0
timeout 150 "$BIN/tileattn_gpu_tests" \
  --gtest_filter="FgSyntheticGpu.*:DynamicMaskGpu.*:FgForwardGpu.SyntheticPlans:FgForwardGpu.CapturesInCudaGraph:-$TIMING_TESTS" \
  > "$OUT/suites.log" 2>&1 || suites_rc=$?
echo "correctness suites: rc=$suites_rc in $((SECONDS - t0)) s"
[ "$status" -ne 0 ] || status=$suites_rc

# Sanitizers on small shapes of the new kernels (the one-pass estimate, the cached-key selection, the warp-per-row
# synthetic builder): memcheck and racecheck, one log. SANITIZE=0 skips.
sanitize_rc=skipped
if [ "${SANITIZE:-1}" != 0 ] && command -v compute-sanitizer > /dev/null; then
  sanitize_rc=0
  : > "$OUT/sanitize.log"
  for tool in memcheck racecheck; do
    t0=$SECONDS
    rc=0
    timeout 90 compute-sanitizer --tool $tool --error-exitcode 9 "$BIN/tileattn_gpu_tests" \
      --gtest_filter="FgSyntheticGpu.KeepDiagonal:DynamicMaskGpu.EdgeShapes:DynamicMaskGpu.EachRuleWithAndWithoutWindow" \
      >> "$OUT/sanitize.log" 2>&1 || rc=$?
    echo "sanitizer $tool: rc=$rc in $((SECONDS - t0)) s" | tee -a "$OUT/sanitize.log"
    [ "$sanitize_rc" -ne 0 ] || sanitize_rc=$rc
  done
fi

cache_rc=skipped
if PYTHONPATH=python timeout 30 python3 -c "import torch, tileattn; assert torch.cuda.is_available()" 2>/dev/null; then
  cache_rc=0
  PYTHONPATH=python timeout 60 python3 - > "$OUT/cache.log" 2>&1 <<'EOF' || cache_rc=$?
# FgMaskCache.get(step, build) over a 50-step run at 720p, build = dynamic_fg_plan(q, k, out=plan) (N = 16, top_k
# keeping 30% and target_sparsity 0.7, text 256 always kept) or synthetic_fg_plan(out=plan): per-step cost.
import json, math, torch, tileattn
from tileattn.fg import FgMaskCache
steps, T, H = 50, 115200, 24
gen = torch.Generator(device="cuda").manual_seed(1)
q = torch.randn(1, H, T, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
k = torch.randn(1, H, T, 128, device="cuda", dtype=torch.bfloat16, generator=gen)
builders = []
for rule in ("top_k", "target_sparsity"):
    N = 16
    plan = tileattn.synthetic_fg_plan(T, H, 128, N, 0.7, device="cuda")
    builders.append((f"dynamic {rule}", N, lambda rule=rule, N=N, plan=plan: tileattn.dynamic_fg_plan(
        q, k, 128, N, rule=rule, k_groups=(T // N) * 3 // 10, target_sparsity=0.7, always_keep_text=True,
        text_len=256, out=plan)))
for kind in ("random", "local"):
    for N in (16, 64):
        plan = tileattn.synthetic_fg_plan(T, H, 128, N, 0.7, kind=kind, video=(30, 48, 80), device="cuda")
        builders.append((f"synthetic {kind}", N, lambda kind=kind, N=N, plan=plan: tileattn.synthetic_fg_plan(
            T, H, 128, N, 0.7, kind=kind, video=(30, 48, 80), out=plan)))
for kind, N, build in builders:
    for R in (1, 2, 5):
        cache = FgMaskCache(R)
        cache.get(0, build)  # warm
        cache.clear()
        torch.cuda.synchronize()
        start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        for step in range(steps):
            cache.get(step, build)
        stop.record()
        torch.cuda.synchronize()
        print("CACHE " + json.dumps({"kind": kind, "N": N, "refresh": R, "steps": steps,
                                     "builds": math.ceil(steps / R), "per_step_ms": start.elapsed_time(stop) / steps}))
EOF
  echo "FgMaskCache timing: rc=$cache_rc"
fi

python3 - "$OUT" "$timing_rc" "$suites_rc" "$cache_rc" "$sanitize_rc" <<'EOF'
# Collects the TIMING / CACHE lines and the gtest verdicts into mask_builders.json and mask_builders.md.
import json, math, re, sys, os
out, timing_rc, suites_rc, cache_rc, sanitize_rc = sys.argv[1:6]
def lines(name):
    p = os.path.join(out, name)
    return open(p, errors="replace").read().splitlines() if os.path.exists(p) else []
timing = [json.loads(l[len("TIMING "):]) for l in lines("timing.log") if l.startswith("TIMING {")]
cache = [json.loads(l[len("CACHE "):]) for l in lines("cache.log") if l.startswith("CACHE {")]
verdicts = {}
for name in ("timing.log", "suites.log"):
    for l in lines(name):
        m = re.match(r"\[\s+(OK|FAILED|SKIPPED)\s+\] (\S+) \(", l)
        if m:
            verdicts[m.group(2)] = m.group(1)
seed = next((l.split("=")[-1] for l in lines("timing.log") if "TILEATTN_TEST_SEED=" in l), "?")
gpu = " ".join(lines("gpu.txt")[1:2]) or "?"
steps = 50
for t in timing:  # FgMaskCache's policy (build at 0, R, 2R, ...) over a 50-step run, from the measured build
    t["per_step_ms"] = {str(R): t["build_ms"] * math.ceil(steps / R) / steps for R in (1, 2, 5)}
json.dump({"gpu": gpu, "seed": seed, "timing_rc": timing_rc, "suites_rc": suites_rc, "cache_rc": cache_rc,
           "sanitize_rc": sanitize_rc,
           "builders": timing, "cache_measured": cache, "tests": verdicts},
          open(os.path.join(out, "mask_builders.json"), "w"), indent=1)
md = [f"# Mask builders at hunyuan-720p ({gpu}; seed {seed})", "",
      f"timing tests rc={timing_rc}, correctness suites rc={suites_rc}, sanitizers rc={sanitize_rc}, "
      f"FgMaskCache step rc={cache_rc}", "",
      "| builder | N | rule | build ms | estimate alone ms | selection ms (build - estimate) | kept | "
      "per step R=1 / 2 / 5 (50 steps) |", "|---|---|---|---|---|---|---|---|"]
for t in timing:
    est = t.get("estimate_ms")
    sel = f"{t['build_ms'] - est:.2f}" if est else "-"
    ps = " / ".join(f"{t['per_step_ms'][R]:.2f}" for R in ("1", "2", "5"))
    md.append(f"| {t['builder']} | {t['N']} | {t['rule']} | {t['build_ms']:.2f} | "
              f"{f'{est:.2f}' if est else '-'} | {sel} | {100 * t['kept']:.1f}% | {ps} |")
if cache:
    md += ["", "FgMaskCache measured (python, synthetic_fg_plan(out=plan) per build, 50 steps):", "",
           "| kind | N | refresh R | builds | per step ms |", "|---|---|---|---|---|"]
    md += [f"| {c['kind']} | {c['N']} | {c['refresh']} | {c['builds']} | {c['per_step_ms']:.3f} |" for c in cache]
failed = sorted(k for k, v in verdicts.items() if v == "FAILED")
md += ["", f"tests: {sum(v == 'OK' for v in verdicts.values())} passed, {len(failed)} failed, "
           f"{sum(v == 'SKIPPED' for v in verdicts.values())} skipped" + (": " + ", ".join(failed) if failed else "")]
open(os.path.join(out, "mask_builders.md"), "w").write("\n".join(md) + "\n")
print("\n".join(md))
EOF
for rc in "$sanitize_rc" "$cache_rc"; do
  if [ "$rc" != skipped ] && [ "$rc" -ne 0 ] && [ "$status" -eq 0 ]; then status=$rc; fi
done
exit "$status"

#!/usr/bin/env bash
# Same-run timing of two builds of tileattn on the device: the CLI's `bench` (CUDA events, median of --reps after
# warm-up) for the STA forward/backward and the FG forward, alternating the builds round by round (A B, B A, ...) so
# clock and thermal drift fall on both alike. Writes $OUT/$NAME.json (NAME=compare_builds; per key: every round's time
# for each build, the medians and after/before) and prints a table; the rounds' own files stay in /tmp/compare_builds.
#   [ONLY="sta fg"] [NAME=...] tools/device_compare_builds.sh BEFORE_DIR AFTER_DIR [ROUNDS]
# Each DIR holds the libtileattn.so of one build and, unless only the library differs, its tileattn CLI (a DIR
# without one runs the other DIR's CLI on its library). ONLY picks configurations by name (default: all).
set -euo pipefail
before=$1 after=$2 rounds=${3:-5}
OUT=${OUT:-/tmp/out}; work=/tmp/compare_builds; rm -rf "$work"; mkdir -p "$OUT" "$work"  # few files come back: rounds stay in $work
configs=(
  "sta      --windows 3x3x3,5x5x5 --backward"
  "sta_text --windows 3x3x3 --text 256"
  "fg       --fg --fg-kind random,local --fg-sparsity 0.7 --fg-key-group 1,3,16"
)
for r in $(seq 1 "$rounds"); do
  order=("$before" "$after"); [ $((r % 2)) -eq 0 ] && order=("$after" "$before")
  for dir in "${order[@]}"; do
    tag=$([ "$dir" = "$before" ] && echo before || echo after)
    cli=$dir/tileattn; [ -x "$cli" ] || cli=$before/tileattn; [ -x "$cli" ] || cli=$after/tileattn
    for c in "${configs[@]}"; do
      read -r name args <<<"$c"
      [ -z "${ONLY:-}" ] || [[ " $ONLY " == *" $name "* ]] || continue
      # shellcheck disable=SC2086
      LD_LIBRARY_PATH=$dir "$cli" bench $args --warmup 3 --reps 10 \
        --json "$work/${tag}_${name}_r$r.json" > "$work/${tag}_${name}_r$r.log" 2>&1 \
        || { echo "$tag $name round $r failed:"; tail -5 "$work/${tag}_${name}_r$r.log"; exit 1; }
    done
  done
  echo "round $r done"
done
python3 - "$OUT" "$rounds" "$work" "${NAME:-compare_builds}" <<'EOF'
import glob, json, statistics, sys
out, rounds, work, name = sys.argv[1], int(sys.argv[2]), sys.argv[3], sys.argv[4]
times = {}
for tag in ("before", "after"):
    for path in sorted(glob.glob(f"{work}/{tag}_*_r*.json")):
        config = path.rsplit("/", 1)[1][len(tag) + 1:].rsplit("_r", 1)[0]  # the CLI's keys do not name the text length
        for key, value in json.load(open(path)).items():
            if key.endswith("_ms") and not key.startswith("fg_mask_build"):
                times.setdefault(f"{config}:{key}", {"before": [], "after": []})[tag].append(value)
result = {}
print(f"{'config:key':<56} {'before ms':>10} {'after ms':>10} {'after/before':>13}")
for key, t in sorted(times.items()):
    b, a = statistics.median(t["before"]), statistics.median(t["after"])
    result[key] = {"before_ms": b, "after_ms": a, "ratio": a / b, "rounds_before": t["before"], "rounds_after": t["after"]}
    print(f"{key:<56} {b:>10.3f} {a:>10.3f} {a / b:>13.4f}")
worst = max(abs(v["ratio"] - 1) for v in result.values())
print(f"largest |after/before - 1| over {len(result)} keys: {worst:.4f}")
json.dump({"rounds": rounds, "keys": result, "largest_abs_change": worst}, open(f"{out}/{name}.json", "w"), indent=1)
EOF

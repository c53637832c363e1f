#!/usr/bin/env bash
# Same-run timing of several builds of the library (e.g. FP8 softmax variants) with one CLI: hunyuan-720p STA
# forward, fp8 at 3x3x3 and 5x5x5 (text 0) and 3x3x3 text 256, bf16 at 3x3x3 and 5x5x5 for the builds named in
# NATIVE; the builds' order rotates round by round so clock drift falls on all alike. Writes $OUT/variants.json
# (per build and key: every round's time and the median) and prints a table.
#   [NATIVE="base p0"] OUT=dir tools/device_fp8_variants.sh CLI_DIR ROUNDS name=LIB_DIR [name=LIB_DIR ...]
set -uo pipefail
cli=$1/tileattn rounds=$2; shift 2
OUT=${OUT:-/tmp/out}; work=/tmp/fp8_variants; rm -rf "$work"; mkdir -p "$OUT" "$work"
variants=("$@")
for r in $(seq 1 "$rounds"); do
  n=${#variants[@]}
  for i in $(seq 0 $((n - 1))); do
    v=${variants[$(((i + r) % n))]}; name=${v%%=*} dir=${v#*=}
    run() {  # tag, bench args
      local tag=$1; shift
      LD_LIBRARY_PATH=$dir "$cli" bench "$@" --warmup 3 --reps 10 --json "$work/${name}__${tag}__r$r.json" \
        > "$work/${name}__${tag}__r$r.log" 2>&1 || { echo "$name $tag round $r failed"; tail -3 "$work/${name}__${tag}__r$r.log"; }
    }
    run fp8 --windows 3x3x3,5x5x5 --precision fp8
    run fp8text --windows 3x3x3 --text 256 --precision fp8
    [[ " ${NATIVE:-} " == *" $name "* ]] && run native --windows 3x3x3,5x5x5
  done
  echo "round $r done $(date +%T)"
done
python3 - "$work" "$OUT/variants.json" <<'PY'
import glob, json, os, statistics, sys
work, out = sys.argv[1], sys.argv[2]
runs = {}
for f in glob.glob(work + "/*.json"):
    name, tag, _ = os.path.basename(f)[:-5].split("__")
    for k, v in json.load(open(f)).items():
        if isinstance(v, (int, float)) and k.endswith("_ms"):
            runs.setdefault(name, {}).setdefault(f"{tag}:{k}", []).append(v)
res = {n: {k: {"median": statistics.median(v), "all": v} for k, v in d.items()} for n, d in runs.items()}
json.dump(res, open(out, "w"), indent=1)
keys = sorted({k for d in res.values() for k in d})
names = sorted(res)
print("| key | " + " | ".join(names) + " |\n|---|" + "---|" * len(names))
for k in keys:
    print(f"| {k} | " + " | ".join(f"{res[n][k]['median']:.3f}" if k in res[n] else "-" for n in names) + " |")
PY

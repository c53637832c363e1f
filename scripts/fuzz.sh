#!/usr/bin/env bash
# Runs the libFuzzer harnesses (tests/fuzz) of a TILEATTN_FUZZ build, each for SECONDS seconds (default 30) from its
# seed corpus in tests/fuzz/corpus/<name>/ (read-only: new inputs go to a scratch corpus). A crash, leak, sanitizer
# report or timeout fails the run; the input that found it is copied to tests/fuzz/findings/ to be kept as a
# regression seed (add it to tests/fuzz/corpus/<name>/, which CI replays, and fix the bug).
#
#   scripts/fuzz.sh BUILD_DIR [SECONDS] [HARNESS...]     e.g. scripts/fuzz.sh build-fuzz 600 capture_struct
set -euo pipefail
cd "$(dirname "$0")/.."
build=${1:?usage: scripts/fuzz.sh BUILD_DIR [SECONDS] [HARNESS...]}
seconds=${2:-30}
shift $(( $# >= 2 ? 2 : 1 ))
harnesses=("$@")
[ ${#harnesses[@]} -gt 0 ] || harnesses=(capture_raw capture_struct strategy plan_args)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
mkdir -p tests/fuzz/findings
status=0
for h in "${harnesses[@]}"; do
  exe="$build/tests/fuzz/fuzz_$h"
  [ -x "$exe" ] || { echo "fuzz.sh: $exe not built (configure with -DTILEATTN_FUZZ=ON)" >&2; exit 2; }
  mkdir -p "$scratch/$h"
  log="$scratch/$h.log"
  # -rss_limit_mb: the readers are bounded; -timeout: a hang of more than 10 s on one input is a finding.
  if TMPDIR="$scratch" ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1 \
      "$exe" "$scratch/$h" "tests/fuzz/corpus/$h" -max_total_time="$seconds" -rss_limit_mb=2048 -timeout=10 \
      -max_len=65536 -artifact_prefix="tests/fuzz/findings/$h-" -print_final_stats=1 >"$log" 2>&1; then
    execs=$(grep -o 'stat::number_of_executed_units: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    rate=$(grep -o 'stat::average_exec_per_sec: *[0-9]*' "$log" | grep -o '[0-9]*$' || echo "?")
    cov=$(grep -o 'cov: [0-9]*' "$log" | tail -1 || true)
    echo "fuzz $h: ${seconds}s, $execs executions ($rate/s), $cov, no finding"
  else
    echo "fuzz $h: FINDING (see tests/fuzz/findings/$h-*)"; tail -40 "$log"; status=1
  fi
done
exit $status

#!/usr/bin/env bash
# CI hardening (issue 14, docs/LIMITS.md): one clang build of the host parts with AddressSanitizer +
# UndefinedBehaviorSanitizer (+ libFuzzer coverage), then
#   1. the CPU test suite (gtest, C ABI bad-input matrix included) and every CLI check, the bad-input matrix among
#      them, under the sanitizers;
#   2. the seed corpora of the fuzz harnesses replayed (earlier findings stay fixed), then each harness fuzzed for
#      FUZZ_SECONDS (default 20) seconds.
# Any sanitizer report, crash, fuzz finding or failed test fails the script. Needs the packages of
# scripts/install-deps.sh; installs clang and its libFuzzer runtime if missing. About 10 minutes on 2 cores cold.
#
#   scripts/ci-hardening.sh                 BUILD_DIR=build-hardening FUZZ_SECONDS=20 JOBS=$(nproc)
set -euo pipefail
cd "$(dirname "$0")/.."
build=${BUILD_DIR:-build-hardening}
fuzz_seconds=${FUZZ_SECONDS:-20}
jobs=${JOBS:-$(nproc)}
start=$(date +%s)

# ---- clang with libFuzzer ----
probe=$(mktemp -d)
trap 'rm -rf "$probe"' EXIT
have_fuzzer() {
  command -v clang++ >/dev/null 2>&1 || return 1
  printf '#include <cstdint>\n#include <cstddef>\nextern "C" int LLVMFuzzerTestOneInput(const uint8_t*, size_t) { return 0; }\n' \
    >"$probe/p.cpp"
  clang++ -fsanitize=fuzzer,address,undefined "$probe/p.cpp" -o "$probe/p" >/dev/null 2>&1
}
if ! have_fuzzer; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends clang libclang-rt-dev
  have_fuzzer || { echo "ci-hardening: clang cannot link -fsanitize=fuzzer after installing clang" >&2; exit 1; }
fi

# ---- the sanitized build ----
cmake -S . -B "$build" -G Ninja -DCMAKE_BUILD_TYPE=RelWithDebInfo -DCMAKE_CXX_COMPILER=clang++ \
  -DTILEATTN_CUDA=OFF -DTILEATTN_SANITIZE=ON -DTILEATTN_FUZZ=ON \
  "-DTILEATTN_BAD_INPUT_FLAGS=--no-memory-limit" >/dev/null
cmake --build "$build" -j"$jobs"
built=$(date +%s)

# ---- tests under ASan + UBSan ----
# allocator_may_return_null: an allocation the sanitizer cannot serve is std::bad_alloc, as in a release build.
export ASAN_OPTIONS=detect_leaks=1:allocator_may_return_null=1:abort_on_error=1:detect_stack_use_after_return=0
export UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
# cli.main_job and cli.calibrate_end_to_end run the CPU reference on larger shapes: minutes under ASan for code the
# CPU suite (CalibrationEndToEnd included) and the bad-input matrix already cover under the sanitizers.
# The Python tests (python.*, example.*, bench.*) load libtileattn into a Python that has no sanitizer runtime; they
# ran against the release build in the workflow.
ctest --test-dir "$build" --output-on-failure -j"$jobs" \
  -E '^(cli\.(main_job|calibrate_end_to_end)|python\..*|example\..*|bench\..*)$'
tested=$(date +%s)

# ---- fuzzing: replay every seed (regressions), then a smoke run of each harness ----
for h in capture_raw capture_struct strategy plan_args; do
  "$build/tests/fuzz/fuzz_$h" -runs=0 tests/fuzz/corpus/$h >/dev/null 2>&1 \
    || { echo "ci-hardening: a seed of tests/fuzz/corpus/$h fails again:"; "$build/tests/fuzz/fuzz_$h" -runs=0 tests/fuzz/corpus/$h 2>&1 | tail -30; exit 1; }
done
scripts/fuzz.sh "$build" "$fuzz_seconds"
done_at=$(date +%s)
echo "ci-hardening: passed; build $((built - start)) s, sanitized tests $((tested - built)) s, fuzz $((done_at - tested)) s"

#!/usr/bin/env bash
# Builds here and copies what the device needs into .carry/bin (ignored by git via .git/info/exclude).
set -euo pipefail
cd "$(dirname "$0")/.."
cmake --build --preset default -j "$(nproc)"
mkdir -p .carry/bin
cp build/libtileattn.so build/tileattn build/tests/tileattn_gpu_tests build/tests/tileattn_cpu_tests .carry/bin/
[ -f build/sta_variants ] && cp build/sta_variants .carry/bin/
du -sh .carry/bin

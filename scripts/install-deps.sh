#!/usr/bin/env bash
# Installs everything tileattn needs to build and test, from registries only:
#   Debian packages (compiler tools and C++ libraries) through apt-get,
#   the CuTe/CUTLASS headers from PyPI's nvidia-cutlass (headers only, --no-deps),
#   the Python packages the Python tests use, from PyPI: torch, diffusers (pinned: the integration is tested against
#   this release's model classes), safetensors, pytest, pyflakes.
# The CUDA 13 toolkit (nvcc) is expected at /usr/local/cuda or on PATH; without it only the host parts build.
set -euo pipefail

apt_packages=(cmake ninja-build g++ ccache python3-pip
              libcli11-dev libfmt-dev nlohmann-json3-dev libgtest-dev libbenchmark-dev)
missing=()
for p in "${apt_packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if [ ${#missing[@]} -gt 0 ]; then
  sudo_cmd=""
  [ "$(id -u)" -eq 0 ] || sudo_cmd="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo_cmd apt-get update -qq
  $sudo_cmd apt-get install -y -qq --no-install-recommends "${missing[@]}"
fi

python3 -m pip install --quiet --no-deps "nvidia-cutlass==4.2.0.0" 2>/dev/null \
  || python3 -m pip install --quiet --no-deps --break-system-packages "nvidia-cutlass==4.2.0.0"
pip_install() {
  python3 -m pip install --quiet "$@" 2>/dev/null || python3 -m pip install --quiet --break-system-packages "$@"
}
pip_install "torch==2.15.0" "diffusers==0.42.1" "safetensors>=0.8" "pytest>=8" pyflakes

python3 - <<'PY'
import os, cutlass_library
inc = os.path.join(os.path.dirname(cutlass_library.__file__), "source", "include")
assert os.path.isfile(os.path.join(inc, "cute", "arch", "mma_sm90_gmma.hpp")), inc
print("CuTe/CUTLASS headers:", inc)
PY

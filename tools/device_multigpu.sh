#!/usr/bin/env bash
# One device call on a machine with 2+ GPUs (nvidia-h200-x2 or larger) for issue 16: installs the carried wheels
# (diffusers 0.42.1 and the versions it needs; .whl, as tools/device_e2e.sh), then runs the named steps of
# bench/bench_multigpu.py; logs and JSON go to $OUT. NOT YET RUN (no multi-GPU machine was lent when it was written).
#   GPUS=1,2 tools/device_multigpu.sh [pytest] [check] [sta] [dense]
#   pytest: the distributed tests (gloo on the CPU; they do not need the GPUs)
#   check:  HunyuanVideo cut to 2+2 blocks at 720p, STA 3x3x3 and dense, one round (the plumbing on NCCL)
#   sta:    the full HunyuanVideo transformer (20+40 blocks), STA 3x3x3, 1 vs N GPUs (~6 s a step on one H200)
#   dense:  the same, dense (diffusers' default backend with the padding mask: ~29 s a step on one H200)
# The multicast-off variables are set here and again by the benchmark before any NCCL init.
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
GPUS=${GPUS:-1,2}
export PYTHONUNBUFFERED=1 TILEATTN_LIBRARY=$PWD/.carry/bin/libtileattn.so
export NCCL_NVLS_ENABLE=0 TORCH_SYMM_MEM_DISABLE_MULTICAST=1 NVSHMEM_DISABLE_NVLS=1
rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/python
python3 -c "import diffusers, torch; print('diffusers', diffusers.__version__, 'torch', torch.__version__, 'gpus', torch.cuda.device_count())" || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader | tee "$OUT/gpu.txt"
nvidia-smi topo -m > "$OUT/topo.txt" 2>&1
tag=$(echo "$GPUS" | tr , -)
for s in ${*:-check sta}; do
  echo "=== $s $(date +%T)"
  case $s in
    pytest) (cd python/tests && timeout 300 python3 -m pytest -q -p no:cacheprovider test_distributed.py 2>&1 | tee "$OUT/pytest-distributed.log" | tail -5) ;;
    check) timeout 400 python3 bench/bench_multigpu.py --gpus "$GPUS" --layers 2,2 --rounds 1 \
             --json "$OUT/h200-hunyuan-720p-2x2blocks-multigpu-$tag.json" 2>&1 | tee "$OUT/check.log" | grep -E "GPU\(s\)|efficiency|share|rel_l2|Error|error" ;;
    sta) timeout 560 python3 bench/bench_multigpu.py --gpus "$GPUS" --methods tileattn_sta_3x3x3 --rounds 3 \
           --json "$OUT/h200-hunyuan-720p-multigpu-sta-$tag.json" 2>&1 | tee "$OUT/sta.log" | grep -E "GPU\(s\)|efficiency|share|rel_l2|Error|error" ;;
    dense) timeout 560 python3 bench/bench_multigpu.py --gpus "$GPUS" --methods dense --rounds 1 \
             --json "$OUT/h200-hunyuan-720p-multigpu-dense-$tag.json" 2>&1 | tee "$OUT/dense.log" | grep -E "GPU\(s\)|efficiency|share|rel_l2|Error|error" ;;
  esac
done

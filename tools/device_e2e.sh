#!/usr/bin/env bash
# One device call for the diffusers integration: installs the carried wheels (diffusers 0.42.1 and the versions it
# needs; .whl, see README's device notes), then runs the named steps; logs and JSON go to $OUT.
#   tools/device_e2e.sh [pytest] [check] [hunyuan] [wan]
#   pytest:  the whole Python suite on the GPU (test_diffusers runs on the CPU path there too)
#   check:   HunyuanVideo cut to 2+2 blocks at 720p: full-window STA and 3x3x3 against dense, one round
#   hunyuan: bench_e2e.py on the full HunyuanVideo transformer (20+40 blocks) at 720p + 256 text (160 valid)
#   hunyuan-sta: the same, STA 3x3x3 against cuDNN unmasked and the floor only
#   hunyuan-fp8: the full transformer at 720p: cuDNN unmasked, bf16 STA 3x3x3, FP8 STA 3x3x3, the floor, and 3
#            denoising steps (bf16 vs FP8 STA final latents)
#   wan:     bench_e2e.py on Wan 2.1 14B's shape (40 blocks, 40 heads) at 720p, 81 frames, FirstBlockCache at 0.3
set -uo pipefail
OUT=${OUT:-/tmp/out}; mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 TILEATTN_LIBRARY=$PWD/.carry/bin/libtileattn.so
rm -rf /tmp/site; python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
  || exit 1
export PYTHONPATH=/tmp/site:$PWD/python
python3 -c "import diffusers, torch, huggingface_hub as h; print('diffusers', diffusers.__version__, 'torch', torch.__version__, 'hub', h.__version__); import diffusers.models.transformers.transformer_hunyuan_video" || exit 1
nvidia-smi --query-gpu=name,driver_version,clocks.sm,power.draw --format=csv,noheader | tee "$OUT/gpu.txt"
for s in ${*:-pytest check hunyuan wan}; do
  echo "=== $s $(date +%T)"
  case $s in
    pytest) (cd python/tests && timeout 400 python3 -m pytest -q -p no:cacheprovider . 2>&1 | tee "$OUT/pytest.log" | tail -15) ;;
    check) timeout 300 python3 bench/bench_e2e.py --layers 2,2 --rounds 1 \
             --methods dense_default,tileattn_sta_full,tileattn_sta_3x3x3,dense_cudnn_unmasked,attention_free \
             --json "$OUT/h200-hunyuan-720p-2x2blocks-e2e.json" 2>&1 | tee "$OUT/check.log" | grep -E "round|rel_l2|Error|error" ;;
    hunyuan) timeout 560 python3 bench/bench_e2e.py --model hunyuan --rounds 2 --cache --cache-steps 4 \
               --json "$OUT/h200-hunyuan-720p-e2e.json" 2>&1 | tee "$OUT/hunyuan.log" | grep -E "round|cache|Error|error|step_ms\"" ;;
    hunyuan-sta) timeout 300 python3 bench/bench_e2e.py --model hunyuan --rounds 2 \
               --methods dense_cudnn_unmasked,tileattn_sta_3x3x3,attention_free \
               --json "$OUT/h200-hunyuan-720p-e2e-sta.json" 2>&1 | tee "$OUT/hunyuan-sta.log" | grep -E "round|Error|error|step_ms\"" ;;
    hunyuan-fp8) timeout ${E2E_TIMEOUT:-540} python3 bench/bench_e2e.py --model hunyuan --rounds ${E2E_ROUNDS:-2} \
               --denoise-steps 3 --methods dense_cudnn_unmasked,tileattn_sta_3x3x3,tileattn_sta_3x3x3_fp8,attention_free \
               --json "$OUT/h200-hunyuan-720p-e2e-fp8.json" 2>&1 | tee "$OUT/hunyuan-fp8.log" \
               | grep -E "round|denoise|rel_l2|Error|error|step_ms\"" ;;
    wan) timeout 400 python3 bench/bench_e2e.py --model wan --rounds 2 --cache --cache-steps 5 --cache-threshold 0.3 \
           --methods dense_default,dense_cudnn_unmasked,tileattn_sta_3x3x3,tileattn_sta_5x5x5,attention_free \
           --json "$OUT/h200-wan-720p-e2e.json" 2>&1 | tee "$OUT/wan.log" | grep -E "round|Error|error|step_ms\"" ;;
  esac
done

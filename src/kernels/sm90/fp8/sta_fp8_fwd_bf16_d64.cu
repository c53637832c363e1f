// e4m3 STA forward writing bf16, head dim 64 (one instantiation per translation unit: they compile in parallel).
#include "kernels/sm90/fp8/sta_fp8_kernel.cuh"

TILEATTN_STA_FP8_FORWARD_INSTANCE(bf16, __nv_bfloat16, 64)

// e4m3 STA forward writing fp16, head dim 128 (one instantiation per translation unit: they compile in parallel).
#include "kernels/sm90/fp8/sta_fp8_kernel.cuh"

TILEATTN_STA_FP8_FORWARD_INSTANCE(fp16, __half, 128)

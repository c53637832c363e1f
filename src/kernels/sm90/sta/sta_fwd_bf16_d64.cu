// STA forward for bf16, head dim 64 (one instantiation per translation unit: they compile in parallel).
#include "kernels/sm90/sta/sta_fwd_kernel.cuh"

TILEATTN_STA_FORWARD_INSTANCE(bf16, __nv_bfloat16, 64)

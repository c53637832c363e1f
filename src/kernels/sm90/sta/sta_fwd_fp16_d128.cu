// STA forward for fp16, head dim 128 (one instantiation per translation unit: they compile in parallel).
#include "kernels/sm90/sta/sta_fwd_kernel.cuh"

TILEATTN_STA_FORWARD_INSTANCE(fp16, __half, 128)

// FG-Attn forward: fp16, head dim 128.
#include "kernels/sm90/fg/fg_fwd_kernel.cuh"

TILEATTN_FG_FORWARD_INSTANCE(fp16, __half, 128)

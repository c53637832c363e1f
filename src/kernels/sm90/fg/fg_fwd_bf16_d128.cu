// FG-Attn forward: bf16, head dim 128.
#include "kernels/sm90/fg/fg_fwd_kernel.cuh"

TILEATTN_FG_FORWARD_INSTANCE(bf16, __nv_bfloat16, 128)

#include "kernels/sm90/bwd/sta_bwd_kernel.cuh"

// STA backward kernels for bf16, head dim 64 (one translation unit per instantiation: they compile in parallel).
TILEATTN_STA_BACKWARD_INSTANCE(bf16, __nv_bfloat16, 64)

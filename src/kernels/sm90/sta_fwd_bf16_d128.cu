// Instantiation: STA forward, bf16, head dim 128. One (dtype, head_dim) per translation unit keeps builds parallel.
#include "kernels/sm90/sta_fwd_kernel.cuh"

namespace tileattn::kernels {

template <>
void launch_sta_forward_sm90<DType::bf16, 128>(const StaKernelParams& params, int64_t num_ctas, int block_n,
                                                CUstream_st* stream) {
  if (block_n == 192)
    sm90::launch<sm90::StaForwardConfig<__nv_bfloat16, 128, /*BlockN=*/192, /*Stages=*/2, /*SchedulerBarrier=*/true>>(params, num_ctas, stream);
  else
    sm90::launch<sm90::StaForwardConfig<__nv_bfloat16, 128, /*BlockN=*/128, /*Stages=*/2, /*SchedulerBarrier=*/true>>(params, num_ctas, stream);
}

}  // namespace tileattn::kernels

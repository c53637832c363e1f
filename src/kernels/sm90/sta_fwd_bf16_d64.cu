// Instantiation: STA forward, bf16, head dim 64. One (dtype, head_dim) per translation unit keeps builds parallel.
#include "kernels/sm90/sta_fwd_kernel.cuh"

namespace tileattn::kernels {

template <>
void launch_sta_forward_sm90<DType::bf16, 64>(const StaKernelParams& params, int64_t num_ctas, int block_n,
                                                CUstream_st* stream) {
  if (block_n != 128) throw CudaError("sta_forward: head dim 64 has no kernel for key blocks of " + std::to_string(block_n));
  sm90::launch<sm90::StaForwardConfig<__nv_bfloat16, 64, /*BlockN=*/128, /*Stages=*/4, /*SchedulerBarrier=*/true>>(params, num_ctas, stream);
}

}  // namespace tileattn::kernels

// The STA forward on the CUDA backend: initialize (kernel parameters and TMA tensor maps from the resolved problem)
// and run (launch). No host synchronization and no device allocation, so a call can be captured in a CUDA graph.
// Also the backend's device check (require_hopper_gpu), which every launcher calls first.
#include <cuda_runtime.h>

#include "kernels/sta_kernel_params.hpp"
#include "ops/kernel_backend.hpp"
#include "ops/kernel_dispatch.hpp"
#include "ops/sta_fp8_launch.hpp"
#include "ops/tensor_maps.hpp"
#include "tileattn/error.hpp"

namespace tileattn {

bool gpu_kernels_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return kernels::current_device_is_hopper();
}

namespace ops {

void require_hopper_gpu(const char* operation) {
  if (!gpu_kernels_available())
    throw CudaError(std::string(operation) + ": no GPU of compute capability 9.0 (Hopper) is available to this process");
}

}  // namespace ops

namespace kernels {

std::vector<StaLaunch> initialize_sta_forward(const ops::StaForwardProblem& problem) {
  const StaForwardArgs& a = *problem.sta.args;
  const detail::TileBlocks& query = problem.query;
  const detail::TileBlocks& key = problem.key;
  StaKernelParams p{};
  fill_sta_geometry(p.sta, problem.sta, query, key);
  fill_attention_heads(p.attention, a, problem.sta.geometry.num_tokens());
  p.attention.batch_in_launch = int(problem.batch.batch_per_launch);
  const TensorMapFactory maps(problem.sta, problem.batch.batch_per_launch);
  std::vector<StaLaunch> out;
  for (int64_t l = 0; l < problem.batch.launches; ++l) {
    p.attention.batch_offset = int(l * problem.batch.batch_per_launch);
    fill_qkv_maps(p, p.attention.q_tokens, maps, problem.sta, l, query, key);
    p.o_video = maps.video("out", a.out, a.q_heads, l, query.frames / 2);
    p.attention.o_tokens = maps.text("out", a.out, a.q_heads, l, query.rows(problem.sta.grid) / 2);
    out.push_back({p, problem.ctas_per_launch});
  }
  return out;
}

}  // namespace kernels

void ops::run_sta_forward(const StaForwardProblem& problem, StreamHandle stream) {
  require_hopper_gpu("sta_forward");
  if (problem.fp8) return run_sta_fp8_forward(problem, stream);
  const StaForwardArgs& a = *problem.sta.args;
  const int block_n = problem.key.rows(problem.sta.grid);
  auto* s = static_cast<CUstream_st*>(stream);
  for (const kernels::StaLaunch& l : kernels::initialize_sta_forward(problem)) {
    dispatch_dtype_head_dim(a.dtype, a.head_dim, [&]<DType T, int D>() {
      kernels::launch_sta_forward_sm90<T, D>(l.params, l.num_ctas, block_n, s);
    });
  }
}

}  // namespace tileattn

// The FG-Attn forward on the CUDA backend: initialize (the gather parameters, merging sub-block rows when M < 128,
// and the Q/O token-row maps from the resolved problem) and run (launch). No host synchronization and no device
// allocation (CUDA-graph capturable). Also the device plan download behind check_device_column_plan.
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <vector>

#include "kernels/fg_kernel_params.hpp"
#include "kernels/fg_plan_kernels.hpp"
#include "ops/kernel_backend.hpp"
#include "ops/kernel_dispatch.hpp"
#include "ops/tensor_maps.hpp"
#include "tileattn/error.hpp"

namespace tileattn {
namespace kernels {
namespace {

// Everything of the kernel parameters but the per-launch maps and base pointers (fill_launch). Runs the merge of
// M < 128 sub-block rows into the workspace first when the plan needs it.
FgKernelParams initialize_fg_forward(const ops::FgForwardProblem& problem, cudaStream_t stream) {
  const FgForwardArgs& a = *problem.args;
  FgKernelParams p{};
  FgGatherParams& g = p.gather;
  g.query_blocks = int(problem.query_blocks);
  g.key_group = int(a.plan.shape.key_group);
  g.num_key_groups = int(a.plan.shape.num_key_groups());
  g.last_group_size = int(a.plan.shape.key_group_size(g.num_key_groups - 1));
  g.query_block = int(a.plan.shape.query_block);
  if (a.plan.shape.query_block < kQueryBlockRows) {
    const FgMergedPlan merged = fg_merged_plan(a.workspace, problem.workspace);
    launch_merge_subblock_rows(a.plan, merged, stream);
    g.table = merged.table, g.membership = merged.membership, g.counts = merged.counts, g.capacity = merged.capacity;
  } else {
    g.table = a.plan.table, g.counts = a.plan.counts, g.capacity = a.plan.capacity;
  }
  g.k_head_stride = a.k.head_stride * 2, g.k_token_stride = a.k.token_stride * 2, g.k_batch_stride = a.k.batch_stride * 2;
  g.v_head_stride = a.v.head_stride * 2, g.v_token_stride = a.v.token_stride * 2, g.v_batch_stride = a.v.batch_stride * 2;
  g.tma_rows = problem.tma_rows;

  AttentionParams& attn = p.attention;
  fill_attention_heads(attn, a, a.plan.shape.tokens);
  attn.batch_in_launch = int(problem.batch.batch_per_launch);
  return p;
}

// Launch l's batch offset, query/output maps (all tokens as the 3D token-row map) and K/V bases.
void fill_launch(FgKernelParams& p, const ops::FgForwardProblem& problem, const TensorMapFactory& maps, int64_t l) {
  const FgForwardArgs& a = *problem.args;
  FgGatherParams& g = p.gather;
  AttentionParams& attn = p.attention;
  const int64_t batch_per_launch = problem.batch.batch_per_launch;
  attn.batch_offset = int(l * batch_per_launch);
  attn.q_tokens = maps.text("q", a.q, a.q_heads, l, kQueryBlockRows);
  attn.o_tokens = maps.text("out", a.out, a.q_heads, l, kQueryBlockRows / 2);
  if (g.tma_rows != 0) {
    g.k_rows = maps.text("k", a.k, a.kv_heads, l, g.tma_rows);
    g.v_rows = maps.text("v", a.v, a.kv_heads, l, g.tma_rows);
  }
  g.k = static_cast<const char*>(a.k.data) + l * batch_per_launch * g.k_batch_stride;
  g.v = static_cast<const char*>(a.v.data) + l * batch_per_launch * g.v_batch_stride;
}

}  // namespace
}  // namespace kernels

void ops::run_fg_forward(const FgForwardProblem& problem, StreamHandle stream) {
  require_hopper_gpu("fg_forward");
  const FgForwardArgs& a = *problem.args;
  auto* s = static_cast<cudaStream_t>(stream);
  kernels::FgKernelParams p = kernels::initialize_fg_forward(problem, s);
  const kernels::TensorMapFactory maps(a.dtype, a.head_dim, a.plan.shape.tokens, problem.batch.batch_per_launch);
  for (int64_t l = 0; l < problem.batch.launches; ++l) {
    kernels::fill_launch(p, problem, maps, l);
    dispatch_dtype_head_dim(a.dtype, a.head_dim, [&]<DType T, int D>() {
      kernels::launch_fg_forward_sm90<T, D>(p, problem.ctas_per_launch, s);
    });
  }
}

FixedColumnPlan ops::download_column_plan(const DeviceColumnPlan& plan, StreamHandle stream) {
  FixedColumnPlan fixed{plan.shape, plan.capacity, std::vector<int32_t>(plan.shape.num_rows() * plan.capacity),
                        std::vector<int32_t>(plan.shape.num_rows())};
  auto* s = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaMemcpyAsync(fixed.counts.data(), plan.counts, fixed.counts.size() * 4, cudaMemcpyDeviceToHost, s);
  if (err == cudaSuccess && !fixed.table.empty())
    err = cudaMemcpyAsync(fixed.table.data(), plan.table, fixed.table.size() * 4, cudaMemcpyDeviceToHost, s);
  if (err == cudaSuccess) err = cudaStreamSynchronize(s);
  if (err != cudaSuccess) throw CudaError(fmt::format("check_device_column_plan: {}", cudaGetErrorString(err)));
  return fixed;
}

}  // namespace tileattn

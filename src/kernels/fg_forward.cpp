// Host side of the FG-Attn forward: validates, merges sub-block rows when M < 128, builds the Q/O tensor maps and the
// gather parameters, launches. No host synchronization and no device allocation (CUDA-graph capturable).
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <cmath>
#include <vector>

#include "kernels/fg_kernel_params.hpp"
#include "kernels/fg_plan_kernels.hpp"
#include "kernels/fg_validation.hpp"
#include "kernels/tensor_maps.hpp"
#include "tileattn/error.hpp"
#include "tileattn/fg.hpp"

namespace tileattn {

void fg_forward(const FgForwardArgs& a, StreamHandle stream) {
  validate_fg_forward_args(a);
  if (!gpu_kernels_available())
    throw CudaError("fg_forward: no GPU of compute capability 9.0 (Hopper) is available to this process");
  auto* s = static_cast<cudaStream_t>(stream);
  const int64_t tokens = a.plan.shape.tokens;
  const int64_t query_blocks = detail::ceil_div(tokens, int64_t{kernels::kQueryBlockRows});

  kernels::FgKernelParams p{};
  kernels::FgGatherParams& g = p.gather;
  g.query_blocks = int(query_blocks);
  g.key_group = int(a.plan.shape.key_group);
  g.num_key_groups = int(a.plan.shape.num_key_groups());
  g.last_group_size = int(a.plan.shape.key_group_size(g.num_key_groups - 1));
  g.query_block = int(a.plan.shape.query_block);
  if (a.plan.shape.query_block < kernels::kQueryBlockRows) {
    const kernels::FgWorkspaceLayout layout = kernels::fg_workspace_layout(a.plan.shape, a.plan.capacity);
    const kernels::FgMergedPlan merged = kernels::fg_merged_plan(a.workspace, layout);
    kernels::launch_merge_subblock_rows(a.plan, merged, s);
    g.table = merged.table, g.membership = merged.membership, g.counts = merged.counts, g.capacity = merged.capacity;
  } else {
    g.table = a.plan.table, g.counts = a.plan.counts, g.capacity = a.plan.capacity;
  }
  g.k_head_stride = a.k.head_stride * 2, g.k_token_stride = a.k.token_stride * 2, g.k_batch_stride = a.k.batch_stride * 2;
  g.v_head_stride = a.v.head_stride * 2, g.v_token_stride = a.v.token_stride * 2, g.v_batch_stride = a.v.batch_stride * 2;

  // The query side, as the STA forward's text blocks: all tokens seen as a 3D map (d, token, batch*heads).
  StaForwardArgs maps_of{};
  maps_of.dtype = a.dtype, maps_of.batch = a.batch, maps_of.q_heads = a.q_heads, maps_of.kv_heads = a.kv_heads;
  maps_of.head_dim = a.head_dim, maps_of.video = {1, 1, tokens}, maps_of.text_len = 0;
  kernels::StaKernelParams& attn = p.attention;
  attn.num_tokens = int(tokens);
  attn.q_heads = int(a.q_heads);
  attn.kv_group = int(a.q_heads / a.kv_heads);
  attn.lse = a.lse;
  const double scale = a.scale != 0.0f ? a.scale : 1.0 / std::sqrt(double(a.head_dim));
  attn.scale_log2 = float(scale * 1.4426950408889634);

  g.tma_rows = a.plan.shape.key_group % 8 == 0 ? 8 : 0;
  const bool fold = kernels::batch_folds(a.batch, {{a.q, a.q_heads}, {a.out, a.q_heads}, {a.k, a.kv_heads},
                                                  {a.v, a.kv_heads}});
  const int64_t launches = fold ? 1 : a.batch, batch_per_launch = fold ? a.batch : 1;
  attn.batch_in_launch = int(batch_per_launch);
  const kernels::TensorMapFactory maps(maps_of, batch_per_launch);
  const int64_t ctas = batch_per_launch * a.q_heads * query_blocks;
  for (int64_t l = 0; l < launches; ++l) {
    attn.batch_offset = int(l * batch_per_launch);
    attn.q_text = maps.text("q", a.q, a.q_heads, l, kernels::kQueryBlockRows);
    attn.o_text = maps.text("out", a.out, a.q_heads, l, kernels::kQueryBlockRows / 2);
    if (g.tma_rows != 0) {
      g.k_rows = maps.text("k", a.k, a.kv_heads, l, g.tma_rows);
      g.v_rows = maps.text("v", a.v, a.kv_heads, l, g.tma_rows);
    }
    g.k = static_cast<const char*>(a.k.data) + l * batch_per_launch * g.k_batch_stride;
    g.v = static_cast<const char*>(a.v.data) + l * batch_per_launch * g.v_batch_stride;
    if (a.dtype == DType::bf16)
      a.head_dim == 128 ? kernels::launch_fg_forward_sm90<DType::bf16, 128>(p, ctas, s)
                        : kernels::launch_fg_forward_sm90<DType::bf16, 64>(p, ctas, s);
    else
      a.head_dim == 128 ? kernels::launch_fg_forward_sm90<DType::fp16, 128>(p, ctas, s)
                        : kernels::launch_fg_forward_sm90<DType::fp16, 64>(p, ctas, s);
  }
}

void check_device_column_plan(const DeviceColumnPlan& plan, StreamHandle stream) {
  validate_device_column_plan(plan);
  FixedColumnPlan fixed{plan.shape, plan.capacity, std::vector<int32_t>(plan.shape.num_rows() * plan.capacity),
                        std::vector<int32_t>(plan.shape.num_rows())};
  auto* s = static_cast<cudaStream_t>(stream);
  cudaError_t err = cudaMemcpyAsync(fixed.counts.data(), plan.counts, fixed.counts.size() * 4, cudaMemcpyDeviceToHost, s);
  if (err == cudaSuccess && !fixed.table.empty())
    err = cudaMemcpyAsync(fixed.table.data(), plan.table, fixed.table.size() * 4, cudaMemcpyDeviceToHost, s);
  if (err == cudaSuccess) err = cudaStreamSynchronize(s);
  if (err != cudaSuccess) throw CudaError(fmt::format("check_device_column_plan: {}", cudaGetErrorString(err)));
  ColumnPlan::from_fixed(fixed);  // throws ArgumentError naming "counts" or "table"
}

}  // namespace tileattn

// The STA backward on the CUDA backend: initialize (parameters, tensor maps and workspace pointers from the resolved
// problem), clear the dQ accumulator and run the three kernels. No host synchronization and no device allocation
// (the caller passes the workspace).
#include <cuda_runtime.h>

#include "kernels/sta_backward_params.hpp"
#include "ops/kernel_backend.hpp"
#include "ops/kernel_dispatch.hpp"
#include "ops/tensor_maps.hpp"
#include "tileattn/error.hpp"

namespace tileattn {
namespace kernels {
namespace {

std::vector<StaBackwardLaunch> initialize_sta_backward(const ops::StaBackwardProblem& problem) {
  const StaBackwardArgs& args = *problem.args;
  const StaForwardArgs& a = args.forward;
  const detail::TileBlocks& query = problem.query;
  const detail::TileBlocks& key = problem.key;
  const int query_rows = query.rows(problem.sta.grid), key_rows = key.rows(problem.sta.grid);
  StaBackwardParams p{};
  fill_sta_geometry(p.sta, problem.sta, query, key);
  fill_attention_heads(p, a, problem.sta.geometry.num_tokens());
  p.num_text_key_blocks = int(problem.num_text_key_blocks);
  p.num_query_blocks = int(problem.num_query_blocks);
  p.kv_heads = int(a.kv_heads);
  p.head_dim = int(a.head_dim);
  p.out = a.out.data, p.grad_out = args.grad_out.data, p.grad_q = args.grad_q.data;
  auto strides = [](const DeviceTensor& t, int64_t (&s)[3]) {
    s[0] = t.batch_stride, s[1] = t.head_stride, s[2] = t.token_stride;
  };
  strides(a.out, p.out_strides);
  strides(args.grad_out, p.grad_out_strides);
  strides(args.grad_q, p.grad_q_strides);
  p.scale = float(detail::softmax_scale<double>(a.scale, a.head_dim));
  const BackwardWorkspace& ws = problem.workspace;
  char* base = static_cast<char*>(args.workspace);
  p.dq_accum = reinterpret_cast<float*>(base + ws.dq_accum);
  p.lse_log2 = reinterpret_cast<float*>(base + ws.lse_log2);
  p.dsum = reinterpret_cast<float*>(base + ws.dsum);
  p.dq_turn = reinterpret_cast<int32_t*>(base + ws.dq_turn);

  p.batch_in_launch = int(problem.batch.batch_per_launch);
  const TensorMapFactory maps(problem.sta, problem.batch.batch_per_launch);
  std::vector<StaBackwardLaunch> out;
  for (int64_t l = 0; l < problem.batch.launches; ++l) {
    p.batch_offset = int(l * problem.batch.batch_per_launch);
    fill_qkv_maps(p, p.q_tokens, maps, problem.sta, l, query, key);
    p.do_video = maps.video("grad_out", args.grad_out, a.q_heads, l, query.frames);
    p.dk_video = maps.video("grad_k", args.grad_k, a.kv_heads, l, key.frames / 2);
    p.dv_video = maps.video("grad_v", args.grad_v, a.kv_heads, l, key.frames / 2);
    p.do_tokens = maps.text("grad_out", args.grad_out, a.q_heads, l, query_rows);
    p.dk_tokens = maps.text("grad_k", args.grad_k, a.kv_heads, l, key_rows / 2);
    p.dv_tokens = maps.text("grad_v", args.grad_v, a.kv_heads, l, key_rows / 2);
    out.push_back({p, problem.key_ctas_per_launch, problem.query_chunks_per_launch});
  }
  return out;
}

}  // namespace
}  // namespace kernels

void ops::run_sta_backward(const StaBackwardProblem& problem, StreamHandle stream) {
  require_hopper_gpu("sta_backward");
  const std::vector<kernels::StaBackwardLaunch> launches = kernels::initialize_sta_backward(problem);
  const StaBackwardArgs& args = *problem.args;
  const StaForwardArgs& a = args.forward;
  auto* s = static_cast<CUstream_st*>(stream);
  // The dQ accumulator and the deterministic turns start at zero (the whole call's, once).
  const kernels::BackwardWorkspace& ws = problem.workspace;
  char* base = static_cast<char*>(args.workspace);
  cudaError_t err = cudaMemsetAsync(base + ws.dq_accum, 0, ws.lse_log2 - ws.dq_accum, s);
  if (err == cudaSuccess) err = cudaMemsetAsync(base + ws.dq_turn, 0, ws.total - ws.dq_turn, s);
  if (err != cudaSuccess) throw CudaError(std::string("sta_backward: cudaMemsetAsync: ") + cudaGetErrorString(err));
  for (const kernels::StaBackwardLaunch& l : launches) {
    dispatch_dtype_head_dim(a.dtype, a.head_dim, [&]<DType T, int D>() {
      kernels::launch_sta_backward_sm90<T, D>(l, args.deterministic, s);
    });
  }
}

}  // namespace tileattn

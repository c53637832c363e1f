// Host side of the STA backward: validates arguments, builds the tensor maps, clears the dQ accumulator and
// launches the three kernels. No host synchronization and no device allocation (the caller passes the workspace).
#include <cuda_runtime.h>

#include <cmath>

#include "kernels/sta_backward_params.hpp"
#include "kernels/sta_validation.hpp"
#include "kernels/tensor_maps.hpp"
#include "tileattn/error.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {
namespace kernels {
namespace {

std::vector<StaBackwardLaunch> prepare_backward_launches(const StaBackwardArgs& args) {
  const StaForwardArgs& a = args.forward;
  const VideoGeometry geo(a.video, a.tile, a.text_len);
  const TiledBlocks query = tiled_blocks(a, kBwdQueryRows), key = tiled_blocks(a, kBwdKeyRows);
  StaBackwardParams p{};
  fill_shared_params(p, a, kBwdQueryRows, kBwdKeyRows);
  p.num_text_key_blocks = int((a.text_len + kBwdKeyRows - 1) / kBwdKeyRows);
  p.num_query_blocks = int(geo.num_tiles() * query.blocks_per_tile + p.num_text_query_blocks);
  p.kv_heads = int(a.kv_heads);
  p.head_dim = int(a.head_dim);
  p.out = a.out.data, p.grad_out = args.grad_out.data, p.grad_q = args.grad_q.data;
  auto strides = [](const DeviceTensor& t, int64_t (&s)[3]) {
    s[0] = t.batch_stride, s[1] = t.head_stride, s[2] = t.token_stride;
  };
  strides(a.out, p.out_strides);
  strides(args.grad_out, p.grad_out_strides);
  strides(args.grad_q, p.grad_q_strides);
  p.scale = float(a.scale != 0.0f ? a.scale : 1.0 / std::sqrt(double(a.head_dim)));
  const int64_t chunks = a.batch * a.q_heads * p.num_query_blocks;
  const BackwardWorkspace ws = backward_workspace_layout(chunks, a.head_dim);
  char* base = static_cast<char*>(args.workspace);
  p.dq_accum = reinterpret_cast<float*>(base + ws.dq_accum);
  p.lse_log2 = reinterpret_cast<float*>(base + ws.lse_log2);
  p.dsum = reinterpret_cast<float*>(base + ws.dsum);
  p.dq_turn = reinterpret_cast<int32_t*>(base + ws.dq_turn);

  const bool fold = batch_folds(a.batch, {{a.q, a.q_heads}, {a.k, a.kv_heads}, {a.v, a.kv_heads},
                                          {args.grad_out, a.q_heads}, {args.grad_q, a.q_heads},
                                          {args.grad_k, a.kv_heads}, {args.grad_v, a.kv_heads}});
  const int64_t launches = fold ? 1 : a.batch;
  const int64_t batch_per_launch = fold ? a.batch : 1;
  p.batch_in_launch = int(batch_per_launch);
  const TensorMapFactory maps(a, batch_per_launch);
  const int64_t key_blocks = geo.num_tiles() * key.blocks_per_tile + p.num_text_key_blocks;
  const int64_t key_ctas = batch_per_launch * a.kv_heads * key_blocks;
  const int64_t query_chunks = batch_per_launch * a.q_heads * p.num_query_blocks;
  if (key_ctas >= (int64_t{1} << 31) || query_chunks >= (int64_t{1} << 31))
    throw_argument_error("batch", "too many blocks for one launch");
  std::vector<StaBackwardLaunch> out;
  for (int64_t l = 0; l < launches; ++l) {
    p.batch_offset = int(l * batch_per_launch);
    p.q_video = maps.video("q", a.q, a.q_heads, l, query.frames);
    p.do_video = maps.video("grad_out", args.grad_out, a.q_heads, l, query.frames);
    p.k_video = maps.video("k", a.k, a.kv_heads, l, key.frames);
    p.v_video = maps.video("v", a.v, a.kv_heads, l, key.frames);
    p.dk_video = maps.video("grad_k", args.grad_k, a.kv_heads, l, key.frames / 2);
    p.dv_video = maps.video("grad_v", args.grad_v, a.kv_heads, l, key.frames / 2);
    p.q_text = maps.text("q", a.q, a.q_heads, l, kBwdQueryRows);
    p.do_text = maps.text("grad_out", args.grad_out, a.q_heads, l, kBwdQueryRows);
    p.k_text = maps.text("k", a.k, a.kv_heads, l, kBwdKeyRows);
    p.v_text = maps.text("v", a.v, a.kv_heads, l, kBwdKeyRows);
    p.dk_text = maps.text("grad_k", args.grad_k, a.kv_heads, l, kBwdKeyRows / 2);
    p.dv_text = maps.text("grad_v", args.grad_v, a.kv_heads, l, kBwdKeyRows / 2);
    out.push_back({p, key_ctas, query_chunks});
  }
  return out;
}

}  // namespace
}  // namespace kernels

void sta_backward(const StaBackwardArgs& args, StreamHandle stream) {
  validate_sta_backward_args(args);
  if (!gpu_kernels_available())
    throw CudaError("sta_backward: no GPU of compute capability 9.0 (Hopper) is available to this process");
  const std::vector<kernels::StaBackwardLaunch> launches = kernels::prepare_backward_launches(args);
  const StaForwardArgs& a = args.forward;
  auto* s = static_cast<CUstream_st*>(stream);
  // The dQ accumulator and the deterministic turns start at zero (the whole call's, once).
  const kernels::StaBackwardParams& p = launches.front().params;
  const int64_t chunks = a.batch * a.q_heads * p.num_query_blocks;
  const kernels::BackwardWorkspace ws = kernels::backward_workspace_layout(chunks, a.head_dim);
  char* base = static_cast<char*>(args.workspace);
  cudaError_t err = cudaMemsetAsync(base + ws.dq_accum, 0, ws.lse_log2 - ws.dq_accum, s);
  if (err == cudaSuccess) err = cudaMemsetAsync(base + ws.dq_turn, 0, ws.total - ws.dq_turn, s);
  if (err != cudaSuccess) throw CudaError(std::string("sta_backward: cudaMemsetAsync: ") + cudaGetErrorString(err));
  for (const kernels::StaBackwardLaunch& l : launches) {
    if (a.dtype == DType::bf16)
      a.head_dim == 128 ? kernels::launch_sta_backward_sm90<DType::bf16, 128>(l, args.deterministic, s)
                        : kernels::launch_sta_backward_sm90<DType::bf16, 64>(l, args.deterministic, s);
    else
      a.head_dim == 128 ? kernels::launch_sta_backward_sm90<DType::fp16, 128>(l, args.deterministic, s)
                        : kernels::launch_sta_backward_sm90<DType::fp16, 64>(l, args.deterministic, s);
  }
}

}  // namespace tileattn

// The e4m3 STA forward on the CUDA backend: initialize (the pre-pass's parameters, the e4m3 operands' tensor maps
// over the workspace, the bf16 kernel's parameter block for everything else) and run (pre-pass, then kernel).
#include "ops/sta_fp8_launch.hpp"

#include "kernels/sta_fp8_params.hpp"
#include "ops/kernel_backend.hpp"
#include "ops/kernel_dispatch.hpp"
#include "core/softmax_scale.hpp"
#include "ops/tensor_maps.hpp"

namespace tileattn {
namespace kernels {
namespace {

Fp8QuantizeParams quantize_params(const ops::StaForwardProblem& problem) {
  const StaForwardArgs& a = *problem.sta.args;
  const VideoGeometry& geo = problem.sta.geometry;
  Fp8QuantizeParams p{};
  p.q = a.q.data, p.k = a.k.data, p.v = a.v.data;
  const DeviceTensor* tensors[3] = {&a.q, &a.k, &a.v};
  int64_t* strides[3] = {p.q_strides, p.k_strides, p.v_strides};
  for (int i = 0; i < 3; ++i) {
    strides[i][0] = tensors[i]->batch_stride;
    strides[i][1] = tensors[i]->head_stride;
    strides[i][2] = tensors[i]->token_stride;
  }
  p.is_fp16 = a.dtype == DType::fp16;
  p.batch = int(a.batch), p.q_heads = int(a.q_heads), p.kv_heads = int(a.kv_heads), p.head_dim = int(a.head_dim);
  p.grid = problem.sta.grid;
  p.video_t = int(a.video.t), p.video_h = int(a.video.h), p.video_w = int(a.video.w);
  p.tile_major = a.layout == TokenLayout::tile_major;
  p.num_video_tokens = int(geo.num_video_tokens());
  p.text_len = int(a.text_len);
  p.text_valid = a.text_valid;
  p.want_lse_shift = a.lse != nullptr;
  p.softmax_scale = float(detail::softmax_scale<double>(a.scale, a.head_dim));
  p.layout = problem.fp8_workspace;
  p.workspace = static_cast<uint8_t*>(a.workspace);
  return p;
}

Fp8OperandParams operand_params(const ops::StaForwardProblem& problem) {
  const StaForwardArgs& a = *problem.sta.args;
  const Fp8Workspace& w = problem.fp8_workspace;
  auto* base = static_cast<uint8_t*>(a.workspace);
  const uint64_t d = uint64_t(a.head_dim), rows = uint64_t(w.rows);
  const CUtensorMapSwizzle row_swizzle = d == 128 ? CU_TENSOR_MAP_SWIZZLE_128B : CU_TENSOR_MAP_SWIZZLE_64B;
  const uint32_t block_n = uint32_t(problem.key.rows(problem.sta.grid));
  Fp8OperandParams f{};
  f.q8 = byte_rows_map("q (fp8)", base + w.q8, d, rows, uint64_t(w.q_bh), kQueryBlockRows, uint32_t(d), row_swizzle);
  f.k8 = byte_rows_map("k (fp8)", base + w.k8, d, rows, uint64_t(w.kv_bh), block_n, uint32_t(d), row_swizzle);
  f.v8t = byte_rows_map("v (fp8, transposed)", base + w.v8t, rows, d, uint64_t(w.kv_bh), uint32_t(d), 64,
                        CU_TENSOR_MAP_SWIZZLE_64B);
  f.k_scale = reinterpret_cast<const float*>(base + w.k_scale);
  f.q_scale = reinterpret_cast<const float*>(base + w.q_scale);
  f.v_scale = reinterpret_cast<const float*>(base + w.v_scale);
  f.v_mean = reinterpret_cast<const float*>(base + w.v_mean);
  f.lse_shift = reinterpret_cast<const float*>(base + w.lse_shift);
  f.groups = int(w.groups);
  f.rows = int(w.rows);
  return f;
}

}  // namespace
}  // namespace kernels

void ops::run_sta_fp8_forward(const StaForwardProblem& problem, StreamHandle stream) {
  const StaForwardArgs& a = *problem.sta.args;
  const int block_n = problem.key.rows(problem.sta.grid);
  auto* s = static_cast<CUstream_st*>(stream);
  const kernels::Fp8OperandParams operands = kernels::operand_params(problem);
  kernels::launch_fp8_quantize(kernels::quantize_params(problem), s);
  for (const kernels::StaLaunch& l : kernels::initialize_sta_forward(problem)) {
    const kernels::StaFp8KernelParams params{l.params, operands};
    dispatch_dtype_head_dim(a.dtype, a.head_dim, [&]<DType T, int D>() {
      kernels::launch_sta_fp8_forward_sm90<T, D>(params, l.num_ctas, block_n, s);
    });
  }
}

}  // namespace tileattn

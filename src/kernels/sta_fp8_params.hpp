#pragma once
// What the host hands the e4m3 STA forward: the pre-pass that quantizes Q, K, V into the workspace
// (fp8_workspace.hpp) and the kernel that runs the plan on those copies. The kernel's parameter block is the bf16
// kernel's (its scheduler, window walk, masks, output maps and epilogue are the same) plus the e4m3 operands; the
// bf16 kernel's input maps in it are left unset.
#include <cuda.h>

#include <cstdint>

#include "kernels/fp8_workspace.hpp"
#include "kernels/sta_kernel_params.hpp"

struct CUstream_st;

namespace tileattn::kernels {

// The e4m3 operands as the kernel loads them (all (batch * heads) of the call in one map each).
struct Fp8OperandParams {
  CUtensorMap q8;       // (d, rows, q_bh) bytes: boxes of (d, 128 rows)
  CUtensorMap k8;       // (d, rows, kv_bh): boxes of (d, block_n rows)
  CUtensorMap v8t;      // (rows, d, kv_bh): boxes of (64 keys, d)
  const float* q_scale;    // [q_bh][groups]
  const float* k_scale;    // [kv_bh][groups][kFp8ScaleWindow] (Fp8Workspace::k_scale)
  const float* v_scale;    // [kv_bh][d]
  const float* v_mean;     // [kv_bh][d]: V's channel means, which v8t has had taken out
  const float* lse_shift;  // [q_bh][rows]
  int groups;
  int rows;
};

struct StaFp8KernelParams {
  StaKernelParams base;  // attention (O token map, LSE, heads, scale), O video map, STA geometry
  Fp8OperandParams fp8;
};

// The quantizing pre-pass: reads the call's q, k, v (any strides, bf16 / fp16) and writes the workspace.
struct Fp8QuantizeParams {
  const void* q;
  const void* k;
  const void* v;
  int64_t q_strides[3], k_strides[3], v_strides[3];  // batch, head, token (elements)
  int is_fp16;
  int batch, q_heads, kv_heads, head_dim;
  detail::TileGrid grid;
  int video_t, video_h, video_w;
  int tile_major;
  int num_video_tokens, text_len;
  const int32_t* text_valid;  // optional [batch]
  int want_lse_shift;
  float softmax_scale;        // natural units
  Fp8Workspace layout;
  uint8_t* workspace;
};

// Implemented in fp8_quantize.cu: the statistics, finishing and quantizing kernels, in order on `stream`.
void launch_fp8_quantize(const Fp8QuantizeParams& params, CUstream_st* stream);

// Implemented in the sm90 translation units, one per (output dtype, head_dim).
template <DType Dtype, int HeadDim>
void launch_sta_fp8_forward_sm90(const StaFp8KernelParams& params, int64_t num_ctas, int block_n,
                                 CUstream_st* stream);

}  // namespace tileattn::kernels

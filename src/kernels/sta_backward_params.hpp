#pragma once
// What the host launcher hands the STA backward kernels, packed into one __grid_constant__ parameter block, and
// the workspace layout they share.
//
// Backward blocks: the main kernel's CTA owns a key block of 128 rows (as in the forward: whole frames of one
// tile, or 128 text tokens) and walks the query blocks of 64 rows that visit it. Query blocks are numbered per
// (batch, query head): video blocks tile * query_blocks_per_tile + sub, then text blocks of 64 tokens.
//
// Workspace, per (batch, query head, query block) "chunk": 64 rows of
//   dq_accum  fp32, 64 x head_dim: two halves (head-dim columns [0, D/2) and [D/2, D)), each stored in the wgmma
//             accumulator's fragment order (see dq_fragment_position) so that a warpgroup's partial dQ is one
//             contiguous run of bytes, added with one bulk reduction;
//   lse_log2  fp32, the forward LSE in log2 units (+inf for rows that hold no token);
//   dsum      fp32, rowwise dot(dO, O);
//   dq_turn   int32 per half: deterministic mode's semaphore (how many key blocks have added their part).
#include <cuda.h>

#include <cstdint>

#include "kernels/backward_workspace.hpp"
#include "kernels/sta_kernel_params.hpp"

namespace tileattn::kernels {

struct StaBackwardParams {
  CUtensorMap q_video, do_video, k_video, v_video, dk_video, dv_video;  // boxes: 64-row Q/dO, 128-row K/V, 64-row dK/dV
  CUtensorMap q_tokens, do_tokens, k_tokens, v_tokens, dk_tokens, dv_tokens;  // (d, token, bh): the text blocks

  StaGeometryParams sta;       // query blocks of 64 rows, key blocks of 128
  int num_tokens;
  int num_text_key_blocks;    // 128-row
  int num_query_blocks;       // per (batch, query head): video + text
  int q_heads, kv_heads, kv_group;
  int batch_in_launch, batch_offset;
  int head_dim;
  const float* lse;           // forward LSE [batch, q_heads, tokens], natural log, the layout's token order
  // Plain pointers (not offset per launch; indexed with the global batch) for the row-wise passes.
  const void* out;            // forward output O
  const void* grad_out;       // dO
  void* grad_q;               // dQ
  int64_t out_strides[3], grad_out_strides[3], grad_q_strides[3];  // batch, head, token (elements)
  float* dq_accum;
  float* lse_log2;
  float* dsum;
  int32_t* dq_turn;
  float scale;                // softmax scale
  float scale_log2;           // scale * log2(e)
};

struct StaBackwardLaunch {
  StaBackwardParams params;
  int64_t num_key_ctas;    // main kernel: batch_in_launch * kv_heads * key blocks
  int64_t num_query_chunks;  // pre/post passes: batch_in_launch * q_heads * num_query_blocks
};

// Implemented in the sm90 translation units, one per (dtype, head_dim).
template <DType Dtype, int HeadDim>
void launch_sta_backward_sm90(const StaBackwardLaunch& launch, bool deterministic, CUstream_st* stream);

}  // namespace tileattn::kernels

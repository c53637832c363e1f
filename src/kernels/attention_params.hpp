#pragma once
// The query / output side every forward kernel shares (STA and FG): queries and outputs addressed as consecutive
// token rows of (d, token, batch*heads) tensor maps, the heads and their GQA grouping, batch folding, the LSE and the
// softmax scale. STA adds its geometry (sta_kernel_params.hpp), FG its gather lists (fg_kernel_params.hpp).
#include <cuda.h>

#include <cstdint>

namespace tileattn::kernels {

inline constexpr int kQueryBlockRows = 128;  // query rows per CTA (2 consumer warpgroups x 64)

struct AttentionParams {
  // All tokens as a 3D tensor (d, token, batch*heads): Q boxes of 128 rows, O boxes of 64 (one consumer warpgroup).
  CUtensorMap q_tokens, o_tokens;
  int num_tokens;
  int q_heads;
  int kv_group;         // q_heads / kv_heads
  int batch_in_launch;  // batch elements folded into the maps' last dimension
  int batch_offset;     // index of this launch's first batch element (per-batch launches)
  float* lse;           // optional [batch, q_heads, tokens]
  float scale_log2;     // softmax scale * log2(e)
};

}  // namespace tileattn::kernels

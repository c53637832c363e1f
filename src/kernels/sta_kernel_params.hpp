#pragma once
// What the host launcher hands the STA forward kernel: tensor maps, geometry and windows, packed into one
// __grid_constant__ parameter block (no device allocation, so a launch can be captured in a CUDA graph).
#include <cuda.h>

#include <cstdint>

#include "tileattn/sta.hpp"

struct CUstream_st;

namespace tileattn::kernels {

inline constexpr int kMaxHeads = 256;  // == tileattn::kMaxQueryHeads
inline constexpr int kBlockRows = 128;    // query rows and key rows per block
inline constexpr int kTextBlockRows = 128;

struct StaKernelParams {
  // Video tokens seen as a 5D tensor (d, x1, x2, x3, batch*heads). Natural order: (d, w, h, t, bh).
  // Tile-major order: (d, w in tile, h in tile, tile * tile_t + t in tile, bh). Loads: boxes of
  // (64, tile_w, tile_h, frames_per_block); the output map's box has frames_per_block / 2 frames (one warpgroup).
  CUtensorMap q_video, k_video, v_video, o_video;
  // All tokens as a 3D tensor (d, token, bh), for text blocks: boxes of (64, 128, 1); output (64, 64, 1).
  CUtensorMap q_text, k_text, v_text, o_text;

  int extent1, extent2, extent3;  // sizes of x1, x2, x3 in the video maps (bounds for edge masks)
  int tile_t, tile_h, tile_w;
  int grid_t, grid_h, grid_w;
  int frames_per_block;      // 128 / (tile_h * tile_w)
  int blocks_per_tile;       // tile_t / frames_per_block
  int last_tile_t_blocks;    // non-empty blocks in the last tile along t (partial tiles)
  int tile_major;            // 1: tile-major token order
  int num_video_tokens;
  int num_tokens;
  int text_len;
  int num_text_query_blocks;
  int q_heads;
  int kv_group;              // q_heads / kv_heads
  int batch_in_launch;       // batch elements folded into the maps' last dimension
  int batch_offset;          // index of this launch's first batch element (per-batch launches)
  const int32_t* text_valid; // optional [batch]
  float* lse;                // optional [batch, q_heads, tokens]
  float scale_log2;          // softmax scale * log2(e)
  int16_t windows[kMaxHeads][3];
};

// Implemented in the sm90 translation units, one per (dtype, head_dim).
template <DType Dtype, int HeadDim>
void launch_sta_forward_sm90(const StaKernelParams& params, int64_t num_ctas, CUstream_st* stream);

}  // namespace tileattn::kernels

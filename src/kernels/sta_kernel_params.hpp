#pragma once
// What the host launcher hands the STA forward kernel: tensor maps, geometry and windows, packed into one
// __grid_constant__ parameter block (no device allocation, so a launch can be captured in a CUDA graph).
#include <cuda.h>

#include <cstdint>
#include <vector>

#include "tileattn/sta.hpp"

struct CUstream_st;

namespace tileattn::ops {
struct StaForwardProblem;
}

namespace tileattn::kernels {

inline constexpr int kMaxHeads = 256;     // == tileattn::kMaxQueryHeads
inline constexpr int kQueryBlockRows = 128;  // query rows per CTA (2 consumer warpgroups x 64)

struct StaKernelParams {
  // Video tokens seen as a 5D tensor (d, x1, x2, x3, batch*heads). Natural order: (d, w, h, t, bh).
  // Tile-major order: (d, w in tile, h in tile, tile * tile_t + t in tile, bh). Boxes are whole tile planes:
  // Q loads (64, tile_w, tile_h, query_frames); K/V loads (64, tile_w, tile_h, key_frames); O stores half a query
  // block (one consumer warpgroup).
  CUtensorMap q_video, k_video, v_video, o_video;
  // All tokens as a 3D tensor (d, token, bh), for text blocks: Q boxes of 128 rows, K/V of block_n, O of 64.
  CUtensorMap q_text, k_text, v_text, o_text;

  int extent1, extent2, extent3;  // sizes of x1, x2, x3 in the video maps (bounds for edge masks)
  int tile_t, tile_h, tile_w;
  int log2_tile_w, log2_tile_plane;  // tile_h and tile_w are powers of two (tile_h * tile_w in {16, 32, 64})
  int grid_t, grid_h, grid_w;
  int query_frames;              // frames per query block: 128 / (tile_h * tile_w)
  int query_blocks_per_tile;     // tile_t / query_frames
  int last_tile_query_blocks;    // non-empty query blocks of the last tile along t (partial tiles)
  int key_frames;                // frames per key block: block_n / (tile_h * tile_w)
  int key_blocks_per_tile;
  int last_tile_key_blocks;
  int tile_major;                // 1: tile-major token order
  int num_video_tokens;
  int num_tokens;
  int text_len;
  int num_text_query_blocks;
  int q_heads;
  int kv_group;                  // q_heads / kv_heads
  int batch_in_launch;           // batch elements folded into the maps' last dimension
  int batch_offset;              // index of this launch's first batch element (per-batch launches)
  const int32_t* text_valid;     // optional [batch]
  float* lse;                    // optional [batch, q_heads, tokens]
  float scale_log2;              // softmax scale * log2(e)
  int16_t windows[kMaxHeads][3];
};

// One kernel launch: its parameters and grid size. A call makes one launch, or one per batch element when the
// tensors' batch stride cannot be folded into the head dimension.
struct StaLaunch {
  StaKernelParams params;
  int64_t num_ctas;
};

// The launches of a resolved forward (ops::resolve_sta_forward; its key blocks hold problem.key.rows rows). Exported
// for tools/sta_variants.
TILEATTN_EXPORT std::vector<StaLaunch> initialize_sta_forward(const ops::StaForwardProblem& problem);

// Implemented in the sm90 translation units, one per (dtype, head_dim).
template <DType Dtype, int HeadDim>
void launch_sta_forward_sm90(const StaKernelParams& params, int64_t num_ctas, int block_n, CUstream_st* stream);

}  // namespace tileattn::kernels

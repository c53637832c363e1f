#pragma once
// What the host launcher hands the STA forward kernel: the forward's shared attention part plus the STA geometry
// (video maps, tile grid, block shapes, windows, text), packed into one __grid_constant__ parameter block (no device
// allocation, so a launch can be captured in a CUDA graph).
#include <cuda.h>

#include <cstdint>
#include <vector>

#include "kernels/attention_params.hpp"
#include "tileattn/detail/tile_grid.hpp"
#include "tileattn/sta.hpp"

struct CUstream_st;

namespace tileattn::ops {
struct StaForwardProblem;
}

namespace tileattn::kernels {

inline constexpr int kMaxHeads = 256;  // == tileattn::kMaxQueryHeads

// What the STA forward and backward kernels share: the video's tiling as the kernels address it, the query and key
// blocks (whole frames of one tile, or runs of text tokens), the per-head window table and the text part.
struct StaGeometryParams {
  detail::VideoMapExtents extents;  // bounds of the video maps (edge masks)
  detail::TileGrid grid;
  detail::TileBlocks query, key;    // frames per block = rows / (tile_h * tile_w)
  int tile_major;                   // 1: tile-major token order
  int num_video_tokens;
  int padded_video_rows;            // tiles * tile volume: the video part of the e4m3 kernel's padded tile-major rows
  int text_len;
  int num_text_query_blocks;
  const int32_t* text_valid;        // optional [batch]: valid text tokens of each batch element
  int16_t windows[kMaxHeads][3];    // per query head, in tiles
};

struct StaKernelParams {
  AttentionParams attention;  // its token maps address the text query blocks
  // Video tokens seen as a 5D tensor (d, x1, x2, x3, batch*heads). Natural order: (d, w, h, t, bh).
  // Tile-major order: (d, w in tile, h in tile, tile * tile_t + t in tile, bh). Boxes are whole tile planes:
  // Q loads (64, tile_w, tile_h, query frames); K/V loads (64, tile_w, tile_h, key frames); O stores half a query
  // block (one consumer warpgroup).
  CUtensorMap q_video, k_video, v_video, o_video;
  // K and V as (d, token, bh) for the text key blocks: boxes of block_n rows.
  CUtensorMap k_tokens, v_tokens;
  StaGeometryParams sta;
};

// One kernel launch: its parameters and grid size. A call makes one launch, or one per batch element when the
// tensors' batch stride cannot be folded into the head dimension.
struct StaLaunch {
  StaKernelParams params;
  int64_t num_ctas;
};

// The launches of a resolved forward (ops::resolve_sta_forward; its key blocks hold
// problem.key.rows(problem.sta.grid) rows). Exported for tools/sta_variants.
TILEATTN_EXPORT std::vector<StaLaunch> initialize_sta_forward(const ops::StaForwardProblem& problem);

// Implemented in the sm90 translation units, one per (dtype, head_dim).
template <DType Dtype, int HeadDim>
void launch_sta_forward_sm90(const StaKernelParams& params, int64_t num_ctas, int block_n, CUstream_st* stream);

}  // namespace tileattn::kernels

#pragma once
// CTA scheduler of the STA forward kernel: one CTA per (batch, head, query block of 128 rows). Text query blocks
// (which visit every key) come first so that the longest CTAs start first; video query blocks follow, head by head,
// tile by tile, so that CTAs resident together share most of their key tiles in L2. The key blocks a query block
// visits are window_walk.cuh's.
#include "kernels/sta_kernel_params.hpp"

namespace tileattn::sm90 {

using kernels::StaKernelParams;

struct QueryBlock {
  bool empty = false;  // an empty slice of a partial tile: nothing to do
  bool text = false;
  int batch = 0;       // within this launch
  int head = 0;
  int tile_t = 0, tile_h = 0, tile_w = 0;  // video: query tile
  int x1 = 0, x2 = 0, x3 = 0;              // video: map coordinates of the block's first row
  int text_row = 0;                        // text: first token
  int row = 0;  // first row in the padded tile-major order of the e4m3 kernel's operands (fp8/)
};

__device__ __forceinline__ QueryBlock query_block_of(const StaKernelParams& p, int64_t cta) {
  const kernels::StaGeometryParams& g = p.sta;
  QueryBlock q;
  const int64_t bh_count = int64_t(p.attention.batch_in_launch) * p.attention.q_heads;
  const int64_t text_ctas = bh_count * g.num_text_query_blocks;
  int64_t bh;
  if (cta < text_ctas) {
    bh = cta / g.num_text_query_blocks;
    q.text = true;
    q.text_row = g.num_video_tokens + int(cta % g.num_text_query_blocks) * kernels::kQueryBlockRows;
    q.row = g.padded_video_rows + (q.text_row - g.num_video_tokens);
  } else {
    cta -= text_ctas;
    const int64_t per_bh = int64_t(g.grid.grid_t) * g.grid.grid_h * g.grid.grid_w * g.query.per_tile;
    bh = cta / per_bh;
    const int block = int(cta % per_bh);
    const int tile = block / g.query.per_tile, sub = block % g.query.per_tile;
    const detail::TileCoord c = g.grid.tile_coord(tile);
    q.tile_w = c.w;
    q.tile_h = c.h;
    q.tile_t = c.t;
    q.empty = g.query.empty(g.grid, q.tile_t, sub);
    q.row = (tile * g.grid.tile_t + sub * g.query.frames) << g.grid.log2_tile_plane;
    if (g.tile_major) {
      q.x1 = 0;
      q.x2 = 0;
      q.x3 = tile * g.grid.tile_t + sub * g.query.frames;
    } else {
      q.x1 = q.tile_w * g.grid.tile_w;
      q.x2 = q.tile_h * g.grid.tile_h;
      q.x3 = q.tile_t * g.grid.tile_t + sub * g.query.frames;
    }
  }
  q.batch = int(bh / p.attention.q_heads);
  q.head = int(bh % p.attention.q_heads);
  return q;
}

}  // namespace tileattn::sm90

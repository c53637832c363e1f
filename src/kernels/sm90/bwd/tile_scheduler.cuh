#pragma once
// CTA scheduler of the STA backward pass: one CTA per (batch, kv head, key block of 128 rows). Text key blocks
// (visited by every query) come first, so the longest CTAs start first; video key blocks follow tile by tile. The
// query blocks a CTA visits are query_walk.cuh's. Also here: which rows of a block hold tokens.
#include "kernels/sm90/sta/geometry.cuh"
#include "kernels/sta_backward_params.hpp"

namespace tileattn::sm90 {

using kernels::kBwdKeyRows;
using kernels::kBwdQueryRows;
using kernels::StaBackwardParams;

struct KeyBlockTask {
  bool empty = false;  // an empty slice of a partial tile: no rows
  bool text = false;
  int batch = 0, kv_head = 0;
  int tile_t = 0, tile_h = 0, tile_w = 0, sub = 0;  // video
  int x1 = 0, x2 = 0, x3 = 0;                       // video: map coordinates of the first row
  int text_index = 0, text_row = 0;                 // text
};

__device__ __forceinline__ KeyBlockTask key_block_of(const StaBackwardParams& p, int64_t cta) {
  const StaGeometryParams& g = p.sta;
  KeyBlockTask k;
  const int64_t text_ctas = int64_t(p.batch_in_launch) * p.kv_heads * p.num_text_key_blocks;
  int64_t bh;
  if (cta < text_ctas) {
    bh = cta / p.num_text_key_blocks;
    k.text = true;
    k.text_index = int(cta % p.num_text_key_blocks);
    k.text_row = g.num_video_tokens + k.text_index * kBwdKeyRows;
  } else {
    cta -= text_ctas;
    const int64_t per_bh = int64_t(g.grid.grid_t) * g.grid.grid_h * g.grid.grid_w * g.key.per_tile;
    bh = cta / per_bh;
    const int block = int(cta % per_bh);
    const int tile = block / g.key.per_tile;
    k.sub = block % g.key.per_tile;
    const detail::TileCoord c = g.grid.tile_coord(tile);
    k.tile_w = c.w;
    k.tile_h = c.h;
    k.tile_t = c.t;
    k.empty = g.key.empty(g.grid, k.tile_t, k.sub);
    if (g.tile_major) {
      k.x3 = tile * g.grid.tile_t + k.sub * g.key.frames;
    } else {
      k.x1 = k.tile_w * g.grid.tile_w;
      k.x2 = k.tile_h * g.grid.tile_h;
      k.x3 = k.tile_t * g.grid.tile_t + k.sub * g.key.frames;
    }
  }
  k.batch = int(bh / p.kv_heads);
  k.kv_head = int(bh % p.kv_heads);
  return k;
}

// True if row `row` of the key block holds a key that can be attended (inside the video / a valid text token).
__device__ __forceinline__ bool key_row_valid(const StaBackwardParams& p, const KeyBlockTask& k, int row,
                                              int text_valid) {
  if (k.text) return k.text_index * kBwdKeyRows + row < text_valid;
  const detail::TileCoord r = p.sta.grid.row_in_tile(row);
  const detail::VideoMapExtents& e = p.sta.extents;
  return k.x1 + r.w < e.x1 && k.x2 + r.h < e.x2 && k.x3 + r.t < e.x3;
}

// Map coordinates and token of row `row` of query block `qblock`; false if the row holds no token.
__device__ __forceinline__ bool query_row_token(const StaBackwardParams& p, int qblock, int row, int64_t& token) {
  const StaGeometryParams& g = p.sta;
  const int video_blocks = g.grid.grid_t * g.grid.grid_h * g.grid.grid_w * g.query.per_tile;
  if (qblock >= video_blocks) {
    token = g.num_video_tokens + int64_t(qblock - video_blocks) * kBwdQueryRows + row;
    return token < p.num_tokens;
  }
  const int tile = qblock / g.query.per_tile, sub = qblock % g.query.per_tile;
  const detail::TileCoord c = g.grid.tile_coord(tile), r = g.grid.row_in_tile(row);
  int x1, x2, x3;
  if (g.tile_major) {
    x1 = r.w, x2 = r.h, x3 = tile * g.grid.tile_t + sub * g.query.frames + r.t;
  } else {
    x1 = c.w * g.grid.tile_w + r.w, x2 = c.h * g.grid.tile_h + r.h;
    x3 = c.t * g.grid.tile_t + sub * g.query.frames + r.t;
  }
  token = g.extents.token(x1, x2, x3);
  return g.extents.contains(x1, x2, x3) && (c.t < g.grid.grid_t - 1 || sub < g.query.last_tile);
}

}  // namespace tileattn::sm90

#pragma once
// TMA tensor maps over tileattn's [batch, heads, tokens, head_dim] tensors, shared by the forward and backward
// launchers. Video tokens are seen as a 5D tensor (d, x1, x2, x3, batch*heads): natural order (d, w, h, t, bh),
// tile-major order (d, w in tile, h in tile, tile * tile_t + t in tile, bh); boxes are 64 head-dim elements (one
// 128-byte swizzle atom) by whole tile planes by `frames`. All tokens are also seen as a 3D tensor (d, token, bh)
// for text rows, with boxes of `rows` tokens.
#include <cuda.h>

#include <bit>
#include <cmath>
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "kernels/sta_kernel_params.hpp"
#include "tileattn/sta.hpp"

namespace tileattn::kernels {

// Geometry of one kind of block (`rows` tokens = whole frames of a tile): frames per block, blocks per tile and the
// non-empty blocks of the last tile along t. Throws ArgumentError naming "tile" when a block is not whole frames.
struct TiledBlocks {
  int frames = 0;
  int blocks_per_tile = 0;
  int last_tile_blocks = 0;
};
TiledBlocks tiled_blocks(const StaForwardArgs& args, int rows);

// Map extents of the video part: (x1, x2, x3) sizes for the args' layout.
struct VideoExtents {
  int x1 = 0, x2 = 0, x3 = 0;
};
VideoExtents video_extents(const StaForwardArgs& args);

// True when batch can fold into the maps' last dimension, i.e. batch == 1 or every (tensor, heads) pair has batch
// stride = heads * head stride; otherwise the launcher makes one launch per batch element.
bool batch_folds(int64_t batch, std::initializer_list<std::pair<const DeviceTensor&, int64_t>> tensors);

class TensorMapFactory {
 public:
  TensorMapFactory(const StaForwardArgs& args, int64_t batch_per_launch) : a_(args), batch_per_launch_(batch_per_launch) {}
  CUtensorMap video(const char* name, const DeviceTensor& t, int64_t heads, int64_t launch, int64_t frames) const;
  CUtensorMap text(const char* name, const DeviceTensor& t, int64_t heads, int64_t launch, int64_t rows) const;

 private:
  const StaForwardArgs& a_;
  int64_t batch_per_launch_;
};

// The kernels' per-query-head window table (in tiles): the args' windows, or the full grid (dense).
void fill_window_table(const StaForwardArgs& args, int16_t (&table)[kMaxHeads][3]);

// Fills what the forward and backward parameter blocks share (same field names): windows, map extents, tile and
// grid shape, the two block kinds' geometry (`query_rows` / `key_rows` tokens per block), token counts, heads,
// text validity, LSE and the softmax scale in log2 units. Throws ArgumentError naming "tile" (see tiled_blocks).
template <class Params>
void fill_shared_params(Params& p, const StaForwardArgs& a, int query_rows, int key_rows) {
  const VideoGeometry geo(a.video, a.tile, a.text_len);
  const TiledBlocks query = tiled_blocks(a, query_rows), key = tiled_blocks(a, key_rows);
  fill_window_table(a, p.windows);
  const VideoExtents extents = video_extents(a);
  p.extent1 = extents.x1, p.extent2 = extents.x2, p.extent3 = extents.x3;
  p.tile_t = int(a.tile.t), p.tile_h = int(a.tile.h), p.tile_w = int(a.tile.w);
  p.log2_tile_w = std::countr_zero(uint64_t(a.tile.w));
  p.log2_tile_plane = std::countr_zero(uint64_t(a.tile.h * a.tile.w));
  p.grid_t = int(geo.grid().t), p.grid_h = int(geo.grid().h), p.grid_w = int(geo.grid().w);
  p.query_frames = query.frames, p.query_blocks_per_tile = query.blocks_per_tile;
  p.last_tile_query_blocks = query.last_tile_blocks;
  p.key_frames = key.frames, p.key_blocks_per_tile = key.blocks_per_tile, p.last_tile_key_blocks = key.last_tile_blocks;
  p.tile_major = a.layout == TokenLayout::tile_major;
  p.num_video_tokens = int(geo.num_video_tokens());
  p.num_tokens = int(geo.num_tokens());
  p.text_len = int(a.text_len);
  p.num_text_query_blocks = int((a.text_len + query_rows - 1) / query_rows);
  p.q_heads = int(a.q_heads);
  p.kv_group = int(a.q_heads / a.kv_heads);
  p.text_valid = a.text_valid;
  p.lse = a.lse;
  const double scale = a.scale != 0.0f ? a.scale : 1.0 / std::sqrt(double(a.head_dim));
  p.scale_log2 = float(scale * 1.4426950408889634);
}

// True if the current device has compute capability 9.0 (cached per device).
bool current_device_is_hopper();

}  // namespace tileattn::kernels

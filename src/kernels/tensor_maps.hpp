#pragma once
// TMA tensor maps over tileattn's [batch, heads, tokens, head_dim] tensors, shared by the forward and backward
// launchers. Video tokens are seen as a 5D tensor (d, x1, x2, x3, batch*heads): natural order (d, w, h, t, bh),
// tile-major order (d, w in tile, h in tile, tile * tile_t + t in tile, bh); boxes are 64 head-dim elements (one
// 128-byte swizzle atom) by whole tile planes by `frames`. All tokens are also seen as a 3D tensor (d, token, bh)
// for text rows, with boxes of `rows` tokens.
#include <cuda.h>

#include <cstdint>

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

// True when batch can fold into the maps' last dimension for all the given tensors (batch stride = heads * head
// stride); otherwise the launcher makes one launch per batch element.
bool batch_folds(const DeviceTensor& t, int64_t heads);

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
void fill_window_table(const StaForwardArgs& args, int16_t (&table)[256][3]);

// True if the current device has compute capability 9.0 (cached per device).
bool current_device_is_hopper();

}  // namespace tileattn::kernels

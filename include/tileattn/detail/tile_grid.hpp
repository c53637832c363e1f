#pragma once
// The tile grid of a video as the kernels see it: tile index <-> tile coordinates, a block's row <-> its place in
// the tile, and map coordinates <-> token. Plain integers and no CUDA, so host code (geometry, plans, the launchers
// that fill the kernel parameters) can use the same arithmetic as the device code.
#include <cstdint>

#include "tileattn/detail/window_rule.hpp"  // TILEATTN_HOST_DEVICE
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {
namespace detail {

// (t, h, w): a tile of the grid, or a token's place inside its tile.
struct TileCoord {
  int t, h, w;
};

// Tile shape and tiles per axis. Tile rows are ordered (t, h, w) with w fastest; tile_h and tile_w are powers of two
// (tile_h * tile_w in {16, 32, 64}), so a row's place in its tile needs no division.
struct TileGrid {
  int tile_t, tile_h, tile_w;
  int log2_tile_w, log2_tile_plane;  // log2(tile_w), log2(tile_h * tile_w)
  int grid_t, grid_h, grid_w;

  TILEATTN_HOST_DEVICE int num_tiles() const { return grid_t * grid_h * grid_w; }
  // Tiles are numbered row-major over (t, h, w).
  TILEATTN_HOST_DEVICE TileCoord tile_coord(int tile) const {
    const int w = tile % grid_w, h = (tile / grid_w) % grid_h, t = tile / (grid_w * grid_h);
    return {t, h, w};
  }
  TILEATTN_HOST_DEVICE int tile_index(int t, int h, int w) const { return (t * grid_h + h) * grid_w + w; }
  // Where row `row` of a block of whole tile planes sits, relative to the block's first row.
  TILEATTN_HOST_DEVICE TileCoord row_in_tile(int row) const {
    const int w = row & (tile_w - 1), h = (row >> log2_tile_w) & (tile_h - 1), t = row >> log2_tile_plane;
    return {t, h, w};
  }
  TILEATTN_HOST_DEVICE bool last_along_t(int tile_t_index) const { return tile_t_index == grid_t - 1; }
};

// Blocks of `frames` whole tile planes each: how many a tile holds, and how many of them are non-empty in the
// last tile along t (a partial tile has fewer frames).
struct TileBlocks {
  int frames;
  int per_tile;
  int last_tile;

  // Rows (tokens) of one block: `frames` whole tile planes.
  TILEATTN_HOST_DEVICE int rows(const TileGrid& g) const { return frames * g.tile_h * g.tile_w; }

  TILEATTN_HOST_DEVICE int in_tile(const TileGrid& g, int tile_t_index) const {
    return g.last_along_t(tile_t_index) ? last_tile : per_tile;
  }
  // Sub-block `sub` of a tile in the last row along t that holds no token.
  TILEATTN_HOST_DEVICE bool empty(const TileGrid& g, int tile_t_index, int sub) const {
    return g.last_along_t(tile_t_index) && sub >= last_tile;
  }
};

// Sizes of the video part's map axes (x1, x2, x3): (w, h, t) in natural order, (w in tile, h in tile,
// tile * tile_t + t in tile) in tile-major order. A token's index is row-major over (x3, x2, x1) in both orders.
struct VideoMapExtents {
  int x1, x2, x3;

  TILEATTN_HOST_DEVICE bool contains(int c1, int c2, int c3) const { return c1 < x1 && c2 < x2 && c3 < x3; }
  TILEATTN_HOST_DEVICE int64_t token(int c1, int c2, int c3) const { return (int64_t(c3) * x2 + c2) * x1 + c1; }
};

}  // namespace detail
}  // namespace tileattn
TILEATTN_PUBLIC_END

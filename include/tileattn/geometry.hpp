#pragma once
// Video geometry: the latent video's shape (T, H, W), its tiles, the text tokens that follow it, and the two token
// orders tileattn understands.
//
//   natural order:    the row-major (t, h, w) order a DiT produces after patchify; token = (t * H + h) * W + w.
//   tile-major order: the tokens of one tile contiguous (row-major inside the tile), tiles row-major over the grid.
//                     Partial edge tiles simply hold fewer tokens.
// In both orders the text tokens follow the video tokens, in their own order.
#include <cstdint>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "tileattn/checked.hpp"
#include "tileattn/detail/tile_grid.hpp"
#include "tileattn/detail/window_rule.hpp"
#include "tileattn/export.hpp"
#include "tileattn/types.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

// A triple along (t, h, w): a video shape, a tile shape, a tile-grid shape, a coordinate or a window (in tiles).
struct Extent3 {
  int64_t t = 0;
  int64_t h = 0;
  int64_t w = 0;

  // t * h * w; throws ArgumentError naming `argument` when the product does not fit int64_t.
  constexpr int64_t volume(std::string_view argument = "extent") const {
    return checked_product({t, h, w}, argument);
  }
  constexpr int64_t operator[](int axis) const { return axis == 0 ? t : axis == 1 ? h : w; }
  friend constexpr bool operator==(const Extent3&, const Extent3&) = default;
};

// A window counted in tiles per axis.
using Window = Extent3;

inline constexpr Extent3 kDefaultTile{6, 8, 8};

// "30x48x80"
std::string to_string(const Extent3& e);
// Parses "TxHxW" (three positive integers). Throws ArgumentError naming `argument` on anything else.
Extent3 parse_extent3(std::string_view text, std::string_view argument);

class VideoGeometry {
 public:
  // Throws ArgumentError if any extent is < 1 or text_len < 0.
  explicit VideoGeometry(Extent3 video, Extent3 tile = kDefaultTile, int64_t text_len = 0);

  const Extent3& video() const { return video_; }
  const Extent3& tile() const { return tile_; }
  // Tiles per axis: ceil(video / tile).
  const Extent3& grid() const { return grid_; }
  int64_t text_len() const { return text_len_; }

  int64_t num_video_tokens() const { return video_.volume(); }
  int64_t num_tokens() const { return video_.volume() + text_len_; }
  int64_t num_tiles() const { return grid_.volume(); }
  // True when every tile is full (the video shape is a multiple of the tile shape).
  bool tiles_exact() const;

  // The tile grid as the kernels address it: tile index <-> tile coordinates (tile_index and tile_coord below are
  // its arithmetic). Its log2 fields are exact for power-of-two tile_h and tile_w, as the GPU kernels' tiles are.
  detail::TileGrid tile_grid() const;
  // Sizes of the video part's map axes for `layout` (the kernels' tensor-map view; tile-major assumes whole tiles).
  detail::VideoMapExtents map_extents(TokenLayout layout) const;

  int64_t tile_index(const Extent3& tile_coord) const;
  Extent3 tile_coord(int64_t tile_index) const;
  // Coordinate of the tile that holds video token `token` (a coordinate in tokens).
  Extent3 tile_of(const Extent3& token) const { return {token.t / tile_.t, token.h / tile_.h, token.w / tile_.w}; }
  // Coordinate (in tokens) of the tile's first token.
  Extent3 tile_origin(const Extent3& tile_coord) const;
  // Number of valid tokens along each axis of the tile (smaller than the tile shape at the far edges).
  Extent3 tile_extent(const Extent3& tile_coord) const;
  int64_t tile_token_count(int64_t tile_index) const { return tile_extent(tile_coord(tile_index)).volume(); }

  int64_t natural_index(const Extent3& token) const { return (token.t * video_.h + token.h) * video_.w + token.w; }
  Extent3 token_coord(int64_t natural_index) const;
  // Position of natural token `natural_index` (video or text) in tile-major order.
  int64_t tile_major_index(int64_t natural_index) const;
  // order[i] = natural index of the token at tile-major position i; size num_tokens().
  std::vector<int64_t> tile_major_order() const;

  friend bool operator==(const VideoGeometry&, const VideoGeometry&) = default;

 private:
  Extent3 video_;
  Extent3 tile_;
  Extent3 grid_;
  int64_t text_len_;
  std::vector<int64_t> tile_offsets_;  // first tile-major position of each tile (prefix sums of tile sizes)
};

// Checks a window against the tile grid: each axis must satisfy 1 <= w <= grid and be odd or equal to the grid.
// Throws ArgumentError naming `argument` otherwise.
void validate_window(const Window& window, const Extent3& grid, std::string_view argument);

// Key tiles visited by query tile `query_tile`: a box starting at first_key_tile() with the window's extent.
Extent3 first_key_tile(const Extent3& query_tile, const Extent3& grid, const Window& window);

// Reorders tokens between the natural and the tile-major order. `src`/`dst` hold `outer` independent sequences
// (e.g. batch * heads) of geometry.num_tokens() rows of `row_elems` elements each, contiguous.
template <class T>
void tile(const VideoGeometry& geometry, std::span<const T> natural, std::span<T> tiled, int64_t outer,
          int64_t row_elems);
template <class T>
void untile(const VideoGeometry& geometry, std::span<const T> tiled, std::span<T> natural, int64_t outer,
            int64_t row_elems);

}  // namespace tileattn
TILEATTN_PUBLIC_END

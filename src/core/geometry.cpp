#include "tileattn/geometry.hpp"

#include <fmt/format.h>

#include <bit>
#include <charconv>
#include <cstdint>

#include "tileattn/error.hpp"

namespace tileattn {

using detail::ceil_div;

std::string to_string(const Extent3& e) { return fmt::format("{}x{}x{}", e.t, e.h, e.w); }

Extent3 parse_extent3(std::string_view text, std::string_view argument) {
  int64_t values[3];
  std::string_view rest = text;
  for (int i = 0; i < 3; ++i) {
    size_t end = i < 2 ? rest.find('x') : rest.size();
    if (end == std::string_view::npos) end = rest.size();
    std::string_view part = rest.substr(0, end);
    auto [ptr, ec] = std::from_chars(part.data(), part.data() + part.size(), values[i]);
    if (part.empty() || ec != std::errc() || ptr != part.data() + part.size() || values[i] < 1 ||
        (i < 2 && end == rest.size())) {
      throw_argument_error(argument, fmt::format("expected TxHxW with three positive integers, got '{}'", text));
    }
    rest = i < 2 ? rest.substr(end + 1) : std::string_view{};
  }
  return {values[0], values[1], values[2]};
}

VideoGeometry::VideoGeometry(Extent3 video, Extent3 tile, int64_t text_len)
    : video_(video), tile_(tile), text_len_(text_len) {
  if (video.t < 1 || video.h < 1 || video.w < 1)
    throw_argument_error("video_shape", fmt::format("every extent must be >= 1, got {}", to_string(video)));
  if (tile.t < 1 || tile.h < 1 || tile.w < 1)
    throw_argument_error("tile", fmt::format("every extent must be >= 1, got {}", to_string(tile)));
  if (text_len < 0) throw_argument_error("text_len", fmt::format("must be >= 0, got {}", text_len));
  using limits::kMaxTokens;
  if (text_len > kMaxTokens)
    throw_argument_error("text_len", fmt::format("{} text tokens exceed the token limit {} (limits::kMaxTokens)",
                                                 text_len, kMaxTokens));
  for (int a = 0; a < 3; ++a)
    if (video[a] > kMaxTokens)
      throw_argument_error("video_shape", fmt::format("{} exceeds the token limit {} along one axis (limits::kMaxTokens)",
                                                      to_string(video), kMaxTokens));
  const int64_t video_tokens = video.volume("video_shape");  // each extent < 2^31: checked, cannot reach 2^93
  if (checked_add(video_tokens, text_len, "video_shape") > kMaxTokens)
    throw_argument_error("video_shape", fmt::format("{} video + {} text tokens exceed the token limit {} "
                                                    "(limits::kMaxTokens)", video_tokens, text_len, kMaxTokens));
  grid_ = {ceil_div(video.t, tile.t), ceil_div(video.h, tile.h), ceil_div(video.w, tile.w)};
  if (grid_.volume("tile") > limits::kMaxTiles)
    throw_argument_error("tile", fmt::format("video {} in tiles of {} makes {} tiles, more than {} (limits::kMaxTiles)",
                                             to_string(video), to_string(tile), grid_.volume(), limits::kMaxTiles));
  tile_offsets_.resize(grid_.volume() + 1);
  tile_offsets_[0] = 0;
  for (int64_t i = 0; i < grid_.volume(); ++i) tile_offsets_[i + 1] = tile_offsets_[i] + tile_token_count(i);
}

bool VideoGeometry::tiles_exact() const {
  return video_.t % tile_.t == 0 && video_.h % tile_.h == 0 && video_.w % tile_.w == 0;
}

// Grid extents and tile indices fit int (limits::kMaxTiles); the tile shape is the kernels' int too.
detail::TileGrid VideoGeometry::tile_grid() const {
  return {int(tile_.t), int(tile_.h), int(tile_.w), std::countr_zero(uint64_t(tile_.w)),
          std::countr_zero(uint64_t(tile_.h) * uint64_t(tile_.w)), int(grid_.t), int(grid_.h), int(grid_.w)};
}

detail::VideoMapExtents VideoGeometry::map_extents(TokenLayout layout) const {
  if (layout == TokenLayout::tile_major) return {int(tile_.w), int(tile_.h), int(num_tiles() * tile_.t)};
  return {int(video_.w), int(video_.h), int(video_.t)};
}

int64_t VideoGeometry::tile_index(const Extent3& c) const {
  return tile_grid().tile_index(int(c.t), int(c.h), int(c.w));
}

Extent3 VideoGeometry::tile_coord(int64_t i) const {
  const detail::TileCoord c = tile_grid().tile_coord(int(i));
  return {c.t, c.h, c.w};
}

Extent3 VideoGeometry::tile_origin(const Extent3& c) const { return {c.t * tile_.t, c.h * tile_.h, c.w * tile_.w}; }

Extent3 VideoGeometry::tile_extent(const Extent3& c) const {
  Extent3 o = tile_origin(c);
  return {std::min(tile_.t, video_.t - o.t), std::min(tile_.h, video_.h - o.h), std::min(tile_.w, video_.w - o.w)};
}

Extent3 VideoGeometry::token_coord(int64_t n) const {
  return {n / (video_.h * video_.w), (n / video_.w) % video_.h, n % video_.w};
}

int64_t VideoGeometry::tile_major_index(int64_t n) const {
  if (n >= num_video_tokens()) return n;  // text keeps its place after the video
  Extent3 p = token_coord(n);
  Extent3 c = tile_of(p);
  Extent3 o = tile_origin(c);
  Extent3 e = tile_extent(c);
  int64_t local = ((p.t - o.t) * e.h + (p.h - o.h)) * e.w + (p.w - o.w);
  return tile_offsets_[tile_index(c)] + local;
}

std::vector<int64_t> VideoGeometry::tile_major_order() const {
  std::vector<int64_t> order(num_tokens());
  for (int64_t n = 0; n < num_tokens(); ++n) order[tile_major_index(n)] = n;
  return order;
}

void validate_window(const Window& window, const Extent3& grid, std::string_view argument) {
  static constexpr const char* kAxis[] = {"t", "h", "w"};
  for (int a = 0; a < 3; ++a) {
    int64_t w = window[a], n = grid[a];
    if (w < 1 || w > n)
      throw_argument_error(argument, fmt::format("window {} along {} must be in [1, {}] (the tile grid is {}), got {}",
                                                 to_string(window), kAxis[a], n, to_string(grid), w));
    if (w % 2 == 0 && w != n)
      throw_argument_error(argument, fmt::format("window {} along {} must be odd or equal to the grid extent {}, got {}",
                                                 to_string(window), kAxis[a], n, w));
  }
}

Extent3 first_key_tile(const Extent3& q, const Extent3& grid, const Window& window) {
  return {detail::window_start(q.t, grid.t, window.t), detail::window_start(q.h, grid.h, window.h),
          detail::window_start(q.w, grid.w, window.w)};
}

namespace {
template <class T>
void permute_rows(const VideoGeometry& g, std::span<const T> src, std::span<T> dst, int64_t outer, int64_t row_elems,
                  bool to_tiled, const char* src_name, const char* dst_name) {
  const int64_t n = g.num_tokens();
  if (outer < 0 || row_elems < 1)
    throw_argument_error("row_elems", fmt::format("outer >= 0 and row_elems >= 1 required, got {} and {}", outer,
                                                  row_elems));
  const int64_t expect = checked_product({outer, n, row_elems}, src_name);
  if (static_cast<int64_t>(src.size()) != expect)
    throw_argument_error(src_name, fmt::format("expected {} elements ({} x {} tokens x {}), got {}", expect, outer, n,
                                               row_elems, src.size()));
  if (static_cast<int64_t>(dst.size()) != expect)
    throw_argument_error(dst_name, fmt::format("expected {} elements, got {}", expect, dst.size()));
  const std::vector<int64_t> order = g.tile_major_order();
  for (int64_t o = 0; o < outer; ++o) {
    for (int64_t i = 0; i < n; ++i) {
      int64_t from = to_tiled ? order[i] : i, to = to_tiled ? i : order[i];
      const T* s = src.data() + (o * n + from) * row_elems;
      std::copy(s, s + row_elems, dst.data() + (o * n + to) * row_elems);
    }
  }
}
}  // namespace

template <class T>
void tile(const VideoGeometry& g, std::span<const T> natural, std::span<T> tiled, int64_t outer, int64_t row_elems) {
  permute_rows(g, natural, tiled, outer, row_elems, true, "natural", "tiled");
}
template <class T>
void untile(const VideoGeometry& g, std::span<const T> tiled, std::span<T> natural, int64_t outer, int64_t row_elems) {
  permute_rows(g, tiled, natural, outer, row_elems, false, "tiled", "natural");
}

// Exported by name: an explicit instantiation takes its visibility from here, not from the header's namespace.
template TILEATTN_EXPORT void tile<float>(const VideoGeometry&, std::span<const float>, std::span<float>, int64_t, int64_t);
template TILEATTN_EXPORT void tile<double>(const VideoGeometry&, std::span<const double>, std::span<double>, int64_t, int64_t);
template TILEATTN_EXPORT void tile<uint16_t>(const VideoGeometry&, std::span<const uint16_t>, std::span<uint16_t>, int64_t, int64_t);
template TILEATTN_EXPORT void untile<float>(const VideoGeometry&, std::span<const float>, std::span<float>, int64_t, int64_t);
template TILEATTN_EXPORT void untile<double>(const VideoGeometry&, std::span<const double>, std::span<double>, int64_t, int64_t);
template TILEATTN_EXPORT void untile<uint16_t>(const VideoGeometry&, std::span<const uint16_t>, std::span<uint16_t>, int64_t, int64_t);

}  // namespace tileattn

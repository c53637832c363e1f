#include <gtest/gtest.h>

#include <array>
#include <bit>
#include <numeric>
#include <random>
#include <set>

#include "tileattn/detail/tile_grid.hpp"
#include "tileattn/error.hpp"
#include "tileattn/geometry.hpp"

using namespace tileattn;

TEST(Extent3, ParsesAndPrints) {
  EXPECT_EQ(parse_extent3("30x48x80", "x"), (Extent3{30, 48, 80}));
  EXPECT_EQ(to_string(Extent3{6, 8, 8}), "6x8x8");
  for (const char* bad : {"", "3x3", "3x3x3x3", "0x1x1", "-1x2x2", "axbxc", "3x3x", "x3x3", "3,3,3", "3x3x3 "}) {
    try {
      parse_extent3(bad, "--window");
      FAIL() << "accepted '" << bad << "'";
    } catch (const ArgumentError& e) {
      EXPECT_EQ(e.argument(), "--window");
      EXPECT_NE(std::string(e.what()).find("--window"), std::string::npos);
    }
  }
}

TEST(VideoGeometry, HunyuanGrid) {
  VideoGeometry g({30, 48, 80}, {6, 8, 8}, 256);
  EXPECT_EQ(g.grid(), (Extent3{5, 6, 10}));
  EXPECT_EQ(g.num_tiles(), 300);
  EXPECT_EQ(g.num_video_tokens(), 115200);
  EXPECT_EQ(g.num_tokens(), 115456);
  EXPECT_TRUE(g.tiles_exact());
}

TEST(VideoGeometry, PartialTilesHaveValidExtents) {
  VideoGeometry g({7, 9, 17}, {6, 8, 8});
  EXPECT_EQ(g.grid(), (Extent3{2, 2, 3}));
  EXPECT_FALSE(g.tiles_exact());
  EXPECT_EQ(g.tile_extent({1, 1, 2}), (Extent3{1, 1, 1}));
  EXPECT_EQ(g.tile_extent({0, 0, 0}), (Extent3{6, 8, 8}));
  int64_t total = 0;
  for (int64_t i = 0; i < g.num_tiles(); ++i) total += g.tile_token_count(i);
  EXPECT_EQ(total, g.num_video_tokens());
}

TEST(VideoGeometry, RejectsBadArguments) {
  EXPECT_THROW(VideoGeometry({0, 1, 1}), ArgumentError);
  EXPECT_THROW(VideoGeometry({1, 1, 1}, {1, 0, 1}), ArgumentError);
  EXPECT_THROW(VideoGeometry({1, 1, 1}, {1, 1, 1}, -1), ArgumentError);
}

// The tile-major order against its definition: tiles row-major over the grid, tokens row-major inside each tile,
// text last; and tile/untile are inverse permutations.
TEST(VideoGeometry, TileMajorOrderMatchesDefinitionOnRandomShapes) {
  std::mt19937 rng(7);
  for (int trial = 0; trial < 60; ++trial) {
    auto r = [&](int lo, int hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
    const VideoGeometry g({r(1, 9), r(1, 11), r(1, 13)}, {r(1, 4), r(1, 5), r(1, 5)}, r(0, 5));
    std::vector<int64_t> expected;
    const Extent3 grid = g.grid(), tile = g.tile(), video = g.video();
    for (int64_t tt = 0; tt < grid.t; ++tt)
      for (int64_t th = 0; th < grid.h; ++th)
        for (int64_t tw = 0; tw < grid.w; ++tw)
          for (int64_t t = tt * tile.t; t < std::min((tt + 1) * tile.t, video.t); ++t)
            for (int64_t h = th * tile.h; h < std::min((th + 1) * tile.h, video.h); ++h)
              for (int64_t w = tw * tile.w; w < std::min((tw + 1) * tile.w, video.w); ++w)
                expected.push_back((t * video.h + h) * video.w + w);
    for (int64_t i = 0; i < g.text_len(); ++i) expected.push_back(g.num_video_tokens() + i);
    ASSERT_EQ(g.tile_major_order(), expected) << to_string(video) << " tile " << to_string(tile);

    const int64_t outer = 2, row = 3, n = g.num_tokens();
    std::vector<float> natural(outer * n * row), tiled(natural.size()), back(natural.size());
    std::iota(natural.begin(), natural.end(), 0.0f);
    tileattn::tile<float>(g, natural, tiled, outer, row);
    for (int64_t o = 0; o < outer; ++o)
      for (int64_t i = 0; i < n; ++i)
        for (int64_t c = 0; c < row; ++c)
          ASSERT_EQ(tiled[(o * n + i) * row + c], natural[(o * n + expected[i]) * row + c]);
    untile<float>(g, tiled, back, outer, row);
    ASSERT_EQ(back, natural);
  }
}

TEST(VideoGeometry, TileRejectsWrongSizes) {
  VideoGeometry g({2, 2, 2}, {1, 1, 1});
  std::vector<float> a(8), b(7);
  EXPECT_THROW(tileattn::tile<float>(g, a, b, 1, 1), ArgumentError);
}

// The window rule against its definition: the window is the w consecutive tiles whose centre is as close to the
// query tile as possible while staying inside the grid, i.e. [c - w/2, c + w/2] shifted into [0, n).
TEST(Window, StartMatchesBruteForce) {
  for (int64_t n = 1; n <= 12; ++n)
    for (int64_t w = 1; w <= n; ++w) {
      if (w % 2 == 0 && w != n) continue;
      for (int64_t c = 0; c < n; ++c) {
        // brute force: among all starts s in [0, n - w], the one whose window's middle is nearest to c
        int64_t best = -1, best_dist = 1 << 30;
        for (int64_t s = 0; s + w <= n; ++s) {
          int64_t dist = std::abs((s + w / 2) - c);
          if (dist < best_dist) best = s, best_dist = dist;
        }
        EXPECT_EQ(detail::window_start(c, n, w), best) << "n=" << n << " w=" << w << " c=" << c;
        EXPECT_GE(c, detail::window_start(c, n, w));
        EXPECT_LT(c, detail::window_start(c, n, w) + w);
      }
    }
}

TEST(Window, ValidationNamesTheArgument) {
  const Extent3 grid{5, 6, 10};
  EXPECT_NO_THROW(validate_window({3, 3, 3}, grid, "w"));
  EXPECT_NO_THROW(validate_window({5, 6, 10}, grid, "w"));  // full grid (even extents allowed)
  for (Window bad : {Window{2, 3, 3}, Window{7, 3, 3}, Window{3, 0, 3}, Window{3, 3, 11}, Window{3, 4, 3}}) {
    try {
      validate_window(bad, grid, "windows[4]");
      FAIL() << "accepted " << to_string(bad);
    } catch (const ArgumentError& e) {
      EXPECT_EQ(e.argument(), "windows[4]");
    }
  }
}

// The kernels' tile arithmetic (detail::TileGrid, TileBlocks, VideoMapExtents) against the host geometry, on random
// shapes with power-of-two tile planes as the kernels require.
TEST(TileGrid, MatchesVideoGeometryOnRandomShapes) {
  std::mt19937 rng(11);
  auto r = [&](int lo, int hi) { return int(std::uniform_int_distribution<int>(lo, hi)(rng)); };
  for (int trial = 0; trial < 60; ++trial) {
    const int tile_h = 1 << r(1, 3), tile_w = 1 << r(1, 3), tile_t = r(1, 6);
    const VideoGeometry g({r(1, 13), r(1, 33), r(1, 33)}, {tile_t, tile_h, tile_w});
    const detail::TileGrid grid{tile_t, tile_h, tile_w, std::countr_zero(unsigned(tile_w)),
                                std::countr_zero(unsigned(tile_h * tile_w)), int(g.grid().t), int(g.grid().h),
                                int(g.grid().w)};
    ASSERT_EQ(grid.num_tiles(), g.num_tiles());
    const detail::TileGrid host = g.tile_grid();  // what the host hands the kernels
    EXPECT_EQ((std::array{host.tile_t, host.tile_h, host.tile_w, host.log2_tile_w, host.log2_tile_plane, host.grid_t,
                          host.grid_h, host.grid_w}),
              (std::array{grid.tile_t, grid.tile_h, grid.tile_w, grid.log2_tile_w, grid.log2_tile_plane, grid.grid_t,
                          grid.grid_h, grid.grid_w}));
    for (int tile = 0; tile < grid.num_tiles(); ++tile) {
      const detail::TileCoord c = grid.tile_coord(tile);
      ASSERT_EQ((Extent3{c.t, c.h, c.w}), g.tile_coord(tile));
      ASSERT_EQ(grid.tile_index(c.t, c.h, c.w), tile);
    }
    for (int row = 0; row < tile_t * tile_h * tile_w; ++row) {
      const detail::TileCoord c = grid.row_in_tile(row);
      ASSERT_EQ((Extent3{c.t, c.h, c.w}), (Extent3{row / (tile_h * tile_w), row / tile_w % tile_h, row % tile_w}));
    }
    // Natural order: the map axes are (w, h, t) of the video.
    const detail::VideoMapExtents video{int(g.video().w), int(g.video().h), int(g.video().t)};
    const detail::VideoMapExtents natural = g.map_extents(TokenLayout::natural);
    EXPECT_EQ((std::array{natural.x1, natural.x2, natural.x3}), (std::array{video.x1, video.x2, video.x3}));
    const Extent3 token{r(0, int(g.video().t) - 1), r(0, int(g.video().h) - 1), r(0, int(g.video().w) - 1)};
    EXPECT_EQ(video.token(int(token.w), int(token.h), int(token.t)), g.natural_index(token));
    EXPECT_TRUE(video.contains(int(token.w), int(token.h), int(token.t)));
    EXPECT_FALSE(video.contains(int(token.w), int(token.h), int(g.video().t)));
    // Blocks of one frame: the last tile along t holds as many as it has frames.
    const int last_frames = int(g.video().t - (g.grid().t - 1) * tile_t);
    const detail::TileBlocks frames{1, tile_t, last_frames};
    EXPECT_EQ(frames.in_tile(grid, grid.grid_t - 1), last_frames);
    EXPECT_EQ(frames.in_tile(grid, 0), grid.grid_t == 1 ? last_frames : tile_t);
    EXPECT_TRUE(frames.empty(grid, grid.grid_t - 1, last_frames));
    EXPECT_FALSE(frames.empty(grid, grid.grid_t - 1, last_frames - 1));
    if (grid.grid_t > 1) EXPECT_FALSE(frames.empty(grid, 0, tile_t - 1));
  }
}

// Tile-major order seen as the kernels' map (x1, x2, x3) = (w in tile, h in tile, tile * tile_t + t in tile): with
// whole tiles a token's map index is its tile-major position.
TEST(TileGrid, TileMajorMapExtentsMatchTileMajorIndex) {
  const VideoGeometry g({6, 8, 12}, {3, 4, 2}, 5);
  const detail::TileGrid grid = g.tile_grid();
  const detail::VideoMapExtents e = g.map_extents(TokenLayout::tile_major);
  EXPECT_EQ((std::array{e.x1, e.x2, e.x3}), (std::array{2, 4, int(g.num_tiles()) * 3}));
  for (int64_t n = 0; n < g.num_video_tokens(); ++n) {
    const Extent3 p = g.token_coord(n), c = g.tile_of(p), o = g.tile_origin(c);
    ASSERT_EQ(g.tile_index(c), grid.tile_index(int(c.t), int(c.h), int(c.w)));
    ASSERT_EQ(e.token(int(p.w - o.w), int(p.h - o.h), int(g.tile_index(c) * 3 + p.t - o.t)), g.tile_major_index(n));
  }
}

#include <gtest/gtest.h>

#include <random>

#include "tileattn/error.hpp"
#include "tileattn/plan.hpp"

using namespace tileattn;

namespace {

std::mt19937& rng() {
  static std::mt19937 r(2026);
  return r;
}
int64_t rand_in(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng()); }

// A valid random window for one axis: odd and <= n, or exactly n.
int64_t random_window(int64_t n) {
  if (rand_in(0, 4) == 0) return n;
  int64_t w = 2 * rand_in(0, (n - 1) / 2) + 1;
  return std::min(w, n);
}

// The definition from the issue, token by token, independent of the plan code: video query tile c sees key tile k
// along each axis iff s <= k < s + w with s = clamp(c - floor(w/2), 0, n - w); text rows/columns are all visible.
bool defined_visible(const VideoGeometry& g, const Window& win, int64_t i, int64_t j) {
  const int64_t nv = g.num_video_tokens();
  if (i >= nv || j >= nv) return true;
  const Extent3 a = g.token_coord(i), b = g.token_coord(j), tile = g.tile(), grid = g.grid();
  const int64_t qc[3] = {a.t / tile.t, a.h / tile.h, a.w / tile.w}, kc[3] = {b.t / tile.t, b.h / tile.h, b.w / tile.w};
  for (int ax = 0; ax < 3; ++ax) {
    int64_t s = std::max<int64_t>(0, std::min(qc[ax] - win[ax] / 2, grid[ax] - win[ax]));
    if (kc[ax] < s || kc[ax] >= s + win[ax]) return false;
  }
  return true;
}

}  // namespace

TEST(BlockPartition, BlocksCoverEveryTokenOnce) {
  for (int trial = 0; trial < 40; ++trial) {
    const VideoGeometry g({rand_in(1, 9), rand_in(1, 9), rand_in(1, 9)}, {rand_in(1, 4), rand_in(1, 4), rand_in(1, 4)},
                          rand_in(0, 300));
    const BlockPartition p(g, rand_in(0, g.tile().t), rand_in(1, 130));
    std::vector<int> seen(g.num_tokens(), 0);
    for (int64_t b = 0; b < p.num_blocks(); ++b) {
      auto tokens = p.tokens(b);
      EXPECT_EQ(static_cast<int64_t>(tokens.size()), p.block_size(b));
      for (int64_t t : tokens) {
        ++seen[t];
        EXPECT_EQ(p.block_of_token(t), b);
      }
    }
    for (int s : seen) ASSERT_EQ(s, 1);
  }
}

TEST(StaPlan, MatchesTokenwiseDefinitionOnRandomShapes) {
  for (int trial = 0; trial < 60; ++trial) {
    const VideoGeometry g({rand_in(1, 9), rand_in(1, 9), rand_in(1, 11)},
                          {rand_in(1, 4), rand_in(1, 4), rand_in(1, 5)}, rand_in(0, 7));
    const Extent3 grid = g.grid();
    const int64_t heads = rand_in(1, 3);
    std::vector<Window> windows;
    for (int64_t h = 0; h < heads; ++h)
      windows.push_back({random_window(grid.t), random_window(grid.h), random_window(grid.w)});
    const BlockPartition part(g, rand_in(0, g.tile().t), rand_in(1, 5));
    const BlockPlan plan = build_sta_plan(part, windows);
    const int64_t n = g.num_tokens(), nb = part.num_blocks();
    std::vector<int64_t> block_of(n);
    for (int64_t i = 0; i < n; ++i) block_of[i] = part.block_of_token(i);
    int64_t visible_total = 0;
    for (int64_t h = 0; h < heads; ++h) {
      std::vector<char> planned(nb * nb, 0);  // the plan as a block matrix
      for (int64_t q = 0; q < nb; ++q)
        for (int32_t k : plan.key_blocks(h, q)) planned[q * nb + k] = 1;
      int64_t visible = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
          const bool want = defined_visible(g, windows[h], i, j);
          visible += want;
          ASSERT_EQ(bool(planned[block_of[i] * nb + block_of[j]]), want) << "video " << to_string(g.video()) << " tile " << to_string(g.tile())
                                                << " window " << to_string(windows[h]) << " q " << i << " k " << j;
        }
      EXPECT_NEAR(plan.sparsity().per_head[h], 1.0 - double(visible) / double(n * n), 1e-12);
      visible_total += visible;
    }
    EXPECT_EQ(plan.sparsity().visited_pairs, visible_total);
    for (int k = 0; k < 50; ++k) {  // the plan's own per-token query agrees
      const int64_t h = rand_in(0, heads - 1), i = rand_in(0, n - 1), j = rand_in(0, n - 1);
      EXPECT_EQ(plan.visits(h, i, j), defined_visible(g, windows[h], i, j));
    }
  }
}

TEST(StaPlan, EveryVideoQueryTileVisitsTheSameNumberOfTiles) {
  const VideoGeometry g({30, 48, 80}, {6, 8, 8}, 256);
  for (Window w : {Window{3, 3, 3}, Window{5, 3, 5}, Window{5, 5, 5}, Window{5, 6, 10}}) {
    const BlockPlan plan = build_sta_plan(BlockPartition(g), std::vector<Window>{w});
    for (int64_t t = 0; t < g.num_tiles(); ++t)
      ASSERT_EQ(static_cast<int64_t>(plan.key_blocks(0, t).size()), w.volume() + 2);  // + 2 text blocks of 128
  }
}

TEST(StaPlan, HunyuanSparsityMatchesClosedForm) {
  const VideoGeometry g({30, 48, 80}, {6, 8, 8}, 0);
  const BlockPlan p3 = build_sta_plan(BlockPartition(g), std::vector<Window>{{3, 3, 3}});
  EXPECT_NEAR(p3.sparsity().total, 1.0 - 27.0 / 300.0, 1e-12);
  const BlockPlan p5 = build_sta_plan(BlockPartition(g), std::vector<Window>{{5, 5, 5}});
  EXPECT_NEAR(p5.sparsity().total, 1.0 - 125.0 / 300.0, 1e-12);
}

TEST(StaPlan, RejectsBadWindowsNamingTheHead) {
  const BlockPartition part(VideoGeometry({12, 16, 16}, {6, 8, 8}));  // grid 2x2x2
  try {
    build_sta_plan(part, std::vector<Window>{{1, 1, 1}, {3, 1, 1}});
    FAIL();
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "windows[1]");
  }
  EXPECT_THROW(build_sta_plan(part, std::vector<Window>{}), ArgumentError);
}

TEST(Plan, TransposeListsExactlyTheVisitingQueryBlocks) {
  const VideoGeometry g({7, 9, 10}, {3, 4, 4}, 5);
  const BlockPartition part(g, 2, 2);
  const BlockPlan plan = build_sta_plan(part, std::vector<Window>{{3, 1, 3}, {1, 3, 1}});
  const auto tr = plan.transpose();
  int64_t entries = 0;
  for (int64_t h = 0; h < plan.heads(); ++h)
    for (int64_t k = 0; k < plan.num_key_blocks(); ++k) {
      auto qs = tr.query_blocks(h, k);
      entries += qs.size();
      for (size_t i = 1; i < qs.size(); ++i) EXPECT_LT(qs[i - 1], qs[i]);
      for (int32_t q : qs) {
        auto row = plan.key_blocks(h, q);
        EXPECT_NE(std::find(row.begin(), row.end(), k), row.end());
      }
    }
  EXPECT_EQ(entries, plan.num_entries());
}

TEST(Plan, BlockMaskAndDenseBuilders) {
  const VideoGeometry g({4, 4, 4}, {2, 2, 2}, 3);
  const BlockPartition part(g);
  const BlockPlan dense = build_dense_plan(part, 2);
  EXPECT_DOUBLE_EQ(dense.sparsity().total, 0.0);
  const BlockPlan diag = build_block_mask_plan(part, 1, [](int64_t, int64_t q, int64_t k) { return q == k; });
  int64_t visited = 0;
  for (int64_t b = 0; b < part.num_blocks(); ++b) visited += part.block_size(b) * part.block_size(b);
  EXPECT_EQ(diag.sparsity().visited_pairs, visited);
  EXPECT_DOUBLE_EQ(diag.density(0, 0), double(part.block_size(0)) / double(g.num_tokens()));
}

TEST(Plan, RejectsMalformedRows) {
  const BlockPartition part(VideoGeometry({2, 2, 2}, {1, 1, 1}));
  const int64_t nb = part.num_blocks();
  std::vector<std::vector<int32_t>> rows(nb);
  rows[0] = {1, 1};
  EXPECT_THROW(BlockPlan(part, 1, rows), ArgumentError);
  rows[0] = {static_cast<int32_t>(nb)};
  EXPECT_THROW(BlockPlan(part, 1, rows), ArgumentError);
  rows.pop_back();
  EXPECT_THROW(BlockPlan(part, 1, rows), ArgumentError);
}

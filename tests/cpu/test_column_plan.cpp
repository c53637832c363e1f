#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>

#include "test_util.hpp"
#include "tileattn/column_plan.hpp"
#include "tileattn/error.hpp"
#include "tileattn/reference.hpp"

using namespace tileattn;
using namespace tileattn::testing;

namespace {

int64_t random_m() { return int64_t{16} << rand_in(0, 3); }

// Random rows: each row is empty, full, a single group or a random subset, chosen per row.
std::vector<std::vector<int32_t>> random_rows(const ColumnPlanShape& s) {
  std::vector<std::vector<int32_t>> rows(s.num_rows());
  const int64_t ng = s.num_key_groups();
  for (auto& row : rows) {
    const int64_t kind = rand_in(0, 5);
    const double density = std::uniform_real_distribution<double>(0.0, 1.0)(rng());
    for (int64_t g = 0; g < ng; ++g) {
      const bool keep = kind == 0   ? false
                        : kind == 1 ? true
                        : kind == 2 ? false
                                    : std::uniform_real_distribution<double>(0.0, 1.0)(rng()) < density;
      if (keep) row.push_back(static_cast<int32_t>(g));
    }
    if (kind == 2) row.push_back(static_cast<int32_t>(rand_in(0, ng - 1)));
  }
  return rows;
}

// The element mask the rows define, written out densely: mask[(h * tokens + i) * tokens + j].
std::vector<char> element_mask(const ColumnPlanShape& s, const std::vector<std::vector<int32_t>>& rows) {
  const int64_t n = s.tokens;
  std::vector<char> mask(s.heads * n * n, 0);
  for (int64_t h = 0; h < s.heads; ++h)
    for (int64_t i = 0; i < n; ++i)
      for (int32_t g : rows[h * s.num_query_blocks() + i / s.query_block])
        for (int64_t j = g * s.key_group; j < std::min<int64_t>((g + 1) * s.key_group, n); ++j)
          mask[(h * n + i) * n + j] = 1;
  return mask;
}

ColumnPlanShape random_shape(int64_t max_tokens) {
  return {rand_in(1, max_tokens), rand_in(1, 3), random_m(), rand_in(1, 9)};
}

// A random plan with its rows and the element mask they define.
struct RandomPlan {
  ColumnPlanShape shape;
  std::vector<std::vector<int32_t>> rows;
  ColumnPlan plan;
  std::vector<char> mask;
};
RandomPlan random_plan(int64_t max_tokens) {
  const ColumnPlanShape s = random_shape(max_tokens);
  auto rows = random_rows(s);
  ColumnPlan plan = ColumnPlan::from_rows(s, rows);
  std::vector<char> mask = element_mask(s, rows);
  return {s, std::move(rows), std::move(plan), std::move(mask)};
}

}  // namespace

TEST(ColumnPlan, CsrInvariantsAndBadInput) {
  const ColumnPlanShape s{40, 2, 16, 3};  // 3 query blocks (16, 16, 8 rows), 14 key groups (the last holds 1 key)
  EXPECT_EQ(s.num_query_blocks(), 3);
  EXPECT_EQ(s.num_key_groups(), 14);
  EXPECT_EQ(s.query_block_size(2), 8);
  EXPECT_EQ(s.key_group_size(13), 1);
  std::vector<std::vector<int32_t>> rows{{0, 5, 13}, {}, {2}, {0, 1, 2, 3}, {13}, {}};
  const ColumnPlan plan = ColumnPlan::from_rows(s, rows);
  ASSERT_EQ(plan.offsets().size(), 7u);
  EXPECT_EQ(plan.offsets().front(), 0);
  EXPECT_EQ(plan.offsets().back(), plan.num_entries());
  EXPECT_EQ(plan.num_entries(), 9);
  EXPECT_EQ(plan.max_row_length(), 4);
  auto r = plan.row(1, 0);
  EXPECT_EQ(std::vector<int32_t>(r.begin(), r.end()), rows[3]);
  EXPECT_TRUE(plan.visits(0, 0, 39));
  EXPECT_FALSE(plan.visits(0, 16, 0));
  EXPECT_TRUE(plan.visits(1, 20, 39));
  EXPECT_FALSE(plan.visits(1, 33, 39));

  expect_argument_error([&] { ColumnPlan::from_rows({40, 2, 8, 3}, rows); }, "query_block");
  expect_argument_error([&] { ColumnPlan::from_rows({40, 2, 16, 0}, rows); }, "key_group");
  expect_argument_error([&] { ColumnPlan::from_rows({0, 2, 16, 3}, rows); }, "tokens");
  expect_argument_error([&] { ColumnPlan::from_rows({40, 0, 16, 3}, rows); }, "heads");
  expect_argument_error([&] { ColumnPlan::from_rows(s, {{0}}); }, "rows");
  auto bad = rows;
  bad[0] = {5, 0};
  expect_argument_error([&] { ColumnPlan::from_rows(s, bad); }, "rows");
  bad[0] = {5, 5};
  expect_argument_error([&] { ColumnPlan::from_rows(s, bad); }, "rows");
  bad[0] = {14};
  expect_argument_error([&] { ColumnPlan::from_rows(s, bad); }, "rows");
  bad[0] = {-1};
  expect_argument_error([&] { ColumnPlan::from_rows(s, bad); }, "rows");
  expect_argument_error([&] { ColumnPlan(s, {0, 1}, {0}); }, "offsets");
  expect_argument_error([&] { ColumnPlan(s, {0, 2, 1, 1, 1, 1, 2}, {0, 1}); }, "offsets");
  expect_argument_error([&] { ColumnPlan(s, {0, 0, 0, 0, 0, 0, 3}, {0, 1}); }, "offsets");
  expect_argument_error([&] { ColumnPlan(s, {0, 2, 2, 2, 2, 2, 2}, {1, 1}); }, "indices");
  expect_argument_error([&] { ColumnPlan(s, {0, 1, 1, 1, 1, 1, 1}, {20}); }, "indices");
  expect_argument_error([&] { plan.row(2, 0); }, "head");
  expect_argument_error([&] { plan.row(0, 3); }, "query_block");
  expect_argument_error([&] { plan.visits(0, 40, 0); }, "query");
  expect_argument_error([&] { plan.visits(0, 0, -1); }, "key");
}

TEST(ColumnPlan, FixedCapacityRoundTrip) {
  for (int trial = 0; trial < 30; ++trial) {
    const ColumnPlanShape s = random_shape(300);
    const ColumnPlan plan = ColumnPlan::from_rows(s, random_rows(s));
    const FixedColumnPlan exact = plan.to_fixed();
    EXPECT_EQ(exact.capacity, plan.max_row_length());
    EXPECT_EQ(ColumnPlan::from_fixed(exact), plan);
    const FixedColumnPlan roomy = plan.to_fixed(plan.max_row_length() + 3);
    ASSERT_EQ(static_cast<int64_t>(roomy.table.size()), s.num_rows() * roomy.capacity);
    for (int64_t r = 0; r < s.num_rows(); ++r) {
      EXPECT_EQ(roomy.counts[r], plan.offsets()[r + 1] - plan.offsets()[r]);
      for (int64_t slot = roomy.counts[r]; slot < roomy.capacity; ++slot)
        EXPECT_EQ(roomy.table[r * roomy.capacity + slot], -1);
    }
    EXPECT_EQ(ColumnPlan::from_fixed(roomy), plan);
    if (plan.max_row_length() > 0) expect_argument_error([&] { plan.to_fixed(plan.max_row_length() - 1); }, "capacity");
  }
  const ColumnPlan plan = ColumnPlan::from_rows({20, 1, 16, 2}, {{1, 4, 7}, {0}});
  FixedColumnPlan f = plan.to_fixed(4);
  f.counts[1] = 5;
  expect_argument_error([&] { ColumnPlan::from_fixed(f); }, "counts");
  f = plan.to_fixed(4);
  std::swap(f.table[0], f.table[1]);
  expect_argument_error([&] { ColumnPlan::from_fixed(f); }, "table");
  f = plan.to_fixed(4);
  f.table.pop_back();
  expect_argument_error([&] { ColumnPlan::from_fixed(f); }, "table");
  f = plan.to_fixed(4);
  f.capacity = -1;
  expect_argument_error([&] { ColumnPlan::from_fixed(f); }, "capacity");
}

TEST(ColumnPlan, SparsityAndVisitsMatchBruteForce) {
  for (int trial = 0; trial < 30; ++trial) {
    const auto [s, rows, plan, mask] = random_plan(200);
    const int64_t n = s.tokens;
    const SparsityReport report = plan.sparsity();
    int64_t total = 0;
    for (int64_t h = 0; h < s.heads; ++h) {
      int64_t visited = 0;
      for (int64_t i = 0; i < n; ++i)
        for (int64_t j = 0; j < n; ++j) {
          visited += mask[(h * n + i) * n + j];
          ASSERT_EQ(plan.visits(h, i, j), mask[(h * n + i) * n + j] != 0);
        }
      EXPECT_DOUBLE_EQ(report.per_head[h], 1.0 - double(visited) / double(n * n));
      total += visited;
    }
    EXPECT_EQ(report.visited_pairs, total);
    EXPECT_EQ(report.total_pairs, s.heads * n * n);
  }
}

TEST(ColumnPlan, BlockMaskRoundTrip) {
  for (int trial = 0; trial < 30; ++trial) {
    const int64_t M = random_m(), N = rand_in(1, 6);
    TokenBlockMask m{rand_in(1, 400), rand_in(1, 3), M * rand_in(1, 3), N * rand_in(1, 20), {}};
    m.mask.resize(m.heads * m.num_row_blocks() * m.num_col_blocks());
    for (auto& x : m.mask) x = rand_in(0, 2) == 0;
    const ColumnPlan plan = ColumnPlan::from_block_mask(m, M, N);
    EXPECT_EQ(plan.to_block_mask(m.block_rows, m.block_cols), m);
    // The element mask of the plan is the block mask's.
    for (int probe = 0; probe < 200; ++probe) {
      const int64_t h = rand_in(0, m.heads - 1), i = rand_in(0, m.tokens - 1), j = rand_in(0, m.tokens - 1);
      ASSERT_EQ(plan.visits(h, i, j), m.at(h, i / m.block_rows, j / m.block_cols));
    }
    // A block-aligned plan survives plan -> block mask -> plan.
    EXPECT_EQ(ColumnPlan::from_block_mask(plan.to_block_mask(m.block_rows, m.block_cols), M, N), plan);
  }
  expect_argument_error(
      [] {
        ColumnPlan::from_block_mask({64, 1, 48, 8, std::vector<uint8_t>(8, 1)}, 32, 1);
      },
      "query_block");
  expect_argument_error(
      [] {
        ColumnPlan::from_block_mask({64, 1, 64, 8, std::vector<uint8_t>(8, 1)}, 32, 3);
      },
      "key_group");
  expect_argument_error([] { ColumnPlan::from_block_mask({64, 1, 64, 8, std::vector<uint8_t>(7, 1)}, 32, 4); }, "mask");
}

TEST(ColumnPlan, ToBlockMaskOfAnyPlanMatchesBruteForce) {
  for (int trial = 0; trial < 20; ++trial) {
    const auto [s, rows, plan, mask] = random_plan(150);
    const int64_t R = rand_in(1, 70), C = rand_in(1, 70), n = s.tokens;
    const TokenBlockMask bm = plan.to_block_mask(R, C);
    for (int64_t h = 0; h < s.heads; ++h)
      for (int64_t r = 0; r < bm.num_row_blocks(); ++r)
        for (int64_t c = 0; c < bm.num_col_blocks(); ++c) {
          bool any = false;
          for (int64_t i = r * R; i < std::min((r + 1) * R, n); ++i)
            for (int64_t j = c * C; j < std::min((c + 1) * C, n); ++j) any = any || mask[(h * n + i) * n + j];
          ASSERT_EQ(bm.at(h, r, c), any);
        }
  }
}

TEST(ColumnPlan, CoverOfBlockPlanIsTheSmallestSuperset) {
  for (int trial = 0; trial < 25; ++trial) {
    const VideoGeometry g({rand_in(1, 4), rand_in(1, 6), rand_in(1, 6)}, {rand_in(1, 3), rand_in(1, 3), rand_in(1, 3)},
                          rand_in(0, 40));
    const BlockPartition part(g, 0, rand_in(1, 20));
    const int64_t heads = rand_in(1, 2);
    std::vector<char> bits(heads * part.num_blocks() * part.num_blocks());
    for (auto& b : bits) b = rand_in(0, 2) == 0;
    const int64_t nb = part.num_blocks();
    const BlockPlan bp = build_block_mask_plan(
        part, heads, [&](int64_t h, int64_t q, int64_t k) { return bits[(h * nb + q) * nb + k] != 0; });
    for (TokenLayout layout : {TokenLayout::natural, TokenLayout::tile_major}) {
      const int64_t M = 16, N = rand_in(1, 5), n = g.num_tokens();
      const ColumnPlan cover = cover_block_plan(bp, layout, M, N);
      const std::vector<int64_t> order = g.tile_major_order();
      auto token = [&](int64_t pos) { return layout == TokenLayout::natural ? pos : order[pos]; };
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t qb = 0; qb < cover.num_query_blocks(); ++qb)
          for (int64_t grp = 0; grp < cover.num_key_groups(); ++grp) {
            bool any = false;
            for (int64_t i = qb * M; i < std::min((qb + 1) * M, n) && !any; ++i)
              for (int64_t j = grp * N; j < std::min((grp + 1) * N, n) && !any; ++j)
                any = bp.visits(h, token(i), token(j));
            auto r = cover.row(h, qb);
            ASSERT_EQ(std::binary_search(r.begin(), r.end(), static_cast<int32_t>(grp)), any);
          }
    }
  }
}

// reference_attention_columns against the element-masked reference with the same mask, written out independently.
TEST(ColumnPlan, ReferenceMatchesMaskedReference) {
  for (int trial = 0; trial < 30; ++trial) {
    const int64_t kv = rand_in(1, 2);
    const AttentionShape shape{rand_in(1, 2), kv * rand_in(1, 2), kv, rand_in(1, 150), 8 * rand_in(1, 2)};
    const ColumnPlanShape s{shape.tokens, shape.q_heads, random_m(), rand_in(1, 9)};
    const auto rows = random_rows(s);
    const ColumnPlan plan = ColumnPlan::from_rows(s, rows);
    const std::vector<char> mask = element_mask(s, rows);
    const auto q = random_vector(shape.batch * shape.q_heads * shape.tokens * shape.head_dim);
    const auto k = random_vector(shape.batch * shape.kv_heads * shape.tokens * shape.head_dim);
    const auto v = random_vector(k.size());
    std::vector<float> out(q.size()), lse(shape.batch * shape.q_heads * shape.tokens), want_out(out), want_lse(lse);
    ReferenceOptions o;
    o.threads = 2;
    reference_attention_columns(shape, plan, q, k, v, out, lse, o);
    const int64_t n = shape.tokens;
    reference_attention_masked(
        shape, [&](int64_t, int64_t h, int64_t i, int64_t j) { return mask[(h * n + i) * n + j] != 0; }, q, k, v,
        want_out, want_lse, o);
    // Same keys in the same (ascending) order through the same row kernel: bitwise equal.
    EXPECT_EQ(out, want_out);
    EXPECT_EQ(lse, want_lse);
    for (int64_t r = 0; r < s.num_rows(); ++r)
      if (rows[r].empty()) {  // an all-empty row: out 0, lse -inf for each of its queries
        const int64_t h = r / s.num_query_blocks(), i = (r % s.num_query_blocks()) * s.query_block;
        EXPECT_EQ(lse[h * n + i], -INFINITY);
        EXPECT_EQ(out[(h * n + i) * shape.head_dim], 0.0f);
      }
  }
  const ColumnPlan plan = ColumnPlan::from_rows({20, 1, 16, 1}, std::vector<std::vector<int32_t>>(2));
  std::vector<float> x(20 * 8), kv(20 * 4), l(20), l2(40);
  expect_argument_error([&] { reference_attention_columns({1, 1, 1, 21, 8}, plan, x, x, x, x, l); }, "q");
  expect_argument_error([&] { reference_attention_columns({1, 2, 1, 20, 4}, plan, x, kv, kv, x, l2); }, "q_heads");
}

// Text tokens and token orders: the column cover of an STA plan on tile-major tensors, where the tiles are whole query
// blocks and key groups, is the STA plan itself; the column reference must agree with the block-plan reference.
TEST(ColumnPlan, CoverOfStaPlanReproducesPlanReferenceWithText) {
  const VideoGeometry g({4, 8, 8}, {2, 4, 4}, 32);  // 8 tiles of 32 tokens, 32 text tokens: 288 tokens
  const std::vector<Window> windows{{1, 1, 1}, {1, 2, 1}};
  const BlockPlan sta = build_sta_plan(BlockPartition(g), windows);
  const AttentionShape shape{1, 2, 1, g.num_tokens(), 8};
  const auto q = random_vector(shape.q_heads * shape.tokens * shape.head_dim);
  const auto k = random_vector(shape.tokens * shape.head_dim), v = random_vector(k.size());
  std::vector<float> want_out(q.size()), want_lse(shape.q_heads * shape.tokens);
  reference_attention_plan(shape, sta, {}, q, k, v, want_out, want_lse);
  auto tiled = [&](const std::vector<float>& x, int64_t heads) {
    std::vector<float> t(x.size());
    tile<float>(g, x, t, heads, shape.head_dim);
    return t;
  };
  for (int64_t N : {1, 4, 32}) {
    const ColumnPlan cover = cover_block_plan(sta, TokenLayout::tile_major, 32, N);
    EXPECT_EQ(cover.sparsity().visited_pairs, sta.sparsity().visited_pairs);
    std::vector<float> out_t(q.size()), lse_t(want_lse.size()), out(q.size());
    reference_attention_columns(shape, cover, tiled(q, 2), tiled(k, 1), tiled(v, 1), out_t, lse_t);
    untile<float>(g, out_t, out, 2, shape.head_dim);
    for (size_t i = 0; i < out.size(); ++i) ASSERT_NEAR(out[i], want_out[i], 1e-5);
    for (int64_t h = 0; h < 2; ++h)
      for (int64_t t = 0; t < shape.tokens; ++t)
        ASSERT_NEAR(lse_t[h * shape.tokens + g.tile_major_index(t)], want_lse[h * shape.tokens + t], 1e-5);
  }
}

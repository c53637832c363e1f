// The synthetic local mask's direct form (SyntheticRule::local_row_runs, what the GPU builder runs) against its
// definition group by group (SyntheticRule::keeps), on random shapes: the same groups, ascending, each once.
#include <gtest/gtest.h>

#include <random>
#include <string>
#include <vector>

#include "kernels/synthetic_mask_rule.hpp"
#include "test_util.hpp"

using namespace tileattn;
using namespace tileattn::testing;

namespace {

std::vector<int32_t> by_definition(const kernels::SyntheticRule& s, int64_t head, int64_t qb) {
  const kernels::SyntheticRule::Row r = s.row(qb);
  std::vector<int32_t> row;
  for (int64_t g = 0; g < s.groups(); ++g)
    if (s.keeps(head, r, qb, g)) row.push_back(static_cast<int32_t>(g));
  return row;
}

std::vector<int32_t> direct(const kernels::SyntheticRule& s, int64_t qb) {
  std::vector<int32_t> row;
  const int64_t n = s.local_row_runs(qb, [&](int64_t first, int64_t end, int64_t slot) {
    EXPECT_EQ(slot, static_cast<int64_t>(row.size()));
    EXPECT_LT(first, end);
    for (int64_t g = first; g < end; ++g) row.push_back(static_cast<int32_t>(g));
  });
  EXPECT_EQ(n, static_cast<int64_t>(row.size()));
  return row;
}

TEST(SyntheticRule, LocalRowsDirectlyEqualTheDefinition) {
  int64_t rows_checked = 0, nonempty_box = 0;
  for (int trial = 0; trial < 300; ++trial) {
    const Extent3 video{rand_in(1, 7), rand_in(1, 12), rand_in(1, 20)};
    const int64_t text = rand_in(0, 3) == 0 ? 0 : rand_in(0, 70);
    const ColumnPlanShape shape{video.volume() + text, 1, int64_t{1} << rand_in(0, 7), rand_in(1, 40)};
    const double sparsity = rand_in(0, 4) == 0 ? 0.0 : double(rand_in(0, 99)) / 100.0;
    const SyntheticMaskOptions o{.kind = SyntheticMask::local,
                                 .sparsity = sparsity,
                                 .seed = 1,
                                 .video = video,
                                 .text_len = text,
                                 .keep_diagonal = rand_in(0, 1) == 1};
    const kernels::SyntheticRule s = kernels::make_synthetic_rule(shape, o);
    SCOPED_TRACE("video " + std::to_string(video.t) + "x" + std::to_string(video.h) + "x" + std::to_string(video.w) +
                 " text " + std::to_string(text) + " M " + std::to_string(shape.query_block) + " N " +
                 std::to_string(shape.key_group) + " sparsity " + std::to_string(sparsity) +
                 (o.keep_diagonal ? " diagonal" : ""));
    for (int64_t qb = 0; qb < shape.num_query_blocks(); ++qb) {
      const std::vector<int32_t> want = by_definition(s, 0, qb);
      ASSERT_EQ(direct(s, qb), want) << "query block " << qb;
      ++rows_checked;
      nonempty_box += !s.row(qb).text_query && !want.empty();
    }
  }
  EXPECT_GT(rows_checked, 1000);
  EXPECT_GT(nonempty_box, 500);
}

// The hunyuan-720p shape the GPU test times (30 x 48 x 80 video + 256 text, M = 128), on a sample of rows.
TEST(SyntheticRule, LocalRowsAt720p) {
  for (int64_t N : {1, 8, 16, 64}) {
    SCOPED_TRACE("N " + std::to_string(N));
    const ColumnPlanShape shape{115200 + 256, 1, 128, N};
    const SyntheticMaskOptions o{
        .kind = SyntheticMask::local, .sparsity = 0.7, .seed = 1, .video = {30, 48, 80}, .text_len = 256};
    const kernels::SyntheticRule s = kernels::make_synthetic_rule(shape, o);
    for (int64_t qb : {int64_t{0}, int64_t{1}, int64_t{449}, int64_t{450}, int64_t{899}, int64_t{900},
                       shape.num_query_blocks() - 1})
      ASSERT_EQ(direct(s, qb), by_definition(s, 0, qb)) << "query block " << qb;
  }
}

// random: the integer threshold on the hash's top 53 bits decides as the definition's double comparison does.
TEST(SyntheticRule, RandomThresholdEqualsTheDoubleComparison) {
  std::mt19937_64 bits(11);
  for (int trial = 0; trial < 2000; ++trial) {
    const double keep = trial < 4 ? double(trial) / 3.0 : std::uniform_real_distribution<double>(0.0, 1.0)(bits);
    const uint64_t t = kernels::keep_threshold(keep);
    const uint64_t around[] = {t - 2, t - 1, t, t + 1, bits() >> 11, 0, (uint64_t{1} << 53) - 1};
    for (uint64_t x : around) {
      if (x >= (uint64_t{1} << 53)) continue;
      ASSERT_EQ(x < t, double(x) * 0x1.0p-53 < keep) << "keep " << keep << " x " << x;
    }
  }
}

TEST(SyntheticRule, RejectsBadOptions) {
  const ColumnPlanShape shape{100, 1, 16, 4};
  SyntheticMaskOptions o;
  o.sparsity = 1.0;
  expect_argument_error([&] { kernels::make_synthetic_rule(shape, o); }, "sparsity");
  o.sparsity = 0.5, o.kind = SyntheticMask::local, o.video = {2, 5, 5}, o.text_len = 1;  // 51 tokens, not 100
  expect_argument_error([&] { kernels::make_synthetic_rule(shape, o); }, "video");
}

}  // namespace

#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "tileattn/error.hpp"
#include "tileattn/reference.hpp"

using namespace tileattn;

namespace {

std::vector<float> random_vector(size_t n, uint32_t seed) {
  std::mt19937 rng(seed);
  std::normal_distribution<float> d;
  std::vector<float> v(n);
  for (float& x : v) x = d(rng);
  return v;
}

// Textbook attention for one (batch, head): the full score matrix, masked entries dropped, softmax, in double.
void naive(const AttentionShape& s, const std::vector<float>& q, const std::vector<float>& k,
           const std::vector<float>& v, const ElementMask& allowed, std::vector<double>& out, std::vector<double>& lse) {
  const int64_t n = s.tokens, d = s.head_dim, group = s.q_heads / s.kv_heads;
  const double scale = 1.0 / std::sqrt(double(d));
  out.assign(s.batch * s.q_heads * n * d, 0.0);
  lse.assign(s.batch * s.q_heads * n, -INFINITY);
  for (int64_t b = 0; b < s.batch; ++b)
    for (int64_t h = 0; h < s.q_heads; ++h)
      for (int64_t i = 0; i < n; ++i) {
        std::vector<double> w(n, 0.0);
        double m = -INFINITY;
        for (int64_t j = 0; j < n; ++j) {
          if (!allowed(b, h, i, j)) continue;
          double dot = 0;
          for (int64_t c = 0; c < d; ++c)
            dot += double(q[((b * s.q_heads + h) * n + i) * d + c]) *
                   double(k[((b * s.kv_heads + h / group) * n + j) * d + c]);
          w[j] = dot * scale;
          m = std::max(m, w[j]);
        }
        if (m == -INFINITY) continue;
        double sum = 0;
        for (int64_t j = 0; j < n; ++j) {
          w[j] = allowed(b, h, i, j) ? std::exp(w[j] - m) : 0.0;
          sum += w[j];
        }
        for (int64_t c = 0; c < d; ++c) {
          double acc = 0;
          for (int64_t j = 0; j < n; ++j) acc += w[j] * v[((b * s.kv_heads + h / group) * n + j) * d + c];
          out[((b * s.q_heads + h) * n + i) * d + c] = acc / sum;
        }
        lse[(b * s.q_heads + h) * n + i] = m + std::log(sum);
      }
}

double max_abs_diff(const std::vector<float>& a, const std::vector<double>& b) {
  double m = 0;
  for (size_t i = 0; i < a.size(); ++i) {
    if (std::isinf(b[i]) && a[i] == b[i]) continue;
    m = std::max(m, std::fabs(double(a[i]) - b[i]));
  }
  return m;
}

}  // namespace

TEST(Reference, DenseMatchesNaiveWithGqaAndBatch) {
  const AttentionShape s{2, 4, 2, 37, 16};
  auto q = random_vector(s.batch * s.q_heads * s.tokens * s.head_dim, 1);
  auto k = random_vector(s.batch * s.kv_heads * s.tokens * s.head_dim, 2);
  auto v = random_vector(k.size(), 3);
  std::vector<float> out(q.size()), lse(s.batch * s.q_heads * s.tokens);
  std::vector<double> want_out, want_lse;
  naive(s, q, k, v, [](auto...) { return true; }, want_out, want_lse);
  for (Accumulation acc : {Accumulation::fp32, Accumulation::fp64}) {
    ReferenceOptions o;
    o.accumulation = acc;
    o.threads = 3;
    reference_attention_dense(s, q, k, v, out, lse, o);
    const double tol = acc == Accumulation::fp64 ? 1e-6 : 2e-5;
    EXPECT_LT(max_abs_diff(out, want_out), tol);
    EXPECT_LT(max_abs_diff(lse, want_lse), tol);
  }
}

TEST(Reference, PlanMatchesNaiveWithTextValidity) {
  const VideoGeometry g({5, 6, 7}, {2, 3, 4}, 9);
  const std::vector<Window> windows = {{1, 1, 1}, {3, 1, 2}};  // grid 3x2x2: 3x1x2 is valid (2 == grid.w)
  const BlockPlan plan = build_sta_plan(BlockPartition(g, 1, 4), windows);
  const AttentionShape s{2, 2, 1, g.num_tokens(), 8};
  auto q = random_vector(s.batch * s.q_heads * s.tokens * s.head_dim, 4);
  auto k = random_vector(s.batch * s.kv_heads * s.tokens * s.head_dim, 5);
  auto v = random_vector(k.size(), 6);
  const std::vector<int32_t> text_valid = {4, 100};  // batch 1 clamps to 9
  std::vector<float> out(q.size()), lse(s.batch * s.q_heads * s.tokens);
  reference_attention_plan(s, plan, text_valid, q, k, v, out, lse);
  std::vector<double> want_out, want_lse;
  naive(s, q, k, v,
        [&](int64_t b, int64_t h, int64_t i, int64_t j) {
          const int64_t valid = std::min<int64_t>(text_valid[b], g.text_len());
          return plan.visits(h, i, j) && j < g.num_video_tokens() + valid;
        },
        want_out, want_lse);
  EXPECT_LT(max_abs_diff(out, want_out), 2e-5);
  EXPECT_LT(max_abs_diff(lse, want_lse), 2e-5);
}

TEST(Reference, RowWithNoKeysGivesZeroAndMinusInfinity) {
  const AttentionShape s{1, 1, 1, 4, 4};
  auto q = random_vector(16, 7), k = random_vector(16, 8), v = random_vector(16, 9);
  std::vector<float> out(16, 5.0f), lse(4, 5.0f);
  reference_attention_masked(s, [](int64_t, int64_t, int64_t i, int64_t j) { return i != 2 && j <= i; }, q, k, v, out,
                             lse);
  for (int c = 0; c < 4; ++c) EXPECT_EQ(out[2 * 4 + c], 0.0f);
  EXPECT_EQ(lse[2], -INFINITY);
  EXPECT_TRUE(std::isfinite(lse[3]));
  // Row 0 sees only key 0: the output is v[0] exactly.
  for (int c = 0; c < 4; ++c) EXPECT_NEAR(out[c], v[c], 1e-6);
}

TEST(Reference, RejectsInconsistentArguments) {
  const AttentionShape s{1, 3, 2, 4, 4};  // 3 heads not a multiple of 2
  std::vector<float> a(48), b(32), out(48), lse(12);
  try {
    reference_attention_dense(s, a, b, b, out, lse);
    FAIL();
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "kv_heads");
  }
  const AttentionShape ok{1, 2, 2, 4, 4};
  std::vector<float> q(32), wrong(31), o(32), l(8);
  try {
    reference_attention_dense(ok, q, wrong, q, o, l);
    FAIL();
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "k");
  }
  const BlockPlan plan = build_dense_plan(BlockPartition(VideoGeometry({1, 1, 3})), 2);
  EXPECT_THROW(reference_attention_plan(ok, plan, {}, q, q, q, o, l), ArgumentError);  // 3 tokens vs 4
}

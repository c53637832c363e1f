// The CPU reference gradients, checked against central finite differences of the CPU reference forward (fp64
// accumulation) — a gradcheck of the oracle the GPU backward is tested against — plus the structural properties:
// keys nobody sees get zero gradient, GQA sums the query heads of a group.
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "tileattn/error.hpp"
#include "tileattn/reference.hpp"

using namespace tileattn;

namespace {

struct GradProblem {
  AttentionShape shape;
  VideoGeometry geometry;
  BlockPlan plan;
  std::vector<int32_t> text_valid;
  std::vector<float> q, k, v, grad_out;
};

GradProblem make_setup(int64_t batch, int64_t q_heads, int64_t kv_heads, std::vector<Window> windows,
                 std::vector<int32_t> text_valid, uint32_t seed) {
  // 5x4x6 video, 2x2x4 tiles: a 3x2x2 grid with partial tiles along t and w; 3 text tokens; head dim 8.
  VideoGeometry geo({5, 4, 6}, {2, 2, 4}, 3);
  BlockPlan plan = build_sta_plan(BlockPartition(geo, 1, 2), windows);
  AttentionShape shape{batch, q_heads, kv_heads, geo.num_tokens(), 8};
  std::mt19937 rng(seed);
  std::normal_distribution<float> normal;
  auto random = [&](int64_t heads) {
    std::vector<float> x(batch * heads * shape.tokens * shape.head_dim);
    for (float& e : x) e = normal(rng);
    return x;
  };
  std::vector<float> q = random(q_heads), k = random(kv_heads), v = random(kv_heads), g = random(q_heads);
  return {shape, geo, std::move(plan), std::move(text_valid), std::move(q), std::move(k), std::move(v), std::move(g)};
}

// loss = sum(out * grad_out), so dloss/dx is what the backward returns for upstream gradient grad_out.
double loss(const GradProblem& s, const std::vector<float>& q, const std::vector<float>& k, const std::vector<float>& v) {
  std::vector<float> out(s.grad_out.size()), lse(s.shape.batch * s.shape.q_heads * s.shape.tokens);
  ReferenceOptions o;
  o.accumulation = Accumulation::fp64;
  reference_attention_plan(s.shape, s.plan, s.text_valid, q, k, v, out, lse, o);
  double l = 0;
  for (size_t i = 0; i < out.size(); ++i) l += double(out[i]) * s.grad_out[i];
  return l;
}

void expect_matches_finite_differences(const GradProblem& s) {
  std::vector<float> gq(s.q.size()), gk(s.k.size()), gv(s.v.size());
  ReferenceOptions o;
  o.accumulation = Accumulation::fp64;
  reference_attention_plan_backward(s.shape, s.plan, s.text_valid, s.q, s.k, s.v, s.grad_out, gq, gk, gv, o);
  std::mt19937 rng(7);
  const float h = 1e-2f;
  int checked = 0;
  for (auto [name, input, grad] : {std::tuple{"q", &s.q, &gq}, {"k", &s.k, &gk}, {"v", &s.v, &gv}}) {
    std::uniform_int_distribution<size_t> pick(0, input->size() - 1);
    for (int trial = 0; trial < 40; ++trial) {
      const size_t i = pick(rng);
      std::vector<float> plus = *input, minus = *input;
      plus[i] += h, minus[i] -= h;
      auto eval = [&, which = input](const std::vector<float>& x) {  // clang 14 cannot capture a structured binding
        return loss(s, which == &s.q ? x : s.q, which == &s.k ? x : s.k, which == &s.v ? x : s.v);
      };
      const double numeric = (eval(plus) - eval(minus)) / (double(plus[i]) - double(minus[i]));
      EXPECT_NEAR((*grad)[i], numeric, 2e-3 + 2e-3 * std::fabs(numeric)) << name << "[" << i << "]";
      ++checked;
    }
  }
  EXPECT_EQ(checked, 120);
}

TEST(ReferenceBackward, MatchesFiniteDifferencesPerHeadWindows) {
  expect_matches_finite_differences(make_setup(1, 2, 2, {{1, 1, 1}, {3, 1, 2}}, {}, 11));
}

TEST(ReferenceBackward, MatchesFiniteDifferencesGqaAndTextValid) {
  expect_matches_finite_differences(make_setup(2, 4, 2, {{1, 2, 1}, {3, 1, 1}, {1, 1, 2}, {3, 2, 2}}, {1, 3}, 12));
}

TEST(ReferenceBackward, HiddenTextKeysGetNoGradientAndGqaSumsHeads) {
  GradProblem s = make_setup(1, 2, 1, {{1, 1, 1}, {1, 2, 1}}, {1}, 13);
  std::vector<float> gq(s.q.size()), gk(s.k.size()), gv(s.v.size());
  reference_attention_plan_backward(s.shape, s.plan, s.text_valid, s.q, s.k, s.v, s.grad_out, gq, gk, gv);
  const int64_t d = s.shape.head_dim, video = s.geometry.num_video_tokens();
  for (int64_t t = 1; t < 3; ++t)  // text positions 1, 2 are past text_valid = 1
    for (int64_t c = 0; c < d; ++c) {
      EXPECT_EQ(gk[(video + t) * d + c], 0.0f);
      EXPECT_EQ(gv[(video + t) * d + c], 0.0f);
    }
  // The same problem with K/V duplicated per query head (no GQA): dK/dV of the group = sum of the two heads'.
  GradProblem m = s;
  m.shape.kv_heads = 2;
  m.k.insert(m.k.end(), s.k.begin(), s.k.end());
  m.v.insert(m.v.end(), s.v.begin(), s.v.end());
  std::vector<float> mq(m.q.size()), mk(m.k.size()), mv(m.v.size());
  reference_attention_plan_backward(m.shape, m.plan, m.text_valid, m.q, m.k, m.v, m.grad_out, mq, mk, mv);
  const size_t half = s.k.size();
  for (size_t i = 0; i < half; ++i) {
    EXPECT_NEAR(gk[i], mk[i] + mk[half + i], 1e-5f);
    EXPECT_NEAR(gv[i], mv[i] + mv[half + i], 1e-5f);
  }
  EXPECT_EQ(gq, mq);
}

TEST(ReferenceBackward, RejectsWrongSizes) {
  GradProblem s = make_setup(1, 2, 2, {{1, 1, 1}, {1, 1, 1}}, {}, 14);
  std::vector<float> gq(s.q.size()), gk(s.k.size() - 1), gv(s.v.size());
  try {
    reference_attention_plan_backward(s.shape, s.plan, s.text_valid, s.q, s.k, s.v, s.grad_out, gq, gk, gv);
    FAIL();
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "grad_k");
  }
}

}  // namespace

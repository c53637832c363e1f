#include <gtest/gtest.h>

#include <algorithm>
#include <cmath>
#include <random>
#include <set>

#include "test_util.hpp"
#include "tileattn/dynamic_mask.hpp"
#include "tileattn/dynamic_mask_gpu.hpp"
#include "tileattn/error.hpp"

using namespace tileattn;
using namespace tileattn::testing;

namespace {

struct Problem {
  AttentionShape shape;
  int64_t M, N;
  std::vector<float> q, k;
  int64_t nq() const { return (shape.tokens + M - 1) / M; }
  int64_t ng() const { return (shape.tokens + N - 1) / N; }
};

Problem random_problem() {
  const int64_t kv = rand_in(1, 2);
  Problem p{{rand_in(1, 2), kv * rand_in(1, 2), kv, rand_in(20, 140), 8},
            int64_t{16} << rand_in(0, 1),
            rand_in(1, 7),
            {},
            {}};
  // Each (batch, head) has a shared query direction, so the pooled query is not ~0 and the estimate is peaky.
  p.q = random_vector(p.shape.batch * p.shape.q_heads * p.shape.tokens * p.shape.head_dim, 1.0f);
  const int64_t d = p.shape.head_dim, n = p.shape.tokens;
  for (int64_t bh = 0; bh < p.shape.batch * p.shape.q_heads; ++bh) {
    const std::vector<float> base = random_vector(d, 1.5f);
    for (int64_t i = 0; i < n; ++i)
      for (int64_t c = 0; c < d; ++c) p.q[(bh * n + i) * d + c] += base[c];
  }
  p.k = random_vector(p.shape.batch * p.shape.kv_heads * p.shape.tokens * p.shape.head_dim, 1.5f);
  return p;
}

// The oracle's estimate: for each (head, query block), the attention probabilities of the pooled query over every key,
// computed directly (exp(s_j) / sum exp(s_i), no max subtraction; the scores are small), summed per key group and
// averaged over the batch. masses[h][qb][g].
using Masses = std::vector<std::vector<std::vector<double>>>;
Masses oracle_masses(const Problem& p) {
  const AttentionShape& s = p.shape;
  const int64_t n = s.tokens, d = s.head_dim;
  Masses m(s.q_heads, std::vector<std::vector<double>>(p.nq(), std::vector<double>(p.ng(), 0.0)));
  for (int64_t h = 0; h < s.q_heads; ++h)
    for (int64_t qb = 0; qb < p.nq(); ++qb)
      for (int64_t b = 0; b < s.batch; ++b) {
        const int64_t lo = qb * p.M, hi = std::min(n, lo + p.M);
        std::vector<double> expo(n);
        double z = 0;
        for (int64_t j = 0; j < n; ++j) {
          double score = 0;
          for (int64_t c = 0; c < d; ++c) {
            double pooled = 0;
            for (int64_t i = lo; i < hi; ++i) pooled += p.q[((b * s.q_heads + h) * n + i) * d + c];
            score += pooled / double(hi - lo) * p.k[((b * s.kv_heads + h / (s.q_heads / s.kv_heads)) * n + j) * d + c];
          }
          z += (expo[j] = std::exp(score / std::sqrt(double(d))));
        }
        for (int64_t j = 0; j < n; ++j) m[h][qb][j / p.N] += expo[j] / z / double(s.batch);
      }
  return m;
}

// The oracle's selection, by repeated arg-max over what is left (ties: the first in ascending order).
struct OracleSelection {
  SelectionRule rule;
  double p = 0, threshold = 0, target = 0;
  int64_t k = 0;
  bool keep_diagonal = false, keep_text = false;
  int64_t text_len = 0;
};

std::vector<std::set<int32_t>> oracle_select(const Problem& pr, const Masses& m, const OracleSelection& sel) {
  const int64_t n = pr.shape.tokens, nq = pr.nq(), ng = pr.ng();
  auto qsize = [&](int64_t qb) { return std::min(n, (qb + 1) * pr.M) - qb * pr.M; };
  auto gsize = [&](int64_t g) { return std::min(n, (g + 1) * pr.N) - g * pr.N; };
  std::vector<std::set<int32_t>> rows(pr.shape.q_heads * nq);
  for (int64_t h = 0; h < pr.shape.q_heads; ++h) {
    int64_t visited = 0;
    for (int64_t qb = 0; qb < nq; ++qb) {
      std::set<int32_t>& row = rows[h * nq + qb];
      for (int64_t g = 0; g < ng; ++g) {
        bool overlaps_block = false, has_text = false;
        for (int64_t j = g * pr.N; j < g * pr.N + gsize(g); ++j) {
          overlaps_block = overlaps_block || (j >= qb * pr.M && j < qb * pr.M + qsize(qb));
          has_text = has_text || j >= n - sel.text_len;
        }
        if ((sel.keep_diagonal && overlaps_block) || (sel.keep_text && has_text)) row.insert(static_cast<int32_t>(g));
      }
      auto best_left = [&] {
        int32_t best = -1;
        for (int32_t g = 0; g < ng; ++g)
          if (!row.count(g) && (best < 0 || m[h][qb][g] > m[h][qb][best])) best = g;
        return best;
      };
      double covered = 0, total = 0;
      for (int32_t g : row) covered += m[h][qb][g];
      for (double x : m[h][qb]) total += x;
      if (sel.rule == SelectionRule::top_p)
        for (int32_t g; covered < sel.p * total && (g = best_left()) >= 0;) row.insert(g), covered += m[h][qb][g];
      if (sel.rule == SelectionRule::top_k)
        for (int64_t i = 0, g; i < sel.k && (g = best_left()) >= 0; ++i) row.insert(static_cast<int32_t>(g));
      if (sel.rule == SelectionRule::threshold)
        for (int32_t g = 0; g < ng; ++g)
          if (m[h][qb][g] >= sel.threshold) row.insert(g);
      for (int32_t g : row) visited += qsize(qb) * gsize(g);
    }
    if (sel.rule != SelectionRule::target_sparsity) continue;
    while (double(visited) < (1.0 - sel.target) * double(n) * double(n)) {
      int64_t bq = -1, bg = -1;
      double best = -1;
      for (int64_t qb = 0; qb < nq; ++qb)
        for (int64_t g = 0; g < ng; ++g)
          if (!rows[h * nq + qb].count(static_cast<int32_t>(g)) && m[h][qb][g] / double(gsize(g)) > best)
            best = m[h][qb][g] / double(gsize(g)), bq = qb, bg = g;
      if (bq < 0) break;
      rows[h * nq + bq].insert(static_cast<int32_t>(bg));
      visited += qsize(bq) * gsize(bg);
    }
  }
  return rows;
}

}  // namespace

TEST(DynamicMask, EstimateMatchesBruteForce) {
  for (int trial = 0; trial < 20; ++trial) {
    const Problem p = random_problem();
    const ColumnMass mass = estimate_column_mass(p.shape, p.q, p.k, p.M, p.N, 0.0f, 2);
    const Masses want = oracle_masses(p);
    for (int64_t h = 0; h < p.shape.q_heads; ++h)
      for (int64_t qb = 0; qb < p.nq(); ++qb) {
        auto row = mass.row(h, qb);
        double sum = 0;
        for (int64_t g = 0; g < p.ng(); ++g) {
          ASSERT_NEAR(row[g], want[h][qb][g], 1e-12);
          sum += row[g];
        }
        EXPECT_NEAR(sum, 1.0, 1e-12);
      }
  }
}

TEST(DynamicMask, SelectionRulesMatchBruteForce) {
  int checked = 0;
  for (int trial = 0; trial < 25; ++trial) {
    const Problem p = random_problem();
    const Masses masses = oracle_masses(p);
    const ColumnMass mass = estimate_column_mass(p.shape, p.q, p.k, p.M, p.N);
    for (int variant = 0; variant < 10; ++variant) {
      OracleSelection o;
      ColumnSelection sel;
      o.rule = sel.rule = static_cast<SelectionRule>(variant % 4);
      o.p = sel.p = std::vector<double>{0.3, 0.7, 0.95}[rand_in(0, 2)];
      o.k = sel.k = rand_in(0, 4);
      o.threshold = sel.threshold = std::vector<double>{0.0, 0.01, 0.05, 0.3}[rand_in(0, 3)];
      o.target = sel.target_sparsity = std::vector<double>{0.0, 0.3, 0.6, 0.9}[rand_in(0, 3)];
      o.keep_diagonal = sel.keep_diagonal = rand_in(0, 1) == 1;
      o.keep_text = sel.always_keep_text = rand_in(0, 1) == 1;
      o.text_len = sel.text_len = rand_in(0, p.shape.tokens / 3);
      const ColumnPlan plan = select_columns(mass, sel);
      const auto want = oracle_select(p, masses, o);
      for (int64_t h = 0; h < p.shape.q_heads; ++h)
        for (int64_t qb = 0; qb < p.nq(); ++qb) {
          auto row = plan.row(h, qb);
          ASSERT_EQ(std::set<int32_t>(row.begin(), row.end()), want[h * p.nq() + qb])
              << "rule " << variant % 4 << " head " << h << " query block " << qb;
        }
      if (sel.rule == SelectionRule::target_sparsity) {
        // From above: at most the target, and within one group's pairs of it unless the forced groups exceed it.
        const int64_t n = p.shape.tokens;
        for (double s : plan.sparsity().per_head) {
          EXPECT_LE(s, sel.target_sparsity + 1e-12);
          if (!sel.keep_diagonal && !sel.always_keep_text)
            EXPECT_GT(s, sel.target_sparsity - double(p.M * p.N) / double(n * n) - 1e-12);
        }
      }
      ++checked;
    }
  }
  EXPECT_EQ(checked, 250);
}

TEST(DynamicMask, ExtremeSelections) {
  const Problem p = random_problem();
  const ColumnMass mass = estimate_column_mass(p.shape, p.q, p.k, p.M, p.N);
  ColumnSelection sel;
  sel.keep_diagonal = false;
  sel.rule = SelectionRule::top_k;
  sel.k = 0;  // nothing: every row empty
  EXPECT_EQ(select_columns(mass, sel).num_entries(), 0);
  sel.k = 1;  // single groups
  EXPECT_EQ(select_columns(mass, sel).max_row_length(), 1);
  sel.rule = SelectionRule::threshold;
  sel.threshold = 0.0;  // everything
  EXPECT_EQ(select_columns(mass, sel).sparsity().total, 0.0);
  sel.rule = SelectionRule::target_sparsity;
  sel.target_sparsity = 0.0;
  EXPECT_EQ(select_columns(mass, sel).sparsity().total, 0.0);
}

TEST(DynamicMask, StaIntersectionStaysInsideTheWindow) {
  const VideoGeometry g({4, 6, 8}, {2, 2, 4}, 24);  // grid 2x3x2, 192 video + 24 text tokens
  const std::vector<Window> windows{{1, 1, 1}, {1, 3, 1}};
  const AttentionShape shape{1, 2, 1, g.num_tokens(), 8};
  const auto q = random_vector(shape.q_heads * shape.tokens * shape.head_dim, 1.5f);
  const auto k = random_vector(shape.tokens * shape.head_dim, 1.5f);
  const BlockPlan sta = build_sta_plan(BlockPartition(g), windows);
  for (TokenLayout layout : {TokenLayout::natural, TokenLayout::tile_major}) {
    const ColumnPlan window = sta_column_window(g, windows, layout, 16, 3);
    EXPECT_GT(window.sparsity().per_head[0], 0.3);
    const std::vector<int64_t> order = g.tile_major_order();
    for (SelectionRule rule :
         {SelectionRule::top_p, SelectionRule::top_k, SelectionRule::threshold, SelectionRule::target_sparsity}) {
      ColumnSelection sel;
      sel.rule = rule;
      sel.k = 40;
      sel.threshold = 0.0;
      sel.target_sparsity = 0.1;  // asks for more than the window holds: the window still wins
      sel.always_keep_text = true;
      sel.text_len = g.text_len();
      sel.window = &window;
      const ColumnPlan plan = build_dynamic_column_plan(shape, q, k, 16, 3, sel);
      EXPECT_GT(plan.num_entries(), 0);
      for (int64_t h = 0; h < 2; ++h)
        for (int64_t qb = 0; qb < plan.num_query_blocks(); ++qb) {
          auto allowed = window.row(h, qb);
          for (int32_t grp : plan.row(h, qb)) {
            ASSERT_TRUE(std::binary_search(allowed.begin(), allowed.end(), grp));
            // and, token by token, some query of the block sees some key of the group under STA
            bool any = false;
            for (int64_t i = qb * 16; i < std::min<int64_t>((qb + 1) * 16, shape.tokens) && !any; ++i)
              for (int64_t j = grp * 3; j < std::min<int64_t>((grp + 1) * 3, shape.tokens) && !any; ++j)
                any = layout == TokenLayout::natural ? sta.visits(h, i, j) : sta.visits(h, order[i], order[j]);
            ASSERT_TRUE(any);
          }
        }
    }
  }
}

TEST(DynamicMask, BadArguments) {
  const Problem p = random_problem();
  const ColumnMass mass = estimate_column_mass(p.shape, p.q, p.k, p.M, p.N);
  auto with = [&](auto change) {
    ColumnSelection s;
    change(s);
    return s;
  };
  expect_argument_error([&] { select_columns(mass, with([](auto& s) { s.p = 0.0; })); }, "p");
  expect_argument_error([&] { select_columns(mass, with([](auto& s) { s.p = 1.5; })); }, "p");
  expect_argument_error([&] { select_columns(mass, with([](auto& s) { s.rule = SelectionRule::top_k, s.k = -1; })); },
                        "k");
  expect_argument_error(
      [&] { select_columns(mass, with([](auto& s) { s.rule = SelectionRule::threshold, s.threshold = -0.1; })); },
      "threshold");
  expect_argument_error(
      [&] {
        select_columns(mass, with([](auto& s) { s.rule = SelectionRule::target_sparsity, s.target_sparsity = 1.0; }));
      },
      "target_sparsity");
  expect_argument_error([&] { select_columns(mass, with([&](auto& s) { s.text_len = p.shape.tokens + 1; })); },
                        "text_len");
  const ColumnPlan other =
      ColumnPlan::from_rows({p.shape.tokens, p.shape.q_heads, 128, p.N},
                            std::vector<std::vector<int32_t>>(p.shape.q_heads * ((p.shape.tokens + 127) / 128)));
  expect_argument_error([&] { select_columns(mass, with([&](auto& s) { s.window = &other; })); }, "window");
  expect_argument_error([&] { estimate_column_mass(p.shape, p.q, p.k, 48, 1); }, "query_block");
  expect_argument_error([&] { estimate_column_mass(p.shape, p.q, std::span(p.k).first(p.k.size() - 1), p.M, p.N); },
                        "k");
}

TEST(MaskCache, RebuildsEveryRefreshIntervalSteps) {
  MaskCache cache(3);
  EXPECT_FALSE(cache.has_plan());
  std::vector<int64_t> builds;
  int64_t current = 0;
  auto builder = [&] {
    builds.push_back(current);
    return ColumnPlan::from_rows({16, 1, 16, 1}, {{static_cast<int32_t>(current % 16)}});
  };
  for (current = 0; current < 10; ++current) {
    const ColumnPlan& plan = cache.get(current, builder);
    EXPECT_EQ(plan.row(0, 0)[0], (current / 3 * 3) % 16);  // the plan of the last refresh
    EXPECT_EQ(cache.built_step(), current / 3 * 3);
  }
  EXPECT_EQ(builds, (std::vector<int64_t>{0, 3, 6, 9}));
  current = 1;  // a new sampling run starts over
  cache.get(1, builder);
  EXPECT_EQ(cache.built_step(), 1);
  EXPECT_EQ(builds.size(), 5u);
  EXPECT_THROW(cache.get(7, []() -> ColumnPlan { throw std::runtime_error("builder failed"); }), std::runtime_error);
  EXPECT_FALSE(cache.has_plan());  // never a stale plan after a failed refresh
  EXPECT_EQ(cache.built_step(), -1);
  expect_argument_error([] { MaskCache bad(0); }, "refresh_interval");
  expect_argument_error([&] { cache.get(-1, builder); }, "step");
  MaskCache every(1);
  for (int64_t s = 0; s < 3; ++s) every.get(s, builder);
  EXPECT_EQ(builds.size(), 8u);
}

// The GPU builder's host-side validation runs in every build (no GPU needed: the pointers are never dereferenced).
TEST(DynamicMaskGpuArgs, ValidatesBeforeLaunching) {
  void* const fake = reinterpret_cast<void*>(uintptr_t{1} << 20);  // 256-byte aligned, never dereferenced
  const ColumnPlanShape shape{1000, 4, 64, 8};
  auto args = [&] {
    DynamicMaskArgs a;
    a.batch = 2, a.q_heads = 4, a.kv_heads = 2, a.head_dim = 128;
    a.q = {fake, 4 * 1000 * 128, 1000 * 128, 128};
    a.k = {fake, 2 * 1000 * 128, 1000 * 128, 128};
    a.selection.rule = SelectionRule::top_k;
    a.workspace = fake;
    a.workspace_bytes = dynamic_mask_workspace_bytes(a, shape);
    return a;
  };
  DeviceColumnPlan out{shape, 16, static_cast<int32_t*>(fake), static_cast<int32_t*>(fake)};
  auto build = [&](const DynamicMaskArgs& a, const DeviceColumnPlan& o) {
    return [a, o] { build_dynamic_column_plan_gpu(a, o, nullptr); };
  };
  auto edit = [&](auto&& change) {
    DynamicMaskArgs a = args();
    change(a);
    return a;
  };
  expect_argument_error(build(edit([](auto& a) { a.head_dim = 96; }), out), "head_dim");
  expect_argument_error(build(edit([](auto& a) { a.dtype = DType(7); }), out), "dtype");
  expect_argument_error(build(edit([](auto& a) { a.batch = 0; }), out), "batch");
  expect_argument_error(build(edit([](auto& a) { a.kv_heads = 3; }), out), "kv_heads");
  expect_argument_error(build(edit([](auto& a) { a.q.data = nullptr; }), out), "q");
  expect_argument_error(build(edit([](auto& a) { a.k.token_stride = 130; }), out), "k");  // 16-byte rows
  expect_argument_error(build(edit([&](auto& a) { a.k.data = static_cast<char*>(fake) + 2; }), out), "k");
  expect_argument_error(build(edit([](auto& a) { a.q.token_stride = 64; }), out), "q");
  expect_argument_error(build(edit([](auto& a) { a.scale = -1.0f; }), out), "scale");
  expect_argument_error(build(edit([](auto& a) { a.selection.rule = SelectionRule::top_k, a.selection.k = -1; }), out),
                        "k");
  expect_argument_error(build(edit([](auto& a) { a.selection.rule = SelectionRule::top_p, a.selection.p = 0; }), out),
                        "p");
  expect_argument_error(
      build(edit([](auto& a) { a.selection.rule = SelectionRule::threshold, a.selection.threshold = -1; }), out),
      "threshold");
  expect_argument_error(build(edit([](auto& a) {
                                a.selection.rule = SelectionRule::target_sparsity, a.selection.target_sparsity = 1;
                              }),
                              out),
                        "target_sparsity");
  expect_argument_error(build(edit([](auto& a) { a.selection.text_len = 1001; }), out), "text_len");
  const ColumnPlan host_window = ColumnPlan::from_rows(shape, std::vector<std::vector<int32_t>>(shape.num_rows()));
  expect_argument_error(build(edit([&](auto& a) { a.selection.window = &host_window; }), out), "window");
  const DeviceColumnPlan bad_window{{1000, 4, 64, 16}, 4, static_cast<int32_t*>(fake), static_cast<int32_t*>(fake)};
  expect_argument_error(build(edit([&](auto& a) { a.window = &bad_window; }), out), "window");
  expect_argument_error(build(edit([](auto& a) { a.workspace = nullptr; }), out), "workspace");
  expect_argument_error(build(edit([](auto& a) { a.workspace = static_cast<char*>(a.workspace) + 16; }), out),
                        "workspace");
  expect_argument_error(
      build(edit([&](auto& a) { a.workspace_bytes = dynamic_mask_workspace_bytes(a, shape, 1) - 1; }), out),
      "workspace");
  DeviceColumnPlan bad = out;
  bad.capacity = -1;
  expect_argument_error(build(args(), bad), "out");
  bad = out, bad.counts = nullptr;
  expect_argument_error(build(args(), bad), "out");
  bad = out, bad.shape.heads = 3;
  expect_argument_error(build(args(), bad), "heads");
  bad = out, bad.shape.query_block = 48;
  expect_argument_error(build(args(), bad), "query_block");
  expect_argument_error([&] { estimate_column_mass_gpu(args(), shape, nullptr, nullptr); }, "mass");
  expect_argument_error([&] { dynamic_mask_workspace_bytes(args(), shape, 5); }, "heads_per_pass");

  // Heads per pass: rounded to a multiple or a divisor of q_heads / kv_heads; fewer heads, less memory.
  const DynamicMaskArgs a = args();
  EXPECT_EQ(dynamic_mask_workspace_bytes(a, shape, 3), dynamic_mask_workspace_bytes(a, shape, 2));
  EXPECT_LT(dynamic_mask_workspace_bytes(a, shape, 1), dynamic_mask_workspace_bytes(a, shape, 2));
  EXPECT_LT(dynamic_mask_workspace_bytes(a, shape, 2), dynamic_mask_workspace_bytes(a, shape, 0));
  EXPECT_EQ(dynamic_mask_workspace_bytes(a, shape, 4), dynamic_mask_workspace_bytes(a, shape, 0));
  const int64_t mass_per_head = shape.num_query_blocks() * shape.num_key_groups() * 4;
  EXPECT_GE(dynamic_mask_workspace_bytes(a, shape, 2) - dynamic_mask_workspace_bytes(a, shape, 1), mass_per_head);

  // Valid arguments: without a usable GPU the call says so.
  if (!gpu_kernels_available()) {
    EXPECT_THROW(build_dynamic_column_plan_gpu(args(), out, nullptr), CudaError);
    float* mass = static_cast<float*>(fake);
    EXPECT_THROW(estimate_column_mass_gpu(args(), shape, mass, nullptr), CudaError);
  }
}

// Calibration: the budget solver (properties on random instances, brute force on tiny ones), the argmin rule,
// candidate preparation, and the whole pipeline on synthetic captures whose locality is known.
#include <gtest/gtest.h>

#include <algorithm>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <random>

#include "tileattn/calibration.hpp"
#include "tileattn/error.hpp"
#include "tileattn/plan.hpp"

using namespace tileattn;
using Matrix = std::vector<std::vector<double>>;

namespace {

struct Instance {
  Matrix error, sparsity;
  double max_sparsity = 0;  // mean over items of the sparsest candidate
};

// Candidate 0 is the full window (sparsity 0, error 0); the others have random sparsity and an error that tends to
// grow with it, with per-item noise, like real heads.
Instance random_instance(std::mt19937_64& rng, int items, int candidates, bool shared_sparsity = true) {
  std::uniform_real_distribution<double> u(0.0, 1.0);
  Instance in;
  std::vector<double> shared(candidates, 0.0);
  for (int c = 1; c < candidates; ++c) shared[c] = 0.2 + 0.77 * u(rng);
  for (int i = 0; i < items; ++i) {
    const double exponent = 0.5 + 3 * u(rng), scale = 0.1 + u(rng);
    std::vector<double> e(candidates, 0.0), s = shared;
    for (int c = 1; c < candidates; ++c) {
      if (!shared_sparsity) s[c] = 0.2 + 0.77 * u(rng);
      e[c] = scale * std::pow(s[c], exponent) + 0.05 * u(rng);
    }
    in.max_sparsity += *std::max_element(s.begin(), s.end()) / items;
    in.error.push_back(e);
    in.sparsity.push_back(s);
  }
  return in;
}

// The optimum by enumeration: the least mean error among assignments with mean sparsity >= target.
double brute_force(const Instance& in, double target) {
  const int n = int(in.error.size()), c = int(in.error[0].size());
  std::vector<int> choice(n, 0);
  double best = std::numeric_limits<double>::infinity();
  for (;;) {
    double e = 0, s = 0;
    for (int i = 0; i < n; ++i) e += in.error[i][choice[i]], s += in.sparsity[i][choice[i]];
    if (s / n >= target - 1e-12) best = std::min(best, e / n);
    int i = 0;
    while (i < n && ++choice[i] == c) choice[i++] = 0;
    if (i == n) return best;
  }
}

std::string fmt_max(double v) {  // as the solver's message prints the largest achievable sparsity
  char buffer[64];
  std::snprintf(buffer, sizeof buffer, "%.6f", v);
  return buffer;
}

std::vector<int> argmin_choice(const Matrix& error) {
  std::vector<int> out;
  for (const auto& row : error) out.push_back(int(std::min_element(row.begin(), row.end()) - row.begin()));
  return out;
}

}  // namespace

TEST(Solver, MeetsTheTargetExactlyAsDefinedAndPicksValidCandidates) {
  std::mt19937_64 rng(20261123);
  for (int trial = 0; trial < 300; ++trial) {
    const int n = 1 + int(rng() % 60), c = 2 + int(rng() % 6);
    const Instance in = random_instance(rng, n, c, trial % 2 == 0);
    const double target = std::uniform_real_distribution<double>(0.0, in.max_sparsity)(rng);
    const Solution s = solve_budget(in.error, in.sparsity, target);
    ASSERT_EQ(s.choice.size(), size_t(n));
    double sparsity = 0, error = 0;
    for (int i = 0; i < n; ++i) {
      ASSERT_GE(s.choice[i], 0);
      ASSERT_LT(s.choice[i], c);
      sparsity += in.sparsity[i][s.choice[i]];
      error += in.error[i][s.choice[i]];
    }
    EXPECT_GE(sparsity / n, target - 1e-12) << "trial " << trial;
    EXPECT_NEAR(s.sparsity, sparsity / n, 1e-12);
    EXPECT_NEAR(s.mean_error, error / n, 1e-12);
  }
}

TEST(Solver, TargetAtTheMaximumIsMetExactly) {
  std::mt19937_64 rng(7);
  const Instance in = random_instance(rng, 30, 5);
  const Solution s = solve_budget(in.error, in.sparsity, in.max_sparsity);
  EXPECT_GE(s.sparsity, in.max_sparsity - 1e-12);
  for (size_t i = 0; i < in.error.size(); ++i)
    EXPECT_EQ(in.sparsity[i][s.choice[i]], *std::max_element(in.sparsity[i].begin(), in.sparsity[i].end()));
}

TEST(Solver, InfeasibleTargetsNameTheArgumentAndTheMaximum) {
  std::mt19937_64 rng(3);
  const Instance in = random_instance(rng, 10, 4);
  try {
    solve_budget(in.error, in.sparsity, in.max_sparsity + 1e-6);
    ADD_FAILURE() << "accepted an infeasible target";
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "--target-sparsity");
    EXPECT_NE(std::string(e.what()).find(fmt_max(in.max_sparsity)), std::string::npos) << e.what();
  }
  EXPECT_THROW(solve_budget(in.error, in.sparsity, -0.1), ArgumentError);
  EXPECT_THROW(solve_budget(in.error, in.sparsity, 1.5), ArgumentError);
}

TEST(Solver, NoBudgetPressureGivesTheArgminWithLambdaZero) {
  std::mt19937_64 rng(11);
  for (int trial = 0; trial < 50; ++trial) {
    Instance in = random_instance(rng, 20, 5);
    for (auto& row : in.error) row[0] = 10.0;  // the full window is the worst, so the argmin is sparse
    const std::vector<int> argmin = argmin_choice(in.error);
    double argmin_sparsity = 0;
    for (size_t i = 0; i < argmin.size(); ++i) argmin_sparsity += in.sparsity[i][argmin[i]] / double(argmin.size());
    const Solution s = solve_budget(in.error, in.sparsity, argmin_sparsity * 0.999);
    EXPECT_EQ(s.lambda, 0.0);
    EXPECT_EQ(s.choice, argmin);
    EXPECT_EQ(solve_budget(in.error, in.sparsity, 0.0).choice, argmin);
  }
}

// Five items: integrality gaps are as large as they get (one item is a fifth of the budget), so the heuristic is
// allowed to miss the optimum now and then by a little; the dual bound must always hold.
TEST(Solver, IsCloseToTheBruteForceOptimumOnTinyInstances) {
  std::mt19937_64 rng(5);
  int exact = 0;
  const int trials = 600;
  double worst_gap = 0, total_gap = 0;
  for (int trial = 0; trial < trials; ++trial) {
    const Instance in = random_instance(rng, 5, 3 + trial % 2, trial % 3 != 0);
    const double target = std::uniform_real_distribution<double>(0.0, in.max_sparsity)(rng);
    const double optimum = brute_force(in, target);
    const Solution s = solve_budget(in.error, in.sparsity, target);
    ASSERT_GE(s.mean_error, optimum - 1e-12);   // s is feasible, so it cannot beat the optimum
    ASSERT_LE(s.lower_bound, optimum + 1e-12);  // the dual bound is a true lower bound
    const double gap = s.mean_error - optimum;
    worst_gap = std::max(worst_gap, gap);
    total_gap += gap;
    if (gap <= 1e-12) ++exact;
  }
  std::printf("[ solver ] optimal on %d of %d tiny instances; mean gap %.5f, worst %.4f (mean error)\n", exact, trials,
              total_gap / trials, worst_gap);
  EXPECT_GE(exact, trials * 85 / 100);
  EXPECT_LT(total_gap / trials, 0.005);
  EXPECT_LT(worst_gap, 0.1);
}

// Realistic sizes (many heads, the same candidate sparsities for all): the certified gap to the optimum is tiny.
TEST(Solver, CertifiedGapIsSmallOnRealisticInstances) {
  std::mt19937_64 rng(9);
  for (int trial = 0; trial < 20; ++trial) {
    const Instance in = random_instance(rng, 24 * 8, 7);
    const double target = std::uniform_real_distribution<double>(0.2, in.max_sparsity)(rng);
    const Solution s = solve_budget(in.error, in.sparsity, target);
    EXPECT_LE(s.mean_error - s.lower_bound, 0.01 * s.mean_error + 1e-9) << "trial " << trial;
  }
}

TEST(Solver, ArgminRuleSkipsTheFullWindowAndBreaksTiesTowardSparsity) {
  const Matrix error = {{0.0, 0.3, 0.1, 0.1}, {0.0, 0.2, 0.5, 0.9}};
  const Matrix sparsity = {{0.0, 0.9, 0.5, 0.7}, {0.0, 0.9, 0.5, 0.7}};
  const Solution s = solve_argmin(error, sparsity, 0);
  EXPECT_EQ(s.choice, (std::vector<int>{3, 1}));
  EXPECT_NEAR(s.sparsity, 0.8, 1e-12);
  EXPECT_NEAR(s.mean_error, 0.15, 1e-12);
}

TEST(Candidates, AreClampedValidatedDeduplicatedAndIncludeTheFullWindow) {
  const Extent3 grid{3, 4, 4};
  const std::vector<Window> in = {{3, 3, 3}, {5, 3, 3}, {1, 9, 9}, {3, 3, 3}};
  const std::vector<Window> out = prepare_candidates(in, grid);
  EXPECT_EQ(out, (std::vector<Window>{{3, 3, 3}, {1, 4, 4}, {3, 4, 4}}));  // 5x3x3 clamps to 3x3x3
  try {
    prepare_candidates(std::vector<Window>{{2, 3, 3}}, grid);
    ADD_FAILURE() << "accepted an even window";
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "--candidates");
    EXPECT_NE(std::string(e.what()).find("2x3x3"), std::string::npos) << e.what();
  }
}

TEST(CalibrationEndToEnd, RecoversSyntheticLocalityAndBeatsTheBestGlobalWindow) {
  const std::filesystem::path dir = std::filesystem::temp_directory_path() / "tileattn_test_calibration_e2e";
  std::filesystem::remove_all(dir);
  SynthOptions synth;
  synth.video = {6, 12, 12}, synth.tile = {2, 4, 4}, synth.text_len = 8;  // grid 3x3x3
  synth.heads = 8, synth.head_dim = 32, synth.layers = 1, synth.steps = 2, synth.prompts = 2, synth.seed = 1;
  write_synthetic_captures(dir.string(), synth);
  const std::vector<CaptureInfo> captures = list_captures(dir.string());
  ASSERT_EQ(captures.size(), 4u);

  // The ground truth in the metadata is what synth_heads says.
  const std::vector<SynthHead> truth = synth_heads(synth, 0);
  const nlohmann::json locality = nlohmann::json::parse(captures[0].metadata.at("synth_locality"));
  for (int64_t h = 0; h < synth.heads; ++h) {
    ASSERT_EQ(locality[h].is_null(), truth[h].global);
    if (!truth[h].global) EXPECT_EQ(locality[h][2].get<double>(), truth[h].length[2]);
  }

  ScoringOptions o;
  o.tile = synth.tile;
  o.candidates = {{1, 1, 1}, {1, 1, 3}, {1, 3, 1}, {3, 1, 1}, {1, 3, 3}, {3, 3, 1}, {3, 1, 3}};
  o.dense_steps = 1;  // step 0 is dense and not calibrated
  o.device = ScoringDevice::cpu;
  CalibrationScores scores = score_captures(captures, o);
  EXPECT_EQ(scores.captures_scored, 2);
  EXPECT_EQ(scores.captures_skipped, 2);
  ASSERT_EQ(scores.items.size(), 8u);
  EXPECT_EQ(scores.candidates.size(), 8u);
  const int full = scores.full_candidate();
  ASSERT_GE(full, 0);
  for (const auto& row : scores.error) EXPECT_EQ(row[full], 0.0);
  // Exact sparsity of each candidate, text included.
  const BlockPartition partition(scores.geometry);
  for (size_t c = 0; c < scores.candidates.size(); ++c)
    EXPECT_EQ(scores.candidate_sparsity[c],
              build_sta_plan(partition, std::vector<Window>{scores.candidates[c]}).sparsity().total);

  const double target = 0.6;
  const CalibrationResult r = calibrate(scores, CalibrationRule::budget, target);
  EXPECT_GE(r.solution.sparsity, target - 1e-12);
  ASSERT_GE(r.best_global_at_achieved.candidate, 0);
  EXPECT_LT(r.solution.mean_error, r.best_global_at_achieved.mean_error);
  EXPECT_GE(r.best_global_at_achieved.sparsity, r.solution.sparsity);

  // Locality is recovered: the narrowest head (0) gets the smallest window, the global head the full window, and along
  // any two axes of a local head where the locality differs 4x or more (in tiles), the window is at least as wide
  // along the longer one.
  std::vector<Window> chosen;
  for (int64_t h = 0; h < synth.heads; ++h) chosen.push_back(*r.strategy.window_for(1, 0, h));
  for (int64_t h = 0; h < synth.heads; ++h) {
    EXPECT_LE(chosen[0].volume(), chosen[h].volume()) << "head " << h;
    if (truth[h].global) {
      EXPECT_EQ(chosen[h], scores.geometry.grid()) << "global head " << h;
      continue;
    }
    for (int a = 0; a < 3; ++a)
      for (int b = 0; b < 3; ++b)
        if (truth[h].length[a] / synth.tile[a] >= 4 * truth[h].length[b] / synth.tile[b])
          EXPECT_GE(chosen[h][a], chosen[h][b]) << "head " << h << " axes " << a << ", " << b;
  }

  // The strategy: our format keeps geometry and dense steps; FastVideo's lists the dense step with full windows.
  const std::filesystem::path out = dir / "out";
  write_calibration_outputs(r, (out / "windows.json").string(), (out / "report").string());
  const MaskStrategy back = read_mask_strategy((out / "windows.json").string());
  EXPECT_EQ(back.windows, r.strategy.windows);
  EXPECT_EQ(back.dense_steps, 1);
  EXPECT_FALSE(back.window_for(0, 0, 0).has_value());
  const MaskStrategy fv = read_mask_strategy((out / "windows.fastvideo.json").string());
  EXPECT_EQ(*fv.window_for(0, 0, 3), scores.geometry.grid());
  EXPECT_EQ(*fv.window_for(1, 0, 3), chosen[3]);
  const nlohmann::json report = nlohmann::json::parse(std::ifstream(out / "report" / "report.json"));
  EXPECT_TRUE(report["target_met"].get<bool>());
  EXPECT_TRUE(report["beats_best_global"].get<bool>());
  EXPECT_TRUE(std::filesystem::exists(out / "report" / "windows_heatmap.svg"));
  EXPECT_TRUE(std::filesystem::exists(out / "report" / "report.md"));

  // FastVideo's rule on the same scores: no budget, the full window never chosen.
  const CalibrationResult a = calibrate(scores, CalibrationRule::argmin, 0);
  for (int c : a.solution.choice) EXPECT_NE(c, full);
}

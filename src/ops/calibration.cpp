// Calibration: scoring captured activations against candidate windows, and choosing one window per head.
#include "tileattn/calibration.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <map>

#include "kernels/calibration_scoring.hpp"
#include "ops/attention_call.hpp"
#include "tileattn/error.hpp"
#include "tileattn/plan.hpp"
#include "tileattn/reference.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {
namespace {

using Matrix = std::vector<std::vector<double>>;

// ---- scoring ----

void check_same(const CaptureInfo& first, const CaptureInfo& c) {
  auto differ = [&](const char* what, const std::string& got, const std::string& want) {
    throw FileError(fmt::format("capture '{}', {}: {} differs from '{}' ({}); all captures of one calibration must "
                                "share video_shape, text_len and the [B, heads, S, D] shape", c.path, what, got,
                                first.path, want));
  };
  if (c.video != first.video) differ("metadata key 'video_shape'", to_string(c.video), to_string(first.video));
  if (c.text_len != first.text_len)
    differ("metadata key 'text_len'", std::to_string(c.text_len), std::to_string(first.text_len));
  auto shape = [](const CaptureInfo& i) { return fmt::format("[{}, {}, {}, {}]", i.batch, i.heads, i.tokens, i.head_dim); };
  if (shape(c) != shape(first)) differ("tensor 'q'", shape(c), shape(first));
}

// Why the GPU cannot score these captures (empty: it can).
std::string gpu_unusable_reason(const CaptureInfo& info, const Extent3& tile) {
  if (!gpu_kernels_available()) return "no Hopper (sm_90) GPU, or a build without CUDA kernels";
  if (info.head_dim != 64 && info.head_dim != 128)
    return fmt::format("the GPU kernel needs head_dim 64 or 128, the captures have {}", info.head_dim);
  if (info.heads > kMaxQueryHeads) return fmt::format("more than {} heads", kMaxQueryHeads);
  try {
    validate_gpu_tile(tile);
  } catch (const ArgumentError& e) {
    return e.what();
  }
  return "";
}

struct HeadSums {
  std::vector<double> dense_norm2;  // [head]
  std::vector<double> diff2;        // [candidate * heads + head]; the full window stays 0
};

// CPU reference: dense once, then one plan per candidate with that window for every head.
HeadSums cpu_window_errors(const CaptureInfo& info, const VideoGeometry& geo, const std::vector<Window>& candidates,
                           const ScoringOptions& o, const std::function<void(int)>& after_candidate) {
  const std::vector<float> q = load_capture_tensor(info, 0), k = load_capture_tensor(info, 1),
                           v = load_capture_tensor(info, 2);
  const AttentionShape shape{info.batch, info.heads, info.heads, info.tokens, info.head_dim};
  ReferenceOptions ro;
  ro.threads = o.threads;
  std::vector<float> dense(q.size()), out(q.size()), lse(info.batch * info.heads * info.tokens);
  reference_attention_dense(shape, q, k, v, dense, lse, ro);
  const int64_t H = info.heads, per_head = info.tokens * info.head_dim;
  auto head_of = [&](size_t i) { return int64_t(i) / per_head % H; };
  HeadSums sums{std::vector<double>(H, 0.0), std::vector<double>(candidates.size() * H, 0.0)};
  for (size_t i = 0; i < dense.size(); ++i) sums.dense_norm2[head_of(i)] += double(dense[i]) * dense[i];
  if (after_candidate) after_candidate(-1);
  const BlockPartition partition(geo);
  for (size_t c = 0; c < candidates.size(); ++c) {
    if (candidates[c] == geo.grid()) continue;  // the full window is dense attention: error 0
    const BlockPlan plan = build_sta_plan(partition, std::vector<Window>(H, candidates[c]));
    reference_attention_plan(shape, plan, {}, q, k, v, out, lse, ro);
    for (size_t i = 0; i < out.size(); ++i) {
      const double d = double(out[i]) - dense[i];
      sums.diff2[c * H + head_of(i)] += d * d;
    }
    if (after_candidate) after_candidate(int(c));
  }
  return sums;
}

HeadSums gpu_errors(const CaptureInfo& info, const VideoGeometry& geo, const std::vector<Window>& candidates,
                    const std::function<void(int)>& after_candidate) {
  std::vector<Window> sparse;  // the GPU skips the full window too
  std::vector<size_t> index;
  for (size_t c = 0; c < candidates.size(); ++c)
    if (candidates[c] != geo.grid()) sparse.push_back(candidates[c]), index.push_back(c);
  const auto q = load_capture_tensor_bf16(info, 0), k = load_capture_tensor_bf16(info, 1),
             v = load_capture_tensor_bf16(info, 2);
  const kernels::WindowErrors e = kernels::gpu_window_errors(
      geo, info.batch, info.heads, info.head_dim, q, k, v, sparse,
      [&](int c) { if (after_candidate) after_candidate(c < 0 ? -1 : int(index[c])); });
  const int64_t H = info.heads;
  HeadSums sums{e.dense_norm2, std::vector<double>(candidates.size() * H, 0.0)};
  for (size_t s = 0; s < sparse.size(); ++s)
    for (int64_t h = 0; h < H; ++h) sums.diff2[index[s] * H + h] = e.diff2[s * H + h];
  return sums;
}

// ---- solvers ----

constexpr double kTolerance = 1e-12;  // on mean sparsity

void check_problem(const Matrix& error, const Matrix& sparsity) {
  if (error.empty()) throw_argument_error("error", "no items to choose windows for");
  if (sparsity.size() != error.size())
    throw_argument_error("sparsity", fmt::format("{} rows, error has {}", sparsity.size(), error.size()));
  for (size_t i = 0; i < error.size(); ++i) {
    if (error[i].empty() || error[i].size() != sparsity[i].size())
      throw_argument_error("error", fmt::format("item {}: {} errors and {} sparsities", i, error[i].size(),
                                                sparsity[i].size()));
    for (size_t c = 0; c < error[i].size(); ++c)
      if (!std::isfinite(error[i][c]) || !std::isfinite(sparsity[i][c]))
        throw_argument_error("error", fmt::format("item {}, candidate {}: not finite", i, c));
  }
}

double chosen_sum(const Matrix& values, const std::vector<int>& choice) {  // sum of values[i][choice[i]]
  double sum = 0;
  for (size_t i = 0; i < choice.size(); ++i) sum += values[i][choice[i]];
  return sum;
}

// argmin over candidates of error - lambda * sparsity; ties to the sparser, then the lower error.
std::vector<int> lagrangian_choice(const Matrix& error, const Matrix& sparsity, double lambda) {
  std::vector<int> choice(error.size());
  for (size_t i = 0; i < error.size(); ++i) {
    int best = 0;
    double best_key = error[i][0] - lambda * sparsity[i][0];
    for (size_t c = 1; c < error[i].size(); ++c) {
      const double key = error[i][c] - lambda * sparsity[i][c];
      if (key < best_key || (key == best_key && (sparsity[i][c] > sparsity[i][best] ||
                                                 (sparsity[i][c] == sparsity[i][best] && error[i][c] < error[i][best]))))
        best = int(c), best_key = key;
    }
    choice[i] = best;
  }
  return choice;
}

struct Move {
  double sparsity_change;  // of the item's sparsity
  double error_change;
  int item, candidate;
};

// Greedy exchange: single moves that lower the error and keep the budget (those that also keep or raise the
// sparsity first, else the best error decrease per unit of sparsity given up), then pairs of moves on two items
// (one head to a denser, lower-error window paid for by another head's move to a sparser window) when they lower the
// total error. Stops when no such move is left.
int64_t exchange(const Matrix& error, const Matrix& sparsity, double target, std::vector<int>& choice) {
  const size_t n = choice.size();
  const double floor = target * double(n) - kTolerance * double(n);
  int64_t moves = 0;
  const int64_t limit = int64_t(n) * int64_t(error[0].size()) * 8 + 64;
  while (moves < limit) {
    const double slack = chosen_sum(sparsity, choice) - floor;
    std::vector<Move> denser, sparser;
    Move best_single{0, 0, -1, -1};
    double best_score = 0;
    bool best_free = false;
    for (size_t i = 0; i < n; ++i) {
      const int cur = choice[i];
      for (size_t c = 0; c < error[i].size(); ++c) {
        if (int(c) == cur) continue;
        const double ds = sparsity[i][c] - sparsity[i][cur], de = error[i][c] - error[i][cur];
        const Move m{ds, de, int(i), int(c)};
        if (ds > 0) sparser.push_back(m);
        if (de >= -1e-15) continue;
        if (ds < 0) denser.push_back(m);
        if (slack + ds < 0) continue;
        // Moves that keep or raise the sparsity come first (largest error decrease), then error per sparsity.
        const bool free_move = ds >= 0;
        const double score = free_move ? -de : -de / -ds;
        if (best_single.item < 0 || free_move > best_free || (free_move == best_free && score > best_score))
          best_single = m, best_score = score, best_free = free_move;
      }
    }
    if (best_single.item >= 0) {
      choice[best_single.item] = best_single.candidate;
      ++moves;
      continue;
    }
    // Pairs: for each sparser move, the denser move on another item with the largest error decrease that the
    // freed sparsity pays for. Denser moves sorted by sparsity lost, with running best and second best (other item).
    std::sort(denser.begin(), denser.end(),
              [](const Move& a, const Move& b) { return -a.sparsity_change < -b.sparsity_change; });
    std::vector<int> best1(denser.size(), -1), best2(denser.size(), -1);
    for (size_t d = 0; d < denser.size(); ++d) {
      int b1 = d ? best1[d - 1] : -1, b2 = d ? best2[d - 1] : -1;
      auto better = [&](int a, int b) { return b < 0 || denser[a].error_change < denser[b].error_change; };
      if (better(int(d), b1)) {
        if (b1 >= 0 && denser[b1].item != denser[d].item) b2 = b1;
        b1 = int(d);
      } else if (denser[d].item != denser[b1].item && better(int(d), b2)) {
        b2 = int(d);
      }
      best1[d] = b1, best2[d] = b2;
    }
    double best_gain = 1e-15;
    int pick_up = -1, pick_down = -1;
    for (size_t u = 0; u < sparser.size(); ++u) {
      const double budget = slack + sparser[u].sparsity_change;
      const auto end = std::upper_bound(denser.begin(), denser.end(), budget,
                                        [](double b, const Move& m) { return b < -m.sparsity_change; });
      if (end == denser.begin()) continue;
      const size_t last = size_t(end - denser.begin()) - 1;
      int d = best1[last];
      if (d >= 0 && denser[d].item == sparser[u].item) d = best2[last];
      if (d < 0) continue;
      const double gain = -(denser[d].error_change + sparser[u].error_change);
      if (gain > best_gain) best_gain = gain, pick_up = int(u), pick_down = d;
    }
    if (pick_up < 0) break;
    choice[sparser[pick_up].item] = sparser[pick_up].candidate;
    choice[denser[pick_down].item] = denser[pick_down].candidate;
    ++moves;
  }
  return moves;
}

}  // namespace

int CalibrationScores::full_candidate() const {
  for (size_t c = 0; c < candidates.size(); ++c)
    if (candidates[c] == geometry.grid()) return int(c);
  return -1;
}

std::vector<Window> prepare_candidates(std::span<const Window> candidates, const Extent3& grid,
                                       const std::string& argument) {
  std::vector<Window> out;
  for (const Window& raw : candidates) {
    const Window w{std::min(raw.t, grid.t), std::min(raw.h, grid.h), std::min(raw.w, grid.w)};
    try {
      validate_window(w, grid, argument);
    } catch (const ArgumentError& e) {
      throw ArgumentError(argument, fmt::format("candidate {} (clamped to the {} tile grid: {}): {}", to_string(raw),
                                                to_string(grid), to_string(w), e.what()));
    }
    if (std::find(out.begin(), out.end(), w) == out.end()) out.push_back(w);
  }
  if (std::find(out.begin(), out.end(), grid) == out.end()) out.push_back(grid);
  return out;
}

CalibrationScores score_captures(const std::vector<CaptureInfo>& captures, const ScoringOptions& o) {
  if (captures.empty()) throw_argument_error("captures", "no captures to score");
  if (o.dense_steps < 0 || o.dense_steps > limits::kMaxStepsOrLayers)
    throw_argument_error("--dense-steps", fmt::format("must be in [0, {}] (limits::kMaxStepsOrLayers), got {}",
                                                      limits::kMaxStepsOrLayers, o.dense_steps));
  const CaptureInfo& first = captures.front();
  for (const CaptureInfo& c : captures) check_same(first, c);
  CalibrationScores s;
  s.geometry = VideoGeometry(first.video, o.tile, first.text_len);
  s.heads = first.heads;
  s.dense_steps = o.dense_steps;
  s.candidates = prepare_candidates(o.candidates, s.geometry.grid());
  const BlockPartition partition(s.geometry);
  for (const Window& w : s.candidates)
    s.candidate_sparsity.push_back(build_sta_plan(partition, std::vector<Window>{w}).sparsity().total);

  // Group by (step, layer); dense steps are not calibrated.
  std::map<std::pair<int64_t, int64_t>, std::vector<const CaptureInfo*>> groups;
  for (const CaptureInfo& c : captures) {
    if (c.step < o.dense_steps) {
      ++s.captures_skipped;
      continue;
    }
    auto& group = groups[{c.step, c.layer}];
    for (const CaptureInfo* other : group)
      if (other->prompt == c.prompt)
        throw FileError(fmt::format("capture '{}', metadata key 'prompt': '{}' and '{}' both hold step {}, layer {}, "
                                    "prompt '{}'", c.path, other->path, c.path, c.step, c.layer, c.prompt));
    group.push_back(&c);
  }
  if (groups.empty())
    throw_argument_error("--dense-steps", fmt::format("every capture is of a step < {}: nothing to calibrate",
                                                      o.dense_steps));

  const std::string why_not_gpu = gpu_unusable_reason(first, o.tile);
  bool use_gpu = o.device == ScoringDevice::gpu;
  if (use_gpu && !why_not_gpu.empty()) throw_argument_error("--device", "gpu scoring is not possible: " + why_not_gpu);
  if (o.device == ScoringDevice::automatic) use_gpu = why_not_gpu.empty();
  s.device = use_gpu ? "gpu" : "cpu";

  // Work in dense-attention equivalents, for the progress ETA.
  std::vector<double> cost(s.candidates.size());
  double per_capture = 1.0;
  for (size_t c = 0; c < s.candidates.size(); ++c) {
    cost[c] = s.candidates[c] == s.geometry.grid() ? 0.0 : 1.0 - s.candidate_sparsity[c];
    per_capture += cost[c];
  }
  const double total = per_capture * double(captures.size() - s.captures_skipped);
  double done = 0;
  const int64_t H = s.heads, C = int64_t(s.candidates.size());
  for (const auto& [key, group] : groups) {
    const auto [step, layer] = key;
    std::vector<std::vector<double>> sum(H, std::vector<double>(C, 0.0));
    for (const CaptureInfo* capture : group) {
      const std::string what = fmt::format("step {} layer {} prompt '{}'", step, layer, capture->prompt);
      auto after = [&](int c) {
        done += c < 0 ? 1.0 : cost[c];
        if (o.progress) o.progress(done, total, what);
      };
      const HeadSums e = use_gpu ? gpu_errors(*capture, s.geometry, s.candidates, after)
                                 : cpu_window_errors(*capture, s.geometry, s.candidates, o, after);
      for (int64_t h = 0; h < H; ++h)
        for (int64_t c = 0; c < C; ++c) {
          const double norm2 = std::max(e.dense_norm2[h], std::numeric_limits<double>::min());
          sum[h][c] += std::sqrt(e.diff2[c * H + h] / norm2);
        }
      ++s.captures_scored;
    }
    for (int64_t h = 0; h < H; ++h) {
      s.items.push_back({step, layer, h});
      std::vector<double> row(C);
      for (int64_t c = 0; c < C; ++c) row[c] = sum[h][c] / double(group.size());
      s.error.push_back(std::move(row));
      s.prompts.push_back(int64_t(group.size()));
    }
  }
  return s;
}

Solution evaluate_choice(const Matrix& error, const Matrix& sparsity, std::vector<int> choice) {
  check_problem(error, sparsity);
  if (choice.size() != error.size())
    throw_argument_error("choice", fmt::format("{} entries for {} items", choice.size(), error.size()));
  Solution s;
  for (size_t i = 0; i < choice.size(); ++i) {
    if (choice[i] < 0 || choice[i] >= int(error[i].size()))
      throw_argument_error("choice", fmt::format("item {}: candidate {} out of range", i, choice[i]));
    s.mean_error += error[i][choice[i]];
  }
  s.sparsity = chosen_sum(sparsity, choice) / double(choice.size());
  s.mean_error /= double(choice.size());
  s.choice = std::move(choice);
  return s;
}

Solution solve_budget(const Matrix& error, const Matrix& sparsity, double target) {
  check_problem(error, sparsity);
  if (!(target >= 0.0 && target <= 1.0))
    throw_argument_error("--target-sparsity", fmt::format("must be in [0, 1], got {}", target));
  const double n = double(error.size()), floor = target * n - kTolerance * n;
  double max_sum = 0;
  for (const auto& row : sparsity) max_sum += *std::max_element(row.begin(), row.end());
  if (max_sum < floor)
    throw_argument_error("--target-sparsity", fmt::format("{} cannot be reached with these candidates: the sparsest "
                                                          "candidate for every head gives {:.6f}; lower the target or "
                                                          "add narrower candidates", target, max_sum / n));
  auto feasible = [&](const std::vector<int>& c) { return chosen_sum(sparsity, c) >= floor; };
  double lambda = 0;
  std::vector<int> choice = lagrangian_choice(error, sparsity, 0.0);
  if (!feasible(choice)) {
    // The mean sparsity of the Lagrangian choice grows with lambda: find the smallest feasible lambda.
    double lo = 0, hi = 1;
    int doublings = 0;
    while (!feasible(lagrangian_choice(error, sparsity, hi)) && doublings++ < 2000) hi *= 2;
    for (int it = 0; it < 200 && hi - lo > 1e-15 * hi; ++it) {
      const double mid = 0.5 * (lo + hi);
      (feasible(lagrangian_choice(error, sparsity, mid)) ? hi : lo) = mid;
    }
    lambda = hi;
    choice = lagrangian_choice(error, sparsity, hi);
    if (!feasible(choice)) {  // degenerate ties: fall back to the sparsest candidate everywhere
      for (size_t i = 0; i < choice.size(); ++i)
        choice[i] = int(std::max_element(sparsity[i].begin(), sparsity[i].end()) - sparsity[i].begin());
    }
  }
  // Lagrangian duality: x_l minimises error - l * sparsity, so every feasible x has
  // error(x) >= error(x) - l * (sparsity(x) - target) >= error(x_l) - l * (sparsity(x_l) - target)   (sums).
  const std::vector<int> relaxed = lagrangian_choice(error, sparsity, lambda);
  const double bound = (chosen_sum(error, relaxed) - lambda * (chosen_sum(sparsity, relaxed) - target * n)) / n;
  const int64_t moves = exchange(error, sparsity, target, choice);
  Solution s = evaluate_choice(error, sparsity, std::move(choice));
  s.lambda = lambda;
  s.exchanges = moves;
  s.lower_bound = std::min(bound, s.mean_error);
  return s;
}

Solution solve_argmin(const Matrix& error, const Matrix& sparsity, int excluded) {
  check_problem(error, sparsity);
  std::vector<int> choice(error.size());
  for (size_t i = 0; i < error.size(); ++i) {
    int best = -1;
    for (int c = 0; c < int(error[i].size()); ++c) {
      if (c == excluded) continue;
      if (best < 0 || error[i][c] < error[i][best] ||
          (error[i][c] == error[i][best] && sparsity[i][c] > sparsity[i][best]))
        best = c;
    }
    choice[i] = best < 0 ? excluded : best;
  }
  return evaluate_choice(error, sparsity, std::move(choice));
}

CalibrationResult calibrate(CalibrationScores scores, CalibrationRule rule, double target) {
  CalibrationResult r;
  r.rule = rule;
  r.target_sparsity = target;
  const Matrix sparsity(scores.items.size(), scores.candidate_sparsity);
  r.solution = rule == CalibrationRule::budget ? solve_budget(scores.error, sparsity, target)
                                               : solve_argmin(scores.error, sparsity, scores.full_candidate());
  auto best_global = [&](double min_sparsity) {
    GlobalWindowResult g;
    for (size_t c = 0; c < scores.candidates.size(); ++c) {
      if (scores.candidate_sparsity[c] < min_sparsity - kTolerance) continue;
      double mean = 0;
      for (const auto& row : scores.error) mean += row[c];
      mean /= double(scores.error.size());
      if (g.candidate < 0 || mean < g.mean_error) g = {int(c), scores.candidate_sparsity[c], mean};
    }
    return g;
  };
  r.best_global_at_achieved = best_global(r.solution.sparsity);
  r.best_global_at_target = best_global(target);
  r.strategy.geometry = scores.geometry;
  r.strategy.dense_steps = scores.dense_steps;
  for (size_t i = 0; i < scores.items.size(); ++i)
    r.strategy.windows[scores.items[i]] = scores.candidates[r.solution.choice[i]];
  r.scores = std::move(scores);
  return r;
}

MaskStrategy fastvideo_strategy(const CalibrationResult& r) {
  MaskStrategy s;
  s.windows = r.strategy.windows;
  std::vector<int64_t> layers;
  for (const StrategyKey& k : r.scores.items)
    if (std::find(layers.begin(), layers.end(), k.layer) == layers.end()) layers.push_back(k.layer);
  for (int64_t step = 0; step < r.scores.dense_steps; ++step)
    for (int64_t layer : layers)
      for (int64_t h = 0; h < r.scores.heads; ++h) s.windows[{step, layer, h}] = r.scores.geometry.grid();
  return s;
}

}  // namespace tileattn

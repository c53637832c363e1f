#pragma once
// Calibration: one STA window per (denoising step, layer, head), chosen from captured activations under a sparsity
// budget. Three stages, each usable on its own:
//
//  1. score_captures: for every captured (step, layer) and head, the relative L2 distance between each candidate
//     window's STA output and dense attention, ||O_c - O_dense|| / ||O_dense|| over the head's [B, S, D] output,
//     averaged over the prompts captured for that (step, layer). GPU kernels or the CPU reference.
//  2. solve_budget / solve_argmin: the choice of one candidate per calibrated head (see docs/DESIGN.md).
//  3. calibrate + write_calibration_outputs: the mask strategy (tileattn's and FastVideo's format) and a report.
//
// Definitions. The sparsity of a head's window is the exact fraction of (query, key) pairs it skips, text tokens
// included (BlockPlan::sparsity of a one-head plan). The achieved sparsity of a solution is the mean of that over the
// calibrated heads: every captured (step, layer) with step >= dense_steps, times every head. Dense steps are not
// calibrated and do not count in the average.
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "tileattn/capture.hpp"
#include "tileattn/mask_strategy.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

enum class ScoringDevice { automatic, cpu, gpu };

struct ScoringOptions {
  std::vector<Window> candidates;  // the full window (the grid) is always added
  Extent3 tile = kDefaultTile;
  int64_t dense_steps = 0;         // captures of steps < dense_steps are not scored
  ScoringDevice device = ScoringDevice::automatic;
  int threads = 0;                 // CPU threads (0: all)
  // Called after each unit of work: done and total are in dense-attention equivalents (for an ETA).
  std::function<void(double done, double total, const std::string& what)> progress;
};

struct CalibrationScores {
  VideoGeometry geometry{{1, 1, 1}};
  int64_t heads = 0;
  std::vector<Window> candidates;           // after clamping and de-duplication; contains the grid (full window)
  std::vector<double> candidate_sparsity;   // per candidate, exact per-head sparsity
  std::vector<StrategyKey> items;           // calibrated (step, layer, head), sorted
  std::vector<std::vector<double>> error;   // [item][candidate]: mean relative L2 over prompts
  std::vector<int64_t> prompts;             // [item]: captures averaged
  int64_t dense_steps = 0;
  int64_t captures_scored = 0;
  int64_t captures_skipped = 0;             // dense steps
  std::string device;                       // "gpu" or "cpu"

  int full_candidate() const;               // index of the full window
};

// Clamps each candidate to the grid (an axis at least as wide as the grid means the whole axis), validates it
// (odd, or the full axis; ArgumentError naming `argument`), removes duplicates and appends the full window if absent.
std::vector<Window> prepare_candidates(std::span<const Window> candidates, const Extent3& grid,
                                       const std::string& argument = "--candidates");

// Scores every capture. All captures must share video shape, text length, batch, heads and head_dim (FileError
// naming the file otherwise); two captures with the same (step, layer, prompt) are an error.
CalibrationScores score_captures(const std::vector<CaptureInfo>& captures, const ScoringOptions& options);

// ---- solvers ----

struct Solution {
  std::vector<int> choice;        // [item] -> candidate
  double sparsity = 0;            // mean over items
  double mean_error = 0;          // mean over items
  double lambda = 0;              // Lagrange multiplier the budget solver settled on
  double lower_bound = 0;         // budget solver: no feasible choice has a lower mean error (Lagrangian dual bound)
  int64_t exchanges = 0;          // improving moves made after the Lagrangian step
};

// Minimises the total error subject to mean sparsity >= target (multiple-choice knapsack): Lagrangian relaxation
// with bisection on the multiplier, then greedy exchanges (single and paired moves) that lower the error while
// keeping the budget. Also returns the Lagrangian dual lower bound on the optimum (a certificate of the gap). error and sparsity are [item][candidate]. Throws ArgumentError naming "--target-sparsity" if the
// target is outside [0, 1] or above the largest achievable mean sparsity.
Solution solve_budget(const std::vector<std::vector<double>>& error, const std::vector<std::vector<double>>& sparsity,
                      double target);
// FastVideo's rule: each item takes its lowest-error candidate, the `excluded` candidate (the full window) aside;
// ties go to the sparser candidate.
Solution solve_argmin(const std::vector<std::vector<double>>& error, const std::vector<std::vector<double>>& sparsity,
                      int excluded);
// The mean error and sparsity of a given choice.
Solution evaluate_choice(const std::vector<std::vector<double>>& error, const std::vector<std::vector<double>>& sparsity,
                         std::vector<int> choice);

// ---- the whole calibration ----

enum class CalibrationRule { budget, argmin };

struct GlobalWindowResult {
  int candidate = -1;  // -1: no candidate qualifies
  double sparsity = 0;
  double mean_error = 0;
};

struct CalibrationResult {
  CalibrationScores scores;
  CalibrationRule rule = CalibrationRule::budget;
  double target_sparsity = 0;
  Solution solution;
  // The best single window for every calibrated head with sparsity >= the achieved one / >= the target.
  GlobalWindowResult best_global_at_achieved, best_global_at_target;
  MaskStrategy strategy;  // tileattn format: geometry, dense_steps, one window per calibrated head
};

CalibrationResult calibrate(CalibrationScores scores, CalibrationRule rule, double target_sparsity);

// FastVideo's flat format cannot say "dense": dense steps get the full window for every captured layer and head.
MaskStrategy fastvideo_strategy(const CalibrationResult& result);

// Writes the strategy (`windows_path`, tileattn's format), `<stem>.fastvideo.json` next to it, and report.md,
// report.json and windows_heatmap.svg into `report_dir`. Returns the paths written.
std::vector<std::string> write_calibration_outputs(const CalibrationResult& result, const std::string& windows_path,
                                                   const std::string& report_dir);
std::string calibration_report_json(const CalibrationResult& result);
std::string calibration_report_markdown(const CalibrationResult& result);
std::string calibration_heatmap_svg(const CalibrationResult& result);

// ---- synthetic captures with known locality ----

struct SynthOptions {
  Extent3 video{12, 16, 16};
  Extent3 tile = kDefaultTile;  // locality lengths are drawn relative to the tile
  int64_t text_len = 16;
  int64_t heads = 8;
  int64_t head_dim = 64;
  int64_t layers = 2;
  int64_t steps = 1;
  int64_t prompts = 2;
  int64_t batch = 1;
  uint64_t seed = 1;
  CaptureDType dtype = CaptureDType::bf16;
  double sharpness = 0;  // peak logit of a query on its own position; 0: ln(tokens) + 2
  int threads = 0;
};

// The ground truth of one synthetic head: global heads attend everywhere; local heads' attention logits fall off as
// exp(-d^2 / (2 length^2)) along each axis (d and length in tokens).
struct SynthHead {
  bool global = false;
  double length[3] = {0, 0, 0};
};
std::vector<SynthHead> synth_heads(const SynthOptions& options, int64_t layer);

// Writes step{s}_layer{l}_prompt{p}.safetensors for every step, layer and prompt; returns the paths.
// The metadata key "synth_locality" holds the layer's heads as JSON: [[lt, lh, lw] or null for global heads, ...].
std::vector<std::string> write_synthetic_captures(const std::string& directory, const SynthOptions& options,
                                                  const std::function<void(int64_t done, int64_t total)>& progress = {});

}  // namespace tileattn
TILEATTN_PUBLIC_END

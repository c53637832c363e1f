#pragma once
// Training-free dynamic fine-grained masks (FG-Attn), CPU version: the brute-force oracle the GPU mask builder will be
// tested against. Written for clarity; memory is O(heads * query blocks * key groups).
//
// 1. Estimate (estimate_column_mass): for each (head, query block of M rows), the mean-pooled query of the block's rows
//    is scored against every key (scaled dot product), a softmax over all keys gives an estimated attention
//    distribution, and each key group's mass is the sum over its keys. With batch > 1 the masses are averaged over
//    the batch (one plan serves the batch, as BlockPlan does).
// 2. Select (select_columns): a rule keeps key groups per row; some groups are always kept; an optional window (e.g.
//    an STA window as a column plan) limits which groups may be kept at all. See ColumnSelection.
// 3. Reuse (MaskCache): the plan of step s is reused for steps s + 1 .. s + R - 1.
#include <cstdint>
#include <functional>
#include <optional>
#include <span>
#include <vector>

#include "tileattn/column_plan.hpp"
#include "tileattn/reference.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

// Estimated attention mass per (head, query block, key group); each row sums to 1.
struct ColumnMass {
  ColumnPlanShape shape;
  std::vector<double> mass;  // [heads, query blocks, key groups]
  std::span<const double> row(int64_t head, int64_t query_block) const;
};

// q [batch, q_heads, tokens, head_dim], k [batch, kv_heads, tokens, head_dim] (GQA as in reference.hpp), in the token
// order the plan will use. scale 0: 1 / sqrt(head_dim). Computed in fp64; threads 0: hardware concurrency.
ColumnMass estimate_column_mass(const AttentionShape& shape, std::span<const float> q, std::span<const float> k,
                                int64_t query_block, int64_t key_group, float scale = 0.0f, int threads = 0);

enum class SelectionRule {
  top_p,            // per row: the fewest groups, by descending mass (ties: lower index), whose mass together with the
                    // always-kept groups reaches p times the row's eligible mass
  top_k,            // per row: the k groups of highest mass (ties: lower index), plus the always-kept groups
  threshold,        // per row: every group with mass >= threshold, plus the always-kept groups
  target_sparsity,  // per head: one global threshold on mass per key (group mass / group size); see below
};

// target_sparsity: for each head, the always-kept (eligible) groups are kept; the other eligible (row, group) pairs
// are then added in order of descending mass per key (ties: lower query block, then lower group) until the head
// visits at least (1 - target_sparsity) * tokens^2 (query, key) pairs. The result is the sparsest plan of this
// order whose sparsity is <= the target: it reaches the target from above as closely as the granularity allows
// (at most one group's worth of pairs below). If the always-kept groups alone exceed the budget the sparsity is lower
// than the target; if every eligible group is needed and still too few, it is higher.
struct ColumnSelection {
  SelectionRule rule = SelectionRule::top_p;
  double p = 0.9;                // top_p, in (0, 1]
  int64_t k = 8;                 // top_k, >= 0
  double threshold = 0.01;       // threshold, >= 0
  double target_sparsity = 0.5;  // target_sparsity, in [0, 1)
  // Always kept (if eligible): the groups overlapping the query block's own positions (the diagonal), and every
  // group holding a text key (positions >= tokens - text_len; text is last in both token orders).
  bool keep_diagonal = true;
  bool always_keep_text = false;
  int64_t text_len = 0;
  // Eligible groups, per row (same shape as the mass); null: all. A hard limit: nothing outside it is kept, the
  // always-kept groups included. top_p's p is relative to the eligible mass of the row.
  const ColumnPlan* window = nullptr;
};

// Throws ArgumentError naming the ColumnSelection field ("p", "k", "threshold", "target_sparsity", "text_len",
// "window") on bad values.
ColumnPlan select_columns(const ColumnMass& mass, const ColumnSelection& selection);

// estimate_column_mass then select_columns.
ColumnPlan build_dynamic_column_plan(const AttentionShape& shape, std::span<const float> q, std::span<const float> k,
                                     int64_t query_block, int64_t key_group, const ColumnSelection& selection,
                                     float scale = 0.0f, int threads = 0);

// The STA window as a column plan, for ColumnSelection::window: a key group is eligible for a query block iff some
// query of the block visits some key of the group under build_sta_plan (whole-tile blocks, text visible).
ColumnPlan sta_column_window(const VideoGeometry& geometry, std::span<const Window> windows, TokenLayout layout,
                             int64_t query_block, int64_t key_group);

// Reuses a plan across denoising steps: get(step, build) calls build() when there is no plan yet, when
// step - built_step() >= refresh_interval, or when step < built_step() (a new sampling run); otherwise it returns the
// cached plan. With refresh_interval R and steps 0, 1, 2, ... it builds at 0, R, 2R, ...
class MaskCache {
 public:
  explicit MaskCache(int64_t refresh_interval);  // >= 1, else ArgumentError naming "refresh_interval"
  const ColumnPlan& get(int64_t step, const std::function<ColumnPlan()>& build);  // step >= 0
  bool has_plan() const { return plan_.has_value(); }
  int64_t built_step() const { return built_step_; }  // -1 when empty
  int64_t refresh_interval() const { return refresh_interval_; }
  void clear();

 private:
  int64_t refresh_interval_;
  int64_t built_step_ = -1;
  std::optional<ColumnPlan> plan_;
};

}  // namespace tileattn
TILEATTN_PUBLIC_END

// CPU dynamic fine-grained masks: pooled-query mass estimate, selection rules, mask cache (see dynamic_mask.hpp).
#include "tileattn/dynamic_mask.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "core/dynamic_mask_checks.hpp"
#include "core/parallel_for.hpp"
#include "core/softmax_scale.hpp"
#include "reference/attention_shape.hpp"
#include "tileattn/error.hpp"

namespace tileattn {

std::span<const double> ColumnMass::row(int64_t head, int64_t query_block) const {
  if (head < 0 || head >= shape.heads)
    throw_argument_error("head", fmt::format("must be in [0, {}), got {}", shape.heads, head));
  if (query_block < 0 || query_block >= shape.num_query_blocks())
    throw_argument_error("query_block",
                         fmt::format("must be in [0, {}), got {}", shape.num_query_blocks(), query_block));
  const int64_t ng = shape.num_key_groups();
  return std::span<const double>(mass).subspan((head * shape.num_query_blocks() + query_block) * ng, ng);
}

ColumnMass estimate_column_mass(const AttentionShape& s, std::span<const float> q, std::span<const float> k,
                                int64_t query_block, int64_t key_group, float scale, int threads) {
  detail::check_attention_inputs(s, q.size(), k.size());
  const ColumnPlanShape shape{s.tokens, s.q_heads, query_block, key_group};
  shape.validate();
  const int64_t n = s.tokens, d = s.head_dim, nq = shape.num_query_blocks(), ng = shape.num_key_groups();
  const double sc = detail::softmax_scale<double>(scale, d);
  ColumnMass result{shape, std::vector<double>(shape.num_rows() * ng, 0.0)};
  detail::parallel_for(shape.num_rows(), threads, [&](int64_t r) {
    const int64_t h = r / nq, qb = r % nq, kvh = h / (s.q_heads / s.kv_heads);
    const int64_t first = qb * query_block, rows = shape.query_block_size(qb);
    std::vector<double> pooled(d), score(n);
    double* out = result.mass.data() + r * ng;
    for (int64_t b = 0; b < s.batch; ++b) {
      std::fill(pooled.begin(), pooled.end(), 0.0);
      const float* qh = q.data() + (b * s.q_heads + h) * n * d;
      for (int64_t i = first; i < first + rows; ++i)
        for (int64_t c = 0; c < d; ++c) pooled[c] += qh[i * d + c];
      for (double& x : pooled) x /= double(rows);
      const float* kh = k.data() + (b * s.kv_heads + kvh) * n * d;
      double max_score = -std::numeric_limits<double>::infinity();
      for (int64_t j = 0; j < n; ++j) {
        double dot = 0;
        for (int64_t c = 0; c < d; ++c) dot += pooled[c] * double(kh[j * d + c]);
        score[j] = sc * dot;
        max_score = std::max(max_score, score[j]);
      }
      double sum = 0;
      for (double& x : score) sum += (x = std::exp(x - max_score));
      for (int64_t j = 0; j < n; ++j) out[j / key_group] += score[j] / sum / double(s.batch);
    }
  });
  return result;
}

namespace detail {

void check_selection_values(const ColumnPlanShape& shape, const ColumnSelection& sel) {
  if (sel.rule == SelectionRule::top_p && !(sel.p > 0.0 && sel.p <= 1.0))
    throw_argument_error("p", fmt::format("must be in (0, 1], got {}", sel.p));
  if (sel.rule == SelectionRule::top_k && sel.k < 0)
    throw_argument_error("k", fmt::format("must be >= 0, got {}", sel.k));
  if (sel.rule == SelectionRule::threshold && !(sel.threshold >= 0.0))
    throw_argument_error("threshold", fmt::format("must be >= 0, got {}", sel.threshold));
  if (sel.rule == SelectionRule::target_sparsity && !(sel.target_sparsity >= 0.0 && sel.target_sparsity < 1.0))
    throw_argument_error("target_sparsity", fmt::format("must be in [0, 1), got {}", sel.target_sparsity));
  if (sel.text_len < 0 || sel.text_len > shape.tokens)
    throw_argument_error("text_len", fmt::format("must be in [0, tokens = {}], got {}", shape.tokens, sel.text_len));
}

}  // namespace detail

namespace {

void check_selection(const ColumnPlanShape& shape, const ColumnSelection& sel) {
  detail::check_selection_values(shape, sel);
  if (sel.window && !(sel.window->shape() == shape))
    throw_argument_error("window", fmt::format("the window plan must have the mass's shape (tokens {}, heads {}, "
                                               "query_block {}, key_group {})",
                                               shape.tokens, shape.heads, shape.query_block, shape.key_group));
}

// One row's groups: the always-kept ones, and the other eligible ones ranked by descending mass (ties: lower index).
struct RowCandidates {
  std::vector<int32_t> forced, ranked;
  double eligible_mass = 0, forced_mass = 0;
};

RowCandidates row_candidates(const ColumnMass& m, const ColumnSelection& sel, int64_t h, int64_t qb) {
  const ColumnPlanShape& s = m.shape;
  const std::span<const double> mass = m.row(h, qb);
  const int64_t diag_first = qb * s.query_block / s.key_group;
  const int64_t diag_last = (qb * s.query_block + s.query_block_size(qb) - 1) / s.key_group;
  const int64_t first_text = s.tokens - sel.text_len;
  std::vector<char> eligible(s.num_key_groups(), sel.window ? 0 : 1);
  if (sel.window)
    for (int32_t g : sel.window->row(h, qb)) eligible[g] = 1;
  RowCandidates c;
  for (int64_t g = 0; g < s.num_key_groups(); ++g) {
    if (!eligible[g]) continue;
    c.eligible_mass += mass[g];
    const bool diagonal = sel.keep_diagonal && g >= diag_first && g <= diag_last;
    const bool text = sel.always_keep_text && g * s.key_group + s.key_group_size(g) > first_text;
    if (diagonal || text) {
      c.forced.push_back(static_cast<int32_t>(g));
      c.forced_mass += mass[g];
    } else {
      c.ranked.push_back(static_cast<int32_t>(g));
    }
  }
  std::stable_sort(c.ranked.begin(), c.ranked.end(), [&](int32_t a, int32_t b) { return mass[a] > mass[b]; });
  return c;
}

// The groups a per-row rule keeps beyond the forced ones: a prefix of the ranked list.
size_t kept_prefix(const ColumnSelection& sel, const RowCandidates& c, std::span<const double> mass) {
  size_t n = 0;
  switch (sel.rule) {
    case SelectionRule::top_p:
      for (double covered = c.forced_mass; n < c.ranked.size() && covered < sel.p * c.eligible_mass; ++n)
        covered += mass[c.ranked[n]];
      return n;
    case SelectionRule::top_k:
      return std::min<size_t>(c.ranked.size(), static_cast<size_t>(sel.k));
    case SelectionRule::threshold:
      while (n < c.ranked.size() && mass[c.ranked[n]] >= sel.threshold) ++n;
      return n;
    case SelectionRule::target_sparsity:
      break;
  }
  return 0;
}

}  // namespace

ColumnPlan select_columns(const ColumnMass& m, const ColumnSelection& sel) {
  const ColumnPlanShape& s = m.shape;
  s.validate();
  if (static_cast<int64_t>(m.mass.size()) != s.num_rows() * s.num_key_groups())
    throw_argument_error("mass",
                         fmt::format("expected {} entries, got {}", s.num_rows() * s.num_key_groups(), m.mass.size()));
  check_selection(s, sel);
  const int64_t nq = s.num_query_blocks();
  std::vector<std::vector<int32_t>> rows(s.num_rows());
  for (int64_t h = 0; h < s.heads; ++h) {
    std::vector<RowCandidates> cands(nq);
    int64_t visited = 0;
    for (int64_t qb = 0; qb < nq; ++qb) {
      cands[qb] = row_candidates(m, sel, h, qb);
      auto& row = rows[h * nq + qb];
      row = cands[qb].forced;
      if (sel.rule != SelectionRule::target_sparsity) {
        const size_t n = kept_prefix(sel, cands[qb], m.row(h, qb));
        row.insert(row.end(), cands[qb].ranked.begin(), cands[qb].ranked.begin() + n);
      }
      for (int32_t g : row) visited += s.query_block_size(qb) * s.key_group_size(g);
    }
    if (sel.rule == SelectionRule::target_sparsity) {
      // One threshold on mass per key for the whole head: add pairs in that order until the budget is met.
      const double need = (1.0 - sel.target_sparsity) * double(s.tokens) * double(s.tokens);
      struct Entry {
        double density;
        int64_t qb;
        int32_t g;
      };
      std::vector<Entry> entries;
      for (int64_t qb = 0; qb < nq; ++qb)
        for (int32_t g : cands[qb].ranked) entries.push_back({m.row(h, qb)[g] / double(s.key_group_size(g)), qb, g});
      std::stable_sort(entries.begin(), entries.end(),
                       [](const Entry& a, const Entry& b) { return a.density > b.density; });
      for (size_t i = 0; i < entries.size() && double(visited) < need; ++i) {
        rows[h * nq + entries[i].qb].push_back(entries[i].g);
        visited += s.query_block_size(entries[i].qb) * s.key_group_size(entries[i].g);
      }
    }
    for (int64_t qb = 0; qb < nq; ++qb) std::sort(rows[h * nq + qb].begin(), rows[h * nq + qb].end());
  }
  return ColumnPlan::from_rows(s, rows);
}

ColumnPlan build_dynamic_column_plan(const AttentionShape& shape, std::span<const float> q, std::span<const float> k,
                                     int64_t query_block, int64_t key_group, const ColumnSelection& selection,
                                     float scale, int threads) {
  return select_columns(estimate_column_mass(shape, q, k, query_block, key_group, scale, threads), selection);
}

ColumnPlan sta_column_window(const VideoGeometry& geometry, std::span<const Window> windows, TokenLayout layout,
                             int64_t query_block, int64_t key_group) {
  return cover_block_plan(build_sta_plan(BlockPartition(geometry), windows), layout, query_block, key_group);
}

MaskCache::MaskCache(int64_t refresh_interval) : refresh_interval_(refresh_interval) {
  if (refresh_interval < 1)
    throw_argument_error("refresh_interval", fmt::format("must be >= 1, got {}", refresh_interval));
}

const ColumnPlan& MaskCache::get(int64_t step, const std::function<ColumnPlan()>& build) {
  if (step < 0) throw_argument_error("step", fmt::format("must be >= 0, got {}", step));
  if (!build) throw_argument_error("build", "the plan builder is empty");
  if (!plan_ || step < built_step_ || step - built_step_ >= refresh_interval_) {
    clear();  // a throwing builder leaves the cache empty rather than stale
    plan_.emplace(build());
    built_step_ = step;
  }
  return *plan_;
}

void MaskCache::clear() {
  plan_.reset();
  built_step_ = -1;
}

}  // namespace tileattn

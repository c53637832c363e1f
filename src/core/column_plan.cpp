#include "tileattn/column_plan.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"

namespace tileattn {

void ColumnPlanShape::validate() const {
  if (tokens < 1) throw_argument_error("tokens", fmt::format("must be >= 1, got {}", tokens));
  if (heads < 1) throw_argument_error("heads", fmt::format("must be >= 1, got {}", heads));
  if (query_block != 16 && query_block != 32 && query_block != 64 && query_block != 128)
    throw_argument_error("query_block", fmt::format("must be 16, 32, 64 or 128, got {}", query_block));
  if (key_group < 1) throw_argument_error("key_group", fmt::format("must be >= 1, got {}", key_group));
  if (tokens > limits::kMaxTokens)
    throw_argument_error("tokens", fmt::format("must be <= {} (limits::kMaxTokens), got {}", limits::kMaxTokens,
                                               tokens));
  checked_mul(heads, num_query_blocks(), "heads");  // num_rows() must not wrap
  if (num_key_groups() > std::numeric_limits<int32_t>::max())
    throw_argument_error("key_group", fmt::format("{} key groups do not fit int32 indices", num_key_groups()));
}

int64_t ColumnPlanShape::query_block_size(int64_t qb) const { return std::min(query_block, tokens - qb * query_block); }

int64_t ColumnPlanShape::key_group_size(int64_t g) const { return std::min(key_group, tokens - g * key_group); }

ColumnPlan::ColumnPlan(ColumnPlanShape shape, std::vector<int64_t> offsets, std::vector<int32_t> indices)
    : ColumnPlan(shape, std::move(offsets), std::move(indices), "indices") {}

ColumnPlan::ColumnPlan(ColumnPlanShape shape, std::vector<int64_t> offsets, std::vector<int32_t> indices,
                       const char* indices_argument)
    : shape_(shape), offsets_(std::move(offsets)), indices_(std::move(indices)) {
  shape_.validate();
  const int64_t rows = shape_.num_rows(), groups = shape_.num_key_groups();
  if (static_cast<int64_t>(offsets_.size()) != rows + 1)
    throw_argument_error(
        "offsets", fmt::format("expected heads * query blocks + 1 = {} entries, got {}", rows + 1, offsets_.size()));
  if (offsets_.front() != 0 || offsets_.back() != static_cast<int64_t>(indices_.size()))
    throw_argument_error("offsets", fmt::format("must run from 0 to indices.size() = {}, got {} .. {}", indices_.size(),
                                                offsets_.front(), offsets_.back()));
  for (int64_t r = 0; r < rows; ++r) {
    if (offsets_[r + 1] < offsets_[r])
      throw_argument_error("offsets", fmt::format("decrease at row {}: {} then {}", r, offsets_[r], offsets_[r + 1]));
    for (int64_t i = offsets_[r]; i < offsets_[r + 1]; ++i) {
      if (indices_[i] < 0 || indices_[i] >= groups)
        throw_argument_error(indices_argument,
                             fmt::format("row {} lists key group {}, outside [0, {})", r, indices_[i], groups));
      if (i > offsets_[r] && indices_[i] <= indices_[i - 1])
        throw_argument_error(indices_argument, fmt::format("row {} is not strictly ascending: {} after {}", r,
                                                           indices_[i], indices_[i - 1]));
    }
  }
}

ColumnPlan ColumnPlan::from_rows(ColumnPlanShape shape, const std::vector<std::vector<int32_t>>& rows) {
  shape.validate();
  if (static_cast<int64_t>(rows.size()) != shape.num_rows())
    throw_argument_error("rows",
                         fmt::format("expected heads * query blocks = {} rows, got {}", shape.num_rows(), rows.size()));
  std::vector<int64_t> offsets{0};
  std::vector<int32_t> indices;
  for (const auto& row : rows) {
    indices.insert(indices.end(), row.begin(), row.end());
    offsets.push_back(static_cast<int64_t>(indices.size()));
  }
  return ColumnPlan(shape, std::move(offsets), std::move(indices), "rows");
}

ColumnPlan ColumnPlan::from_fixed(const FixedColumnPlan& f) {
  f.shape.validate();
  const int64_t rows = f.shape.num_rows();
  if (f.capacity < 0) throw_argument_error("capacity", fmt::format("must be >= 0, got {}", f.capacity));
  if (static_cast<int64_t>(f.counts.size()) != rows)
    throw_argument_error("counts", fmt::format("expected {} entries, got {}", rows, f.counts.size()));
  const int64_t entries = checked_mul(rows, f.capacity, "capacity");
  if (static_cast<int64_t>(f.table.size()) != entries)
    throw_argument_error(
        "table", fmt::format("expected rows * capacity = {} entries, got {}", entries, f.table.size()));
  std::vector<int64_t> offsets{0};
  std::vector<int32_t> indices;
  for (int64_t r = 0; r < rows; ++r) {
    if (f.counts[r] < 0 || f.counts[r] > f.capacity)
      throw_argument_error("counts",
                           fmt::format("row {} has count {}, outside [0, capacity = {}]", r, f.counts[r], f.capacity));
    indices.insert(indices.end(), f.table.begin() + r * f.capacity, f.table.begin() + r * f.capacity + f.counts[r]);
    offsets.push_back(static_cast<int64_t>(indices.size()));
  }
  return ColumnPlan(f.shape, std::move(offsets), std::move(indices), "table");
}

std::span<const int32_t> ColumnPlan::row(int64_t head, int64_t qb) const {
  if (head < 0 || head >= heads())
    throw_argument_error("head", fmt::format("must be in [0, {}), got {}", heads(), head));
  if (qb < 0 || qb >= num_query_blocks())
    throw_argument_error("query_block", fmt::format("must be in [0, {}), got {}", num_query_blocks(), qb));
  const int64_t r = head * num_query_blocks() + qb;
  return std::span<const int32_t>(indices_).subspan(offsets_[r], offsets_[r + 1] - offsets_[r]);
}

int64_t ColumnPlan::max_row_length() const {
  int64_t m = 0;
  for (size_t r = 0; r + 1 < offsets_.size(); ++r) m = std::max(m, offsets_[r + 1] - offsets_[r]);
  return m;
}

FixedColumnPlan ColumnPlan::to_fixed(int64_t capacity) const {
  const int64_t longest = max_row_length();
  if (capacity < 0) capacity = longest;
  if (longest > capacity)
    throw_argument_error("capacity",
                         fmt::format("a row lists {} key groups, more than the capacity {}", longest, capacity));
  const int64_t rows = shape_.num_rows();
  const int64_t entries = checked_host_bytes({rows, capacity}, "capacity");  // int32 entries, bounded like bytes
  FixedColumnPlan f{shape_, capacity, std::vector<int32_t>(static_cast<size_t>(entries), -1),
                    std::vector<int32_t>(rows)};
  for (int64_t r = 0; r < rows; ++r) {
    f.counts[r] = static_cast<int32_t>(offsets_[r + 1] - offsets_[r]);
    std::copy(indices_.begin() + offsets_[r], indices_.begin() + offsets_[r + 1], f.table.begin() + r * capacity);
  }
  return f;
}

SparsityReport ColumnPlan::sparsity() const {
  const int64_t n = tokens(), nq = num_query_blocks();
  SparsityReport report;
  report.per_head.resize(heads());
  for (int64_t h = 0; h < heads(); ++h) {
    int64_t visited = 0;
    for (int64_t qb = 0; qb < nq; ++qb) {
      int64_t keys = 0;
      for (int32_t g : row(h, qb)) keys += shape_.key_group_size(g);
      visited += shape_.query_block_size(qb) * keys;
    }
    report.per_head[h] = 1.0 - static_cast<double>(visited) / (static_cast<double>(n) * n);
    report.visited_pairs += visited;
  }
  report.total_pairs = checked_product({heads(), n, n}, "heads");
  report.total = 1.0 - static_cast<double>(report.visited_pairs) / static_cast<double>(report.total_pairs);
  return report;
}

bool ColumnPlan::visits(int64_t head, int64_t query, int64_t key) const {
  if (query < 0 || query >= tokens())
    throw_argument_error("query", fmt::format("must be in [0, {}), got {}", tokens(), query));
  if (key < 0 || key >= tokens()) throw_argument_error("key", fmt::format("must be in [0, {}), got {}", tokens(), key));
  auto r = row(head, query / query_block());
  return std::binary_search(r.begin(), r.end(), static_cast<int32_t>(key / key_group()));
}

TokenBlockMask ColumnPlan::to_block_mask(int64_t block_rows, int64_t block_cols) const {
  if (block_rows < 1) throw_argument_error("block_rows", fmt::format("must be >= 1, got {}", block_rows));
  if (block_cols < 1) throw_argument_error("block_cols", fmt::format("must be >= 1, got {}", block_cols));
  TokenBlockMask m{tokens(), heads(), block_rows, block_cols, {}};
  const int64_t nr = m.num_row_blocks(), nc = m.num_col_blocks(), M = query_block(), N = key_group();
  m.mask.assign(static_cast<size_t>(checked_host_bytes({heads(), nr, nc}, "block_rows")), 0);
  for (int64_t h = 0; h < heads(); ++h)
    for (int64_t qb = 0; qb < num_query_blocks(); ++qb) {
      const int64_t r0 = qb * M / block_rows, r1 = (qb * M + shape_.query_block_size(qb) - 1) / block_rows;
      for (int32_t g : row(h, qb)) {
        const int64_t c0 = g * N / block_cols, c1 = (g * N + shape_.key_group_size(g) - 1) / block_cols;
        for (int64_t r = r0; r <= r1; ++r)
          for (int64_t c = c0; c <= c1; ++c) m.mask[(h * nr + r) * nc + c] = 1;
      }
    }
  return m;
}

ColumnPlan ColumnPlan::from_block_mask(const TokenBlockMask& m, int64_t query_block, int64_t key_group) {
  const ColumnPlanShape shape{m.tokens, m.heads, query_block, key_group};
  shape.validate();
  if (m.block_rows < 1 || m.block_rows % query_block != 0)
    throw_argument_error("query_block",
                         fmt::format("must divide the mask's block_rows = {}, got {}", m.block_rows, query_block));
  if (m.block_cols < 1 || m.block_cols % key_group != 0)
    throw_argument_error("key_group",
                         fmt::format("must divide the mask's block_cols = {}, got {}", m.block_cols, key_group));
  if (static_cast<int64_t>(m.mask.size()) != m.heads * m.num_row_blocks() * m.num_col_blocks())
    throw_argument_error("mask", fmt::format("expected heads * row blocks * column blocks = {} entries, got {}",
                                             m.heads * m.num_row_blocks() * m.num_col_blocks(), m.mask.size()));
  return build_column_plan(shape, [&](int64_t h, int64_t qb, int64_t g) {
    return m.at(h, qb * query_block / m.block_rows, g * key_group / m.block_cols);
  });
}

ColumnPlan build_column_plan(const ColumnPlanShape& shape,
                             const std::function<bool(int64_t, int64_t, int64_t)>& visits) {
  shape.validate();
  if (!visits) throw_argument_error("visits", "the predicate is empty");
  std::vector<int64_t> offsets{0};
  std::vector<int32_t> indices;
  for (int64_t h = 0; h < shape.heads; ++h)
    for (int64_t qb = 0; qb < shape.num_query_blocks(); ++qb) {
      for (int64_t g = 0; g < shape.num_key_groups(); ++g)
        if (visits(h, qb, g)) indices.push_back(static_cast<int32_t>(g));
      offsets.push_back(static_cast<int64_t>(indices.size()));
    }
  return ColumnPlan(shape, std::move(offsets), std::move(indices));
}

ColumnPlan cover_block_plan(const BlockPlan& plan, TokenLayout layout, int64_t query_block, int64_t key_group) {
  const BlockPartition& part = plan.partition();
  const VideoGeometry& geo = part.geometry();
  const ColumnPlanShape shape{geo.num_tokens(), plan.heads(), query_block, key_group};
  shape.validate();
  const bool tiled = layout == TokenLayout::tile_major;
  const std::vector<int64_t> order = tiled ? geo.tile_major_order() : std::vector<int64_t>{};
  auto token_at = [&](int64_t pos) { return tiled ? order[pos] : pos; };
  // The key groups that hold each key block's tokens, and the plan blocks that hold each query block's positions.
  const int64_t nb = part.num_blocks(), nq = shape.num_query_blocks(), ng = shape.num_key_groups();
  std::vector<std::vector<int32_t>> block_groups(nb);
  for (int64_t b = 0; b < nb; ++b) {
    for (int64_t token : part.tokens(b))
      block_groups[b].push_back(static_cast<int32_t>((tiled ? geo.tile_major_index(token) : token) / key_group));
    std::sort(block_groups[b].begin(), block_groups[b].end());
    block_groups[b].erase(std::unique(block_groups[b].begin(), block_groups[b].end()), block_groups[b].end());
  }
  std::vector<std::vector<int32_t>> query_blocks(nq);
  for (int64_t pos = 0; pos < shape.tokens; ++pos) {
    auto& q = query_blocks[pos / query_block];
    const int32_t b = static_cast<int32_t>(part.block_of_token(token_at(pos)));
    if (std::find(q.begin(), q.end(), b) == q.end()) q.push_back(b);
  }
  std::vector<std::vector<int32_t>> rows(shape.num_rows());
  std::vector<char> key_seen(nb), group_seen(ng);
  for (int64_t h = 0; h < shape.heads; ++h)
    for (int64_t qb = 0; qb < nq; ++qb) {
      std::fill(key_seen.begin(), key_seen.end(), 0);
      std::fill(group_seen.begin(), group_seen.end(), 0);
      for (int32_t b : query_blocks[qb])
        for (int32_t kb : plan.key_blocks(h, b)) {
          if (key_seen[kb]) continue;
          key_seen[kb] = 1;
          for (int32_t g : block_groups[kb]) group_seen[g] = 1;
        }
      auto& row = rows[h * nq + qb];
      for (int64_t g = 0; g < ng; ++g)
        if (group_seen[g]) row.push_back(static_cast<int32_t>(g));
    }
  return ColumnPlan::from_rows(shape, rows);
}

}  // namespace tileattn

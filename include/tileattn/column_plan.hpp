#pragma once
// Fine-grained plans (FG-Attn): the M x N form of tileattn's one plan concept.
//
// Token positions are the rows of the tensors as they are laid out (natural or tile-major order, text last); the plan
// does not need the video geometry. Queries are cut into blocks of M = query_block consecutive positions (M in
// {16, 32, 64, 128}, the last block may be partial); keys into groups of N = key_group consecutive positions (N >= 1,
// the last group may be partial). For each (head, query block) the plan lists the key groups the block visits:
// ascending, without repeats, in CSR form (row r = head * num_query_blocks() + query_block).
//
// The GPU consumes the fixed-capacity form (FixedColumnPlan): a dense [rows, capacity] table plus a count per row, so
// a GPU mask builder can write it into buffers allocated once, and planning can be captured in a CUDA graph.
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "tileattn/plan.hpp"
#include "tileattn/types.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

// Shape of a fine-grained plan: positions, heads, M and N. validate() throws ArgumentError naming the field.
struct ColumnPlanShape {
  int64_t tokens = 0;
  int64_t heads = 1;
  int64_t query_block = 64;  // M
  int64_t key_group = 1;     // N

  void validate() const;
  int64_t num_query_blocks() const { return detail::ceil_div(tokens, query_block); }
  int64_t num_key_groups() const { return detail::ceil_div(tokens, key_group); }
  int64_t num_rows() const { return heads * num_query_blocks(); }
  int64_t query_block_size(int64_t query_block_index) const;  // M, or less for the last block
  int64_t key_group_size(int64_t group) const;                // N, or less for the last group
  friend bool operator==(const ColumnPlanShape&, const ColumnPlanShape&) = default;
};

// The fixed-capacity form: row r lists counts[r] key groups in table[r * capacity, r * capacity + counts[r]),
// ascending; unused slots hold -1.
struct FixedColumnPlan {
  ColumnPlanShape shape;
  int64_t capacity = 0;
  std::vector<int32_t> table;   // num_rows * capacity
  std::vector<int32_t> counts;  // num_rows
};

// A dense block mask over consecutive positions (FlexAttention's BlockMask granularity): mask[(h * row_blocks + r) *
// col_blocks + c] says whether (head h, query rows [r R, r R + R), key columns [c C, c C + C)) is visited.
struct TokenBlockMask {
  int64_t tokens = 0;
  int64_t heads = 1;
  int64_t block_rows = 128;  // R
  int64_t block_cols = 128;  // C
  std::vector<uint8_t> mask;

  int64_t num_row_blocks() const { return detail::ceil_div(tokens, block_rows); }
  int64_t num_col_blocks() const { return detail::ceil_div(tokens, block_cols); }
  bool at(int64_t head, int64_t row_block, int64_t col_block) const {
    return mask[(head * num_row_blocks() + row_block) * num_col_blocks() + col_block] != 0;
  }
  friend bool operator==(const TokenBlockMask&, const TokenBlockMask&) = default;
};

class ColumnPlan {
 public:
  // CSR: offsets has num_rows + 1 entries from 0 to indices.size(), non-decreasing; each row's groups lie in
  // [0, num_key_groups) and ascend strictly. Throws ArgumentError naming "offsets" or "indices" otherwise.
  ColumnPlan(ColumnPlanShape shape, std::vector<int64_t> offsets, std::vector<int32_t> indices);
  // One list per row (rows.size() == num_rows), each ascending without repeats; throws ArgumentError naming "rows".
  static ColumnPlan from_rows(ColumnPlanShape shape, const std::vector<std::vector<int32_t>>& rows);
  // Validates counts (in [0, capacity]) and the table; throws ArgumentError naming "capacity", "counts" or "table".
  static ColumnPlan from_fixed(const FixedColumnPlan& fixed);

  const ColumnPlanShape& shape() const { return shape_; }
  int64_t tokens() const { return shape_.tokens; }
  int64_t heads() const { return shape_.heads; }
  int64_t query_block() const { return shape_.query_block; }
  int64_t key_group() const { return shape_.key_group; }
  int64_t num_query_blocks() const { return shape_.num_query_blocks(); }
  int64_t num_key_groups() const { return shape_.num_key_groups(); }

  std::span<const int32_t> row(int64_t head, int64_t query_block) const;
  std::span<const int64_t> offsets() const { return offsets_; }
  std::span<const int32_t> indices() const { return indices_; }
  int64_t num_entries() const { return static_cast<int64_t>(indices_.size()); }
  int64_t max_row_length() const;

  // capacity < 0: max_row_length(). Throws ArgumentError naming "capacity" if a row holds more groups.
  FixedColumnPlan to_fixed(int64_t capacity = -1) const;

  // Exact skipped-pair accounting over tokens^2 pairs per head (partial blocks and groups counted by their size).
  SparsityReport sparsity() const;
  // True if query position `query` of `head` sees key position `key`.
  bool visits(int64_t head, int64_t query, int64_t key) const;

  // For each (head, R-row block, C-column block): whether any visited pair lies in it.
  TokenBlockMask to_block_mask(int64_t block_rows, int64_t block_cols) const;
  // The block mask's element mask as a column plan. Exact, so M must divide R and N must divide C (ArgumentError
  // naming "query_block" / "key_group" otherwise); from_block_mask(m, M, N).to_block_mask(R, C) == m.
  static ColumnPlan from_block_mask(const TokenBlockMask& mask, int64_t query_block, int64_t key_group);

  friend bool operator==(const ColumnPlan&, const ColumnPlan&) = default;

 private:
  // Validates, naming `indices_argument` for bad groups (the public constructor: "indices").
  ColumnPlan(ColumnPlanShape shape, std::vector<int64_t> offsets, std::vector<int32_t> indices,
             const char* indices_argument);

  ColumnPlanShape shape_;
  std::vector<int64_t> offsets_;
  std::vector<int32_t> indices_;
};

// ---- builders ----

// visits(head, query_block, key_group) decides; ascending groups.
ColumnPlan build_column_plan(const ColumnPlanShape& shape,
                             const std::function<bool(int64_t, int64_t, int64_t)>& visits);

// The smallest column plan that covers a block plan: query block qb visits key group g iff some query position of qb
// visits some key position of g under `plan`. Positions map to tokens through `layout` (text last in both). Exact
// (same element mask) when the block plan's blocks are unions of query blocks and of key groups.
ColumnPlan cover_block_plan(const BlockPlan& plan, TokenLayout layout, int64_t query_block, int64_t key_group);

}  // namespace tileattn
TILEATTN_PUBLIC_END

#include "tileattn/plan.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "tileattn/error.hpp"

namespace tileattn {

using detail::ceil_div;

BlockPartition::BlockPartition(VideoGeometry geometry, int64_t frames_per_block, int64_t text_block_size)
    : geometry_(std::move(geometry)),
      frames_per_block_(frames_per_block == 0 ? geometry_.tile().t : frames_per_block),
      text_block_size_(text_block_size) {
  if (frames_per_block_ < 1 || frames_per_block_ > geometry_.tile().t)
    throw_argument_error("frames_per_block", fmt::format("must be in [1, tile.t = {}] (0 = whole tile), got {}",
                                                         geometry_.tile().t, frames_per_block));
  if (text_block_size_ < 1)
    throw_argument_error("text_block_size", fmt::format("must be >= 1, got {}", text_block_size));
  blocks_per_tile_ = ceil_div(geometry_.tile().t, frames_per_block_);
}

BlockInfo BlockPartition::block(int64_t id) const {
  if (id < 0 || id >= num_blocks())
    throw_argument_error("block_id", fmt::format("must be in [0, {}), got {}", num_blocks(), id));
  if (id >= num_video_blocks()) {
    int64_t j = id - num_video_blocks();
    int64_t start = j * text_block_size_;
    return {BlockKind::text, -1, j, {0, 0, start}, {1, 1, std::min(text_block_size_, geometry_.text_len() - start)}};
  }
  int64_t tile = id / blocks_per_tile_, sub = id % blocks_per_tile_;
  Extent3 c = geometry_.tile_coord(tile);
  Extent3 o = geometry_.tile_origin(c);
  Extent3 e = geometry_.tile_extent(c);
  int64_t first = sub * frames_per_block_;
  int64_t frames = std::clamp<int64_t>(e.t - first, 0, frames_per_block_);
  return {BlockKind::video, tile, sub, {o.t + first, o.h, o.w}, {frames, e.h, e.w}};
}

std::vector<int64_t> BlockPartition::tokens(int64_t id) const {
  BlockInfo b = block(id);
  std::vector<int64_t> out;
  out.reserve(b.size());
  if (b.kind == BlockKind::text) {
    for (int64_t i = 0; i < b.extent.w; ++i) out.push_back(geometry_.num_video_tokens() + b.origin.w + i);
    return out;
  }
  for (int64_t t = 0; t < b.extent.t; ++t)
    for (int64_t h = 0; h < b.extent.h; ++h)
      for (int64_t w = 0; w < b.extent.w; ++w)
        out.push_back(geometry_.natural_index({b.origin.t + t, b.origin.h + h, b.origin.w + w}));
  return out;
}

int64_t BlockPartition::block_of_token(int64_t n) const {
  if (n < 0 || n >= geometry_.num_tokens())
    throw_argument_error("token", fmt::format("must be in [0, {}), got {}", geometry_.num_tokens(), n));
  if (n >= geometry_.num_video_tokens()) return text_block_id((n - geometry_.num_video_tokens()) / text_block_size_);
  Extent3 p = geometry_.token_coord(n);
  return video_block_id(geometry_.tile_index(geometry_.tile_of(p)), (p.t % geometry_.tile().t) / frames_per_block_);
}

BlockPlan::BlockPlan(BlockPartition partition, int64_t heads, const std::vector<std::vector<int32_t>>& rows)
    : partition_(std::move(partition)), heads_(heads) {
  const int64_t nb = partition_.num_blocks();
  if (heads < 1) throw_argument_error("heads", fmt::format("must be >= 1, got {}", heads));
  if (static_cast<int64_t>(rows.size()) != heads * nb)
    throw_argument_error("rows", fmt::format("expected heads * blocks = {} * {} rows, got {}", heads, nb, rows.size()));
  offsets_.reserve(rows.size() + 1);
  offsets_.push_back(0);
  std::vector<char> seen(nb, 0);
  for (size_t r = 0; r < rows.size(); ++r) {
    for (int32_t k : rows[r]) {
      if (k < 0 || k >= nb)
        throw_argument_error("rows", fmt::format("row {} lists key block {}, outside [0, {})", r, k, nb));
      if (seen[k]) throw_argument_error("rows", fmt::format("row {} lists key block {} twice", r, k));
      seen[k] = 1;
      indices_.push_back(k);
    }
    for (int32_t k : rows[r]) seen[k] = 0;
    offsets_.push_back(static_cast<int64_t>(indices_.size()));
  }
}

std::span<const int32_t> BlockPlan::key_blocks(int64_t head, int64_t q) const {
  if (head < 0 || head >= heads_) throw_argument_error("head", fmt::format("must be in [0, {}), got {}", heads_, head));
  if (q < 0 || q >= num_query_blocks())
    throw_argument_error("query_block", fmt::format("must be in [0, {}), got {}", num_query_blocks(), q));
  int64_t r = head * num_query_blocks() + q;
  return std::span<const int32_t>(indices_).subspan(offsets_[r], offsets_[r + 1] - offsets_[r]);
}

std::span<const int32_t> BlockPlan::Transpose::query_blocks(int64_t head, int64_t key_block) const {
  int64_t r = head * num_key_blocks + key_block;
  if (head < 0 || key_block < 0 || key_block >= num_key_blocks || r + 1 >= static_cast<int64_t>(offsets.size()))
    throw_argument_error("key_block", fmt::format("(head {}, key block {}) is outside the plan", head, key_block));
  return std::span<const int32_t>(indices).subspan(offsets[r], offsets[r + 1] - offsets[r]);
}

BlockPlan::Transpose BlockPlan::transpose() const {
  const int64_t nq = num_query_blocks(), nk = num_key_blocks();
  Transpose t;
  t.num_key_blocks = nk;
  t.offsets.assign(static_cast<size_t>(checked_add(checked_mul(heads_, nk, "heads"), 1, "heads")), 0);
  for (int64_t h = 0; h < heads_; ++h)
    for (int64_t q = 0; q < nq; ++q)
      for (int32_t k : key_blocks(h, q)) ++t.offsets[h * nk + k + 1];
  for (size_t i = 1; i < t.offsets.size(); ++i) t.offsets[i] += t.offsets[i - 1];
  t.indices.resize(indices_.size());
  std::vector<int64_t> fill(t.offsets.begin(), t.offsets.end() - 1);
  for (int64_t h = 0; h < heads_; ++h)  // query blocks ascend because q ascends in this loop
    for (int64_t q = 0; q < nq; ++q)
      for (int32_t k : key_blocks(h, q)) t.indices[fill[h * nk + k]++] = static_cast<int32_t>(q);
  return t;
}

SparsityReport BlockPlan::sparsity() const {
  const int64_t nq = num_query_blocks();
  std::vector<int64_t> sizes(nq);
  for (int64_t b = 0; b < nq; ++b) sizes[b] = partition_.block_size(b);
  const int64_t n = partition_.geometry().num_tokens();
  SparsityReport report;
  report.per_head.resize(heads_);
  for (int64_t h = 0; h < heads_; ++h) {
    int64_t visited = 0;
    for (int64_t q = 0; q < nq; ++q)
      for (int32_t k : key_blocks(h, q)) visited += sizes[q] * sizes[k];
    report.per_head[h] = 1.0 - static_cast<double>(visited) / (static_cast<double>(n) * n);
    report.visited_pairs += visited;
  }
  report.total_pairs = checked_product({heads_, n, n}, "heads");
  report.total = 1.0 - static_cast<double>(report.visited_pairs) / static_cast<double>(report.total_pairs);
  return report;
}

double BlockPlan::density(int64_t head, int64_t q) const {
  int64_t visited = 0;
  for (int32_t k : key_blocks(head, q)) visited += partition_.block_size(k);
  return static_cast<double>(visited) / static_cast<double>(partition_.geometry().num_tokens());
}

bool BlockPlan::visits(int64_t head, int64_t query, int64_t key) const {
  auto row = key_blocks(head, partition_.block_of_token(query));
  int64_t kb = partition_.block_of_token(key);
  return std::find(row.begin(), row.end(), kb) != row.end();
}

}  // namespace tileattn

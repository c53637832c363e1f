// Builders of the one plan concept: STA windows, dense, user block masks.
#include <fmt/format.h>

#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"
#include "tileattn/plan.hpp"

namespace tileattn {

namespace {
// Key blocks of a whole tile that hold tokens (a partial tile in t has fewer non-empty slices).
void append_tile_blocks(const BlockPartition& p, int64_t tile_index, std::vector<int32_t>& row) {
  const VideoGeometry& g = p.geometry();
  int64_t frames = g.tile_extent(g.tile_coord(tile_index)).t;
  int64_t subs = detail::ceil_div(frames, p.frames_per_block());
  for (int64_t s = 0; s < subs; ++s) row.push_back(static_cast<int32_t>(p.video_block_id(tile_index, s)));
}
void append_text_blocks(const BlockPartition& p, std::vector<int32_t>& row) {
  for (int64_t j = 0; j < p.num_text_blocks(); ++j) row.push_back(static_cast<int32_t>(p.text_block_id(j)));
}
void append_all_blocks(const BlockPartition& p, std::vector<int32_t>& row) {
  for (int64_t t = 0; t < p.geometry().num_tiles(); ++t) append_tile_blocks(p, t, row);
  append_text_blocks(p, row);
}
// Refuses a plan of more than limits::kMaxPlanEntries (query block, key block) pairs before building it.
void check_plan_entries(const BlockPartition& p, int64_t heads, int64_t max_window_tiles, const char* argument) {
  const int64_t nb = p.num_blocks(), nt = p.num_text_blocks(), nv = nb - nt;
  const int64_t per_video_row = checked_add(checked_mul(max_window_tiles, p.blocks_per_tile(), argument), nt, argument);
  const int64_t entries = checked_mul(
      heads, checked_add(checked_mul(nv, per_video_row, argument), checked_mul(nt, nb, argument), argument), argument);
  if (entries > limits::kMaxPlanEntries)
    throw_argument_error(argument, fmt::format("the plan would hold up to {} (query block, key block) pairs, more than "
                                               "{} (limits::kMaxPlanEntries): reduce the video, text, window or heads",
                                               entries, limits::kMaxPlanEntries));
}
}  // namespace

std::vector<Window> per_head_windows(const Extent3& grid, std::span<const Window> windows, int64_t q_heads) {
  const auto n = static_cast<int64_t>(windows.size());
  if (q_heads < 1) throw_argument_error("q_heads", fmt::format("must be >= 1, got {}", q_heads));
  if (n != 0 && n != 1 && n != q_heads)
    throw_argument_error("windows", fmt::format("expected 0 (dense), 1 (all heads) or q_heads = {} windows, got {}",
                                                q_heads, n));
  std::vector<Window> out(static_cast<size_t>(q_heads), grid);
  for (int64_t h = 0; h < q_heads && n > 0; ++h) out[h] = windows[n == 1 ? 0 : h];
  return out;
}

BlockPlan build_sta_plan(const BlockPartition& p, std::span<const Window> windows) {
  const VideoGeometry& g = p.geometry();
  const Extent3 grid = g.grid();
  const int64_t heads = static_cast<int64_t>(windows.size());
  if (heads < 1) throw_argument_error("windows", "need one window per head (at least one head)");
  for (int64_t h = 0; h < heads; ++h) validate_window(windows[h], grid, fmt::format("windows[{}]", h));
  int64_t max_window = 0;
  for (const Window& w : windows) max_window = std::max(max_window, w.volume());
  check_plan_entries(p, heads, max_window, "windows");

  const int64_t nb = p.num_blocks();
  std::vector<std::vector<int32_t>> rows(heads * nb);
  for (int64_t h = 0; h < heads; ++h) {
    const Window& win = windows[h];
    for (int64_t q = 0; q < nb; ++q) {
      std::vector<int32_t>& row = rows[h * nb + q];
      BlockInfo qb = p.block(q);
      if (qb.size() == 0) continue;  // empty slice of a partial tile: no queries
      if (qb.kind == BlockKind::text) {
        append_all_blocks(p, row);
        continue;
      }
      Extent3 first = first_key_tile(g.tile_coord(qb.tile_index), grid, win);
      for (int64_t t = first.t; t < first.t + win.t; ++t)
        for (int64_t hh = first.h; hh < first.h + win.h; ++hh)
          for (int64_t w = first.w; w < first.w + win.w; ++w) append_tile_blocks(p, g.tile_index({t, hh, w}), row);
      append_text_blocks(p, row);
    }
  }
  return BlockPlan(p, heads, rows);
}

BlockPlan build_dense_plan(const BlockPartition& p, int64_t heads) {
  if (heads < 1) throw_argument_error("heads", fmt::format("must be >= 1, got {}", heads));
  check_plan_entries(p, heads, p.geometry().num_tiles(), "heads");
  const int64_t nb = p.num_blocks();
  std::vector<int32_t> all;
  append_all_blocks(p, all);
  std::vector<std::vector<int32_t>> rows(heads * nb);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t q = 0; q < nb; ++q)
      if (p.block_size(q) > 0) rows[h * nb + q] = all;
  return BlockPlan(p, heads, rows);
}

BlockPlan build_block_mask_plan(const BlockPartition& p, int64_t heads,
                                const std::function<bool(int64_t, int64_t, int64_t)>& visits) {
  if (heads < 1) throw_argument_error("heads", fmt::format("must be >= 1, got {}", heads));
  if (!visits) throw_argument_error("visits", "the block-mask predicate is empty");
  const int64_t nb = p.num_blocks();
  std::vector<int64_t> sizes(nb);
  for (int64_t b = 0; b < nb; ++b) sizes[b] = p.block_size(b);
  std::vector<std::vector<int32_t>> rows(heads * nb);
  for (int64_t h = 0; h < heads; ++h)
    for (int64_t q = 0; q < nb; ++q) {
      if (sizes[q] == 0) continue;
      for (int64_t k = 0; k < nb; ++k)
        if (sizes[k] > 0 && visits(h, q, k)) rows[h * nb + q].push_back(static_cast<int32_t>(k));
    }
  return BlockPlan(p, heads, rows);
}

}  // namespace tileattn

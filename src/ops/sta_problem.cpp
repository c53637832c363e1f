// The STA problems resolved on the host: the GPU kernels' shape constraints, the per-head windows, blocks, batch
// folding and the backward's workspace (also in builds without CUDA, so the CLI and the Python package can report
// bad input anywhere).
#include "ops/sta_problem.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "kernels/sta_kernel_params.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"
#include "tileattn/plan.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {

void validate_gpu_tile(const Extent3& tile) {
  const int64_t plane = tile.h * tile.w;
  if (plane != 16 && plane != 32 && plane != 64)
    throw_argument_error("tile", fmt::format("the GPU kernel needs tile_h * tile_w in {{16, 32, 64}} (a 128-row block is "
                                             "128 / (tile_h * tile_w) whole frames of a tile), got {}", to_string(tile)));
  const int64_t frames = 128 / plane;
  if (tile.t % frames != 0)
    throw_argument_error("tile", fmt::format("the GPU kernel needs tile_t to be a multiple of {} (frames per 128-row "
                                             "block for a {}x{} tile plane), got {}", frames, tile.h, tile.w,
                                             to_string(tile)));
  if (tile.h > 256 || tile.w > 256) throw_argument_error("tile", "tile_h and tile_w must be <= 256 (TMA box)");
}

namespace ops {
namespace {

// The block width fitting the tile: 192-row key blocks halve the per-block softmax/rescale overhead relative to the
// MMA work (FA3 uses 176 for head dim 128); they need whole frames: tile_t must be a multiple of 192 / (h * w).
int choose_block_n(const StaForwardArgs& a) {
  const int64_t plane = a.tile.h * a.tile.w;
  if (a.head_dim == 128 && 192 % plane == 0 && a.tile.t % (192 / plane) == 0) return 192;
  return 128;
}

}  // namespace

detail::TileBlocks StaShape::blocks(int rows) const {
  const Extent3& tile = args->tile;
  const int64_t plane = tile.h * tile.w;
  if (rows % plane != 0 || tile.t % (rows / plane) != 0)
    throw_argument_error("tile", fmt::format("blocks of {} rows need tile_t to be a multiple of {}, got {}", rows,
                                             rows / std::max<int64_t>(plane, 1), to_string(tile)));
  const int64_t frames = rows / plane;
  const int64_t last_frames = args->video.t - (geometry.grid().t - 1) * tile.t;
  return {int(frames), int(tile.t / frames), int((last_frames + frames - 1) / frames)};
}

int64_t StaShape::block_count(const detail::TileBlocks& b) const {
  return checked_add(checked_mul(geometry.num_tiles(), b.per_tile, "video_shape"),
                     detail::ceil_div(args->text_len, int64_t{b.rows(grid)}), "video_shape");
}

StaShape resolve_sta_shape(const StaForwardArgs& a) {
  // ---- shapes ----
  validate_head_shape(a.dtype, a.batch, a.q_heads, a.kv_heads, a.head_dim, kMaxQueryHeads);
  StaShape sta{&a, VideoGeometry(a.video, a.tile, a.text_len), {}};
  const VideoGeometry& geo = sta.geometry;
  validate_gpu_tile(a.tile);
  if (a.layout == TokenLayout::tile_major && !geo.tiles_exact())
    throw_argument_error("layout", fmt::format("tile-major input needs a video shape that is a multiple of the tile "
                                               "({} vs {}); use the natural layout for partial tiles",
                                               to_string(a.video), to_string(a.tile)));
  const Extent3 grid = geo.grid();
  if (grid.t > 32767 || grid.h > 32767 || grid.w > 32767)
    throw_argument_error("video_shape", "more than 32767 tiles along one axis");
  if (checked_product({a.batch, a.q_heads, geo.num_tokens()}, "batch") >= (int64_t{1} << 40))
    throw_argument_error("batch", "batch * heads * tokens is too large");
  sta.grid = geo.tile_grid();
  sta.extents = geo.map_extents(a.layout);

  // ---- windows ----
  sta.windows = per_head_windows(grid, a.windows, a.q_heads);
  for (int64_t h = 0; h < a.q_heads; ++h)
    validate_window(sta.windows[h], grid,
                    a.windows.size() == 1 ? std::string("windows[0]") : fmt::format("windows[{}]", h));

  // ---- tensors ----
  validate_attention_io(a, "TMA");
  return sta;
}

StaForwardProblem resolve_sta_forward(const StaForwardArgs& a, int block_n) {
  StaShape sta = resolve_sta_shape(a);
  const detail::TileBlocks query = sta.blocks(kernels::kQueryBlockRows);
  const detail::TileBlocks key = sta.blocks(block_n != 0 ? block_n : choose_block_n(a));
  const BatchLaunches batch =
      batch_launches(a.batch, {{a.q, a.q_heads}, {a.k, a.kv_heads}, {a.v, a.kv_heads}, {a.out, a.q_heads}});
  const int64_t ctas = batch.batch_per_launch * a.q_heads * sta.block_count(query);
  if (ctas >= (int64_t{1} << 31)) throw_argument_error("batch", "too many query blocks for one launch");
  StaForwardProblem problem{std::move(sta), query, key, batch, ctas};
  if (a.precision != Precision::native && a.precision != Precision::fp8)
    throw_argument_error("precision", fmt::format("must be native (0) or fp8 (1), got {}", int(a.precision)));
  if (a.precision == Precision::fp8) {
    const VideoGeometry& geo = problem.sta.geometry;
    problem.fp8 = true;
    problem.fp8_workspace = kernels::fp8_workspace_layout(
        a.batch, a.q_heads, a.kv_heads, a.head_dim, checked_mul(geo.num_tiles(), a.tile.volume(), "video_shape"),
        geo.num_tokens(), a.text_len);
    const kernels::Fp8Workspace& w = problem.fp8_workspace;
    // The pre-pass's grids put batch * heads in y (at most 65535) and the kernels index rows with int.
    if (w.q_bh > 65535) throw_argument_error("batch", "fp8: batch * q_heads must be <= 65535");
    if (w.rows >= (int64_t{1} << 31) / 256) throw_argument_error("video_shape", "fp8: too many tokens per head");
  }
  return problem;
}

void validate_sta_forward_workspace(const StaForwardProblem& problem) {
  const StaForwardArgs& a = *problem.sta.args;
  if (problem.workspace_bytes() == 0) return;
  if (a.workspace == nullptr)
    throw_argument_error("workspace", fmt::format("precision fp8 needs a workspace of {} bytes "
                                                  "(sta_forward_workspace_bytes)", problem.workspace_bytes()));
  if (reinterpret_cast<uintptr_t>(a.workspace) % 256 != 0)
    throw_argument_error("workspace", "must be 256-byte aligned");
  if (a.workspace_bytes < problem.workspace_bytes())
    throw_argument_error("workspace_bytes", fmt::format("{} bytes given, {} needed (sta_forward_workspace_bytes)",
                                                        a.workspace_bytes, problem.workspace_bytes()));
}

namespace {

// The workspace layout for `query_blocks` backward query blocks per head (checked arithmetic: throws
// ArgumentError, never a wrapped size).
kernels::BackwardWorkspace backward_workspace(const StaShape& sta, int64_t query_blocks) {
  const StaForwardArgs& f = *sta.args;
  return kernels::backward_workspace_layout(checked_product({f.batch, f.q_heads, query_blocks}, "batch"), f.head_dim);
}

}  // namespace

StaBackwardProblem resolve_sta_backward(const StaBackwardArgs& a) {
  const StaForwardArgs& f = a.forward;
  if (f.precision != Precision::native)
    throw_argument_error("precision", "must be native: the backward differentiates the native forward (no FP8 one)");
  StaShape sta = resolve_sta_shape(f);
  if (f.lse == nullptr) throw_argument_error("lse", "the backward needs the forward's LSE (got a null pointer)");
  validate_device_tensor("grad_out", a.grad_out, f.batch, f.q_heads, f.head_dim, 16, "TMA");
  validate_device_tensor("grad_q", a.grad_q, f.batch, f.q_heads, f.head_dim, 16, "TMA");
  validate_device_tensor("grad_k", a.grad_k, f.batch, f.kv_heads, f.head_dim, 16, "TMA");
  validate_device_tensor("grad_v", a.grad_v, f.batch, f.kv_heads, f.head_dim, 16, "TMA");
  // kBwdQueryRows / kBwdKeyRows rows: whole frames of every tile validate_gpu_tile accepts, so these do not throw.
  const detail::TileBlocks query = sta.blocks(kernels::kBwdQueryRows), key = sta.blocks(kernels::kBwdKeyRows);
  const int64_t num_query_blocks = sta.block_count(query);
  const kernels::BackwardWorkspace workspace = backward_workspace(sta, num_query_blocks);
  if (a.workspace == nullptr) throw_argument_error("workspace", "is null");
  if (reinterpret_cast<uintptr_t>(a.workspace) % 256 != 0)
    throw_argument_error("workspace", "must be 256-byte aligned");
  if (a.workspace_bytes < workspace.total)
    throw_argument_error("workspace", fmt::format("holds {} bytes; this call needs {} "
                                                  "(sta_backward_workspace_bytes)", a.workspace_bytes, workspace.total));

  const int64_t num_text_key_blocks = detail::ceil_div(f.text_len, int64_t{key.rows(sta.grid)});
  const BatchLaunches batch = batch_launches(f.batch, {{f.q, f.q_heads}, {f.k, f.kv_heads}, {f.v, f.kv_heads},
                                                       {a.grad_out, f.q_heads}, {a.grad_q, f.q_heads},
                                                       {a.grad_k, f.kv_heads}, {a.grad_v, f.kv_heads}});
  const int64_t key_blocks = sta.block_count(key);
  const int64_t key_ctas = batch.batch_per_launch * f.kv_heads * key_blocks;
  const int64_t query_chunks = batch.batch_per_launch * f.q_heads * num_query_blocks;
  if (key_ctas >= (int64_t{1} << 31) || query_chunks >= (int64_t{1} << 31))
    throw_argument_error("batch", "too many blocks for one launch");
  return {&a,    std::move(sta), query,    key,         num_query_blocks, num_text_key_blocks,
          workspace, batch,      key_ctas, query_chunks};
}

}  // namespace ops

int64_t sta_backward_workspace_bytes(const StaForwardArgs& forward) {
  const ops::StaShape sta = ops::resolve_sta_shape(forward);
  return ops::backward_workspace(sta, sta.block_count(sta.blocks(kernels::kBwdQueryRows))).total;
}

}  // namespace tileattn

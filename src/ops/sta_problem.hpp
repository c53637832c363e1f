#pragma once
// The resolved STA problems: one function per operation validates the call's arguments (no CUDA needed, so bad
// input gets the same message in every build) and computes everything the launch needs once: the geometry, the
// per-head window table, the two block kinds, batch folding, the grid and (backward) the workspace layout. The
// public entry points are resolve, then run (CUTLASS's can_implement / workspace_size / initialize / run order).
#include <cstdint>
#include <vector>

#include "kernels/backward_workspace.hpp"
#include "kernels/fp8_workspace.hpp"
#include "ops/attention_call.hpp"
#include "tileattn/detail/tile_grid.hpp"
#include "tileattn/export.hpp"
#include "tileattn/sta.hpp"

namespace tileattn::ops {

// What the STA forward and backward share: the validated forward arguments, their geometry and one window per
// query head (per_head_windows: the single 0 / 1 / q_heads rule), and the geometry as the kernels take it.
struct StaShape {
  const StaForwardArgs* args = nullptr;
  VideoGeometry geometry;
  std::vector<Window> windows;
  detail::TileGrid grid{};            // geometry.tile_grid()
  detail::VideoMapExtents extents{};  // geometry.map_extents(args->layout): the video maps' (x1, x2, x3) sizes

  // Blocks of `rows` tokens (whole frames of a tile; throws ArgumentError naming "tile" otherwise).
  detail::TileBlocks blocks(int rows) const;
  // How many blocks of that kind a head has: the video tiles' blocks, then the text's (checked arithmetic).
  int64_t block_count(const detail::TileBlocks& blocks) const;
};
// Validates the forward's arguments (throws ArgumentError naming the offending argument).
StaShape resolve_sta_shape(const StaForwardArgs& args);

struct StaForwardProblem {
  StaShape sta;
  detail::TileBlocks query{}, key{};  // query blocks of kQueryBlockRows rows, key blocks of block_n rows
  BatchLaunches batch;
  int64_t ctas_per_launch = 0;
  bool fp8 = false;            // precision = fp8: the quantizing pre-pass, then the e4m3 kernel
  kernels::Fp8Workspace fp8_workspace{};  // fp8 only (workspace_bytes() = its total)

  int64_t workspace_bytes() const { return fp8 ? fp8_workspace.total : 0; }
};
// block_n = 0: the production kernel's key-block width (192 where the tile allows it for head dim 128, else 128).
// Exported for tools/sta_variants (kernel configurations timed side by side).
TILEATTN_EXPORT StaForwardProblem resolve_sta_forward(const StaForwardArgs& args, int block_n = 0);
// The call's workspace against workspace_bytes() (present, 256-byte aligned, large enough): run_sta_forward's
// precondition, apart from resolving since a size query resolves without one.
void validate_sta_forward_workspace(const StaForwardProblem& problem);

struct StaBackwardProblem {
  const StaBackwardArgs* args = nullptr;
  StaShape sta;
  detail::TileBlocks query{}, key{};  // kBwdQueryRows / kBwdKeyRows rows
  int64_t num_query_blocks = 0, num_text_key_blocks = 0;
  kernels::BackwardWorkspace workspace;
  BatchLaunches batch;
  int64_t key_ctas_per_launch = 0, query_chunks_per_launch = 0;
};
// The forward's checks on args.forward, plus: lse present, gradient tensors, workspace size and alignment.
StaBackwardProblem resolve_sta_backward(const StaBackwardArgs& args);

}  // namespace tileattn::ops

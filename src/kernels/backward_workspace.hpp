#pragma once
// Block sizes of the STA backward and the layout of its workspace (host-only header: the validation in builds
// without CUDA computes the workspace size too). See sta_backward_params.hpp for what the workspace holds.
#include <cstdint>

namespace tileattn::kernels {

inline constexpr int kBwdKeyRows = 128;   // key rows per CTA (2 consumer warpgroups x 64)
inline constexpr int kBwdQueryRows = 64;  // query rows per step

// Workspace offsets (bytes), for a call with `chunks` = batch * q_heads * num_query_blocks.
struct BackwardWorkspace {
  int64_t dq_accum = 0, lse_log2 = 0, dsum = 0, dq_turn = 0, total = 0;
};
inline BackwardWorkspace backward_workspace_layout(int64_t chunks, int64_t head_dim) {
  auto align = [](int64_t x) { return (x + 255) / 256 * 256; };
  BackwardWorkspace w;
  w.dq_accum = 0;
  w.lse_log2 = align(w.dq_accum + chunks * kBwdQueryRows * head_dim * 4);
  w.dsum = align(w.lse_log2 + chunks * kBwdQueryRows * 4);
  w.dq_turn = align(w.dsum + chunks * kBwdQueryRows * 4);
  w.total = align(w.dq_turn + chunks * 2 * 4);
  return w;
}

}  // namespace tileattn::kernels

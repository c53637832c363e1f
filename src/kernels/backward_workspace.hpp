#pragma once
// Block sizes of the STA backward and the layout of its workspace (host-only header: the validation in builds
// without CUDA computes the workspace size too). See sta_backward_params.hpp for what the workspace holds.
#include <cstdint>

#include "tileattn/checked.hpp"

namespace tileattn::kernels {

inline constexpr int kBwdKeyRows = 128;   // key rows per CTA (2 consumer warpgroups x 64)
inline constexpr int kBwdQueryRows = 64;  // query rows per step

// Workspace offsets (bytes), for a call with `chunks` = batch * q_heads * num_query_blocks.
struct BackwardWorkspace {
  int64_t dq_accum = 0, lse_log2 = 0, dsum = 0, dq_turn = 0, total = 0;
};
// Checked arithmetic: a size that does not fit int64_t throws ArgumentError naming "batch" (never a wrapped size).
inline BackwardWorkspace backward_workspace_layout(int64_t chunks, int64_t head_dim) {
  constexpr const char* kArg = "batch";
  auto align = [](int64_t x) { return checked_align_up(x, 256, kArg); };
  auto bytes = [](std::initializer_list<int64_t> f) { return checked_product(f, kArg); };
  BackwardWorkspace w;
  w.dq_accum = 0;
  w.lse_log2 = align(checked_add(w.dq_accum, bytes({chunks, kBwdQueryRows, head_dim, 4}), kArg));
  w.dsum = align(checked_add(w.lse_log2, bytes({chunks, kBwdQueryRows, 4}), kArg));
  w.dq_turn = align(checked_add(w.dsum, bytes({chunks, kBwdQueryRows, 4}), kArg));
  w.total = align(checked_add(w.dq_turn, bytes({chunks, 2, 4}), kArg));
  return w;
}

}  // namespace tileattn::kernels

#pragma once
// Host-side validation of sta_forward's arguments (no CUDA needed), shared by the CUDA launcher and by builds
// without CUDA, so bad input gets the same message everywhere.
#include "tileattn/sta.hpp"

namespace tileattn {

inline constexpr int64_t kMaxQueryHeads = 256;  // the kernel's window table holds one entry per query head

// Throws ArgumentError naming the offending argument.
void validate_sta_forward_args(const StaForwardArgs& args);
// The forward's checks on args.forward, plus: lse present, gradient tensors, workspace size and alignment.
void validate_sta_backward_args(const StaBackwardArgs& args);

}  // namespace tileattn

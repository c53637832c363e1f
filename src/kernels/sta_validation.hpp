#pragma once
// Host-side validation of sta_forward's arguments (no CUDA needed), shared by the CUDA launcher and by builds
// without CUDA, so bad input gets the same message everywhere.
#include "tileattn/sta.hpp"

namespace tileattn {

inline constexpr int64_t kMaxQueryHeads = 256;  // the kernel's window table holds one entry per query head

// A [batch, heads, tokens, head_dim] device tensor as the kernels read it (16-byte aligned rows, contiguous head_dim,
// non-overlapping rows); throws ArgumentError naming `name`.
void validate_device_tensor(const char* name, const DeviceTensor& t, int64_t batch, int64_t heads, int64_t head_dim);

// Throws ArgumentError naming the offending argument.
void validate_sta_forward_args(const StaForwardArgs& args);
// The forward's checks on args.forward, plus: lse present, gradient tensors, workspace size and alignment.
void validate_sta_backward_args(const StaBackwardArgs& args);

}  // namespace tileattn

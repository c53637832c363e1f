#pragma once
// Host-side validation of sta_forward's arguments (no CUDA needed), shared by the CUDA launcher and by builds
// without CUDA, so bad input gets the same message everywhere.
#include <cstdint>

#include "tileattn/sta.hpp"

namespace tileattn {

inline constexpr int64_t kMaxQueryHeads = 256;  // the kernel's window table holds one entry per query head

// A [batch, heads, tokens, head_dim] device tensor: non-null data aligned to align_bytes, strides >= 0 and multiples
// of align_bytes / 2 elements (`why` says what needs the alignment, for the message), head_dim contiguous, no zero
// head/batch stride where there are several. Throws ArgumentError naming `name`.
void validate_device_tensor(const char* name, const DeviceTensor& t, int64_t batch, int64_t heads, int64_t head_dim,
                            int64_t align_bytes, const char* why);

// The shape every kernel call shares: dtype bf16/fp16, head_dim 64/128, batch >= 1, q_heads in [1, max_q_heads],
// kv_heads dividing q_heads. Throws ArgumentError naming the field.
void validate_head_shape(DType dtype, int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                         int64_t max_q_heads = INT64_MAX);

// Throws ArgumentError naming the offending argument.
void validate_sta_forward_args(const StaForwardArgs& args);
// The forward's checks on args.forward, plus: lse present, gradient tensors, workspace size and alignment.
void validate_sta_backward_args(const StaBackwardArgs& args);

}  // namespace tileattn

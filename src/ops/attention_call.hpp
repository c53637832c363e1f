#pragma once
// What every attention-like call checks and decides the same way, whatever the operation: the head shape, the
// device tensors and how the batch maps onto launches. Host code, no CUDA.
#include <cstdint>
#include <initializer_list>
#include <utility>

#include "core/softmax_scale.hpp"
#include "tileattn/error.hpp"
#include "tileattn/types.hpp"

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

// A call's softmax scale: finite and >= 0 (0: the default, detail::softmax_scale). Throws ArgumentError naming "scale".
void validate_softmax_scale(float scale);

// The tensors and scalars every attention call takes (q, k, v, out, the optional lse, scale) of a call `a` whose
// head shape is valid: 16-byte aligned device tensors (`why` says what needs it), a 4-byte aligned lse, a valid scale.
template <class Args>
void validate_attention_io(const Args& a, const char* why) {
  validate_device_tensor("q", a.q, a.batch, a.q_heads, a.head_dim, 16, why);
  validate_device_tensor("k", a.k, a.batch, a.kv_heads, a.head_dim, 16, why);
  validate_device_tensor("v", a.v, a.batch, a.kv_heads, a.head_dim, 16, why);
  validate_device_tensor("out", a.out, a.batch, a.q_heads, a.head_dim, 16, why);
  if (a.lse != nullptr && reinterpret_cast<uintptr_t>(a.lse) % 4 != 0) throw_argument_error("lse", "must be 4-byte aligned");
  validate_softmax_scale(a.scale);
}

namespace ops {

// The softmax scale of a call (detail::softmax_scale) in log2 units (times log2(e)), as the kernels' exp2-based
// softmax takes it.
inline float softmax_scale_log2(float scale, int64_t head_dim) {
  return float(detail::softmax_scale<double>(scale, head_dim) * 1.4426950408889634);
}

// How the batch maps onto launches: folded into the tensor maps' last dimension (one launch) when batch == 1 or
// every (tensor, heads) pair has batch stride = heads * head stride, else one launch per batch element.
struct BatchLaunches {
  int64_t launches = 1;
  int64_t batch_per_launch = 1;
};
BatchLaunches batch_launches(int64_t batch, std::initializer_list<std::pair<const DeviceTensor&, int64_t>> tensors);

}  // namespace ops
}  // namespace tileattn

// The checks and decisions every attention-like call shares (attention_call.hpp).
#include "ops/attention_call.hpp"

#include <fmt/format.h>

#include <cmath>

#include "tileattn/error.hpp"

namespace tileattn {

void validate_device_tensor(const char* name, const DeviceTensor& t, int64_t batch, int64_t heads, int64_t head_dim,
                            int64_t align_bytes, const char* why) {
  if (t.data == nullptr) throw_argument_error(name, "data pointer is null");
  if (reinterpret_cast<uintptr_t>(t.data) % align_bytes != 0)
    throw_argument_error(name, fmt::format("data pointer must be {}-byte aligned ({})", align_bytes, why));
  const int64_t multiple = align_bytes / 2;  // elements
  const std::pair<const char*, int64_t> strides[] = {
      {"token_stride", t.token_stride}, {"head_stride", t.head_stride}, {"batch_stride", t.batch_stride}};
  for (auto [what, s] : strides) {
    if (s < 0 || s % multiple != 0)
      throw_argument_error(name, multiple == 1 ? fmt::format("{} must be >= 0, got {}", what, s)
                                               : fmt::format("{} must be a non-negative multiple of {} elements ({} "
                                                             "bytes, {}), got {}", what, multiple, align_bytes, why, s));
  }
  if (t.token_stride < head_dim)
    throw_argument_error(name, fmt::format("token_stride {} is smaller than head_dim {} (head_dim must be contiguous "
                                           "and rows must not overlap)", t.token_stride, head_dim));
  if (heads > 1 && t.head_stride == 0) throw_argument_error(name, "head_stride is 0 with more than one head");
  if (batch > 1 && t.batch_stride == 0) throw_argument_error(name, "batch_stride is 0 with more than one batch element");
}

void validate_head_shape(DType dtype, int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                         int64_t max_q_heads) {
  if (dtype != DType::bf16 && dtype != DType::fp16) throw_argument_error("dtype", "must be bf16 or fp16");
  if (head_dim != 64 && head_dim != 128)
    throw_argument_error("head_dim", fmt::format("must be 64 or 128, got {}", head_dim));
  if (batch < 1) throw_argument_error("batch", fmt::format("must be >= 1, got {}", batch));
  if (q_heads < 1 || q_heads > max_q_heads)
    throw_argument_error("q_heads", max_q_heads == INT64_MAX
                                        ? fmt::format("must be >= 1, got {}", q_heads)
                                        : fmt::format("must be in [1, {}], got {}", max_q_heads, q_heads));
  if (kv_heads < 1 || q_heads % kv_heads != 0)
    throw_argument_error("kv_heads", fmt::format("must divide q_heads = {}, got {}", q_heads, kv_heads));
}

void validate_softmax_scale(float scale) {
  if (!std::isfinite(scale) || scale < 0.0f)
    throw_argument_error("scale", fmt::format("must be finite and >= 0 (0 = 1/sqrt(head_dim)), got {}", scale));
}

namespace ops {

BatchLaunches batch_launches(int64_t batch, std::initializer_list<std::pair<const DeviceTensor&, int64_t>> tensors) {
  bool folds = batch == 1;
  if (!folds) {
    folds = true;
    for (const auto& [t, heads] : tensors) folds = folds && t.batch_stride == heads * t.head_stride;
  }
  return folds ? BatchLaunches{1, batch} : BatchLaunches{batch, 1};
}

}  // namespace ops
}  // namespace tileattn

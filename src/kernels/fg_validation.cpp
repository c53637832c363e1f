// PLACEHOLDER (branch fg-py): a minimal validate_fg_forward_args, replaced by the real one (written with the FG
// kernel) on merge. It checks only what needs no knowledge of the kernel: dtypes, head counts, the plan's shape
// against the tensors, and null pointers.
#include "kernels/fg_validation.hpp"

#include <fmt/format.h>

#include "tileattn/error.hpp"

namespace tileattn {

void validate_fg_forward_args(const FgForwardArgs& a) {
  if (a.dtype != DType::bf16 && a.dtype != DType::fp16) throw_argument_error("dtype", "must be bf16 or fp16");
  if (a.head_dim != 64 && a.head_dim != 128)
    throw_argument_error("head_dim", fmt::format("must be 64 or 128, got {}", a.head_dim));
  if (a.batch < 1) throw_argument_error("batch", fmt::format("must be >= 1, got {}", a.batch));
  if (a.q_heads < 1) throw_argument_error("q_heads", fmt::format("must be >= 1, got {}", a.q_heads));
  if (a.kv_heads < 1 || a.q_heads % a.kv_heads != 0)
    throw_argument_error("kv_heads", fmt::format("must divide q_heads = {}, got {}", a.q_heads, a.kv_heads));
  a.plan.shape.validate();
  if (a.plan.shape.heads != a.q_heads)
    throw_argument_error("plan", fmt::format("has {} heads, q_heads is {}", a.plan.shape.heads, a.q_heads));
  if (a.plan.capacity < 0) throw_argument_error("capacity", fmt::format("must be >= 0, got {}", a.plan.capacity));
  if (a.plan.counts == nullptr) throw_argument_error("counts", "is null");
  if (a.plan.capacity > 0 && a.plan.table == nullptr) throw_argument_error("table", "is null");
  const std::pair<const char*, const DeviceTensor*> tensors[] = {{"q", &a.q}, {"k", &a.k}, {"v", &a.v},
                                                                 {"out", &a.out}};
  for (auto [name, t] : tensors)
    if (t->data == nullptr) throw_argument_error(name, "data pointer is null");
}

}  // namespace tileattn

// The FG-Attn forward resolved on the host: argument checks and workspace layout (also in builds without CUDA).
#include "ops/fg_problem.hpp"

#include <fmt/format.h>

#include <algorithm>

#include "kernels/fg_kernel_params.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"

namespace tileattn {

void validate_device_column_plan(const DeviceColumnPlan& plan, const char* argument) {
  auto fail = [&](const char* field, const std::string& what) {
    if (argument == nullptr) throw_argument_error(field, what);
    throw_argument_error(argument, fmt::format("{} {}", field, what));
  };
  plan.shape.validate();
  if (plan.shape.tokens >= (int64_t{1} << 31) - 1024)
    fail("tokens", fmt::format("must be < 2^31 - 1024 (int32 positions), got {}", plan.shape.tokens));
  if (plan.capacity < 0) fail("capacity", fmt::format("must be >= 0, got {}", plan.capacity));
  if (plan.counts == nullptr) fail("counts", "is null");
  if (plan.table == nullptr && plan.capacity > 0) fail("table", "is null");
  if (reinterpret_cast<uintptr_t>(plan.counts) % 4 != 0 || reinterpret_cast<uintptr_t>(plan.table) % 4 != 0)
    fail("table", "and counts must be 4-byte aligned int32 arrays");
}

namespace {

// The checks of fg_forward that decide the workspace size (not the tensors, which need not exist yet).
void validate_fg_plan_for_call(const FgForwardArgs& a) {
  validate_head_shape(a.dtype, a.batch, a.q_heads, a.kv_heads, a.head_dim);
  validate_device_column_plan(a.plan);
  if (a.plan.shape.heads != a.q_heads)
    throw_argument_error("plan", fmt::format("has {} heads, the call {} query heads", a.plan.shape.heads, a.q_heads));
}

}  // namespace

namespace ops {

FgForwardProblem resolve_fg_forward(const FgForwardArgs& a) {
  validate_fg_plan_for_call(a);
  const int64_t tokens = a.plan.shape.tokens;
  const int64_t query_blocks = detail::ceil_div(tokens, int64_t{kernels::kQueryBlockRows});
  const int64_t ctas = checked_product({a.batch, a.q_heads, query_blocks}, "batch");
  if (ctas >= (int64_t{1} << 31) || checked_product({a.batch, a.q_heads, tokens}, "batch") >= (int64_t{1} << 40))
    throw_argument_error("batch", "batch * heads * tokens is too large for one launch");
  validate_attention_io(a, "TMA and cp.async");
  const kernels::FgWorkspaceLayout workspace = kernels::fg_workspace_layout(a.plan.shape, a.plan.capacity);
  const int64_t needed = workspace.total;
  if (needed > 0) {
    if (a.workspace == nullptr)
      throw_argument_error("workspace", fmt::format("is null; query_block {} < 128 needs {} bytes "
                                                    "(fg_forward_workspace_bytes)", a.plan.shape.query_block, needed));
    if (reinterpret_cast<uintptr_t>(a.workspace) % 256 != 0) throw_argument_error("workspace", "must be 256-byte aligned");
    if (a.workspace_bytes < needed)
      throw_argument_error("workspace", fmt::format("holds {} bytes; this call needs {} (fg_forward_workspace_bytes)",
                                                    a.workspace_bytes, needed));
  }
  const BatchLaunches batch =
      batch_launches(a.batch, {{a.q, a.q_heads}, {a.out, a.q_heads}, {a.k, a.kv_heads}, {a.v, a.kv_heads}});
  return {&a,
          query_blocks,
          workspace,
          batch,
          batch.batch_per_launch * a.q_heads * query_blocks,
          a.plan.shape.key_group % 8 == 0 ? 8 : 0};
}

}  // namespace ops

int64_t fg_forward_workspace_bytes(const FgForwardArgs& a) {
  // A size for a call fg_forward would refuse is an error here too, not a number.
  validate_fg_plan_for_call(a);
  return kernels::fg_workspace_layout(a.plan.shape, a.plan.capacity).total;
}

namespace kernels {

FgWorkspaceLayout fg_workspace_layout(const ColumnPlanShape& shape, int64_t capacity) {
  FgWorkspaceLayout l;
  if (shape.query_block >= kQueryBlockRows) return l;
  constexpr const char* kArg = "capacity";
  auto align = [](int64_t x) { return checked_align_up(x, 256, kArg); };
  l.rows = checked_mul(shape.heads, detail::ceil_div(shape.tokens, int64_t{kQueryBlockRows}), "heads");
  // The union of 128 / M sub-block rows of `capacity` groups each, and never more than every key group.
  const int64_t subblocks = kQueryBlockRows / shape.query_block;
  l.capacity = capacity > shape.num_key_groups() / subblocks ? shape.num_key_groups()
                                                              : std::min(shape.num_key_groups(), capacity * subblocks);
  l.table_offset = 0;
  l.membership_offset = align(checked_product({l.rows, l.capacity, 4}, kArg));
  l.counts_offset = checked_add(l.membership_offset, align(checked_mul(l.rows, l.capacity, kArg)), kArg);
  l.total = checked_add(l.counts_offset, align(checked_mul(l.rows, 4, kArg)), kArg);
  return l;
}

}  // namespace kernels
}  // namespace tileattn

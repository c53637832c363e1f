// Host side of the GPU dynamic-mask builder that needs no CUDA: argument validation, workspace layout (see
// dynamic_mask_layout.hpp), the resolved problem. Compiled in every build.
#include "ops/dynamic_mask_problem.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstring>
#include <limits>

#include "core/dynamic_mask_checks.hpp"
#include "ops/attention_call.hpp"
#include "ops/fg_problem.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"

namespace tileattn {

namespace kernels {
namespace {

// The selection kernel keeps a window row as a bitmap in shared memory (with 24 KB of histogram beside it).
constexpr int64_t kMaxWindowGroups = int64_t{200} * 1024 * 8;

int64_t align256(int64_t bytes) { return checked_align_up(bytes, 256, "workspace"); }

// Everything but the selection, the output and the workspace.
void validate_common(const DynamicMaskArgs& a, const ColumnPlanShape& shape) {
  validate_head_shape(a.dtype, a.batch, a.q_heads, a.kv_heads, a.head_dim);
  const int64_t batch_kv = checked_mul(a.batch, a.kv_heads, "batch");
  if (batch_kv > 65535)
    throw_argument_error("batch", fmt::format("batch * kv_heads must be <= 65535, got {}", batch_kv));
  shape.validate();
  if (shape.heads != a.q_heads)
    throw_argument_error("heads", fmt::format("the plan's heads must equal q_heads = {}, got {}", a.q_heads,
                                              shape.heads));
  if (shape.tokens > std::numeric_limits<int32_t>::max())
    throw_argument_error("tokens", fmt::format("must be < 2^31, got {}", shape.tokens));
  if (checked_mul(a.q_heads, shape.num_query_blocks(), "q_heads") > std::numeric_limits<int32_t>::max())
    throw_argument_error("q_heads", "q_heads * query blocks must be < 2^31");
  validate_softmax_scale(a.scale);
  validate_device_tensor("q", a.q, a.batch, a.q_heads, a.head_dim, 2, "element loads");
  validate_device_tensor("k", a.k, a.batch, a.kv_heads, a.head_dim, 16, "16-byte cp.async rows");
}

void validate_plan(const char* name, const DeviceColumnPlan& p, const ColumnPlanShape& shape) {
  if (!(p.shape == shape))
    throw_argument_error(name, fmt::format("must have the plan's shape (tokens {}, heads {}, query_block {}, "
                                           "key_group {})", shape.tokens, shape.heads, shape.query_block,
                                           shape.key_group));
  validate_device_column_plan(p, name);
}

void validate_workspace(const DynamicMaskArgs& a) {
  if (a.workspace == nullptr) throw_argument_error("workspace", "is null");
  if (reinterpret_cast<uintptr_t>(a.workspace) % 256 != 0)
    throw_argument_error("workspace", "must be 256-byte aligned");
}

}  // namespace

int64_t round_heads_per_pass(const DynamicMaskArgs& a, int64_t wanted) {
  const int64_t group = a.q_heads / a.kv_heads;
  if (wanted >= group) return std::min(a.q_heads, wanted / group * group);
  int64_t d = std::max<int64_t>(wanted, 1);
  while (group % d != 0) --d;
  return d;
}

DynamicMaskLayout dynamic_mask_layout(const DynamicMaskArgs& a, const ColumnPlanShape& shape,
                                      int64_t heads_per_pass) {
  const int64_t nq = shape.num_query_blocks(), ng = shape.num_key_groups(), group = a.q_heads / a.kv_heads;
  // Sizes in checked arithmetic (validate_common bounds batch * kv_heads and q_heads * nq, but the layout is also
  // computed for estimates): an overflow is an ArgumentError, never a wrapped size or a division by zero.
  const int64_t pooled_rows = checked_product({a.batch, a.q_heads, nq}, "batch");
  DynamicMaskLayout l;
  l.heads_per_pass = heads_per_pass;
  // Statistics pass: enough key splits to fill the GPU; each a whole number of key tiles, none empty.
  const int64_t tiles = (shape.tokens + kDynKeyTile - 1) / kDynKeyTile;
  const int64_t ctas = std::max<int64_t>(
      1, checked_product({detail::ceil_div(checked_mul(group, nq, "q_heads"), kDynRowTile), a.batch, a.kv_heads},
                         "batch"));
  const int64_t splits = std::clamp<int64_t>((kDynTargetCtas + ctas - 1) / ctas, 1, std::min(kDynMaxSplits, tiles));
  l.stats_split_keys = (tiles + splits - 1) / splits * kDynKeyTile;
  l.stats_splits = (shape.tokens + l.stats_split_keys - 1) / l.stats_split_keys;
  int64_t at = 0;
  auto take = [&](int64_t bytes) {
    const int64_t offset = at;
    at = checked_add(at, align256(bytes), "workspace");
    return offset;
  };
  l.pooled = take(checked_product({pooled_rows, a.head_dim, 2}, "batch"));
  l.lse = take(checked_mul(pooled_rows, 4, "batch"));
  l.partial = take(checked_product({l.stats_splits, pooled_rows, 8}, "batch"));
  l.fixed_bytes = at;
  l.mass = take(checked_product({heads_per_pass, nq, ng, 4}, "heads_per_pass"));
  l.row_ties = take(checked_product({heads_per_pass, nq, int64_t(sizeof(DynRowTies))}, "heads_per_pass"));
  l.head_state = take(checked_mul(heads_per_pass, int64_t(sizeof(DynHeadState)), "heads_per_pass"));
  l.head_hist = take(checked_mul(heads_per_pass, int64_t(sizeof(DynHeadHist)), "heads_per_pass"));
  l.total = at;
  return l;
}

uint32_t threshold_key(double threshold) {
  if (!(threshold > 0.0)) return 0;
  float f = static_cast<float>(threshold);
  if (static_cast<double>(f) < threshold) f = std::nextafter(f, std::numeric_limits<float>::infinity());
  if (!(f < 2.0f)) return uint32_t{1} << 30;
  uint32_t bits;
  static_assert(sizeof bits == sizeof f);
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}

}  // namespace kernels

namespace ops {

DynamicMaskProblem resolve_dynamic_mask_build(const DynamicMaskArgs& a, const DeviceColumnPlan& out) {
  using namespace kernels;
  const ColumnPlanShape& shape = out.shape;
  validate_common(a, shape);
  validate_plan("out", out, shape);
  detail::check_selection_values(shape, a.selection);
  if (a.selection.window != nullptr)
    throw_argument_error("window", "selection.window (a host plan) must be null on the GPU; pass the eligible "
                                   "groups as a device plan in DynamicMaskArgs::window");
  if (a.window != nullptr) {
    validate_plan("window", *a.window, shape);
    if (shape.num_key_groups() > kMaxWindowGroups)
      throw_argument_error("window", fmt::format("the GPU builder supports a window with at most {} key groups, the "
                                                 "plan has {}", kMaxWindowGroups, shape.num_key_groups()));
  }
  validate_workspace(a);
  // The most heads per pass the workspace holds.
  for (int64_t want = a.q_heads; want >= 1; --want) {
    if (round_heads_per_pass(a, want) != want) continue;
    const DynamicMaskLayout l = dynamic_mask_layout(a, shape, want);
    if (l.total <= a.workspace_bytes) return {"build_dynamic_column_plan_gpu", &a, shape, &out, nullptr, l};
  }
  throw_argument_error("workspace", fmt::format("holds {} bytes; this call needs at least {} "
                                                "(dynamic_mask_workspace_bytes(args, shape, 1))",
                                                a.workspace_bytes, dynamic_mask_layout(a, shape, 1).total));
}

DynamicMaskProblem resolve_dynamic_mask_estimate(const DynamicMaskArgs& a, const ColumnPlanShape& shape,
                                                 float* mass) {
  using namespace kernels;
  validate_common(a, shape);
  if (mass == nullptr) throw_argument_error("mass", "is null");
  if (reinterpret_cast<uintptr_t>(mass) % 4 != 0) throw_argument_error("mass", "must be 4-byte aligned");
  validate_workspace(a);
  const DynamicMaskLayout l = dynamic_mask_layout(a, shape, a.q_heads);
  if (a.workspace_bytes < l.fixed_bytes)
    throw_argument_error("workspace", fmt::format("holds {} bytes; the estimate needs {} (covered by "
                                                  "dynamic_mask_workspace_bytes(args, shape, 1))",
                                                  a.workspace_bytes, l.fixed_bytes));
  return {"estimate_column_mass_gpu", &a, shape, nullptr, mass, l};
}

}  // namespace ops

int64_t dynamic_mask_workspace_bytes(const DynamicMaskArgs& args, const ColumnPlanShape& shape,
                                     int64_t heads_per_pass) {
  kernels::validate_common(args, shape);
  if (heads_per_pass < 0 || heads_per_pass > args.q_heads)
    throw_argument_error("heads_per_pass",
                         fmt::format("must be in [0, q_heads = {}], got {}", args.q_heads, heads_per_pass));
  const int64_t hpp = kernels::round_heads_per_pass(args, heads_per_pass == 0 ? args.q_heads : heads_per_pass);
  return kernels::dynamic_mask_layout(args, shape, hpp).total;
}

}  // namespace tileattn

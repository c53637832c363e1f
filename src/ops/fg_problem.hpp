#pragma once
// The resolved FG-Attn forward: validation of fg_forward's arguments and the layout of its workspace (no CUDA
// needed, so bad input gets the same message in every build), computed once per call.
#include <cstdint>

#include "ops/attention_call.hpp"
#include "tileattn/fg.hpp"

namespace tileattn {

// The shape, capacity and storage of a device plan; throws ArgumentError naming the field, or naming `argument`
// (the message then says which field) when the plan is one argument among others ("out", "window").
void validate_device_column_plan(const DeviceColumnPlan& plan, const char* argument = nullptr);

namespace kernels {

// The merged plan of M < 128 in the workspace: one row per (head, 128-row query block) holding up to `capacity`
// key groups (the union of the 128 / M sub-blocks' rows), a membership byte per entry and a count per row.
struct FgWorkspaceLayout {
  int64_t rows = 0, capacity = 0;
  int64_t table_offset = 0, membership_offset = 0, counts_offset = 0;
  int64_t total = 0;  // bytes; 0 when M = 128
};
FgWorkspaceLayout fg_workspace_layout(const ColumnPlanShape& shape, int64_t capacity);

}  // namespace kernels

namespace ops {

struct FgForwardProblem {
  const FgForwardArgs* args = nullptr;
  int64_t query_blocks = 0;              // 128-row query blocks per (batch, head)
  kernels::FgWorkspaceLayout workspace;  // the merged plan of M < 128 (total 0 when M = 128)
  BatchLaunches batch;
  int64_t ctas_per_launch = 0;
  // Key rows per TMA box for the gathered K/V (8 when key groups are whole 8-row boxes, else 0: cp.async only).
  int tma_rows = 0;
};
// Throws ArgumentError naming the offending argument (the plan's fields by their names: "tokens", "heads",
// "query_block", "key_group", "capacity", "table", "counts"; "plan" for a plan that does not fit the tensors).
FgForwardProblem resolve_fg_forward(const FgForwardArgs& args);

}  // namespace ops
}  // namespace tileattn

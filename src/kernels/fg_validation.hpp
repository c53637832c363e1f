#pragma once
// Host-side validation of fg_forward's arguments and the layout of its workspace (no CUDA needed), shared by the
// CUDA launcher and by builds without CUDA.
#include <cstdint>

#include "tileattn/fg.hpp"

namespace tileattn {

// Throws ArgumentError naming the offending argument (the plan's fields by their names: "tokens", "heads",
// "query_block", "key_group", "capacity", "table", "counts"; "plan" for a plan that does not fit the tensors).
void validate_fg_forward_args(const FgForwardArgs& args);
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
}  // namespace tileattn

#pragma once
// The resolved GPU dynamic-mask call (build_dynamic_column_plan_gpu, estimate_column_mass_gpu): its arguments
// validated on the host (every build, so bad input gets the same message everywhere) and the workspace layout the
// launch uses. Host code, no CUDA.
#include "kernels/dynamic_mask_layout.hpp"
#include "tileattn/dynamic_mask_gpu.hpp"

namespace tileattn::ops {

struct DynamicMaskProblem {
  const char* operation = nullptr;  // the public entry point, for messages
  const DynamicMaskArgs* args = nullptr;
  ColumnPlanShape shape;
  const DeviceColumnPlan* out = nullptr;  // the build's output plan (null for the estimate)
  float* mass = nullptr;                  // the estimate's output (null for the build)
  kernels::DynamicMaskLayout layout;      // for the build: the most heads per pass args.workspace_bytes holds
};

// Throw ArgumentError naming the argument.
DynamicMaskProblem resolve_dynamic_mask_build(const DynamicMaskArgs& args, const DeviceColumnPlan& out);
DynamicMaskProblem resolve_dynamic_mask_estimate(const DynamicMaskArgs& args, const ColumnPlanShape& shape,
                                                 float* mass);

}  // namespace tileattn::ops

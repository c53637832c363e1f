// The public GPU entry points: resolve the call (validation, geometry, workspace layout: once), then run it on the
// kernel backend (kernel_backend.hpp). Compiled in every build; only the backend differs without CUDA.
#include "ops/kernel_backend.hpp"
#include "tileattn/dynamic_mask_gpu.hpp"
#include "tileattn/fg.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {

int64_t sta_forward_workspace_bytes(const StaForwardArgs& args) { return ops::resolve_sta_forward(args).workspace_bytes(); }

void sta_forward(const StaForwardArgs& args, StreamHandle stream) {
  const ops::StaForwardProblem problem = ops::resolve_sta_forward(args);
  ops::validate_sta_forward_workspace(problem);
  ops::run_sta_forward(problem, stream);
}

void sta_backward(const StaBackwardArgs& args, StreamHandle stream) {
  ops::run_sta_backward(ops::resolve_sta_backward(args), stream);
}

void fg_forward(const FgForwardArgs& args, StreamHandle stream) {
  ops::run_fg_forward(ops::resolve_fg_forward(args), stream);
}

void build_dynamic_column_plan_gpu(const DynamicMaskArgs& args, const DeviceColumnPlan& out, StreamHandle stream) {
  ops::run_dynamic_mask(ops::resolve_dynamic_mask_build(args, out), stream);
}

void estimate_column_mass_gpu(const DynamicMaskArgs& args, const ColumnPlanShape& shape, float* mass,
                              StreamHandle stream) {
  ops::run_dynamic_mask(ops::resolve_dynamic_mask_estimate(args, shape, mass), stream);
}

void check_device_column_plan(const DeviceColumnPlan& plan, StreamHandle stream) {
  validate_device_column_plan(plan);
  ColumnPlan::from_fixed(ops::download_column_plan(plan, stream));  // throws ArgumentError naming "counts"/"table"
}

}  // namespace tileattn

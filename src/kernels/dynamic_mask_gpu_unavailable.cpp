// Build without CUDA: the GPU dynamic-mask builder exists, validates its arguments and says why it cannot run.
#include "kernels/dynamic_mask_layout.hpp"
#include "tileattn/dynamic_mask_gpu.hpp"
#include "tileattn/error.hpp"

namespace tileattn {

void build_dynamic_column_plan_gpu(const DynamicMaskArgs& args, const DeviceColumnPlan& out, StreamHandle) {
  kernels::validate_dynamic_mask_build(args, out);
  throw CudaError("build_dynamic_column_plan_gpu: this build of tileattn has no CUDA kernels (configured with "
                  "TILEATTN_CUDA=OFF or without nvcc)");
}

void estimate_column_mass_gpu(const DynamicMaskArgs& args, const ColumnPlanShape& shape, float* mass, StreamHandle) {
  kernels::validate_dynamic_mask_estimate(args, shape, mass);
  throw CudaError("estimate_column_mass_gpu: this build of tileattn has no CUDA kernels (configured with "
                  "TILEATTN_CUDA=OFF or without nvcc)");
}

}  // namespace tileattn

// Build without CUDA: the FG-Attn entry points exist, validate what they can on the host, and say why they cannot
// run.
#include "kernels/fg_validation.hpp"
#include "tileattn/error.hpp"
#include "tileattn/fg.hpp"

namespace tileattn {

namespace {

[[noreturn]] void no_cuda(const char* function) {
  throw CudaError(std::string(function) + ": this build of tileattn has no CUDA kernels (built without CUDA: "
                  "configured with TILEATTN_CUDA=OFF or without nvcc)");
}

}  // namespace

int64_t fg_forward_workspace_bytes(const FgForwardArgs& args) {
  args.plan.shape.validate();
  no_cuda("fg_forward_workspace_bytes");
}

void fg_forward(const FgForwardArgs& args, StreamHandle) {
  validate_fg_forward_args(args);
  no_cuda("fg_forward");
}

void check_device_column_plan(const DeviceColumnPlan& plan, StreamHandle) {
  plan.shape.validate();
  no_cuda("check_device_column_plan");
}

void build_synthetic_column_plan(const DeviceColumnPlan& plan, const SyntheticMaskOptions&, StreamHandle) {
  plan.shape.validate();
  no_cuda("build_synthetic_column_plan");
}

}  // namespace tileattn

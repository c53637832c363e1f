// Build without CUDA: the FG-Attn entry points exist, validate what they can on the host, and say why they cannot
// run (fg_forward_workspace_bytes is host arithmetic and works in every build: fg_validation.cpp).
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

void fg_forward(const FgForwardArgs& args, StreamHandle) {
  validate_fg_forward_args(args);
  no_cuda("fg_forward");
}

void check_device_column_plan(const DeviceColumnPlan& plan, StreamHandle) {
  validate_device_column_plan(plan);
  no_cuda("check_device_column_plan");
}

void build_synthetic_column_plan(const DeviceColumnPlan& plan, const SyntheticMaskOptions&, StreamHandle) {
  validate_device_column_plan(plan);
  no_cuda("build_synthetic_column_plan");
}

}  // namespace tileattn

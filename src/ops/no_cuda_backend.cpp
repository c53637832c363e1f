// The kernel backend of a build without CUDA (configured with TILEATTN_CUDA=OFF or without nvcc): compiled instead
// of every CUDA translation unit, so everything that would launch a kernel exists and throws the one error below,
// after the host-side validation its caller ran (bad input reads the same in every build).
#include "kernels/calibration_scoring.hpp"
#include "ops/kernel_backend.hpp"
#include "tileattn/detail/testing.hpp"
#include "tileattn/error.hpp"
#include "tileattn/fg.hpp"

namespace tileattn {
namespace {

[[noreturn]] void throw_no_cuda_kernels(const char* operation) {
  throw CudaError(std::string(operation) + ": this build of tileattn has no CUDA kernels (configured with "
                  "TILEATTN_CUDA=OFF or without nvcc)");
}

}  // namespace

bool gpu_kernels_available() { return false; }

namespace ops {

void run_sta_forward(const StaForwardProblem&, StreamHandle) { throw_no_cuda_kernels("sta_forward"); }
void run_sta_backward(const StaBackwardProblem&, StreamHandle) { throw_no_cuda_kernels("sta_backward"); }
void run_fg_forward(const FgForwardProblem&, StreamHandle) { throw_no_cuda_kernels("fg_forward"); }
void run_dynamic_mask(const DynamicMaskProblem& problem, StreamHandle) { throw_no_cuda_kernels(problem.operation); }
FixedColumnPlan download_column_plan(const DeviceColumnPlan&, StreamHandle) {
  throw_no_cuda_kernels("check_device_column_plan");
}

}  // namespace ops

// Entry points whose CUDA definitions live with their kernels (fg_plan_kernels.cu, device_random.cu,
// calibration_scoring.cu).
void build_synthetic_column_plan(const DeviceColumnPlan& plan, const SyntheticMaskOptions&, StreamHandle) {
  validate_device_column_plan(plan);
  throw_no_cuda_kernels("build_synthetic_column_plan");
}

namespace detail {
void fill_random_device(void*, int64_t, DType, uint64_t, float, StreamHandle) {
  throw_no_cuda_kernels("fill_random_device");
}
void fill_pattern_device(void*, int64_t, uint16_t, StreamHandle) { throw_no_cuda_kernels("fill_pattern_device"); }
}  // namespace detail

namespace kernels {
WindowErrors gpu_window_errors(const VideoGeometry&, int64_t, int64_t, int64_t, std::span<const uint16_t>,
                               std::span<const uint16_t>, std::span<const uint16_t>, std::span<const Window>,
                               const std::function<void(int)>&) {
  throw_no_cuda_kernels("calibration");
}
}  // namespace kernels

}  // namespace tileattn

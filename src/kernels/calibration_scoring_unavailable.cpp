// Build without CUDA: GPU scoring exists and says why it cannot run.
#include "kernels/calibration_scoring.hpp"
#include "tileattn/error.hpp"

namespace tileattn::kernels {

WindowErrors gpu_window_errors(const VideoGeometry&, int64_t, int64_t, int64_t, std::span<const uint16_t>,
                               std::span<const uint16_t>, std::span<const uint16_t>, std::span<const Window>,
                               const std::function<void(int)>&) {
  throw CudaError("calibration: this build of tileattn has no CUDA kernels; use --device cpu");
}

}  // namespace tileattn::kernels

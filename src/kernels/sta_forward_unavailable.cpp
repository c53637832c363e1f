// Build without CUDA: the GPU entry points exist and say why they cannot run.
#include "kernels/sta_validation.hpp"
#include "tileattn/error.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {

void sta_forward(const StaForwardArgs& args, StreamHandle) {
  validate_sta_forward_args(args);
  throw CudaError("sta_forward: this build of tileattn has no CUDA kernels (configured with TILEATTN_CUDA=OFF or "
                  "without nvcc)");
}
void sta_backward(const StaBackwardArgs& args, StreamHandle) {
  validate_sta_backward_args(args);
  throw CudaError("sta_backward: this build of tileattn has no CUDA kernels (configured with TILEATTN_CUDA=OFF or "
                  "without nvcc)");
}
bool gpu_kernels_available() { return false; }

}  // namespace tileattn

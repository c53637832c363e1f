// Build without CUDA: the device helpers exist and say why they cannot run.
#include "tileattn/detail/testing.hpp"
#include "tileattn/error.hpp"

namespace tileattn::detail {

void fill_random_device(void*, int64_t, DType, uint64_t, float, StreamHandle) {
  throw CudaError("fill_random_device: this build of tileattn has no CUDA support");
}
void fill_pattern_device(void*, int64_t, uint16_t, StreamHandle) {
  throw CudaError("fill_pattern_device: this build of tileattn has no CUDA support");
}

}  // namespace tileattn::detail

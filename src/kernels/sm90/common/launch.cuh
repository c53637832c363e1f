#pragma once
// Launching a kernel with a large dynamic shared memory carve-out, with errors as CudaError naming the kernel.
#include <cuda_runtime.h>

#include <string>

#include "tileattn/error.hpp"

namespace tileattn::sm90 {

// `name` prefixes the error messages ("sta_forward", "sta_backward: main"...). blocks <= 0 only sets the attribute.
template <class Kernel, class Params>
void launch_kernel(const char* name, Kernel kernel, int64_t blocks, int threads, int smem, cudaStream_t stream,
                   const Params& params) {
  if (smem > 0) {
    const cudaError_t err = cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, smem);
    if (err != cudaSuccess)
      throw CudaError(std::string(name) + ": cudaFuncSetAttribute: " + cudaGetErrorString(err));
  }
  if (blocks <= 0) return;
  kernel<<<dim3(static_cast<unsigned>(blocks)), dim3(threads), smem, stream>>>(params);
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw CudaError(std::string(name) + ": launch failed: " + cudaGetErrorString(err));
}

}  // namespace tileattn::sm90

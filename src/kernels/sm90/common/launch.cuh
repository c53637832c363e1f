#pragma once
// Launching a kernel with a large dynamic shared memory carve-out, with errors as CudaError naming the kernel, and
// the kernels' view of that memory as one storage struct.
#include <cuda_runtime.h>

#include <cstdint>
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

// Launches a kernel whose dynamic shared memory is one `Storage` (shared_storage below), with the slack that
// aligning it to 1024 bytes needs.
template <class Storage, class Kernel, class Params>
void launch_with_storage(const char* name, Kernel kernel, int64_t blocks, int threads, cudaStream_t stream,
                         const Params& params) {
  constexpr int kSmem = sizeof(Storage) + 1024;
  static_assert(kSmem <= 227 * 1024, "shared memory of the configuration exceeds the 227 KB an H100 CTA can have");
  launch_kernel(name, kernel, blocks, threads, kSmem, stream, params);
}

// The kernel's dynamic shared memory as its `Storage`, aligned to 1024 bytes (the 128-byte swizzle atoms' period).
template <class Storage>
__device__ __forceinline__ Storage& shared_storage() {
  extern __shared__ uint8_t smem_raw[];
  return *reinterpret_cast<Storage*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));
}

}  // namespace tileattn::sm90

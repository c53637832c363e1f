#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "tileattn/detail/testing.hpp"
#include "tileattn/error.hpp"

namespace tileattn::detail {
namespace {

__device__ uint64_t mix(uint64_t x) {  // splitmix64
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

template <class T>
__global__ void fill_random_kernel(T* data, int64_t count, uint64_t seed, float amplitude) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x) {
    const float u = float(mix(seed ^ (uint64_t(i) * 0xD1B54A32D192ED03ull)) >> 40) * (1.0f / 16777216.0f);
    data[i] = T((2.0f * u - 1.0f) * amplitude);
  }
}

__global__ void fill_pattern_kernel(uint16_t* data, int64_t count, uint16_t pattern) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < count; i += int64_t(gridDim.x) * blockDim.x)
    data[i] = pattern;
}

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw CudaError(std::string(what) + ": " + cudaGetErrorString(err));
}

}  // namespace

void fill_random_device(void* data, int64_t count, DType dtype, uint64_t seed, float amplitude, StreamHandle stream) {
  if (count <= 0) return;
  const int blocks = 1024, threads = 256;
  if (dtype == DType::bf16)
    fill_random_kernel<<<blocks, threads, 0, stream>>>(static_cast<__nv_bfloat16*>(data), count, seed, amplitude);
  else
    fill_random_kernel<<<blocks, threads, 0, stream>>>(static_cast<__half*>(data), count, seed, amplitude);
  check(cudaGetLastError(), "fill_random_device");
}

void fill_pattern_device(void* data, int64_t count, uint16_t pattern, StreamHandle stream) {
  if (count <= 0) return;
  fill_pattern_kernel<<<1024, 256, 0, stream>>>(static_cast<uint16_t*>(data), count, pattern);
  check(cudaGetLastError(), "fill_pattern_device");
}

}  // namespace tileattn::detail

// GPU scoring for calibration (see calibration_scoring.hpp): plain CUDA around sta_forward.
#include <cuda_bf16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <memory>
#include <string>

#include "kernels/calibration_scoring.hpp"
#include "tileattn/error.hpp"
#include "tileattn/sta.hpp"

namespace tileattn::kernels {
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)  // no fmt here: nvcc cannot compile its compile-time format checks
    throw CudaError(std::string("calibration scoring: ") + what + ": " + cudaGetErrorString(err));
}

struct CudaFree {
  void operator()(void* p) const { cudaFree(p); }
};
using DevicePtr = std::unique_ptr<void, CudaFree>;

DevicePtr device_alloc(size_t bytes) {
  void* p = nullptr;
  check(cudaMalloc(&p, bytes), "cudaMalloc");
  return DevicePtr(p);
}

constexpr int kThreads = 256;

// out[head] += sum over the head's elements of (a - b)^2, or of a^2 when b is null. Tensors are [batch, heads, n]
// contiguous (n = tokens * head_dim); blockIdx.y = batch * heads + head.
__global__ void head_square_sum(const __nv_bfloat16* a, const __nv_bfloat16* b, int64_t n, int heads, double* out) {
  const int64_t base = int64_t(blockIdx.y) * n;
  float acc = 0.0f;
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < n; i += int64_t(gridDim.x) * blockDim.x) {
    float d = __bfloat162float(a[base + i]);
    if (b != nullptr) d -= __bfloat162float(b[base + i]);
    acc += d * d;
  }
  for (int offset = 16; offset > 0; offset /= 2) acc += __shfl_down_sync(0xffffffffu, acc, offset);
  __shared__ float warp_sums[kThreads / 32];
  if (threadIdx.x % 32 == 0) warp_sums[threadIdx.x / 32] = acc;
  __syncthreads();
  if (threadIdx.x == 0) {
    double sum = 0;
    for (int w = 0; w < kThreads / 32; ++w) sum += warp_sums[w];
    atomicAdd(&out[blockIdx.y % heads], sum);
  }
}

}  // namespace

WindowErrors gpu_window_errors(const VideoGeometry& geometry, int64_t batch, int64_t heads, int64_t head_dim,
                               std::span<const uint16_t> q, std::span<const uint16_t> k, std::span<const uint16_t> v,
                               std::span<const Window> candidates, const std::function<void(int)>& after_candidate) {
  const int64_t tokens = geometry.num_tokens();
  const int64_t n = tokens * head_dim, elements = batch * heads * n;
  for (auto span : {q, k, v})
    if (static_cast<int64_t>(span.size()) != elements)
      throw_argument_error("q", "expected " + std::to_string(elements) + " elements, got " + std::to_string(span.size()));
  const size_t bytes = size_t(elements) * 2;
  DevicePtr dq = device_alloc(bytes), dk = device_alloc(bytes), dv = device_alloc(bytes);
  DevicePtr dense = device_alloc(bytes), sparse = device_alloc(bytes);
  DevicePtr sums = device_alloc(sizeof(double) * heads * (candidates.size() + 1));
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  std::unique_ptr<CUstream_st, decltype(&cudaStreamDestroy)> stream_guard(stream, cudaStreamDestroy);
  check(cudaMemcpyAsync(dq.get(), q.data(), bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpy q");
  check(cudaMemcpyAsync(dk.get(), k.data(), bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpy k");
  check(cudaMemcpyAsync(dv.get(), v.data(), bytes, cudaMemcpyHostToDevice, stream), "cudaMemcpy v");
  check(cudaMemsetAsync(sums.get(), 0, sizeof(double) * heads * (candidates.size() + 1), stream), "cudaMemset");
  double* dsums = static_cast<double*>(sums.get());

  auto tensor = [&](void* p) { return DeviceTensor{p, heads * n, n, head_dim}; };
  StaForwardArgs args;
  args.dtype = DType::bf16;
  args.batch = batch, args.q_heads = heads, args.kv_heads = heads, args.head_dim = head_dim;
  args.video = geometry.video(), args.tile = geometry.tile(), args.text_len = geometry.text_len();
  args.q = tensor(dq.get()), args.k = tensor(dk.get()), args.v = tensor(dv.get());
  const dim3 grid(unsigned(std::min<int64_t>(64, (n + kThreads - 1) / kThreads)), unsigned(batch * heads));

  args.out = tensor(dense.get());  // no windows: dense
  sta_forward(args, stream);
  const auto* dense_out = static_cast<const __nv_bfloat16*>(dense.get());
  head_square_sum<<<grid, kThreads, 0, stream>>>(dense_out, nullptr, n, int(heads), dsums);
  check(cudaGetLastError(), "head_square_sum");
  check(cudaStreamSynchronize(stream), "dense attention");
  if (after_candidate) after_candidate(-1);
  args.out = tensor(sparse.get());
  for (size_t c = 0; c < candidates.size(); ++c) {
    args.windows = candidates.subspan(c, 1);  // one window: every head
    sta_forward(args, stream);
    head_square_sum<<<grid, kThreads, 0, stream>>>(static_cast<const __nv_bfloat16*>(sparse.get()), dense_out, n,
                                                   int(heads), dsums + heads * (c + 1));
    check(cudaGetLastError(), "head_square_sum");
    check(cudaStreamSynchronize(stream), "STA attention");
    if (after_candidate) after_candidate(int(c));
  }
  std::vector<double> host(heads * (candidates.size() + 1));
  check(cudaMemcpy(host.data(), dsums, host.size() * sizeof(double), cudaMemcpyDeviceToHost), "cudaMemcpy sums");
  WindowErrors out;
  out.dense_norm2.assign(host.begin(), host.begin() + heads);
  out.diff2.assign(host.begin() + heads, host.end());
  return out;
}

}  // namespace tileattn::kernels

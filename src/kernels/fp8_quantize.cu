// The e4m3 STA forward's pre-pass (docs/DESIGN.md "FP8 STA forward"): four memory-bound kernels, in order on the
// call's stream:
//  1. statistics: per (batch, kv head) and chunk of tokens, the sum of K and the max |V| of each channel over the
//     valid keys (fixed chunks and a fixed reduction order: the result is the same run to run);
//  2. finish: K's channel means and V's channel scales from the chunks;
//  3. rows: Q (and K, smoothed by its means) in groups of 64 padded rows, one scale per group, e4m3 rows written in
//     the padded tile-major order; for Q also the LSE shift softmax_scale * (q . mean K) of each row;
//  4. values: V scaled per channel, transposed to head-dim rows of keys, the keys of each 32 in value_key_at order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_fp8.h>
#include <cuda_runtime.h>

#include <string>

#include "kernels/fp8_value_order.hpp"
#include "kernels/sta_fp8_params.hpp"
#include "tileattn/error.hpp"

namespace tileattn::kernels {
namespace {

constexpr int kThreads = 128;

struct Buffers {
  uint8_t *q8, *k8, *v8t;
  float *q_scale, *k_scale, *v_scale, *k_mean, *lse_shift, *k_sum, *v_max;
};

Buffers buffers_of(const Fp8QuantizeParams& p) {
  uint8_t* w = p.workspace;
  const Fp8Workspace& l = p.layout;
  auto f = [&](int64_t off) { return reinterpret_cast<float*>(w + off); };
  return {w + l.q8, w + l.k8, w + l.v8t, f(l.q_scale), f(l.k_scale), f(l.v_scale), f(l.k_mean), f(l.lse_shift),
          f(l.k_sum_partial), f(l.v_max_partial)};
}

// Eight consecutive elements of a bf16 / fp16 tensor (16-byte aligned: the call's validation checks the strides).
__device__ __forceinline__ void load8(const void* base, int64_t offset, bool fp16, float (&x)[8]) {
  const uint4 raw = *reinterpret_cast<const uint4*>(static_cast<const uint16_t*>(base) + offset);
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if (fp16) {
      const __half2 h = *reinterpret_cast<const __half2*>(&words[i]);
      x[2 * i] = __low2float(h), x[2 * i + 1] = __high2float(h);
    } else {
      const __nv_bfloat162 h = *reinterpret_cast<const __nv_bfloat162*>(&words[i]);
      x[2 * i] = __low2float(h), x[2 * i + 1] = __high2float(h);
    }
  }
}

__device__ __forceinline__ int64_t element_offset(const int64_t (&strides)[3], int b, int h, int64_t token) {
  return b * strides[0] + h * strides[1] + token * strides[2];
}

// Valid text keys of batch element b (all text for queries).
__device__ __forceinline__ int64_t valid_text(const Fp8QuantizeParams& p, int b) {
  if (p.text_valid == nullptr) return p.text_len;
  const int v = p.text_valid[b];
  return v < 0 ? 0 : (v > p.text_len ? p.text_len : v);
}

// The input token behind padded row `row`, or -1 for padding (and, for keys, text past text_valid).
__device__ int64_t source_token(const Fp8QuantizeParams& p, int64_t row, int b, bool key) {
  if (row < p.layout.video_rows) {
    if (p.tile_major) return row;  // whole tiles: the padded order is the input's order
    const detail::TileGrid& g = p.grid;
    const int volume = g.tile_t * g.tile_h * g.tile_w;
    const detail::TileCoord tile = g.tile_coord(int(row / volume));
    const detail::TileCoord in = g.row_in_tile(int(row % volume));
    const int t = tile.t * g.tile_t + in.t, h = tile.h * g.tile_h + in.h, w = tile.w * g.tile_w + in.w;
    if (t >= p.video_t || h >= p.video_h || w >= p.video_w) return -1;
    return (int64_t(t) * p.video_h + h) * p.video_w + w;
  }
  const int64_t j = row - p.layout.video_rows;
  return j < (key ? valid_text(p, b) : int64_t(p.text_len)) ? p.num_video_tokens + j : -1;
}

__device__ __forceinline__ float block_max(float x, float* scratch) {
#pragma unroll
  for (int o = 16; o > 0; o >>= 1) x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, o));
  if (threadIdx.x % 32 == 0) scratch[threadIdx.x / 32] = x;
  __syncthreads();
  x = scratch[0];
  for (int w = 1; w < kThreads / 32; ++w) x = fmaxf(x, scratch[w]);
  return x;
}

__device__ __forceinline__ uint32_t e4m3x4(float a, float b, float c, float d) {
  const uint32_t lo = __nv_cvt_float2_to_fp8x2(make_float2(a, b), __NV_SATFINITE, __NV_E4M3);
  const uint32_t hi = __nv_cvt_float2_to_fp8x2(make_float2(c, d), __NV_SATFINITE, __NV_E4M3);
  return lo | (hi << 16);
}

// 1. Per (chunk of kFp8StatisticsRows input tokens, batch * kv head): channel sums of K and max |V|.
template <int D>
__global__ void __launch_bounds__(kThreads) statistics_kernel(const Fp8QuantizeParams p, Buffers buf) {
  constexpr int kLanes = D / 8, kTokensPerPass = kThreads / kLanes;
  __shared__ float k_sum[kTokensPerPass][D], v_max[kTokensPerPass][D];
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / p.kv_heads, h = bh % p.kv_heads;
  const int lane = threadIdx.x % kLanes, slot = threadIdx.x / kLanes;
  const int64_t keys = p.num_video_tokens + valid_text(p, b);
  const int64_t begin = int64_t(chunk) * kFp8StatisticsRows;
  const int64_t end = begin + kFp8StatisticsRows < keys ? begin + kFp8StatisticsRows : keys;
  float ks[8] = {}, vm[8] = {};
  for (int64_t token = begin + slot; token < end; token += kTokensPerPass) {
    float k[8], v[8];
    load8(p.k, element_offset(p.k_strides, b, h, token) + lane * 8, p.is_fp16, k);
    load8(p.v, element_offset(p.v_strides, b, h, token) + lane * 8, p.is_fp16, v);
#pragma unroll
    for (int i = 0; i < 8; ++i) ks[i] += k[i], vm[i] = fmaxf(vm[i], fabsf(v[i]));
  }
#pragma unroll
  for (int i = 0; i < 8; ++i) k_sum[slot][lane * 8 + i] = ks[i], v_max[slot][lane * 8 + i] = vm[i];
  __syncthreads();
  for (int d = threadIdx.x; d < D; d += kThreads) {
    float s = 0.0f, m = 0.0f;
    for (int i = 0; i < kTokensPerPass; ++i) s += k_sum[i][d], m = fmaxf(m, v_max[i][d]);
    const int64_t at = (int64_t(bh) * p.layout.chunks + chunk) * D + d;
    buf.k_sum[at] = s;
    buf.v_max[at] = m;
  }
}

// 2. K's channel means and V's channel scales, per batch * kv head.
template <int D>
__global__ void __launch_bounds__(D) finish_kernel(const Fp8QuantizeParams p, Buffers buf) {
  const int bh = blockIdx.x, d = threadIdx.x, b = bh / p.kv_heads;
  float s = 0.0f, m = 0.0f;
  for (int64_t c = 0; c < p.layout.chunks; ++c) {
    const int64_t at = (int64_t(bh) * p.layout.chunks + c) * D + d;
    s += buf.k_sum[at];
    m = fmaxf(m, buf.v_max[at]);
  }
  const int64_t keys = p.num_video_tokens + valid_text(p, b);
  buf.k_mean[int64_t(bh) * D + d] = s / float(keys);
  buf.v_scale[int64_t(bh) * D + d] = m > 0.0f ? m / kE4m3Max : 1.0f;
}

// 3. One group of 64 padded rows of Q (kKeys = false) or K (true) per CTA: two threads per row, D / 2 channels each.
template <int D, bool kKeys>
__global__ void __launch_bounds__(kThreads) rows_kernel(const Fp8QuantizeParams p, Buffers buf) {
  constexpr int kHalf = D / 2;
  __shared__ float scratch[kThreads / 32];
  const int group = blockIdx.x, bh = blockIdx.y;
  const int heads = kKeys ? p.kv_heads : p.q_heads;
  const int b = bh / heads, h = bh % heads;
  const int kv_bh = b * p.kv_heads + (kKeys ? h : h / (p.q_heads / p.kv_heads));
  const int half = threadIdx.x % 2;
  const int64_t row = int64_t(group) * kFp8GroupRows + threadIdx.x / 2;
  const int64_t token = source_token(p, row, b, kKeys);
  const float* mean = buf.k_mean + int64_t(kv_bh) * D + half * kHalf;
  float x[kHalf];
#pragma unroll
  for (int v = 0; v < kHalf / 8; ++v) {
    float e[8] = {};
    if (token >= 0)
      load8(kKeys ? p.k : p.q, element_offset(kKeys ? p.k_strides : p.q_strides, b, h, token) + half * kHalf + v * 8,
            p.is_fp16, e);
#pragma unroll
    for (int i = 0; i < 8; ++i) x[v * 8 + i] = (kKeys && token >= 0) ? e[i] - mean[v * 8 + i] : e[i];
  }
  if (!kKeys && p.want_lse_shift) {
    float dot = 0.0f;
#pragma unroll
    for (int i = 0; i < kHalf; ++i) dot = fmaf(x[i], mean[i], dot);
    dot += __shfl_xor_sync(0xffffffff, dot, 1);
    if (half == 0) buf.lse_shift[int64_t(bh) * p.layout.rows + row] = p.softmax_scale * dot;
  }
  float m = 0.0f;
#pragma unroll
  for (int i = 0; i < kHalf; ++i) m = fmaxf(m, fabsf(x[i]));
  m = block_max(m, scratch);
  const float scale = m > 0.0f ? m / kE4m3Max : 1.0f;
  uint8_t* out = (kKeys ? buf.k8 : buf.q8) + (int64_t(bh) * p.layout.rows + row) * D + half * kHalf;
#pragma unroll
  for (int v = 0; v < kHalf / 8; ++v) {
    const float* e = &x[v * 8];
    uint2 packed;
    packed.x = e4m3x4(e[0] / scale, e[1] / scale, e[2] / scale, e[3] / scale);
    packed.y = e4m3x4(e[4] / scale, e[5] / scale, e[6] / scale, e[7] / scale);
    *reinterpret_cast<uint2*>(out + v * 8) = packed;
  }
  if (threadIdx.x == 0) {
    if (!kKeys) {
      buf.q_scale[int64_t(bh) * p.layout.groups + group] = scale;
    } else {  // into the windows of the groups that start up to 3 before this one; the last windows' tails are 1
      float* windows = buf.k_scale + int64_t(bh) * p.layout.groups * kFp8ScaleWindow;
      for (int i = 0; i < kFp8ScaleWindow; ++i) {
        if (group - i >= 0) windows[int64_t(group - i) * kFp8ScaleWindow + i] = scale;
        if (i > 0 && group + i >= p.layout.groups) windows[int64_t(group) * kFp8ScaleWindow + i] = 1.0f;
      }
    }
  }
}

// 4. One group of 64 padded key rows of V per CTA: scaled per channel, transposed through shared memory into V^T
// rows (one per channel) of 64 keys in value_key_at order.
template <int D>
__global__ void __launch_bounds__(kThreads) values_kernel(const Fp8QuantizeParams p, Buffers buf) {
  constexpr int kHalf = D / 2;
  __shared__ __align__(16) uint8_t tile[D][kFp8GroupRows];
  const int group = blockIdx.x, bh = blockIdx.y, b = bh / p.kv_heads, h = bh % p.kv_heads;
  const int half = threadIdx.x % 2, key = threadIdx.x / 2;
  const int64_t row = int64_t(group) * kFp8GroupRows + key;
  const int64_t token = source_token(p, row, b, true);
  const float* scale = buf.v_scale + int64_t(bh) * D + half * kHalf;
  const int position = value_position_of(key % 32) + (key / 32) * 32;
#pragma unroll
  for (int v = 0; v < kHalf / 8; ++v) {
    float e[8] = {};
    if (token >= 0) load8(p.v, element_offset(p.v_strides, b, h, token) + half * kHalf + v * 8, p.is_fp16, e);
#pragma unroll
    for (int i = 0; i < 8; i += 2) {
      const int c = half * kHalf + v * 8 + i;
      const uint32_t two = __nv_cvt_float2_to_fp8x2(make_float2(e[i] / scale[v * 8 + i], e[i + 1] / scale[v * 8 + i + 1]),
                                                    __NV_SATFINITE, __NV_E4M3);
      tile[c][position] = uint8_t(two & 0xff);
      tile[c + 1][position] = uint8_t(two >> 8);
    }
  }
  __syncthreads();
  uint8_t* out = buf.v8t + int64_t(bh) * D * p.layout.rows + int64_t(group) * kFp8GroupRows;
  for (int i = threadIdx.x; i < D * kFp8GroupRows / 16; i += kThreads) {
    const int c = i / (kFp8GroupRows / 16), chunk = i % (kFp8GroupRows / 16);
    *reinterpret_cast<uint4*>(out + int64_t(c) * p.layout.rows + chunk * 16) =
        *reinterpret_cast<const uint4*>(&tile[c][chunk * 16]);
  }
}

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw CudaError(std::string("sta_forward (fp8): ") + what + ": " + cudaGetErrorString(err));
}

template <int D>
void launch_all(const Fp8QuantizeParams& p, cudaStream_t stream) {
  const Buffers buf = buffers_of(p);
  const Fp8Workspace& l = p.layout;
  statistics_kernel<D><<<dim3(unsigned(l.chunks), unsigned(l.kv_bh)), kThreads, 0, stream>>>(p, buf);
  check_launch("statistics");
  finish_kernel<D><<<unsigned(l.kv_bh), D, 0, stream>>>(p, buf);
  check_launch("finish");
  rows_kernel<D, false><<<dim3(unsigned(l.groups), unsigned(l.q_bh)), kThreads, 0, stream>>>(p, buf);
  check_launch("quantize Q");
  rows_kernel<D, true><<<dim3(unsigned(l.groups), unsigned(l.kv_bh)), kThreads, 0, stream>>>(p, buf);
  check_launch("quantize K");
  values_kernel<D><<<dim3(unsigned(l.groups), unsigned(l.kv_bh)), kThreads, 0, stream>>>(p, buf);
  check_launch("quantize V");
}

}  // namespace

void launch_fp8_quantize(const Fp8QuantizeParams& params, CUstream_st* stream) {
  if (params.head_dim == 128)
    launch_all<128>(params, stream);
  else if (params.head_dim == 64)
    launch_all<64>(params, stream);
  else
    throw CudaError("sta_forward (fp8): head dim " + std::to_string(params.head_dim) + " has no pre-pass");
}

}  // namespace tileattn::kernels

// The 8-bit STA forward's pre-pass (docs/DESIGN.md "FP8 STA forward"): four memory-bound kernels, in order on the
// call's stream:
//  1. statistics: per (batch, kv head) and chunk of tokens, K's and V's sum / max / min of each channel over the
//     valid keys, max |Q| over the queries (fixed chunks and a fixed reduction order: the same result run to run);
//  2. finish: K's and V's channel means, V's channel scales and the Q / K channel balance from the chunks;
//  3. rows: Q (and K, smoothed by its means), balanced, in groups of 64 padded rows, one scale per group, int8 rows
//     written in the padded tile-major order; for Q also the LSE shift softmax_scale * (q . mean K) of each row;
//  4. values: V less its channel means, scaled per channel, transposed to head-dim rows of keys, the keys of each 32
//     in value_key_at order.
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

constexpr int kThreads = 256;
// Rows are read and written by D / 8 consecutive lanes, 16 bytes of input each: a warp covers whole rows.
template <int D>
constexpr int kLanesPerRow = D / 8;

struct Buffers {
  uint8_t *q8, *k8, *v8t;
  float *q_scale, *k_scale, *v_scale, *k_mean, *v_mean, *balance, *lse_shift;
  float *k_sum, *k_max, *k_min, *v_sum, *v_max, *v_min, *q_max;  // statistics partials
};

Buffers buffers_of(const Fp8QuantizeParams& p) {
  uint8_t* w = p.workspace;
  const Fp8Workspace& l = p.layout;
  auto f = [&](int64_t off) { return reinterpret_cast<float*>(w + off); };
  return {w + l.q8,           w + l.k8,           w + l.v8t,          f(l.q_scale),       f(l.k_scale),
          f(l.v_scale),       f(l.k_mean),        f(l.v_mean),        f(l.balance),       f(l.lse_shift),
          f(l.k_sum_partial), f(l.k_max_partial), f(l.k_min_partial), f(l.v_sum_partial), f(l.v_max_partial),
          f(l.v_min_partial), f(l.q_max_partial)};
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
    const int r = int(row);  // rows per (batch, head) fit in int (the tokens limit, checked.hpp): 32-bit division
    const detail::TileCoord tile = g.tile_coord(r / volume);
    const detail::TileCoord in = g.row_in_tile(r % volume);
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

// Four values -> four int8 (round to nearest even; |x| <= 127 by construction of the scale), first in the low byte.
__device__ __forceinline__ uint32_t int8x4(float a, float b, float c, float d) {
  auto byte = [](float x) { return uint32_t(__float2int_rn(x)) & 0xffu; };
  return byte(a) | (byte(b) << 8) | (byte(c) << 16) | (byte(d) << 24);
}

// 1. Per (chunk of kFp8StatisticsRows input tokens, batch * kv head), per channel: K's and V's sum, max and min over
// the valid keys, and max |Q| over every query of the kv head's q heads. The per-thread partials are reduced one
// statistic at a time through one shared tile.
template <int D>
__global__ void __launch_bounds__(kThreads) statistics_kernel(const Fp8QuantizeParams p, Buffers buf) {
  constexpr int kLanes = D / 8, kTokensPerPass = kThreads / kLanes;
  constexpr int kKSum = 0, kKMax = 1, kKMin = 2, kVSum = 3, kVMax = 4, kVMin = 5, kQ = 6, kStats = 7;
  __shared__ float partial[kTokensPerPass][D];
  const int chunk = blockIdx.x, bh = blockIdx.y, b = bh / p.kv_heads, h = bh % p.kv_heads;
  const int group = p.q_heads / p.kv_heads;
  const int lane = threadIdx.x % kLanes, slot = threadIdx.x / kLanes;
  const int64_t keys = p.num_video_tokens + valid_text(p, b), tokens = p.num_video_tokens + p.text_len;
  const int64_t begin = int64_t(chunk) * kFp8StatisticsRows;
  const int64_t end = begin + kFp8StatisticsRows < tokens ? begin + kFp8StatisticsRows : tokens;
  float acc[kStats][8];
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    acc[kKSum][i] = acc[kVSum][i] = acc[kQ][i] = 0.0f;
    acc[kKMax][i] = acc[kVMax][i] = -INFINITY;
    acc[kKMin][i] = acc[kVMin][i] = INFINITY;
  }
  for (int64_t token = begin + slot; token < end; token += kTokensPerPass) {
    for (int g = 0; g < group; ++g) {
      float q[8];
      load8(p.q, element_offset(p.q_strides, b, h * group + g, token) + lane * 8, p.is_fp16, q);
#pragma unroll
      for (int i = 0; i < 8; ++i) acc[kQ][i] = fmaxf(acc[kQ][i], fabsf(q[i]));
    }
    if (token >= keys) continue;  // text past text_valid: a query, not a key
    float k[8], v[8];
    load8(p.k, element_offset(p.k_strides, b, h, token) + lane * 8, p.is_fp16, k);
    load8(p.v, element_offset(p.v_strides, b, h, token) + lane * 8, p.is_fp16, v);
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      acc[kKSum][i] += k[i], acc[kKMax][i] = fmaxf(acc[kKMax][i], k[i]), acc[kKMin][i] = fminf(acc[kKMin][i], k[i]);
      acc[kVSum][i] += v[i], acc[kVMax][i] = fmaxf(acc[kVMax][i], v[i]), acc[kVMin][i] = fminf(acc[kVMin][i], v[i]);
    }
  }
  float* out[kStats] = {buf.k_sum, buf.k_max, buf.k_min, buf.v_sum, buf.v_max, buf.v_min, buf.q_max};
#pragma unroll
  for (int x = 0; x < kStats; ++x) {
#pragma unroll
    for (int i = 0; i < 8; ++i) partial[slot][lane * 8 + i] = acc[x][i];
    __syncthreads();
    for (int d = threadIdx.x; d < D; d += kThreads) {
      float r = partial[0][d];
      for (int i = 1; i < kTokensPerPass; ++i) {
        const float y = partial[i][d];
        r = (x == kKSum || x == kVSum) ? r + y : (x == kKMin || x == kVMin) ? fminf(r, y) : fmaxf(r, y);
      }
      out[x][(int64_t(bh) * p.layout.chunks + chunk) * D + d] = r;
    }
    __syncthreads();
  }
}

// 2. Per batch * kv head and channel: K's mean, V's scale, and the balance b of Q and K. Scores use q / b and
// (k - mean) b, which changes no product q . k but gives both the same range per channel (sqrt of the product of
// their maxima), so that one int8 scale per 64 rows does not spend its range on the other operand's outlier channels.
template <int D>
__global__ void __launch_bounds__(D) finish_kernel(const Fp8QuantizeParams p, Buffers buf) {
  const int bh = blockIdx.x, d = threadIdx.x, b = bh / p.kv_heads;
  float k_sum = 0.0f, k_max = -INFINITY, k_min = INFINITY, v_sum = 0.0f, v_max = -INFINITY, v_min = INFINITY;
  float q_max = 0.0f;
  for (int64_t c = 0; c < p.layout.chunks; ++c) {
    const int64_t at = (int64_t(bh) * p.layout.chunks + c) * D + d;
    k_sum += buf.k_sum[at], k_max = fmaxf(k_max, buf.k_max[at]), k_min = fminf(k_min, buf.k_min[at]);
    v_sum += buf.v_sum[at], v_max = fmaxf(v_max, buf.v_max[at]), v_min = fminf(v_min, buf.v_min[at]);
    q_max = fmaxf(q_max, buf.q_max[at]);
  }
  const int64_t keys = p.num_video_tokens + valid_text(p, b);
  const float k_mean = k_sum / float(keys), v_mean = v_sum / float(keys);
  const float k_range = fmaxf(k_max - k_mean, k_mean - k_min);  // max |k - mean| over the valid keys
  const float v_range = fmaxf(v_max - v_mean, v_mean - v_min);
  const int64_t at = int64_t(bh) * D + d;
  buf.k_mean[at] = k_mean;
  buf.v_mean[at] = v_mean;
  buf.balance[at] = q_max > 0.0f && k_range > 0.0f ? sqrtf(q_max / k_range) : 1.0f;
  buf.v_scale[at] = v_range > 0.0f ? v_range / kE4m3Max : 1.0f;
}

// 3. One group of 64 padded rows of Q (kKeys = false) or K (true) per CTA, kLanesPerRow lanes per row, 8 channels
// each. Q: q / balance; K: (k - mean) * balance (finish_kernel); then one int8 scale per group, max |x| / 127.
template <int D, bool kKeys>
__global__ void __launch_bounds__(kThreads) rows_kernel(const Fp8QuantizeParams p, Buffers buf) {
  constexpr int kLanes = kLanesPerRow<D>, kRowsPerPass = kThreads / kLanes, kPasses = kFp8GroupRows / kRowsPerPass;
  __shared__ float scratch[kThreads / 32];
  const int group = blockIdx.x, bh = blockIdx.y;
  const int heads = kKeys ? p.kv_heads : p.q_heads;
  const int b = bh / heads, h = bh % heads;
  const int kv_bh = b * p.kv_heads + (kKeys ? h : h / (p.q_heads / p.kv_heads));
  const int lane = threadIdx.x % kLanes, c0 = lane * 8;
  float mean[8], balance[8];  // for Q: 1 / balance (multiplications in the loop, not divisions)
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    mean[i] = buf.k_mean[int64_t(kv_bh) * D + c0 + i];
    const float bal = buf.balance[int64_t(kv_bh) * D + c0 + i];
    balance[i] = kKeys ? bal : 1.0f / bal;
  }
  float x[kPasses][8];
  float m = 0.0f;
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int64_t row = int64_t(group) * kFp8GroupRows + pass * kRowsPerPass + threadIdx.x / kLanes;
    const int64_t token = source_token(p, row, b, kKeys);
    float e[8] = {};
    if (token >= 0)
      load8(kKeys ? p.k : p.q, element_offset(kKeys ? p.k_strides : p.q_strides, b, h, token) + c0, p.is_fp16, e);
    if (!kKeys && p.want_lse_shift) {  // of the raw q
      float dot = 0.0f;
#pragma unroll
      for (int i = 0; i < 8; ++i) dot = fmaf(e[i], mean[i], dot);
#pragma unroll
      for (int o = kLanes / 2; o > 0; o >>= 1) dot += __shfl_xor_sync(0xffffffffu, dot, o);
      if (lane == 0) buf.lse_shift[int64_t(bh) * p.layout.rows + row] = p.softmax_scale * dot;
    }
#pragma unroll
    for (int i = 0; i < 8; ++i) {
      x[pass][i] = kKeys ? (token >= 0 ? (e[i] - mean[i]) * balance[i] : 0.0f) : e[i] * balance[i];
      m = fmaxf(m, fabsf(x[pass][i]));
    }
  }
  m = block_max(m, scratch);
  const float scale = m > 0.0f ? m / kInt8Max : 1.0f, inverse = kInt8Max / m;  // |x * inverse| <= 127 (1 ulp)
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int64_t row = int64_t(group) * kFp8GroupRows + pass * kRowsPerPass + threadIdx.x / kLanes;
    const float* e = x[pass];
    const float u = m > 0.0f ? inverse : 0.0f;
    uint2 packed;
    packed.x = int8x4(e[0] * u, e[1] * u, e[2] * u, e[3] * u);
    packed.y = int8x4(e[4] * u, e[5] * u, e[6] * u, e[7] * u);
    *reinterpret_cast<uint2*>((kKeys ? buf.k8 : buf.q8) + (int64_t(bh) * p.layout.rows + row) * D + c0) = packed;
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

// 4. One group of 64 padded key rows of V per CTA: scaled per channel and rounded to e4m3 as read (kLanesPerRow
// lanes per row, into a row-major shared tile), then written transposed: V^T rows (one per channel) of 64 keys in
// value_key_at order, each thread 32 keys of one channel (whole 32-byte sectors; the shared reads of a warp are 32
// consecutive channels of one key, so bank-conflict free).
template <int D>
__global__ void __launch_bounds__(kThreads) values_kernel(const Fp8QuantizeParams p, Buffers buf) {
  constexpr int kLanes = kLanesPerRow<D>, kRowsPerPass = kThreads / kLanes, kPasses = kFp8GroupRows / kRowsPerPass;
  static_assert(kThreads == 2 * 128 && D <= 128, "the write phase takes one channel and 32 keys per thread");
  __shared__ __align__(16) uint8_t tile[kFp8GroupRows][D];
  const int group = blockIdx.x, bh = blockIdx.y, b = bh / p.kv_heads, h = bh % p.kv_heads;
  const int lane = threadIdx.x % kLanes, c0 = lane * 8;
  float inverse[8], mean[8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
    inverse[i] = 1.0f / buf.v_scale[int64_t(bh) * D + c0 + i], mean[i] = buf.v_mean[int64_t(bh) * D + c0 + i];
#pragma unroll
  for (int pass = 0; pass < kPasses; ++pass) {
    const int key = pass * kRowsPerPass + threadIdx.x / kLanes;
    const int64_t token = source_token(p, int64_t(group) * kFp8GroupRows + key, b, true);
    float e[8] = {};  // padding rows stay 0 (their probabilities are 0)
    if (token >= 0) {
      load8(p.v, element_offset(p.v_strides, b, h, token) + c0, p.is_fp16, e);
#pragma unroll
      for (int i = 0; i < 8; ++i) e[i] -= mean[i];
    }
    uint32_t w[4];
#pragma unroll
    for (int i = 0; i < 4; ++i)
      w[i] = __nv_cvt_float2_to_fp8x2(make_float2(e[2 * i] * inverse[2 * i], e[2 * i + 1] * inverse[2 * i + 1]),
                                      __NV_SATFINITE, __NV_E4M3);
    *reinterpret_cast<uint2*>(&tile[key][c0]) = make_uint2(w[0] | (w[1] << 16), w[2] | (w[3] << 16));
  }
  __syncthreads();
  const int c = threadIdx.x % 128, half = threadIdx.x / 128;  // channel; keys 32 half .. 32 half + 31
  if (c >= D) return;
  uint32_t bytes[8];
#pragma unroll
  for (int word = 0; word < 8; ++word) {
    uint32_t x = 0;
#pragma unroll
    for (int j = 0; j < 4; ++j) x |= uint32_t(tile[32 * half + value_key_at(4 * word + j)][c]) << (8 * j);
    bytes[word] = x;
  }
  uint4* out = reinterpret_cast<uint4*>(buf.v8t + (int64_t(bh) * D + c) * p.layout.rows +
                                        int64_t(group) * kFp8GroupRows + 32 * half);
  out[0] = make_uint4(bytes[0], bytes[1], bytes[2], bytes[3]);
  out[1] = make_uint4(bytes[4], bytes[5], bytes[6], bytes[7]);
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

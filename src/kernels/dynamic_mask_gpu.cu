// GPU dynamic fine-grained mask builder (see dynamic_mask_gpu.hpp): query pooling, two score passes on tensor cores
// (mma.sync m16n8k16, fp32 accumulation), per-row radix selection, per-head weighted radix selection for
// target_sparsity. Plain CUDA (no CuTe); no host synchronization, no device allocation.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <string>

#include "kernels/dynamic_mask_layout.hpp"
#include "ops/kernel_backend.hpp"
#include "tileattn/dynamic_mask_gpu.hpp"
#include "tileattn/error.hpp"

namespace tileattn {
namespace kernels {
namespace {

using u64 = unsigned long long;

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess)  // no fmt here: nvcc cannot compile its compile-time format checks
    throw CudaError(std::string("dynamic mask: ") + what + ": " + cudaGetErrorString(err));
}

// =====================================================================================================================
// Score passes
// =====================================================================================================================

constexpr int kScoreThreads = 128;          // 4 warps, 32 pooled rows each (two m16 tiles)
constexpr int kBM = int(kDynRowTile);       // pooled rows per CTA
constexpr int kBN = int(kDynKeyTile);       // keys per tile (8 n8 tiles)
constexpr int kGroupStride = 33;            // key_group >= 2: at most ceil(64 / 2) + 1 groups overlap a tile
static_assert(kBM == kScoreThreads, "the group reduction gives each thread one row");

template <DType T>
struct Elem;
template <>
struct Elem<DType::bf16> {
  static __device__ float to_float(uint16_t bits) { return __bfloat162float(__ushort_as_bfloat16(bits)); }
  static __device__ uint16_t from_float(float x) { return __bfloat16_as_ushort(__float2bfloat16_rn(x)); }
};
template <>
struct Elem<DType::fp16> {
  static __device__ float to_float(uint16_t bits) { return __half2float(__ushort_as_half(bits)); }
  static __device__ uint16_t from_float(float x) { return __half_as_ushort(__float2half_rn(x)); }
};

__device__ __forceinline__ float ex2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

__device__ __forceinline__ uint32_t smem_u32(const void* p) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(p));
}

__device__ __forceinline__ void cp_async16(uint32_t dst, const void* src, bool valid) {
  asm volatile("cp.async.cg.shared.global [%0], [%1], 16, %2;" ::"r"(dst), "l"(src), "r"(valid ? 16 : 0) : "memory");
}
__device__ __forceinline__ void cp_async_commit() { asm volatile("cp.async.commit_group;" ::: "memory"); }
__device__ __forceinline__ void cp_async_wait_all() { asm volatile("cp.async.wait_group 0;" ::: "memory"); }

__device__ __forceinline__ void ldmatrix_x4(uint32_t (&r)[4], uint32_t addr) {
  asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0, %1, %2, %3}, [%4];"
               : "=r"(r[0]), "=r"(r[1]), "=r"(r[2]), "=r"(r[3])
               : "r"(addr)
               : "memory");
}

template <DType T>
__device__ __forceinline__ void mma16816(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  if constexpr (T == DType::bf16)
    asm("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
  else
    asm("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0, %1, %2, %3}, {%4, %5, %6, %7}, {%8, %9}, "
        "{%0, %1, %2, %3};"
        : "+f"(c[0]), "+f"(c[1]), "+f"(c[2]), "+f"(c[3])
        : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b0), "r"(b1));
}

// Shared-memory K tile: 64 rows of head_dim elements, rows padded by 16 bytes so that ldmatrix's eight row
// addresses fall in distinct bank groups.
template <int D>
struct KTile {
  static constexpr int kStride = D + 8;                       // elements per row
  static constexpr int kElems = kBN * kStride;                // per stage
  static constexpr uint32_t kBytes = uint32_t(kElems) * 2u;   // per stage
  static constexpr int kKSteps = D / 16;
};

// Issues the cp.async copies of keys [key0, key0 + 64) into `stage`; rows at or past key_end are zero-filled.
template <int D>
__device__ __forceinline__ void load_k_tile(uint16_t* stage, const uint16_t* kbase, int64_t token_stride, int key0,
                                            int key_end) {
  constexpr int kChunksPerRow = D / 8, kPerThread = kBN * kChunksPerRow / kScoreThreads;
#pragma unroll
  for (int i = 0; i < kPerThread; ++i) {
    const int c = threadIdx.x + i * kScoreThreads;
    const int r = c / kChunksPerRow, col = (c % kChunksPerRow) * 8;
    const bool valid = key0 + r < key_end;
    const uint16_t* src = valid ? kbase + int64_t(key0 + r) * token_stride + col : kbase;
    cp_async16(smem_u32(stage + r * KTile<D>::kStride + col), src, valid);
  }
}

// A fragments (m16n8k16, row-major) of the warp's 32 pooled rows, kept in registers for the whole pass. Row i of
// the CTA tile is rows[i * D]; rows at or past `valid_rows` are zero.
template <int D>
__device__ __forceinline__ void load_a_frags(uint32_t (&a)[2][D / 16][4], const uint16_t* rows, int valid_rows) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      const int row = warp * 32 + mt * 16 + g + 8 * hh;
      const bool ok = row < valid_rows;
      const uint32_t* src = reinterpret_cast<const uint32_t*>(rows + int64_t(ok ? row : 0) * D);
#pragma unroll
      for (int ks = 0; ks < D / 16; ++ks) {
        a[mt][ks][hh] = ok ? src[ks * 8 + t] : 0u;          // columns ks*16 + 2t, +1
        a[mt][ks][2 + hh] = ok ? src[ks * 8 + 4 + t] : 0u;  // columns ks*16 + 8 + 2t, +1
      }
    }
}

// acc[mt][nt][2 * hh + e] = score of row (warp * 32 + mt * 16 + g + 8 hh) with key (nt * 8 + 2 t + e) of the tile.
template <DType T, int D>
__device__ __forceinline__ void tile_scores(float (&acc)[2][8][4], const uint32_t (&a)[2][D / 16][4],
                                            uint32_t stage) {
  const int lane = threadIdx.x & 31;
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int nt = 0; nt < 8; ++nt)
#pragma unroll
      for (int i = 0; i < 4; ++i) acc[mt][nt][i] = 0.0f;
  // ldmatrix.x4 over two n8 tiles: matrices (keys 0-7, k 0-7), (keys 0-7, k 8-15), (keys 8-15, k 0-7),
  // (keys 8-15, k 8-15) -> b0, b1 of the first tile, b0, b1 of the second.
  const uint32_t lane_addr =
      stage + uint32_t((((lane >> 4) * 8 + (lane & 7)) * KTile<D>::kStride + ((lane >> 3) & 1) * 8) * 2);
#pragma unroll
  for (int ks = 0; ks < D / 16; ++ks)
#pragma unroll
    for (int np = 0; np < 4; ++np) {
      uint32_t b[4];
      ldmatrix_x4(b, lane_addr + uint32_t((np * 16 * KTile<D>::kStride + ks * 16) * 2));
#pragma unroll
      for (int mt = 0; mt < 2; ++mt) {
        mma16816<T>(acc[mt][2 * np], a[mt][ks], b[0], b[1]);
        mma16816<T>(acc[mt][2 * np + 1], a[mt][ks], b[2], b[3]);
      }
    }
}

// ---- 1. pooling ----

// pooled[(b, h, qb), c] = dtype(fp32 sum over the block's rows, in row order, / rows).
template <DType T>
__global__ void pool_kernel(const uint16_t* q, int64_t batch_stride, int64_t head_stride, int64_t token_stride,
                            int heads, int tokens, int nq, int query_block, int head_dim, int64_t total,
                            uint16_t* pooled) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < total; i += int64_t(gridDim.x) * blockDim.x) {
    const int c = int(i % head_dim);
    const int64_t row = i / head_dim;
    const int qb = int(row % nq);
    const int64_t bh = row / nq;
    const int64_t b = bh / heads, h = bh % heads;
    const int first = qb * query_block, rows = min(query_block, tokens - first);
    const uint16_t* src = q + b * batch_stride + h * head_stride + int64_t(first) * token_stride + c;
    float s = 0.0f;
    for (int r = 0; r < rows; ++r) s += Elem<T>::to_float(src[int64_t(r) * token_stride]);
    pooled[i] = Elem<T>::from_float(s / float(rows));
  }
}

// ---- 2. statistics ----

struct StatsParams {
  const uint16_t* k;
  int64_t k_batch_stride, k_head_stride, k_token_stride;
  const uint16_t* pooled;
  float2* partial;  // [splits, pooled_rows] (max, sum) in the log2 domain
  int64_t pooled_rows;
  int q_heads, kv_heads, group, nq, tokens, split_keys;
  float scale_log2;
};

// grid (row tiles of a kv head's group * nq pooled rows, batch * kv_heads, key splits).
template <DType T, int D>
__global__ void __launch_bounds__(kScoreThreads) stats_kernel(StatsParams p) {
  extern __shared__ __align__(128) uint16_t k_smem[];
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int b = blockIdx.y / p.kv_heads, kvh = blockIdx.y % p.kv_heads;
  const int rows = p.group * p.nq, r0 = blockIdx.x * kBM;
  const int64_t base_row = (int64_t(b) * p.q_heads + int64_t(kvh) * p.group) * p.nq;
  const int key_begin = blockIdx.z * p.split_keys, key_end = min(p.tokens, key_begin + p.split_keys);
  const uint16_t* kbase = p.k + b * p.k_batch_stride + kvh * p.k_head_stride;

  uint32_t a[2][D / 16][4];
  load_a_frags<D>(a, p.pooled + (base_row + r0) * D, rows - r0);
  float m[2][2], l[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) m[i][0] = m[i][1] = -INFINITY, l[i][0] = l[i][1] = 0.0f;

  const int ntiles = (key_end - key_begin + kBN - 1) / kBN;
  load_k_tile<D>(k_smem, kbase, p.k_token_stride, key_begin, key_end);
  cp_async_commit();
  for (int i = 0; i < ntiles; ++i) {
    cp_async_wait_all();
    __syncthreads();  // tile i landed for every thread; every thread is done with tile i - 1's stage
    if (i + 1 < ntiles) {
      load_k_tile<D>(k_smem + ((i + 1) & 1) * KTile<D>::kElems, kbase, p.k_token_stride, key_begin + (i + 1) * kBN,
                     key_end);
      cp_async_commit();
    }
    float acc[2][8][4];
    tile_scores<T, D>(acc, a, smem_u32(k_smem) + (i & 1) * KTile<D>::kBytes);
    const int lim = key_end - (key_begin + i * kBN) - 2 * t;  // element (nt, e) is a key iff nt * 8 + e < lim
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float tmax = -INFINITY;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            float x = acc[mt][nt][2 * hh + e] * p.scale_log2;
            if (nt * 8 + e >= lim) x = -INFINITY;
            acc[mt][nt][2 * hh + e] = x;
            tmax = fmaxf(tmax, x);
          }
        const float mn = fmaxf(m[mt][hh], tmax);
        if (mn != -INFINITY) {
          float sum = 0.0f;
#pragma unroll
          for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) sum += ex2(acc[mt][nt][2 * hh + e] - mn);
          l[mt][hh] = l[mt][hh] * ex2(m[mt][hh] - mn) + sum;
          m[mt][hh] = mn;
        }
      }
  }
  // The four threads of a quad hold the same rows: merge their (max, sum).
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float mm = m[mt][hh], ll = l[mt][hh];
#pragma unroll
      for (int o = 1; o <= 2; o <<= 1) {
        const float mo = __shfl_xor_sync(0xffffffffu, mm, o), lo = __shfl_xor_sync(0xffffffffu, ll, o);
        const float mn = fmaxf(mm, mo);
        if (mn != -INFINITY) {
          ll = ll * ex2(mm - mn) + lo * ex2(mo - mn);
          mm = mn;
        }
      }
      const int row = r0 + warp * 32 + mt * 16 + g + 8 * hh;
      if (t == 0 && row < rows) p.partial[blockIdx.z * p.pooled_rows + base_row + row] = make_float2(mm, ll);
    }
}

// lse[row] = log2(sum over splits and keys of 2^x) + log2(batch): the batch average folded in.
__global__ void combine_kernel(const float2* partial, int splits, int64_t rows, float log2_batch, float* lse) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows; i += int64_t(gridDim.x) * blockDim.x) {
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, partial[s * rows + i].x);
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float2 v = partial[s * rows + i];
      if (v.x != -INFINITY) sum += v.y * exp2f(v.x - mx);
    }
    lse[i] = mx + log2f(sum) + log2_batch;
  }
}

// ---- 3. masses ----

struct MassParams {
  const uint16_t* k;
  int64_t k_batch_stride, k_head_stride, k_token_stride;
  const uint16_t* pooled;
  const float* lse;
  float* mass;  // [pass rows, ng]; pass row = (query head - h0) * nq + query block
  int batch, q_heads, group, nq, tokens, key_group, ng;
  int h0;            // first query head of the pass
  int heads_per_kv;  // query heads of one kv head in this pass (the CTA's rows: heads_per_kv * nq)
  int splits;        // key splits, each a whole number of key groups
  float scale_log2;
};

// grid (row tiles, kv heads of the pass, key splits). Each CTA owns its rows' masses over its groups: it writes them
// with plain stores, looping over the batch (b > 0 adds to what the same thread wrote for b - 1).
// kSingle (key_group == 1): probabilities go from registers to global memory. Otherwise they go through shared
// memory, where thread r sums row r's groups in key order (carrying a group across tiles), and the completed groups
// are written coalesced. Either way each group is summed in key order, so masses do not depend on the splits.
template <DType T, int D, bool kSingle>
__global__ void __launch_bounds__(kScoreThreads) mass_kernel(MassParams p) {
  extern __shared__ __align__(128) uint16_t k_smem[];
  float* probs = reinterpret_cast<float*>(k_smem + 2 * KTile<D>::kElems);  // [kBM][kBN + 1]
  float* sums = probs + kBM * (kBN + 1);                                    // [kBM][kGroupStride]
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const int hfirst = p.h0 + blockIdx.y * p.heads_per_kv, kvh = hfirst / p.group;
  const int rows = p.heads_per_kv * p.nq, r0 = blockIdx.x * kBM;
  const int64_t g_begin = int64_t(blockIdx.z) * p.ng / p.splits, g_end = int64_t(blockIdx.z + 1) * p.ng / p.splits;
  const int key_begin = int(g_begin * p.key_group);
  const int key_end = int(std::min<int64_t>(p.tokens, g_end * p.key_group));
  const int ntiles = (key_end - key_begin + kBN - 1) / kBN;
  float* mass_rows = p.mass + (int64_t(blockIdx.y) * rows + r0) * p.ng;
  const int N = p.key_group;

  for (int b = 0; b < p.batch; ++b) {
    const int64_t pooled_row0 = (int64_t(b) * p.q_heads + hfirst) * p.nq + r0;
    uint32_t a[2][D / 16][4];
    load_a_frags<D>(a, p.pooled + pooled_row0 * D, rows - r0);
    float lse[2][2];
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        const int row = warp * 32 + mt * 16 + g + 8 * hh;
        lse[mt][hh] = r0 + row < rows ? p.lse[pooled_row0 + row] : INFINITY;
      }
    const uint16_t* kbase = p.k + b * p.k_batch_stride + kvh * p.k_head_stride;
    float carry = 0.0f;  // !kSingle: row threadIdx.x's partial sum of a group that continues in the next tile

    __syncthreads();  // the previous batch element's last tile is done with both stages
    load_k_tile<D>(k_smem, kbase, p.k_token_stride, key_begin, key_end);
    cp_async_commit();
    for (int i = 0; i < ntiles; ++i) {
      cp_async_wait_all();
      __syncthreads();
      if (i + 1 < ntiles) {
        load_k_tile<D>(k_smem + ((i + 1) & 1) * KTile<D>::kElems, kbase, p.k_token_stride,
                       key_begin + (i + 1) * kBN, key_end);
        cp_async_commit();
      }
      float acc[2][8][4];
      tile_scores<T, D>(acc, a, smem_u32(k_smem) + (i & 1) * KTile<D>::kBytes);
      const int t0 = key_begin + i * kBN, t1 = min(t0 + kBN, key_end);
      const int lim = t1 - t0 - 2 * t;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh)
#pragma unroll
          for (int nt = 0; nt < 8; ++nt)
#pragma unroll
            for (int e = 0; e < 2; ++e) {
              const float x = acc[mt][nt][2 * hh + e] * p.scale_log2 - lse[mt][hh];
              acc[mt][nt][2 * hh + e] = nt * 8 + e < lim ? ex2(x) : 0.0f;
            }

      if constexpr (kSingle) {
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            const int row = warp * 32 + mt * 16 + g + 8 * hh;
            if (r0 + row >= rows) continue;
            float* dst = mass_rows + int64_t(row) * p.ng + t0 + 2 * t;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt)
#pragma unroll
              for (int e = 0; e < 2; ++e)
                if (nt * 8 + e < lim) {
                  const float v = acc[mt][nt][2 * hh + e];
                  dst[nt * 8 + e] = b == 0 ? v : dst[nt * 8 + e] + v;
                }
          }
      } else {
#pragma unroll
        for (int mt = 0; mt < 2; ++mt)
#pragma unroll
          for (int hh = 0; hh < 2; ++hh) {
            float* dst = probs + (warp * 32 + mt * 16 + g + 8 * hh) * (kBN + 1) + 2 * t;
#pragma unroll
            for (int nt = 0; nt < 8; ++nt) {
              dst[nt * 8] = acc[mt][nt][2 * hh];
              dst[nt * 8 + 1] = acc[mt][nt][2 * hh + 1];
            }
          }
        __syncthreads();
        // Thread r: row r's groups overlapping [t0, t1).
        const int ga = t0 / N, gb = (t1 - 1) / N;
        const bool last_open = std::min<int64_t>(int64_t(gb) * N + N, p.tokens) > t1;  // group gb goes on
        {
          const float* prow = probs + threadIdx.x * (kBN + 1);
          for (int gi = ga; gi <= gb; ++gi) {
            const int ks = max(gi * N, t0);
            const int ke = int(std::min<int64_t>(int64_t(gi) * N + N, t1));
            float s = gi * N < t0 ? carry : 0.0f;
            for (int j = ks; j < ke; ++j) s += prow[j - t0];
            if (gi == gb && last_open)
              carry = s;
            else
              sums[threadIdx.x * kGroupStride + (gi - ga)] = s;
          }
        }
        __syncthreads();
        const int complete = gb - ga + (last_open ? 0 : 1);
        for (int idx = threadIdx.x; idx < kBM * complete; idx += kScoreThreads) {
          const int row = idx / complete, j = idx % complete;
          if (r0 + row >= rows) continue;
          float* dst = mass_rows + int64_t(row) * p.ng + ga + j;
          const float v = sums[row * kGroupStride + j];
          *dst = b == 0 ? v : *dst + v;
        }
      }
    }
  }
}

// =====================================================================================================================
// Selection
// =====================================================================================================================

constexpr int kSelThreads = 256, kSelWarps = kSelThreads / 32;
constexpr uint32_t kForcedBit = 1u << 30;  // priority key: always-kept groups above every other group
constexpr uint32_t kAllTies = 0xffffffffu;
constexpr int kBins = int(kDynBins);
__device__ constexpr int kShift[3] = {20, 10, 0};  // radix levels: key bits [30:20], [19:10], [9:0]
__device__ constexpr int kBits[3] = {11, 10, 10};

// A row's kept groups: every eligible group with key > key, plus the first tie_keep (by index) with key == key.
struct Cut {
  uint32_t key, tie_keep;
};
__device__ constexpr Cut kKeepNothing{0xffffffffu, 0};     // keys never have bit 31
__device__ constexpr Cut kKeepAll{0, kAllTies};
__device__ constexpr Cut kKeepForced{kForcedBit - 1, 0};  // exactly the keys >= 2^30

struct SelectParams {
  const float* mass;  // [pass rows, ng]
  int tokens, nq, ng, query_block, key_group;
  int h0;  // first query head of the pass
  int rule;
  double p;
  long long k;
  uint32_t threshold_key;
  double target_sparsity;
  int keep_diagonal;
  int text_first_group;  // ng: no group is kept for text
  const int32_t* win_table;
  const int32_t* win_counts;  // null: no window
  long long win_capacity;
  int32_t* table;
  int32_t* counts;
  long long capacity;
  DynHeadState* head_state;  // [heads of the pass]
  DynHeadHist* head_hist;
  DynRowTies* row_ties;  // [pass rows]
};

// 2^-40 fixed point: top_p's sums are exact integer sums, so the parallel scans below are consistent and the
// result does not depend on the order of the atomics.
__device__ __forceinline__ u64 to_fixed(float m) { return __double2ull_rn(double(m) * 1099511627776.0); }

struct RowView {
  const float* mass;
  const uint32_t* bitmap;  // eligible groups (window), or null: all
  int ng, key_group, tokens, diag_first, diag_last, text_first;
  bool density;

  __device__ int group_size(int g) const { return int(min(int64_t(key_group), int64_t(tokens) - int64_t(g) * key_group)); }
  // The priority key of an eligible group: float bits of the mass (target_sparsity: of mass / group size), bit 30
  // set for always-kept groups (those rank by mass). Masses are sanitised to [0, 1.75] (NaN -> 0).
  __device__ bool key(int g, uint32_t& k, float& m) const {
    if (bitmap != nullptr && !((bitmap[g >> 5] >> (g & 31)) & 1u)) return false;
    const float raw = mass[g];
    m = raw >= 0.0f ? fminf(raw, 1.75f) : 0.0f;
    if ((g >= diag_first && g <= diag_last) || g >= text_first)
      k = __float_as_uint(m) | kForcedBit;
    else
      k = __float_as_uint(density ? __fdiv_rn(m, float(group_size(g))) : m);
    return true;
  }
};

template <class V>
__device__ V block_exclusive_scan(V v, V& total, V* scratch) {
  const int lane = threadIdx.x & 31, warp = threadIdx.x >> 5;
  V inc = v;
#pragma unroll
  for (int o = 1; o < 32; o <<= 1) {
    const V y = __shfl_up_sync(0xffffffffu, inc, o);
    if (lane >= o) inc += y;
  }
  if (lane == 31) scratch[warp] = inc;
  __syncthreads();
  V before = 0, all = 0;
#pragma unroll
  for (int w = 0; w < kSelWarps; ++w) {
    const V s = scratch[w];
    if (w < warp) before += s;
    all += s;
  }
  __syncthreads();
  total = all;
  return before + inc - v;
}

template <class V>
__device__ V block_sum(V v, V* scratch) {
  V total;
  block_exclusive_scan(v, total, scratch);
  return total;
}

struct Crossing {
  int bin, found;
  u64 above_val, above_cnt;  // over the bins above `bin`
};

struct SelShared {
  uint32_t cnt[kBins];
  u64 val[kBins];
  u64 scratch[kSelWarps];
  Crossing cross;
};

// The first bin, in descending order, at which base + the values of the bins down to it reach `need`. Values are
// integers, so the cumulative sums are exact and exactly one thread finds the bin. Result in s.cross.
template <class ValFn>
__device__ void find_crossing(SelShared& s, int nb, ValFn val, u64 base, double need) {
  const int per = nb / kSelThreads, hi = nb - 1 - int(threadIdx.x) * per;
  u64 lv = 0, lc = 0;
  for (int i = 0; i < per; ++i) lv += val(hi - i), lc += s.cnt[hi - i];
  u64 tv, tc;
  const u64 ev = block_exclusive_scan<u64>(lv, tv, s.scratch);
  const u64 ec = block_exclusive_scan<u64>(lc, tc, s.scratch);
  if (threadIdx.x == 0) s.cross.found = 0;
  __syncthreads();
  if (double(base + ev) < need && double(base + ev + lv) >= need) {
    u64 v = ev, c = ec;
    for (int i = 0; i < per; ++i) {
      const int b = hi - i;
      if (double(base + v + val(b)) >= need) {
        s.cross = Crossing{b, 1, v, c};
        break;
      }
      v += val(b), c += s.cnt[b];
    }
  }
  __syncthreads();
}

// Histogram of radix level `level` over the eligible groups whose key starts with `prefix` (the bits above the
// level's digit); with_val adds the masses (fixed point) too.
template <bool kVal>
__device__ void hist_pass(const RowView& v, SelShared& s, int level, uint32_t prefix) {
  const int nb = level == 0 ? kBins : 1024, shift = kShift[level], up = shift + kBits[level];
  __syncthreads();  // earlier readers of the histogram are done
  for (int i = threadIdx.x; i < nb; i += kSelThreads) {
    s.cnt[i] = 0;
    if (kVal) s.val[i] = 0;
  }
  __syncthreads();
  for (int g = threadIdx.x; g < v.ng; g += kSelThreads) {
    uint32_t key;
    float m;
    if (!v.key(g, key, m) || (key >> up) != prefix) continue;  // level 0: up = 31, prefix 0
    const int bin = int(key >> shift) & (nb - 1);
    atomicAdd(&s.cnt[bin], 1u);
    if (kVal) atomicAdd(&s.val[bin], to_fixed(m));
  }
  __syncthreads();
}

struct RowStats {
  u64 eligible, forced, mass, by_cut;  // by_cut: how many groups `cut` keeps (when given)
};

// The first pass over a row: level 0's histogram (counts and masses) and the row's totals.
__device__ RowStats row_pass0(const RowView& v, SelShared& s, const Cut* cut) {
  __syncthreads();
  for (int i = threadIdx.x; i < kBins; i += kSelThreads) s.cnt[i] = 0, s.val[i] = 0;
  __syncthreads();
  u64 eligible = 0, forced = 0, mass = 0, above = 0, ties = 0;
  for (int g = threadIdx.x; g < v.ng; g += kSelThreads) {
    uint32_t key;
    float m;
    if (!v.key(g, key, m)) continue;
    const u64 fx = to_fixed(m);
    ++eligible;
    forced += key >= kForcedBit;
    mass += fx;
    if (cut != nullptr) above += key > cut->key, ties += key == cut->key;
    atomicAdd(&s.cnt[key >> kShift[0]], 1u);
    atomicAdd(&s.val[key >> kShift[0]], fx);
  }
  RowStats r;
  r.eligible = block_sum<u64>(eligible, s.scratch);
  r.forced = block_sum<u64>(forced, s.scratch);
  r.mass = block_sum<u64>(mass, s.scratch);
  r.by_cut = 0;
  if (cut != nullptr) {
    const u64 a = block_sum<u64>(above, s.scratch), t = block_sum<u64>(ties, s.scratch);
    r.by_cut = a + min(t, u64(cut->tie_keep));
  }
  return r;
}

// The cut keeping the n highest-priority eligible groups, ties to the lower index (0 < n < eligible).
__device__ Cut count_select(const RowView& v, SelShared& s, u64 n, bool level0_ready) {
  uint32_t prefix = 0;
  u64 remaining = n;
  for (int level = 0; level < 3; ++level) {
    if (level > 0 || !level0_ready) hist_pass<false>(v, s, level, prefix);
    find_crossing(s, level == 0 ? kBins : 1024, [&](int b) { return u64(s.cnt[b]); }, 0, double(remaining));
    const Crossing c = s.cross;  // found: the histogram holds >= remaining groups
    remaining -= c.above_cnt;
    prefix = (prefix << kBits[level]) | uint32_t(c.bin);
    if (remaining == s.cnt[c.bin]) return Cut{prefix << kShift[level], kAllTies};  // the whole bin
  }
  return Cut{prefix, uint32_t(remaining)};
}

// top_p: the cut keeping the shortest prefix of the priority order whose mass reaches `target` (fixed point);
// n = its length. Level 0's histogram (with masses) must be current.
__device__ Cut mass_select(const RowView& v, SelShared& s, double target, u64 eligible, u64& n) {
  if (!(target > 0.0)) {
    n = 0;
    return kKeepNothing;
  }
  uint32_t prefix = 0;
  u64 base = 0, above = 0;
  for (int level = 0; level < 3; ++level) {
    if (level > 0) hist_pass<true>(v, s, level, prefix);
    find_crossing(s, level == 0 ? kBins : 1024, [&](int b) { return s.val[b]; }, base, target);
    const Crossing c = s.cross;
    if (!c.found) {  // only at level 0 (a bin's sub-bins add up to it exactly): the row never reaches the target
      n = eligible;
      return kKeepAll;
    }
    base += c.above_val;
    above += c.above_cnt;
    prefix = (prefix << kBits[level]) | uint32_t(c.bin);
    const u64 cnt = s.cnt[c.bin];
    if (cnt == 1) {
      n = above + 1;
      return Cut{prefix << kShift[level], kAllTies};
    }
    if (level == 2) {  // cnt equal keys: keep the fewest (lowest indices) that reach the target
      const u64 each = s.val[c.bin] / cnt;
      u64 r = cnt;
      if (each > 0) {
        r = u64(fmin(fmax(ceil((target - double(base)) / double(each)), 1.0), double(cnt)));
        while (r > 1 && double(base + (r - 1) * each) >= target) --r;
        while (r < cnt && double(base + r * each) < target) ++r;
      }
      n = above + r;
      return Cut{prefix, uint32_t(r)};
    }
  }
  n = eligible;  // not reached
  return kKeepAll;
}

// Writes the row's kept groups ascending, -1 up to the capacity, and the count.
__device__ void compact_row(const RowView& v, SelShared& s, Cut cut, int32_t* out, long long capacity,
                            int32_t* count) {
  constexpr int kItems = 4;
  u64 above_base = 0, tie_base = 0;
  for (int base = 0; base < v.ng; base += kSelThreads * kItems) {
    bool above[kItems], tie[kItems];
    uint32_t na = 0, nt = 0;
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int g = base + int(threadIdx.x) * kItems + i;
      uint32_t key = 0;
      float m;
      const bool ok = g < v.ng && v.key(g, key, m);
      above[i] = ok && key > cut.key;
      tie[i] = ok && key == cut.key;
      na += above[i], nt += tie[i];
    }
    u64 total;
    const u64 ex = block_exclusive_scan<u64>(u64(na) | (u64(nt) << 32), total, s.scratch);
    u64 a = above_base + (ex & 0xffffffffu), t = tie_base + (ex >> 32);
#pragma unroll
    for (int i = 0; i < kItems; ++i) {
      const int g = base + int(threadIdx.x) * kItems + i;
      if (above[i]) {
        const u64 pos = a + min(t, u64(cut.tie_keep));
        if (pos < u64(capacity)) out[pos] = g;
        ++a;
      } else if (tie[i]) {
        if (t < cut.tie_keep && a + t < u64(capacity)) out[a + t] = g;
        ++t;
      }
    }
    above_base += total & 0xffffffffu;
    tie_base += total >> 32;
  }
  const u64 n = min(above_base + min(tie_base, u64(cut.tie_keep)), u64(capacity));
  for (long long i = static_cast<long long>(n) + threadIdx.x; i < capacity; i += kSelThreads) out[i] = -1;
  if (threadIdx.x == 0) *count = int32_t(n);
}

// Pass row -> its view (builds the window bitmap in shared memory). Every thread of the CTA must call it.
__device__ RowView setup_row(const SelectParams& p, int64_t row, uint32_t* bitmap, bool density) {
  const int qb = int(row % p.nq), head = p.h0 + int(row / p.nq);
  RowView v;
  v.mass = p.mass + row * p.ng;
  v.ng = p.ng, v.key_group = p.key_group, v.tokens = p.tokens, v.density = density;
  v.bitmap = nullptr;
  if (p.win_counts != nullptr) {
    for (int i = threadIdx.x; i < (p.ng + 31) / 32; i += kSelThreads) bitmap[i] = 0;
    __syncthreads();
    const int64_t wrow = int64_t(head) * p.nq + qb;
    const long long listed = min(max(static_cast<long long>(p.win_counts[wrow]), 0ll), p.win_capacity);
    const int32_t* list = p.win_table + wrow * p.win_capacity;
    for (long long i = threadIdx.x; i < listed; i += kSelThreads) {
      const int32_t g = list[i];
      if (g >= 0 && g < p.ng) atomicOr(&bitmap[g >> 5], 1u << (g & 31));
    }
    __syncthreads();
    v.bitmap = bitmap;
  }
  const int64_t first = int64_t(qb) * p.query_block;
  const int64_t last = std::min<int64_t>(first + p.query_block, p.tokens) - 1;
  v.diag_first = p.keep_diagonal ? int(first / p.key_group) : 1;
  v.diag_last = p.keep_diagonal ? int(last / p.key_group) : 0;
  v.text_first = p.text_first_group;
  return v;
}

__device__ int64_t query_block_size(const SelectParams& p, int qb) {
  return std::min<int64_t>(p.query_block, int64_t(p.tokens) - int64_t(qb) * p.query_block);
}

// One CTA per row of the pass: the rule's cut (target_sparsity: from the per-head search), the capacity limit, the
// compaction.
__global__ void __launch_bounds__(kSelThreads) select_rows_kernel(SelectParams p) {
  __shared__ SelShared s;
  extern __shared__ uint32_t window_bits[];
  const int64_t row = blockIdx.x;
  const int hl = int(row / p.nq), qb = int(row % p.nq);
  const int64_t plan_row = int64_t(p.h0 + hl) * p.nq + qb;
  const auto rule = static_cast<SelectionRule>(p.rule);
  const RowView v = setup_row(p, row, window_bits, rule == SelectionRule::target_sparsity);

  Cut cut = kKeepAll;
  bool have_cut = false;
  if (rule == SelectionRule::target_sparsity) {
    const DynHeadState& st = p.head_state[hl];
    cut = st.mode == 1   ? kKeepForced
          : st.mode == 3 ? Cut{st.cut_key, st.tie_count <= 1 ? kAllTies : p.row_ties[row].keep}
                         : kKeepAll;
    have_cut = true;
  } else if (rule == SelectionRule::threshold) {
    cut = Cut{p.threshold_key, kAllTies};
    have_cut = true;
  }
  const RowStats st = row_pass0(v, s, have_cut ? &cut : nullptr);
  bool level0_ready = true;
  u64 n = st.by_cut;
  if (rule == SelectionRule::top_k) {
    n = st.forced + min(u64(p.k), st.eligible - st.forced);
  } else if (rule == SelectionRule::top_p) {
    u64 n_p = 0;
    cut = mass_select(v, s, p.p * double(st.mass), st.eligible, n_p);
    level0_ready = false;
    have_cut = true;
    n = max(n_p, st.forced);
    if (n > n_p) cut = kKeepForced;  // the always-kept groups alone reach p
  }
  if (n > u64(p.capacity) || !have_cut) {
    n = min(n, u64(p.capacity));
    cut = n == 0 ? kKeepNothing : n >= st.eligible ? kKeepAll : count_select(v, s, n, level0_ready);
  }
  compact_row(v, s, cut, p.table + plan_row * p.capacity, p.capacity, p.counts + plan_row);
}

// ---- target_sparsity: per-head weighted radix select over mass per key ----

// Level `level`: each row adds its other eligible groups (keys starting with the head's prefix) to the head's
// histogram, weighted by pairs; level 0 also counts the always-kept groups' pairs.
__global__ void __launch_bounds__(kSelThreads) target_hist_kernel(SelectParams p, int level) {
  __shared__ uint32_t cnt[kBins], weight[kBins];
  __shared__ u64 scratch[kSelWarps];
  extern __shared__ uint32_t window_bits[];
  const int64_t row = blockIdx.x;
  const int hl = int(row / p.nq), qb = int(row % p.nq);
  DynHeadState& st = p.head_state[hl];
  if (st.mode != 0) return;  // decided at an earlier level
  const uint32_t prefix = st.prefix;
  const RowView v = setup_row(p, row, window_bits, true);
  const int nb = level == 0 ? kBins : 1024, shift = kShift[level], up = shift + kBits[level];
  for (int i = threadIdx.x; i < nb; i += kSelThreads) cnt[i] = 0, weight[i] = 0;
  __syncthreads();
  u64 forced = 0;
  for (int g = threadIdx.x; g < v.ng; g += kSelThreads) {
    uint32_t key;
    float m;
    if (!v.key(g, key, m)) continue;
    if (key >= kForcedBit) {
      forced += v.group_size(g);
      continue;
    }
    if ((key >> up) != prefix) continue;
    const int bin = int(key >> shift) & (nb - 1);
    atomicAdd(&cnt[bin], 1u);
    atomicAdd(&weight[bin], uint32_t(v.group_size(g)));
  }
  __syncthreads();
  const u64 qs = u64(query_block_size(p, qb));
  DynHeadHist& h = p.head_hist[hl];
  for (int i = threadIdx.x; i < nb; i += kSelThreads)
    if (cnt[i] != 0) {
      atomicAdd(&h.count[i], cnt[i]);
      atomicAdd(&h.weight[i], qs * weight[i]);
    }
  if (level == 0) {
    const u64 f = block_sum<u64>(forced, scratch);
    if (threadIdx.x == 0 && f != 0) atomicAdd(&st.forced_pairs, qs * f);
  }
}

// One CTA per head: the bin of level `level` in which the head's pairs reach the budget.
__global__ void __launch_bounds__(kSelThreads) target_scan_kernel(SelectParams p, int level) {
  __shared__ SelShared s;
  const int hl = blockIdx.x;
  DynHeadState& st = p.head_state[hl];
  if (st.mode != 0) return;
  DynHeadHist& h = p.head_hist[hl];
  const int nb = level == 0 ? kBins : 1024;
  for (int i = threadIdx.x; i < nb; i += kSelThreads) {
    s.cnt[i] = h.count[i], s.val[i] = h.weight[i];
    h.count[i] = 0, h.weight[i] = 0;  // ready for the next level
  }
  __syncthreads();
  double need = st.remaining;
  if (level == 0) {
    need = (1.0 - p.target_sparsity) * double(p.tokens) * double(p.tokens) - double(st.forced_pairs);
    if (!(need > 0.0)) {  // the always-kept groups alone meet the budget
      if (threadIdx.x == 0) st.mode = 1;
      return;
    }
  }
  find_crossing(s, nb, [&](int b) { return s.val[b]; }, 0, need);
  if (threadIdx.x == 0) {
    if (!s.cross.found) {  // only at level 0: every eligible group is needed
      st.mode = 2;
    } else {
      st.remaining = need - double(s.cross.above_val);
      st.prefix = (st.prefix << kBits[level]) | uint32_t(s.cross.bin);
      if (level == 2) {
        st.mode = 3;
        st.cut_key = st.prefix;
        st.tie_count = s.cnt[s.cross.bin];
      }
    }
  }
}

// Rows with pairs at the cut-off key (when there are several): how many and their weight.
__global__ void __launch_bounds__(kSelThreads) target_ties_kernel(SelectParams p) {
  __shared__ u64 scratch[kSelWarps];
  extern __shared__ uint32_t window_bits[];
  const int64_t row = blockIdx.x;
  const DynHeadState& st = p.head_state[row / p.nq];
  if (st.mode != 3 || st.tie_count <= 1) return;
  const RowView v = setup_row(p, row, window_bits, true);
  u64 ties = 0, weight = 0;
  for (int g = threadIdx.x; g < v.ng; g += kSelThreads) {
    uint32_t key;
    float m;
    if (v.key(g, key, m) && key == st.cut_key) ++ties, weight += v.group_size(g);
  }
  ties = block_sum<u64>(ties, scratch);
  weight = block_sum<u64>(weight, scratch);
  if (threadIdx.x == 0)
    p.row_ties[row] = DynRowTies{uint32_t(ties), 0, u64(query_block_size(p, int(row % p.nq))) * weight};
}

// One CTA per head: the ties are taken in (query block, group) order until the budget is met; each row learns how
// many of its ties it keeps. Within a row every tie but the last group weighs query_block_size * key_group.
__global__ void __launch_bounds__(kSelThreads) target_tie_split_kernel(SelectParams p) {
  __shared__ u64 scratch[kSelWarps];
  const int hl = blockIdx.x;
  const DynHeadState& st = p.head_state[hl];
  if (st.mode != 3 || st.tie_count <= 1) return;
  const double remaining = st.remaining;
  u64 before = 0;
  for (int qb0 = 0; qb0 < p.nq; qb0 += kSelThreads) {
    const int qb = qb0 + int(threadIdx.x);
    const int64_t row = int64_t(hl) * p.nq + qb;
    const DynRowTies rt = qb < p.nq ? p.row_ties[row] : DynRowTies{0, 0, 0};
    u64 total;
    const u64 ex = block_exclusive_scan<u64>(rt.weight, total, scratch);
    if (qb < p.nq) {
      const double x = remaining - double(before + ex);  // tie i of the row is kept iff i * w < x
      u64 keep = 0;
      if (x > 0.0 && rt.ties > 0) {
        const u64 w = u64(query_block_size(p, qb)) * u64(min(p.key_group, p.tokens));
        keep = u64(fmin(ceil(x / double(w)), double(rt.ties)));
        while (keep > 1 && double((keep - 1) * w) >= x) --keep;
        while (keep < rt.ties && double(keep * w) < x) ++keep;
        keep = max(keep, u64(1));
      }
      p.row_ties[row].keep = uint32_t(keep);
    }
    before += total;
  }
}

// =====================================================================================================================
// Host side
// =====================================================================================================================

template <class Kernel>
void set_smem(Kernel kernel, size_t bytes) {
  check(cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, int(bytes)),
        "cudaFuncSetAttribute");
}

int grid_for(int64_t work, int threads) {
  return int(std::clamp<int64_t>((work + threads - 1) / threads, 1, 65535));
}

// The resolved call (ops::DynamicMaskProblem) as the launchers read it, with its stream.
struct Problem {
  const DynamicMaskArgs& a;
  const ColumnPlanShape& shape;
  const DynamicMaskLayout& layout;
  cudaStream_t stream;
  int64_t nq() const { return shape.num_query_blocks(); }
  int64_t ng() const { return shape.num_key_groups(); }
  int64_t group() const { return a.q_heads / a.kv_heads; }
  char* ws(int64_t offset) const { return static_cast<char*>(a.workspace) + offset; }
  float scale_log2() const { return ops::softmax_scale_log2(a.scale, a.head_dim); }
};

template <DType T, int D>
void launch_estimate(const Problem& pr) {
  const DynamicMaskArgs& a = pr.a;
  const int64_t nq = pr.nq(), rows = a.batch * a.q_heads * nq;
  auto* pooled = reinterpret_cast<uint16_t*>(pr.ws(pr.layout.pooled));
  pool_kernel<T><<<grid_for(rows * D, 256), 256, 0, pr.stream>>>(
      static_cast<const uint16_t*>(a.q.data), a.q.batch_stride, a.q.head_stride, a.q.token_stride, int(a.q_heads),
      int(pr.shape.tokens), int(nq), int(pr.shape.query_block), D, rows * D, pooled);
  check(cudaGetLastError(), "pool_kernel");

  StatsParams sp;
  sp.k = static_cast<const uint16_t*>(a.k.data);
  sp.k_batch_stride = a.k.batch_stride, sp.k_head_stride = a.k.head_stride, sp.k_token_stride = a.k.token_stride;
  sp.pooled = pooled;
  sp.partial = reinterpret_cast<float2*>(pr.ws(pr.layout.partial));
  sp.pooled_rows = rows;
  sp.q_heads = int(a.q_heads), sp.kv_heads = int(a.kv_heads), sp.group = int(pr.group()), sp.nq = int(nq);
  sp.tokens = int(pr.shape.tokens), sp.split_keys = int(pr.layout.stats_split_keys);
  sp.scale_log2 = pr.scale_log2();
  const size_t smem = 2 * KTile<D>::kBytes;
  set_smem(stats_kernel<T, D>, smem);
  const dim3 grid(unsigned((pr.group() * nq + kBM - 1) / kBM), unsigned(a.batch * a.kv_heads),
                  unsigned(pr.layout.stats_splits));
  stats_kernel<T, D><<<grid, kScoreThreads, smem, pr.stream>>>(sp);
  check(cudaGetLastError(), "stats_kernel");
  combine_kernel<<<grid_for(rows, 256), 256, 0, pr.stream>>>(sp.partial, int(pr.layout.stats_splits), rows,
                                                                float(std::log2(double(a.batch))),
                                                                reinterpret_cast<float*>(pr.ws(pr.layout.lse)));
  check(cudaGetLastError(), "combine_kernel");
}

// Masses of query heads [h0, h0 + heads) into `mass` ([heads * nq, ng]).
template <DType T, int D>
void launch_masses(const Problem& pr, int64_t h0, int64_t heads, float* mass) {
  const DynamicMaskArgs& a = pr.a;
  const int64_t heads_per_kv = std::min(heads, pr.group()), kv = heads / heads_per_kv;
  MassParams mp;
  mp.k = static_cast<const uint16_t*>(a.k.data);
  mp.k_batch_stride = a.k.batch_stride, mp.k_head_stride = a.k.head_stride, mp.k_token_stride = a.k.token_stride;
  mp.pooled = reinterpret_cast<const uint16_t*>(pr.ws(pr.layout.pooled));
  mp.lse = reinterpret_cast<const float*>(pr.ws(pr.layout.lse));
  mp.mass = mass;
  mp.batch = int(a.batch), mp.q_heads = int(a.q_heads), mp.group = int(pr.group()), mp.nq = int(pr.nq());
  mp.tokens = int(pr.shape.tokens), mp.key_group = int(pr.shape.key_group), mp.ng = int(pr.ng());
  mp.h0 = int(h0), mp.heads_per_kv = int(heads_per_kv);
  mp.scale_log2 = pr.scale_log2();
  const int64_t tiles = (heads_per_kv * pr.nq() + kBM - 1) / kBM;
  const int64_t max_splits = std::max<int64_t>(1, std::min(pr.ng(), pr.shape.tokens / (4 * kBN)));
  mp.splits = int(std::clamp<int64_t>((kDynTargetCtas + tiles * kv - 1) / (tiles * kv), 1, max_splits));
  const dim3 grid(unsigned(tiles), unsigned(kv), unsigned(mp.splits));
  if (pr.shape.key_group == 1) {
    const size_t smem = 2 * KTile<D>::kBytes;
    set_smem(mass_kernel<T, D, true>, smem);
    mass_kernel<T, D, true><<<grid, kScoreThreads, smem, pr.stream>>>(mp);
  } else {
    const size_t smem = 2 * KTile<D>::kBytes + sizeof(float) * kBM * (kBN + 1 + kGroupStride);
    set_smem(mass_kernel<T, D, false>, smem);
    mass_kernel<T, D, false><<<grid, kScoreThreads, smem, pr.stream>>>(mp);
  }
  check(cudaGetLastError(), "mass_kernel");
}

template <DType T, int D>
void launch_estimate_and_passes(const Problem& pr, const DeviceColumnPlan* out, float* mass_out) {
  launch_estimate<T, D>(pr);
  const DynamicMaskArgs& a = pr.a;
  if (out == nullptr) {
    launch_masses<T, D>(pr, 0, a.q_heads, mass_out);
    return;
  }
  const ColumnPlanShape& shape = pr.shape;
  const ColumnSelection& sel = a.selection;
  const int64_t nq = pr.nq(), ng = pr.ng();
  SelectParams sp;
  sp.mass = reinterpret_cast<const float*>(pr.ws(pr.layout.mass));
  sp.tokens = int(shape.tokens), sp.nq = int(nq), sp.ng = int(ng);
  sp.query_block = int(shape.query_block), sp.key_group = int(shape.key_group);
  sp.rule = int(sel.rule), sp.p = sel.p, sp.k = sel.k, sp.threshold_key = threshold_key(sel.threshold);
  sp.target_sparsity = sel.target_sparsity;
  sp.keep_diagonal = sel.keep_diagonal ? 1 : 0;
  sp.text_first_group =
      sel.always_keep_text && sel.text_len > 0 ? int((shape.tokens - sel.text_len) / shape.key_group) : int(ng);
  sp.win_table = a.window ? a.window->table : nullptr;
  sp.win_counts = a.window ? a.window->counts : nullptr;
  sp.win_capacity = a.window ? a.window->capacity : 0;
  sp.table = out->table, sp.counts = out->counts, sp.capacity = out->capacity;
  sp.head_state = reinterpret_cast<DynHeadState*>(pr.ws(pr.layout.head_state));
  sp.head_hist = reinterpret_cast<DynHeadHist*>(pr.ws(pr.layout.head_hist));
  sp.row_ties = reinterpret_cast<DynRowTies*>(pr.ws(pr.layout.row_ties));
  const size_t bitmap = a.window ? size_t((ng + 31) / 32) * 4 : 0;
  if (bitmap > 0) {
    set_smem(select_rows_kernel, bitmap);
    set_smem(target_hist_kernel, bitmap);
    set_smem(target_ties_kernel, bitmap);
  }
  const bool target = sel.rule == SelectionRule::target_sparsity;
  for (int64_t h0 = 0; h0 < a.q_heads; h0 += pr.layout.heads_per_pass) {
    const int64_t heads = std::min(pr.layout.heads_per_pass, a.q_heads - h0), rows = heads * nq;
    launch_masses<T, D>(pr, h0, heads, const_cast<float*>(sp.mass));
    sp.h0 = int(h0);
    if (target) {
      check(cudaMemsetAsync(sp.head_state, 0, sizeof(DynHeadState) * heads, pr.stream), "cudaMemsetAsync");
      check(cudaMemsetAsync(sp.head_hist, 0, sizeof(DynHeadHist) * heads, pr.stream), "cudaMemsetAsync");
      for (int level = 0; level < 3; ++level) {
        target_hist_kernel<<<unsigned(rows), kSelThreads, bitmap, pr.stream>>>(sp, level);
        target_scan_kernel<<<unsigned(heads), kSelThreads, 0, pr.stream>>>(sp, level);
      }
      target_ties_kernel<<<unsigned(rows), kSelThreads, bitmap, pr.stream>>>(sp);
      target_tie_split_kernel<<<unsigned(heads), kSelThreads, 0, pr.stream>>>(sp);
      check(cudaGetLastError(), "target_sparsity kernels");
    }
    select_rows_kernel<<<unsigned(rows), kSelThreads, bitmap, pr.stream>>>(sp);
    check(cudaGetLastError(), "select_rows_kernel");
  }
}

void dispatch(const Problem& pr, const DeviceColumnPlan* out, float* mass_out) {
  if (pr.a.dtype == DType::bf16)
    pr.a.head_dim == 128 ? launch_estimate_and_passes<DType::bf16, 128>(pr, out, mass_out)
                         : launch_estimate_and_passes<DType::bf16, 64>(pr, out, mass_out);
  else
    pr.a.head_dim == 128 ? launch_estimate_and_passes<DType::fp16, 128>(pr, out, mass_out)
                         : launch_estimate_and_passes<DType::fp16, 64>(pr, out, mass_out);
}

}  // namespace
}  // namespace kernels

void ops::run_dynamic_mask(const DynamicMaskProblem& problem, StreamHandle stream) {
  require_hopper_gpu(problem.operation);
  kernels::dispatch({*problem.args, problem.shape, problem.layout, static_cast<cudaStream_t>(stream)}, problem.out,
                    problem.mass);
}

}  // namespace tileattn

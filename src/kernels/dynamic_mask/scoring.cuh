#pragma once
// The dynamic-mask builder's score passes, launched by dynamic_mask_gpu.cu: query pooling, then two passes of the
// pooled queries against the keys on tensor cores (mma.sync m16n8k16, fp32 accumulation): per-row statistics (the
// LSE over all keys) and per-group probability masses.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <algorithm>
#include <cmath>
#include <cstdint>

#include "kernels/dynamic_mask_layout.hpp"
#include "tileattn/types.hpp"

namespace tileattn {
namespace kernels {
// Included by dynamic_mask_gpu.cu alone, so the kernels keep internal linkage (and their names) as one unit.
namespace {

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
template <int kPending>  // wait until at most kPending of this thread's committed copy groups are in flight
__device__ __forceinline__ void cp_async_wait() {
  asm volatile("cp.async.wait_group %0;" ::"n"(kPending) : "memory");
}

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

// A stream of keys [key_begin, key_end) in 64-key tiles through kStages shared-memory stages: kStages - 1 tiles
// are in flight while one is multiplied (the score work per tile is short next to an L2 round trip).
// Starts the stream: tiles 0 .. kStages - 2, one commit group each (empty past the end, so counts stay uniform).
template <int D, int kStages>
__device__ __forceinline__ void start_tile_stream(uint16_t* k_smem, const uint16_t* kbase, int64_t token_stride,
                                                  int ntiles, int key_begin, int key_end) {
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < ntiles) load_k_tile<D>(k_smem + s * KTile<D>::kElems, kbase, token_stride, key_begin + s * kBN, key_end);
    cp_async_commit();
  }
}
// Tile i: waits until it has landed (and every thread is done with tile i - 1's stage), starts loading tile
// i + kStages - 1 into that stage, and returns tile i's scores.
template <DType T, int D, int kStages>
__device__ __forceinline__ void stream_tile_scores(float (&acc)[2][8][4], const uint32_t (&a)[2][D / 16][4],
                                                   uint16_t* k_smem, const uint16_t* kbase, int64_t token_stride,
                                                   int i, int ntiles, int key_begin, int key_end) {
  cp_async_wait<kStages - 2>();
  __syncthreads();
  const int next = i + kStages - 1;
  if (next < ntiles)
    load_k_tile<D>(k_smem + (next % kStages) * KTile<D>::kElems, kbase, token_stride, key_begin + next * kBN, key_end);
  cp_async_commit();
  tile_scores<T, D>(acc, a, smem_u32(k_smem) + (i % kStages) * KTile<D>::kBytes);
}

// Row (mt, hh) of the thread's scores -> x = score * scale_log2 (log2 domain), -inf where element (nt, e) is no key
// (nt * 8 + e >= lim); returns the thread's max of them.
__device__ __forceinline__ float scale_and_mask(float (&acc)[2][8][4], int mt, int hh, float scale_log2, int lim) {
  float tmax = -INFINITY;
#pragma unroll
  for (int nt = 0; nt < 8; ++nt)
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      float x = acc[mt][nt][2 * hh + e] * scale_log2;
      if (nt * 8 + e >= lim) x = -INFINITY;
      acc[mt][nt][2 * hh + e] = x;
      tmax = fmaxf(tmax, x);
    }
  return tmax;
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
  start_tile_stream<D, 2>(k_smem, kbase, p.k_token_stride, ntiles, key_begin, key_end);
  for (int i = 0; i < ntiles; ++i) {
    float acc[2][8][4];
    stream_tile_scores<T, D, 2>(acc, a, k_smem, kbase, p.k_token_stride, i, ntiles, key_begin, key_end);
    const int lim = key_end - (key_begin + i * kBN) - 2 * t;  // element (nt, e) is a key iff nt * 8 + e < lim
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float tmax = scale_and_mask(acc, mt, hh, p.scale_log2, lim);
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

// lse[row] = log2(sum over splits and keys of 2^x) + log2(batch): the batch average folded in. Rows [0, rows) of
// partial [splits][stride] (and of lse).
__global__ void combine_kernel(const float2* partial, int splits, int64_t rows, int64_t stride, float log2_batch,
                               float* lse) {
  for (int64_t i = blockIdx.x * int64_t(blockDim.x) + threadIdx.x; i < rows; i += int64_t(gridDim.x) * blockDim.x) {
    float mx = -INFINITY;
    for (int s = 0; s < splits; ++s) mx = fmaxf(mx, partial[s * stride + i].x);
    float sum = 0.0f;
    for (int s = 0; s < splits; ++s) {
      const float2 v = partial[s * stride + i];
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

// A mass CTA's rows: query heads [hfirst, hfirst + heads_per_kv) of kv head kvh, i.e. rows [r0, r0 + kBM) of the
// `rows` of its kv head in the pass, whose masses start at mass_rows.
struct MassCta {
  int hfirst, kvh, rows, r0;
  float* mass_rows;
};
__device__ __forceinline__ MassCta mass_cta(const MassParams& p) {
  MassCta c;
  c.hfirst = p.h0 + int(blockIdx.y) * p.heads_per_kv, c.kvh = c.hfirst / p.group;
  c.rows = p.heads_per_kv * p.nq, c.r0 = int(blockIdx.x) * kBM;
  c.mass_rows = p.mass + (int64_t(blockIdx.y) * c.rows + c.r0) * p.ng;
  return c;
}

// A mass CTA's key split (blockIdx.z): whole groups, keys [key_begin, key_end) in 64-key tiles.
struct KeySplit {
  int key_begin, key_end, ntiles;
};
__device__ __forceinline__ KeySplit key_split(const MassParams& p) {
  const int64_t g_begin = int64_t(blockIdx.z) * p.ng / p.splits, g_end = int64_t(blockIdx.z + 1) * p.ng / p.splits;
  KeySplit k;
  k.key_begin = int(g_begin * p.key_group);
  k.key_end = int(std::min<int64_t>(p.tokens, g_end * p.key_group));
  k.ntiles = (k.key_end - k.key_begin + kBN - 1) / kBN;
  return k;
}

// The accumulator tile -> probs[row of the CTA][key of the tile] (rows padded to kBN + 1 floats).
__device__ __forceinline__ void store_tile(float* probs, const float (&acc)[2][8][4]) {
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
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
}

// The groups meeting the tile's keys [t0, t1): ga..gb, gb going on past the tile when last_open.
struct TileGroups {
  int ga, gb;
  bool last_open;
  __device__ int complete() const { return gb - ga + (last_open ? 0 : 1); }
};
__device__ __forceinline__ TileGroups tile_groups(int t0, int t1, int N, int tokens) {
  const int gb = (t1 - 1) / N;
  return {t0 / N, gb, std::min<int64_t>(int64_t(gb) * N + N, tokens) > t1};
}
// s + row prow's probabilities of group gi within the tile, added in key order.
__device__ __forceinline__ float group_in_tile(float s, const float* prow, int gi, int N, int t0, int t1) {
  const int ks = max(gi * N, t0), ke = int(std::min<int64_t>(int64_t(gi) * N + N, t1));
  for (int j = ks; j < ke; ++j) s += prow[j - t0];
  return s;
}
// The tile's completed groups, sums[row][j] for j < complete, to mass_rows (coalesced); add: onto what is there.
__device__ __forceinline__ void write_groups(float* mass_rows, int ng, const float* sums, int valid_rows,
                                             const TileGroups& tg, bool add) {
  const int complete = tg.complete();
  for (int idx = threadIdx.x; idx < kBM * complete; idx += kScoreThreads) {
    const int row = idx / complete, j = idx % complete;
    if (row >= valid_rows) continue;
    float* dst = mass_rows + int64_t(row) * ng + tg.ga + j;
    const float v = sums[row * kGroupStride + j];
    *dst = add ? *dst + v : v;
  }
}

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
  const auto [hfirst, kvh, rows, r0, mass_rows] = mass_cta(p);
  const auto [key_begin, key_end, ntiles] = key_split(p);
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
    start_tile_stream<D, 2>(k_smem, kbase, p.k_token_stride, ntiles, key_begin, key_end);
    for (int i = 0; i < ntiles; ++i) {
      float acc[2][8][4];
      stream_tile_scores<T, D, 2>(acc, a, k_smem, kbase, p.k_token_stride, i, ntiles, key_begin, key_end);
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
        store_tile(probs, acc);
        __syncthreads();
        // Thread r: row r's groups overlapping [t0, t1).
        const TileGroups tg = tile_groups(t0, t1, N, p.tokens);
        const float* prow = probs + threadIdx.x * (kBN + 1);
        for (int gi = tg.ga; gi <= tg.gb; ++gi) {
          const float s = group_in_tile(gi * N < t0 ? carry : 0.0f, prow, gi, N, t0, t1);
          if (gi == tg.gb && tg.last_open)
            carry = s;
          else
            sums[threadIdx.x * kGroupStride + (gi - tg.ga)] = s;
        }
        __syncthreads();
        write_groups(mass_rows, p.ng, sums, rows - r0, tg, b > 0);
      }
    }
  }
}

// ---- 2 + 3 in one pass (batch 1) ----

// How the one-pass kernel sums a row's probabilities into groups of N keys.
enum class GroupPath {
  single,     // N = 1: L = x, straight from registers
  registers,  // N = 8, 16, 32, 64: groups are whole 8-key columns of a tile, summed across the quad by shuffles
  shared,     // any other N: through shared memory, thread r summing row r's groups in key order
};
inline GroupPath group_path(int64_t key_group) {
  if (key_group == 1) return GroupPath::single;
  if (key_group == 8 || key_group == 16 || key_group == 32 || key_group == 64) return GroupPath::registers;
  return GroupPath::shared;
}
// Shared-memory stages of the one-pass kernel's key stream: only the shared path keeps probability tiles too.
constexpr int fused_stages(GroupPath path) { return path == GroupPath::shared ? 2 : 4; }
template <int D>
size_t fused_mass_smem_bytes(GroupPath path) {
  size_t bytes = size_t(fused_stages(path)) * KTile<D>::kBytes;
  if (path == GroupPath::shared) bytes += sizeof(float) * kBM * (kBN + 1 + kGroupStride + 1);
  return bytes;
}

// Row (mt, hh)'s probabilities summed over the quad, transposed so that thread t ends with the sums over the
// tile's key columns [16t, 16t + 8) and [16t + 8, 16t + 16) (6 shuffles for 8 column sums).
__device__ __forceinline__ void quad_column_sums(const float (&acc)[2][8][4], int mt, int hh, float (&half)[2]) {
  const int t = threadIdx.x & 3;
  const bool upper = t & 2, odd = t & 1;
  float v[8], w[4];
#pragma unroll
  for (int nt = 0; nt < 8; ++nt) v[nt] = acc[mt][nt][2 * hh] + acc[mt][nt][2 * hh + 1];
#pragma unroll
  for (int j = 0; j < 4; ++j)  // keep columns 4 * (t >> 1) + j, hand the partner (t ^ 2) the others
    w[j] = (upper ? v[4 + j] : v[j]) + __shfl_xor_sync(0xffffffffu, upper ? v[j] : v[4 + j], 2);
#pragma unroll
  for (int j = 0; j < 2; ++j)  // keep columns 2t + j
    half[j] = (odd ? w[2 + j] : w[j]) + __shfl_xor_sync(0xffffffffu, odd ? w[j] : w[2 + j], 1);
}

// Batch 1: the statistics and the masses from one score pass. Grid (row tiles, kv heads of the pass, key splits of
// whole groups, as mass_kernel; the splits are fixed by the problem, not by heads_per_pass). Per row the CTA keeps an
// online max m (quad-uniform: the four threads of a quad hold the same rows) and sum of 2^(x - m) over its split and
// writes them as partials for combine_kernel; per group it writes L = log2(sum over the group's keys of 2^x) where
// the masses go, and mass_from_log_kernel turns L into 2^(L - lse) once the LSE is known. Each tile's probabilities
// are taken relative to the rows' running max m, and a group completes as L = m + log2(sum); GroupPath says how
// the sums are formed. Either way a group's sum does not depend on the splits (splits and tiles start on group
// boundaries, and the shared path carries a group across tiles, rescaled to the next tile's m).
template <DType T, int D, GroupPath kPath>
__global__ void __launch_bounds__(kScoreThreads) fused_mass_kernel(MassParams p, float2* partial,
                                                                   int64_t pooled_rows) {
  constexpr bool kSingle = kPath == GroupPath::single, kShared = kPath == GroupPath::shared;
  constexpr int kStages = fused_stages(kPath);
  extern __shared__ __align__(128) uint16_t k_smem[];
  float* probs = reinterpret_cast<float*>(k_smem + kStages * KTile<D>::kElems);  // kShared: [kBM][kBN + 1]
  float* sums = probs + kBM * (kBN + 1);                                          // kShared: [kBM][kGroupStride]
  float* row_ref = sums + kBM * kGroupStride;                                     // kShared: [kBM], the tile's m
  const int warp = threadIdx.x >> 5, lane = threadIdx.x & 31, g = lane >> 2, t = lane & 3;
  const auto [hfirst, kvh, rows, r0, mass_rows] = mass_cta(p);
  const auto [key_begin, key_end, ntiles] = key_split(p);
  const int N = p.key_group;
  const int64_t pooled_row0 = int64_t(hfirst) * p.nq + r0;

  uint32_t a[2][D / 16][4];
  load_a_frags<D>(a, p.pooled + pooled_row0 * D, rows - r0);
  float m_run[2][2], l_run[2][2];
#pragma unroll
  for (int i = 0; i < 2; ++i) m_run[i][0] = m_run[i][1] = -INFINITY, l_run[i][0] = l_run[i][1] = 0.0f;
  const uint16_t* kbase = p.k + kvh * p.k_head_stride;
  float carry = 0.0f, carry_ref = 0.0f;  // kShared: row threadIdx.x's open group: its sum and that sum's reference

  start_tile_stream<D, kStages>(k_smem, kbase, p.k_token_stride, ntiles, key_begin, key_end);
  for (int i = 0; i < ntiles; ++i) {
    float acc[2][8][4];
    stream_tile_scores<T, D, kStages>(acc, a, k_smem, kbase, p.k_token_stride, i, ntiles, key_begin, key_end);
    const int t0 = key_begin + i * kBN, t1 = min(t0 + kBN, key_end);
    const int lim = t1 - t0 - 2 * t;  // element (nt, e) is a key iff nt * 8 + e < lim
#pragma unroll
    for (int mt = 0; mt < 2; ++mt)
#pragma unroll
      for (int hh = 0; hh < 2; ++hh) {
        float tmax = scale_and_mask(acc, mt, hh, p.scale_log2, lim);
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 1));
        tmax = fmaxf(tmax, __shfl_xor_sync(0xffffffffu, tmax, 2));  // the row's max over the tile (lane t = 0 has a key)
        const float mn = fmaxf(m_run[mt][hh], tmax);
        float sum = 0.0f;
#pragma unroll
        for (int nt = 0; nt < 8; ++nt)
#pragma unroll
          for (int e = 0; e < 2; ++e) {
            const float pr = ex2(acc[mt][nt][2 * hh + e] - mn);  // 2^-inf = 0
            sum += pr;
            if (!kSingle) acc[mt][nt][2 * hh + e] = pr;
          }
        l_run[mt][hh] = l_run[mt][hh] * ex2(m_run[mt][hh] - mn) + sum;
        m_run[mt][hh] = mn;
        if (kShared && t == 0) row_ref[warp * 32 + mt * 16 + g + 8 * hh] = mn;
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
              if (nt * 8 + e < lim) dst[nt * 8 + e] = acc[mt][nt][2 * hh + e];  // L = x
        }
    } else if constexpr (kPath == GroupPath::registers) {
      // Groups of the tile: N / 8 columns each. Thread t's two column sums make groups 2t, 2t + 1 (N = 8), group t
      // (N = 16), or half / a quarter of group t / 2 (N = 32) or 0 (N = 64), completed by one or two more shuffles.
      const int group0 = t0 / N;
#pragma unroll
      for (int mt = 0; mt < 2; ++mt)
#pragma unroll
        for (int hh = 0; hh < 2; ++hh) {
          float half[2];
          quad_column_sums(acc, mt, hh, half);
          float s = half[0] + half[1];
          if (N >= 32) s += __shfl_xor_sync(0xffffffffu, s, 1);
          if (N == 64) s += __shfl_xor_sync(0xffffffffu, s, 2);
          const int row = warp * 32 + mt * 16 + g + 8 * hh;
          if (r0 + row >= rows) continue;  // after the shuffles, which every lane joins
          float* dst = mass_rows + int64_t(row) * p.ng;
          const float ref = m_run[mt][hh];
          if (N == 8) {
#pragma unroll
            for (int j = 0; j < 2; ++j)
              if (t0 + 16 * t + 8 * j < key_end) dst[group0 + 2 * t + j] = ref + log2f(half[j]);
          } else {
            const int per = N / 16, gi = group0 + t / per;  // threads per group: 1, 2 or 4
            if (t % per == 0 && int64_t(gi) * N < key_end) dst[gi] = ref + log2f(s);  // log2(0) = -inf: mass 0
          }
        }
    } else {
      store_tile(probs, acc);
      __syncthreads();
      // Thread r: row r's groups overlapping [t0, t1), in the tile's reference.
      const TileGroups tg = tile_groups(t0, t1, N, p.tokens);
      const float* prow = probs + threadIdx.x * (kBN + 1);
      const float ref = row_ref[threadIdx.x];
      for (int gi = tg.ga; gi <= tg.gb; ++gi) {
        const float s = group_in_tile(gi * N < t0 ? carry * ex2(carry_ref - ref) : 0.0f, prow, gi, N, t0, t1);
        if (gi == tg.gb && tg.last_open)
          carry = s, carry_ref = ref;
        else
          sums[threadIdx.x * kGroupStride + (gi - tg.ga)] = ref + log2f(s);  // log2(0) = -inf: mass 0
      }
      __syncthreads();
      write_groups(mass_rows, p.ng, sums, rows - r0, tg, false);
    }
  }
  // The quad's partial sums share the reference m: add them.
#pragma unroll
  for (int mt = 0; mt < 2; ++mt)
#pragma unroll
    for (int hh = 0; hh < 2; ++hh) {
      float l = l_run[mt][hh];
      l += __shfl_xor_sync(0xffffffffu, l, 1);
      l += __shfl_xor_sync(0xffffffffu, l, 2);
      const int row = warp * 32 + mt * 16 + g + 8 * hh;
      if (t == 0 && r0 + row < rows)
        partial[blockIdx.z * pooled_rows + pooled_row0 + row] = make_float2(m_run[mt][hh], l);
    }
}

// A group's mass from the one-pass estimate's L and its row's LSE. The selection applies it as it reads L (a build
// never writes the masses), mass_from_log_kernel for estimate_column_mass_gpu: the same value either way.
__device__ __forceinline__ float mass_from_log(float L, float lse) { return ex2(L - lse); }

// mass[r][g] = mass_from_log(mass[r][g], lse[r]) in place, rows [0, rows) of ng groups.
__global__ void mass_from_log_kernel(float* mass, const float* lse, int64_t rows, int ng) {
  for (int64_t r = blockIdx.x; r < rows; r += gridDim.x) {
    const float l = lse[r];
    float* row = mass + r * ng;
    for (int g = threadIdx.x; g < ng; g += blockDim.x) row[g] = mass_from_log(row[g], l);
  }
}

}  // namespace
}  // namespace kernels
}  // namespace tileattn

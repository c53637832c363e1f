#pragma once
// The 8-bit operands of the forward's two GEMMs (the sibling of common/consumer.cuh's NativeOperands): the shared
// consumer runs unchanged on them. S = Q K^T on int8 (exact int32 sums, converted to fp32 by the key tiles'
// scaling, Fp8StaKeyTiles), O += P V on e4m3. 8-bit wgmma (k = 32 per instruction) takes both shared-memory operands
// K-major:
//  - Q and K rows are head_dim bytes, one swizzle atom wide (128B swizzle for head dim 128, 64B for 64);
//  - V is stored transposed (head-dim rows of keys) in atoms of 64 keys (64B swizzle), its keys permuted within
//    each run of 32 (the pre-pass writes it so) such that P packs from the S accumulator with no data exchange:
//    a thread holds S columns {2t, 2t+1, 8+2t, 9+2t} (+16) of each 32-column slice (AccFragment), and the 8-bit A
//    operand takes k positions {4t .. 4t+3} (+16) in that order (CuTe's ALayout_64x32).
//  - Row sums by a second GEMM, P x ones (N = 8, one 512-byte tile of e4m3 ones: init_ones): the softmax spends
//    no add per score (per thread and 192-key block: -96 FADD, +6 small wgmma and 2 FADD). Its accumulator starts
//    from zero each block, since e4m3 wgmma adds into its accumulator with ~14 bits (DeepSeek-V3's measurement): a
//    sum left to build up there over a 720p row went wrong by up to 2x (O relative L2 0.91 at 5x5x5), while one
//    block's 192 keys stay exact enough. (O keeps accumulating there: the pre-pass smooths V by its channel means,
//    so O's terms are signed and largely cancel; unsmoothed, V = 3 + U(-1, 1) came out 18-48% off.) Summing the
//    e4m3 probabilities also makes the sums exactly those of the values that multiply V.
//  - Probabilities are produced as 64 P (kProbabilityLog2Scale), using e4m3's range rather than [0, 1], and a
//    row's maximum is raised lazily (kLazyRescaleEighths), which skips most rescalings of O.
#include <cuda_fp8.h>

#include "kernels/sm90/common/consumer.cuh"
#include "kernels/sm90/common/gemm.cuh"
#include "kernels/fp8_value_order.hpp"  // the V^T key order the packing relies on

namespace tileattn::sm90 {

// e4m3 x e4m3 -> fp32, k = 32 per instruction; both operands K-major (the only form 8-bit wgmma has):
// O += P V with P from registers and V stored transposed (N = head_dim), and the row sums P x ones (N = 8).
template <int N>
struct MmaE4m3RS;
template <>
struct MmaE4m3RS<8> {
  using Op = gmma::MMA_64x8x32_F32E4M3E4M3_RS_TN<>;
};
template <>
struct MmaE4m3RS<64> {
  using Op = gmma::MMA_64x64x32_F32E4M3E4M3_RS_TN<>;
};
template <>
struct MmaE4m3RS<128> {
  using Op = gmma::MMA_64x128x32_F32E4M3E4M3_RS_TN<>;
};

template <int HeadDim>
__device__ __forceinline__ uint64_t byte_row_desc(uint32_t addr) {
  if constexpr (HeadDim == 128)
    return smem_desc_k_major(addr);
  else
    return smem_desc_k_major_64b(addr);
}

template <class Cfg>
struct Fp8Operands {
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kScores = kBlockN / 2;
  static constexpr int kPacked = kScores / 4;  // four e4m3 probabilities per 32-bit register
  // Probabilities are produced as 2^6 P and may reach 2^(6 + 2.75) < 448 (e4m3's largest) under lazy rescaling.
  static constexpr int kProbabilityLog2Scale = 6;
  static constexpr int kLazyRescaleEighths = 22;
  static constexpr int kQueryTileBytes = kernels::kQueryBlockRows * kHeadDim;
  static constexpr int kKeyTileBytes = kBlockN * kHeadDim;
  static constexpr int kValueAtomKeys = 64;
  static constexpr int kValueAtomBytes = kHeadDim * kValueAtomKeys;  // head_dim rows x 64 keys
  static constexpr int kSumRegs = 4;  // the P x ones accumulator (64 x 8): registers 0 and 2 are the row sums
  static constexpr int kOnesBytes = 8 * 64;  // the ones tile: 8 rows of 64 bytes
  static_assert(kHeadDim == 64 || kHeadDim == 128, "e4m3 rows are one 64B or 128B swizzle atom");
  static_assert(kBlockN % kValueAtomKeys == 0, "key blocks are whole V^T atoms");
  using QK = typename MmaS8SS<kBlockN>::Op;
  using PV = typename MmaE4m3RS<kHeadDim>::Op;
  using RowSum = typename MmaE4m3RS<8>::Op;

  template <class Storage>
  static __device__ __forceinline__ uint32_t q_rows(Storage& sm, int warpgroup) {
    return smem_addr(sm.q) + warpgroup * 64 * kHeadDim;
  }
  static __device__ __forceinline__ void gemm_qk(uint32_t q_rows, uint32_t k_tile, float (&s)[kScores]) {
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 32; ++kk)  // 32 bytes of K per instruction, inside the swizzled row
      mma_ss_s32<QK>(byte_row_desc<kHeadDim>(q_rows + kk * 32), byte_row_desc<kHeadDim>(k_tile + kk * 32), s,
                 kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One, std::make_index_sequence<kScores>{});
  }
  // O += P V, and this block's row sums = P x ones (sums: that accumulator, from zero).
  template <class Storage>
  static __device__ __forceinline__ void gemm_pv(Storage& sm, const uint32_t (&p)[kPacked], uint32_t v_tile,
                                                 float (&o)[kHeadDim / 2], float (&sums)[kSumRegs]) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 32; ++kk)
      mma_rs<PV>(&p[4 * kk], smem_desc_k_major_64b(v_tile + (kk / 2) * kValueAtomBytes + (kk % 2) * 32), o,
                 std::make_index_sequence<kHeadDim / 2>{});
    const uint64_t ones = smem_desc_k_major_64b(smem_addr(sm.ones));  // every k slice of it is the same
#pragma unroll
    for (int kk = 0; kk < kBlockN / 32; ++kk)
      mma_rs<RowSum>(&p[4 * kk], ones, sums, kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One,
                     std::make_index_sequence<kSumRegs>{});
  }
  static __device__ __forceinline__ void block_sums(const float (&sums)[kSumRegs], float (&row)[2]) {
    row[0] = sums[0];  // AccFragment: register 2r is row half r (all 8 columns hold the sum)
    row[1] = sums[2];
  }
  // The ones tile (e4m3 1.0 = 0x38). Called by the whole CTA before the barrier that publishes the pipeline;
  // generic-proxy stores, so fenced for wgmma.
  template <class Storage>
  static __device__ __forceinline__ void init_ones(Storage& sm) {
    for (int i = threadIdx.x; i < kOnesBytes / 4; i += blockDim.x)
      reinterpret_cast<uint32_t*>(sm.ones)[i] = 0x38383838u;
    fence_proxy_async_smem();
  }
  // Two scores -> two e4m3 bytes (the first in the low byte), rounded to nearest, saturating.
  static __device__ __forceinline__ uint32_t e4m3x2(float lo, float hi) {
    return __nv_cvt_float2_to_fp8x2(make_float2(lo, hi), __NV_SATFINITE, __NV_E4M3);
  }
  // Slice c (32 key columns, scores 16c .. 16c+15): register 4c + r holds row half r % 2, column half r / 2.
  static __device__ __forceinline__ void pack_probabilities(const float (&s)[kScores], uint32_t (&p)[kPacked]) {
#pragma unroll
    for (int c = 0; c < kBlockN / 32; ++c) {
      const float* x = &s[16 * c];
      p[4 * c + 0] = e4m3x2(x[0], x[1]) | (e4m3x2(x[4], x[5]) << 16);
      p[4 * c + 1] = e4m3x2(x[2], x[3]) | (e4m3x2(x[6], x[7]) << 16);
      p[4 * c + 2] = e4m3x2(x[8], x[9]) | (e4m3x2(x[12], x[13]) << 16);
      p[4 * c + 3] = e4m3x2(x[10], x[11]) | (e4m3x2(x[14], x[15]) << 16);
    }
  }
};

}  // namespace tileattn::sm90

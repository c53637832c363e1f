#pragma once
// The 8-bit STA forward for Hopper: the bf16 kernel's structure (sta/sta_fwd_kernel.cuh: the same scheduler, window
// walk, masks, shared consumer and epilogue), on the pre-pass's int8 Q / K and e4m3 V^T copies (fp8_workspace.hpp),
// in the padded tile-major row order: every query and key block is a run of consecutive rows, one 3D TMA box.
//  Producer: Q tile, V's channel scales and means and (for the LSE) the rows' smoothing shifts with the Q barrier;
//  then per key block its K rows and their scales (one barrier), and its V^T atoms.
//  Consumers: Fp8Operands' GEMMs; scores scaled by softmax scale x Q scale x K scale before the softmax; O scaled
//  by V's channel scales and V's means added back before the epilogue; LSE shifted back by softmax_scale *
//  (q . mean K).
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "kernels/sm90/common/consumer.cuh"
#include "kernels/sm90/common/epilogue.cuh"
#include "kernels/sm90/common/launch.cuh"
#include "kernels/sm90/fp8/operands.cuh"
#include "kernels/sm90/sta/producer.cuh"
#include "kernels/sm90/sta/sta_fwd_kernel.cuh"
#include "kernels/sta_fp8_params.hpp"

namespace tileattn::sm90 {

using kernels::StaFp8KernelParams;

// The bf16 kernel's configuration, with the producer given 40 registers instead of 24: it also computes the e4m3
// copies' (batch, head) rows and issues the scale copies. The consumers need fewer than the bf16 ones (P is half
// the size), so 232 suffice.
template <class Element, int HeadDim, int BlockN, int Stages>
struct StaFp8ForwardConfig : StaForwardConfig<Element, HeadDim, BlockN, Stages, true> {
  static constexpr int kProducerRegisters = 40;
  static constexpr int kConsumerRegisters = 232;
  static_assert(128 * kProducerRegisters + 256 * kConsumerRegisters <= 384 * 168,
                "setmaxnreg: the warpgroups' registers must fit the 384 x 168 the CTA is launched with");
};

template <class Cfg>
struct Fp8SharedStorage {
  using Operands = Fp8Operands<Cfg>;
  alignas(1024) uint8_t q[Operands::kQueryTileBytes];
  alignas(1024) typename Cfg::Element o[kernels::kQueryBlockRows * Cfg::kHeadDim];  // O staging (epilogue)
  alignas(1024) uint8_t k[Cfg::kStages][Operands::kKeyTileBytes];
  alignas(1024) uint8_t v[Cfg::kStages][Operands::kKeyTileBytes];
  alignas(512) uint8_t ones[Operands::kOnesBytes];
  alignas(16) float k_scale[Cfg::kStages][kernels::kFp8ScaleWindow];
  alignas(128) float v_scale[Cfg::kHeadDim];
  alignas(128) float v_mean[Cfg::kHeadDim];
  alignas(128) float lse_shift[kernels::kQueryBlockRows];
  uint64_t q_full;
  uint64_t k_full[Cfg::kStages], k_empty[Cfg::kStages];
  uint64_t v_full[Cfg::kStages], v_empty[Cfg::kStages];
};

// (batch, head) indices of the whole call (the e4m3 copies hold every batch element; a launch may hold one).
__device__ __forceinline__ int fp8_q_bh(const StaFp8KernelParams& p, const QueryBlock& q) {
  return (p.base.attention.batch_offset + q.batch) * p.base.attention.q_heads + q.head;
}
__device__ __forceinline__ int fp8_kv_bh(const StaFp8KernelParams& p, const QueryBlock& q) {
  const kernels::AttentionParams& a = p.base.attention;
  return (a.batch_offset + q.batch) * (a.q_heads / a.kv_group) + q.head / a.kv_group;
}

template <class Cfg>
struct StaFp8Producer {
  using Operands = Fp8Operands<Cfg>;
  static constexpr int kStages = Cfg::kStages;

  // ---- one thread ----
  template <class Storage>
  static __device__ void produce(const StaFp8KernelParams& p, Storage& sm, const QueryBlock& q) {
    const kernels::Fp8OperandParams& f = p.fp8;
    const int q_bh = fp8_q_bh(p, q), kv_bh = fp8_kv_bh(p, q);
    const bool lse = p.base.attention.lse != nullptr;
    mbarrier_arrive_expect_tx(&sm.q_full, Operands::kQueryTileBytes + 2 * Cfg::kHeadDim * 4 +
                                              (lse ? kernels::kQueryBlockRows * 4 : 0));
    tma_load_3d(sm.q, &f.q8, &sm.q_full, 0, q.row, q_bh);
    bulk_load(sm.v_scale, f.v_scale + int64_t(kv_bh) * Cfg::kHeadDim, Cfg::kHeadDim * 4, &sm.q_full);
    bulk_load(sm.v_mean, f.v_mean + int64_t(kv_bh) * Cfg::kHeadDim, Cfg::kHeadDim * 4, &sm.q_full);
    if (lse)
      bulk_load(sm.lse_shift, f.lse_shift + int64_t(q_bh) * f.rows + q.row, kernels::kQueryBlockRows * 4,
                &sm.q_full);
    KeyBlockWalker<Cfg::kBlockN> walk(p.base.sta, q, p.base.attention.batch_offset);
    walk_key_stages<kStages>(
        walk, sm,
        [&](const KeyBlock& k, int stage) {  // K rows and their scales, one barrier
          mbarrier_arrive_expect_tx(&sm.k_full[stage], Operands::kKeyTileBytes + kernels::kFp8ScaleWindow * 4);
          tma_load_3d(sm.k[stage], &f.k8, &sm.k_full[stage], 0, k.row, kv_bh);
          bulk_load(sm.k_scale[stage],
                    f.k_scale + (int64_t(kv_bh) * f.groups + k.row / kernels::kFp8GroupRows) * kernels::kFp8ScaleWindow,
                    kernels::kFp8ScaleWindow * 4, &sm.k_full[stage]);
        },
        [&](const KeyBlock& k, int stage) {  // V^T atoms of 64 keys
          mbarrier_arrive_expect_tx(&sm.v_full[stage], Operands::kKeyTileBytes);
#pragma unroll
          for (int atom = 0; atom < Cfg::kBlockN / Operands::kValueAtomKeys; ++atom)
            tma_load_3d(sm.v[stage] + atom * Operands::kValueAtomBytes, &f.v8t, &sm.v_full[stage],
                        k.row + atom * Operands::kValueAtomKeys, 0, kv_bh);
        });
  }
};

// The int32 scores of a block: per 64 key rows (one K scale each) x = s * softmax scale * q scale * k scale, in log2
// units. mask() turns each int32 s into the float 1.5 * 2^23 + s (one integer add: for |s| < 2^22 the sum's
// mantissa holds s exactly, and the order of the values is kept, so the row maximum works on them), and
// score_scale() folds the -1.5 * 2^23 into each group's offset: x = (1.5 * 2^23 + s) c - 1.5 * 2^23 c, one FMA in
// the softmax, whose rounding of the offset costs about one unit of s (the int8 products' own error is ~100).
// Those floats are positive (masked keys: -inf), so their bits order as signed integers and the softmax takes the
// row maximum with integer instructions (kMaxOnBits).
template <int Groups>
struct GroupScoreScale {
  static constexpr int kGroups = Groups;
  static constexpr bool kMaxOnBits = true;
  float c[kGroups];
  __device__ __forceinline__ float scale(int g) const { return c[g]; }
  __device__ __forceinline__ float offset(int g) const { return -12582912.0f * c[g]; }
};

template <int kBlockN, int kHeadDim>
struct Fp8StaKeyTiles : StaKeyTiles<kBlockN> {
  static_assert(kHeadDim * 127 * 127 < (1 << 22), "int8 dot products must stay below 2^22 in magnitude");
  static constexpr int kGroups = kBlockN / kernels::kFp8GroupRows;
  using Base = StaKeyTiles<kBlockN>;
  float q_scale_log2;

  __device__ __forceinline__ Fp8StaKeyTiles(const StaFp8KernelParams& p, const QueryBlock& q, float q_scale_log2_)
      : Base(p.base, q), q_scale_log2(q_scale_log2_) {}
  template <class Storage>
  __device__ __forceinline__ void mask(Storage& sm, int stage, float (&s)[Base::kScores]) {
    constexpr int kMagic = 0x4B400000;  // the bits of 1.5 * 2^23
#pragma unroll
    for (int e = 0; e < Base::kScores; ++e) s[e] = __int_as_float(__float_as_int(s[e]) + kMagic);
    Base::mask(sm, stage, s);  // masked keys: -inf
  }
  template <class Storage>
  __device__ __forceinline__ GroupScoreScale<kGroups> score_scale(Storage& sm, int stage, float) const {
    GroupScoreScale<kGroups> sc;
#pragma unroll
    for (int g = 0; g < kGroups; ++g) sc.c[g] = q_scale_log2 * sm.k_scale[stage][g];
    return sc;
  }
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1) sta_fp8_forward_kernel(const __grid_constant__ StaFp8KernelParams p) {
  using Operands = Fp8Operands<Cfg>;
  using Consumer = ForwardConsumer<Cfg, Operands>;
  using Fragment = AccFragment<Cfg::kHeadDim>;
  auto& sm = shared_storage<Fp8SharedStorage<Cfg>>();

  const QueryBlock q = query_block_of(p.base, blockIdx.x);
  if (q.empty) return;  // uniform across the CTA, before any barrier

  Operands::init_ones(sm);                   // before the barrier init's __syncthreads publishes them
  init_pipeline_barriers<Cfg::kStages>(sm);

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    registers_decrease<Cfg::kProducerRegisters>();
    if (threadIdx.x == 0) StaFp8Producer<Cfg>::produce(p, sm, q);
  } else {
    registers_increase<Cfg::kConsumerRegisters>();
    const int wg = warpgroup - 1;
    const int q_bh = fp8_q_bh(p, q);
    const float q_scale = p.fp8.q_scale[int64_t(q_bh) * p.fp8.groups + q.row / kernels::kFp8GroupRows + wg];
    typename Consumer::Result r;
    Fp8StaKeyTiles<Cfg::kBlockN, Cfg::kHeadDim> tiles(p, q, p.base.attention.scale_log2 * q_scale);
    Consumer::consume(sm, tiles, 1.0f, wg, r);  // the softmax scale is in the tiles' score_scale
    // consume waited on q_full: V's channel scales and means and the LSE shifts are in shared memory. O = acc s_v / l
    // + mean (the rows' probabilities sum to l, the same e4m3 values that multiplied V): the epilogue divides by l.
    float row_sum[2];
#pragma unroll
    for (int i = 0; i < 2; ++i) row_sum[i] = r.inverse_sum[i] > 0.0f ? 1.0f / r.inverse_sum[i] : 0.0f;
#pragma unroll
    for (int e = 0; e < Fragment::kRegs; ++e)
      r.o[e] = fmaf(sm.v_mean[Fragment::col(e)], row_sum[Fragment::row_half(e)],
                    r.o[e] * sm.v_scale[Fragment::col(e)]);
    if (p.base.attention.lse != nullptr) {
#pragma unroll
      for (int i = 0; i < 2; ++i) r.lse[i] += sm.lse_shift[wg * 64 + Fragment::row0() + 8 * i];
    }
    Epilogue<Cfg>::store(p.base.attention, sm, StaQueryOutput(p.base, q), wg, r);
  }
}

template <class Cfg>
void launch_fp8(const StaFp8KernelParams& params, int64_t num_ctas, cudaStream_t stream) {
  launch_with_storage<Fp8SharedStorage<Cfg>>("sta_forward (fp8)", sta_fp8_forward_kernel<Cfg>, num_ctas,
                                             Cfg::kThreads, stream, params);
}

}  // namespace tileattn::sm90

// Defines launch_sta_fp8_forward_sm90<DTYPE, HEAD_DIM> (DTYPE: the output's): 192-row key blocks where the tile
// allows for head dim 128 (choose_block_n), else 128; three stages (an e4m3 stage is half a bf16 one).
#define TILEATTN_STA_FP8_FORWARD_INSTANCE(DTYPE, ELEMENT, HEAD_DIM)                                               \
  namespace tileattn::kernels {                                                                                 \
  template <>                                                                                                   \
  void launch_sta_fp8_forward_sm90<DType::DTYPE, HEAD_DIM>(const StaFp8KernelParams& params, int64_t num_ctas,  \
                                                           int block_n, CUstream_st* stream) {                  \
    using Wide = sm90::StaFp8ForwardConfig<ELEMENT, HEAD_DIM, 192, 3>;                                           \
    using Narrow = sm90::StaFp8ForwardConfig<ELEMENT, HEAD_DIM, 128, 3>;                                         \
    if constexpr (HEAD_DIM == 128) {                                                                            \
      if (block_n == 192) return sm90::launch_fp8<Wide>(params, num_ctas, stream);                              \
    }                                                                                                           \
    if (block_n == 128) return sm90::launch_fp8<Narrow>(params, num_ctas, stream);                              \
    throw CudaError("sta_forward (fp8): no kernel for head dim " #HEAD_DIM " with key blocks of " +            \
                    std::to_string(block_n) + " rows");                                                         \
  }                                                                                                             \
  }

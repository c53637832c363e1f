#pragma once
// The consumer side of the forward kernels (FA3 structure), shared by STA and FG; the producers that fill its
// pipeline are theirs (sta/producer.cuh, fg/producer.cuh).
//  Pipeline: a ring of `kStages` shared-memory stages of K and V blocks, each guarded by full/empty mbarriers.
//  Consumers (warpgroups 1..2, 64 query rows each): S = Q K^T by wgmma from shared memory, online softmax in
//  registers, O += P V by wgmma with P from registers. Intra-warpgroup overlap: the QK^T of block j is issued
//  together with the PV of block j-1, so the softmax of block j runs while the tensor cores finish PV(j-1). An
//  optional scheduler barrier makes the two consumer warpgroups take turns issuing, so one's softmax overlaps the
//  other's GEMMs. The consumer is generic over its key-tile source (`KeyTiles`: how many blocks, and the mask of
//  each), which is all it needs to know of the plan.
#include "kernels/attention_params.hpp"
#include "kernels/sm90/common/barriers.cuh"
#include "kernels/sm90/common/gemm.cuh"
#include "kernels/sm90/common/hopper_primitives.cuh"
#include "kernels/sm90/common/softmax.cuh"

namespace tileattn::sm90 {

// Shapes of the forward's shared-memory tiles: the 128-row Q tile and kBlockN-row K / V tiles, each as 128-byte
// swizzle atoms of 64 head-dim columns.
template <class Cfg>
struct ForwardTiles {
  static constexpr int kAtoms = Cfg::kHeadDim / 64;                       // atoms along the head dim
  static constexpr int kQueryAtomBytes = kernels::kQueryBlockRows * 128;  // one atom of the Q tile
  static constexpr int kKeyAtomBytes = Cfg::kBlockN * 128;                // one atom of a K or V tile
  static constexpr int kQueryTileBytes = kAtoms * kQueryAtomBytes;
  static constexpr int kKeyTileBytes = kAtoms * kKeyAtomBytes;
};

// The pipeline's barriers: Q full (the producer's TMA), each stage's K/V full (`k_full` / `v_full` arrivals) and
// empty (one arrival per consumer warp; for K, `k_empty` arrivals). Called by the whole CTA.
template <int kStages, class Storage>
__device__ void init_pipeline_barriers(Storage& sm, int k_full = 1, int v_full = 1, int k_empty = 8) {
  if (threadIdx.x == 0) {
    mbarrier_init(&sm.q_full, 1);
    for (int s = 0; s < kStages; ++s) {
      mbarrier_init(&sm.k_full[s], k_full);
      mbarrier_init(&sm.v_full[s], v_full);
      mbarrier_init(&sm.k_empty[s], k_empty);
      mbarrier_init(&sm.v_empty[s], 8);
    }
    fence_barrier_init();
  }
  __syncthreads();
}

// The operands of the forward's two GEMMs in the inputs' own 16-bit type: Q and K K-major, V MN-major in shared
// memory, P packed from the S accumulator into 16-bit pairs. fp8/operands.cuh is the e4m3 sibling.
template <class Cfg>
struct NativeOperands {
  using Element = typename Cfg::Element;
  using Tiles = ForwardTiles<Cfg>;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;
  static constexpr int kScores = kBlockN / 2;   // S elements per consumer thread
  static constexpr int kPacked = kScores / 2;   // 32-bit registers of P per thread
  static constexpr int kProbabilityLog2Scale = 0;  // probabilities are produced as 2^this * P
  static constexpr int kLazyRescaleEighths = 0;    // rescale O whenever a row's maximum grows (softmax.cuh)
  static constexpr int kSumRegs = 0;               // no row-sum GEMM: the softmax sums the probabilities itself
  using QK = typename MmaSS<Element, kBlockN>::Op;
  using PV = typename MmaRS<Element, kHeadDim>::Op;

  // This warpgroup's 64 rows of the Q tile.
  template <class Storage>
  static __device__ __forceinline__ uint32_t q_rows(Storage& sm, int warpgroup) {
    return smem_addr(sm.q) + warpgroup * 64 * 128;
  }
  // S (64 x BlockN) = Q rows of this warpgroup x K block^T.
  static __device__ __forceinline__ void gemm_qk(uint32_t q_rows, uint32_t k_tile, float (&s)[kScores]) {
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint32_t chunk = (kk % 4) * 32;  // 16 elements of K inside a 128-byte row
      mma_ss<QK>(smem_desc_k_major(q_rows + (kk / 4) * Tiles::kQueryAtomBytes + chunk),
                 smem_desc_k_major(k_tile + (kk / 4) * Tiles::kKeyAtomBytes + chunk), s,
                 kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One, std::make_index_sequence<kScores>{});
    }
  }
  // O (64 x HeadDim) += P (64 x BlockN, registers) x V block (BlockN x HeadDim).
  template <class Storage, class NoSums>
  static __device__ __forceinline__ void gemm_pv(Storage&, const uint32_t (&p)[kPacked], uint32_t v_tile,
                                                 float (&o)[kHeadDim / 2], NoSums&) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk)
      mma_rs<PV>(&p[4 * kk], smem_desc_mn_major(v_tile + kk * 16 * 128, Tiles::kKeyAtomBytes), o,
                 std::make_index_sequence<kHeadDim / 2>{});
  }
  static __device__ __forceinline__ void pack_probabilities(const float (&s)[kScores], uint32_t (&p)[kPacked]) {
    pack_fragment<Element>(s, p);
  }
};

template <class Cfg, class Operands = NativeOperands<Cfg>>
struct ForwardConsumer {
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;   // key rows per block
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kScores = kBlockN / 2;     // S elements per consumer thread
  static constexpr int kPacked = Operands::kPacked;

  // Operands with kSumRegs > 0 make the row sums by a GEMM of their own (fp8/operands.cuh) into that accumulator.
  static constexpr bool kSumsByGemm = Operands::kSumRegs > 0;
  struct NoSums {};
  using SumAccumulator = std::conditional_t<kSumsByGemm, float[kSumsByGemm ? Operands::kSumRegs : 1], NoSums>;

  // What a consumer thread hands the epilogue: its O rows (unnormalised), their 1 / row sum and LSE.
  struct Result {
    float o[kHeadDim / 2];
    float inverse_sum[2];
    float lse[2];
  };

  // With a row-sum GEMM: adds its block sums to the softmax's, once that GEMM has run.
  template <class Softmax>
  static __device__ __forceinline__ void add_block_sums(const SumAccumulator& sums, Softmax& softmax) {
    if constexpr (kSumsByGemm) {
      float block[2];
      Operands::block_sums(sums, block);
      softmax.add_sums(block);
    }
  }

  // `tiles` says how many key blocks there are and masks the scores of each (tiles.mask(sm, stage, s) is called
  // once per block, in order, before the block's K stage is released): StaKeyTiles or FgKeyTiles. Tiles whose
  // scores need more than the softmax scale (the 8-bit kernel's) also give tiles.score_scale(sm, stage, scale_log2)
  // (softmax.cuh's UniformScoreScale shape), read before the stage is released.
  template <class Storage, class KeyTiles>
  static __device__ void consume(Storage& sm, KeyTiles& tiles, float scale_log2, int warpgroup, Result& out) {
    const bool lane0 = threadIdx.x % 32 == 0;
    const uint32_t q_rows = Operands::q_rows(sm, warpgroup);
    auto k_tile = [&](int stage) { return smem_addr(sm.k[stage]); };
    auto v_tile = [&](int stage) { return smem_addr(sm.v[stage]); };
    auto release = [&](uint64_t* bar) {
      __syncwarp();
      if (lane0) mbarrier_arrive(bar);
    };
    // K stages: FG tiles carry membership bytes the consumers read with ordinary loads, so every thread releases.
    auto release_k = [&](uint64_t* bar) {
      if constexpr (KeyTiles::kEveryThreadReleasesK)
        mbarrier_arrive(bar);
      else
        release(bar);
    };
    // Scheduler barrier: the two consumer warpgroups take turns issuing their GEMMs.
    auto wait_turn = [&] {
      if constexpr (Cfg::kSchedulerBarrier) named_barrier_sync(NamedBarrier::kSchedulerTurn, 256, warpgroup);
    };
    auto pass_turn = [&](bool last) {
      if constexpr (Cfg::kSchedulerBarrier)
        if (!(last && warpgroup == 1)) named_barrier_arrive(NamedBarrier::kSchedulerTurn, 256, 1 - warpgroup);
    };
    if constexpr (Cfg::kSchedulerBarrier)
      if (warpgroup == 1) named_barrier_arrive(NamedBarrier::kSchedulerTurn, 256, 1 - warpgroup);

    float s[kScores];
    uint32_t probs[kPacked];
#pragma unroll
    for (int i = 0; i < kHeadDim / 2; ++i) out.o[i] = 0.0f;
    SumAccumulator sums;
    // wgmma reads P and writes O (and the sums) behind the compiler's back: fence them around each GEMM.
    auto fence_accumulators = [&] {
      fence_registers(out.o);
      fence_registers(probs);
      if constexpr (kSumsByGemm) fence_registers(sums);
    };
    using Softmax = OnlineSoftmax<kScores, Operands::kProbabilityLog2Scale, Operands::kLazyRescaleEighths,
                                  kSumsByGemm>;
    Softmax softmax;
    float correction[2];
    auto score_scale = [&](int stage) {
      if constexpr (requires { tiles.score_scale(sm, stage, scale_log2); })
        return tiles.score_scale(sm, stage, scale_log2);
      else
        return UniformScoreScale{scale_log2};
    };

    const int n = tiles.count();
    int stage = 0;
    uint32_t phase = 0;

    mbarrier_wait(&sm.q_full, 0);
    mbarrier_wait(&sm.k_full[0], 0);
    wait_turn();
    wgmma_fence();
    Operands::gemm_qk(q_rows, k_tile(0), s);
    wgmma_commit();
    pass_turn(false);
    wgmma_wait<0>();
    fence_registers(s);
    tiles.mask(sm, 0, s);
    const auto first_scale = score_scale(0);
    release_k(&sm.k_empty[0]);
    softmax.template update<true>(s, first_scale, correction);
    Operands::pack_probabilities(s, probs);

    for (int i = 1; i < n; ++i) {
      const int prev_stage = stage;
      const uint32_t prev_phase = phase;
      if (++stage == kStages) stage = 0, phase ^= 1;
      mbarrier_wait(&sm.k_full[stage], phase);
      wait_turn();
      fence_accumulators();
      wgmma_fence();
      Operands::gemm_qk(q_rows, k_tile(stage), s);
      wgmma_commit();
      mbarrier_wait(&sm.v_full[prev_stage], prev_phase);
      wgmma_fence();
      Operands::gemm_pv(sm, probs, v_tile(prev_stage), out.o, sums);
      wgmma_commit();
      pass_turn(false);
      wgmma_wait<1>();  // S of block i is ready; PV of block i-1 may still run
      fence_registers(s);
      tiles.mask(sm, stage, s);
      const auto block_scale = score_scale(stage);
      release_k(&sm.k_empty[stage]);
      softmax.template update<false>(s, block_scale, correction);
      wgmma_wait<0>();
      fence_accumulators();
      release(&sm.v_empty[prev_stage]);
      add_block_sums(sums, softmax);
      if (Softmax::any_rescale(correction)) {
        scale_rows(out.o, correction);
        if constexpr (kSumsByGemm) softmax.scale_sums(correction);
      }
      Operands::pack_probabilities(s, probs);
    }
    mbarrier_wait(&sm.v_full[stage], phase);
    wait_turn();
    fence_accumulators();
    wgmma_fence();
    Operands::gemm_pv(sm, probs, v_tile(stage), out.o, sums);
    wgmma_commit();
    pass_turn(true);
    wgmma_wait<0>();
    fence_accumulators();
    release(&sm.v_empty[stage]);
    add_block_sums(sums, softmax);
    softmax.finish(out.inverse_sum, out.lse);
  }
};

}  // namespace tileattn::sm90

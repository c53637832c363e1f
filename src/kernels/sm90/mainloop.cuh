#pragma once
// Mainloop of the STA forward kernel (FA3 structure).
//  Producer (one thread of warpgroup 0): walks the plan and issues TMA loads of K and V blocks into a ring of
//  `kStages` shared-memory stages, each guarded by full/empty mbarriers.
//  Consumers (warpgroups 1..2, 64 query rows each): S = Q K^T by wgmma from shared memory, online softmax in
//  registers, O += P V by wgmma with P from registers. Intra-warpgroup overlap: the QK^T of block j is issued
//  together with the PV of block j-1, so the softmax of block j runs while the tensor cores finish PV(j-1). An
//  optional scheduler barrier makes the two consumer warpgroups take turns issuing, so one's softmax overlaps the
//  other's GEMMs. Only blocks the walker flags as `masked` (edge tiles, partial text) evaluate a mask.
#include "kernels/sm90/gemm.cuh"
#include "kernels/sm90/hopper_primitives.cuh"
#include "kernels/sm90/softmax.cuh"
#include "kernels/sm90/sta_scheduler.cuh"

namespace tileattn::sm90 {

template <class Cfg>
struct Mainloop {
  using Element = typename Cfg::Element;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kBlockN = Cfg::kBlockN;   // key rows per block
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kScores = kBlockN / 2;     // S elements per consumer thread
  static constexpr int kAtoms = kHeadDim / 64;    // 128-byte swizzle atoms along the head dim
  static constexpr int kQueryAtomBytes = kernels::kQueryBlockRows * 128;  // one atom of the 128-row Q tile
  static constexpr int kKeyAtomBytes = kBlockN * 128;                      // one atom of a K or V tile
  static constexpr int kQueryTileBytes = kAtoms * kQueryAtomBytes;
  static constexpr int kKeyTileBytes = kAtoms * kKeyAtomBytes;
  using QK = typename MmaSS<Element, kBlockN>::Op;
  using PV = typename MmaRS<Element, kHeadDim>::Op;

  // S (64 x BlockN) = Q rows of this warpgroup x K block^T.
  static __device__ __forceinline__ void gemm_qk(uint32_t q_rows, uint32_t k_tile, float (&s)[kScores]) {
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint32_t chunk = (kk % 4) * 32;  // 16 elements of K inside a 128-byte row
      mma_ss<QK>(smem_desc_k_major(q_rows + (kk / 4) * kQueryAtomBytes + chunk),
                 smem_desc_k_major(k_tile + (kk / 4) * kKeyAtomBytes + chunk), s,
                 kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One, std::make_index_sequence<kScores>{});
    }
  }
  // O (64 x HeadDim) += P (64 x BlockN, registers) x V block (BlockN x HeadDim).
  static __device__ __forceinline__ void gemm_pv(const uint32_t (&p)[kScores / 2], uint32_t v_tile,
                                                 float (&o)[kHeadDim / 2]) {
#pragma unroll
    for (int kk = 0; kk < kBlockN / 16; ++kk)
      mma_rs<PV>(&p[4 * kk], smem_desc_mn_major(v_tile + kk * 16 * 128, kKeyAtomBytes), o,
                 std::make_index_sequence<kHeadDim / 2>{});
  }

  static __device__ __forceinline__ void pack_probabilities(const float (&s)[kScores], uint32_t (&p)[kScores / 2]) {
    pack_fragment<Element>(s, p);
  }

  // The pipeline's barriers: Q full (the producer's TMA), each stage's K/V full (`k_full` / `v_full` arrivals) and
  // empty (one arrival per consumer warp; for K, `k_empty` arrivals). Called by the whole CTA.
  template <class Storage>
  static __device__ void init_barriers(Storage& sm, int k_full = 1, int v_full = 1, int k_empty = 8) {
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

  // ---- producer: one thread ----
  template <class Storage>
  static __device__ void produce(const StaKernelParams& p, Storage& sm, const QueryBlock& q) {
    const int q_bh = q.batch * p.q_heads + q.head;
    const int kv_bh = q.batch * (p.q_heads / p.kv_group) + q.head / p.kv_group;
    mbarrier_arrive_expect_tx(&sm.q_full, kQueryTileBytes);
#pragma unroll
    for (int a = 0; a < kAtoms; ++a) {
      void* dst = sm.q + a * kQueryAtomBytes / sizeof(Element);
      if (q.text)
        tma_load_3d(dst, &p.q_text, &sm.q_full, a * 64, q.text_row, q_bh);
      else
        tma_load_5d(dst, &p.q_video, &sm.q_full, a * 64, q.x1, q.x2, q.x3, q_bh);
    }
    KeyBlockWalker<kBlockN> walk(p, q);
    const int n = walk.count();
    int stage = 0;
    uint32_t phase = 0;
    for (int i = 0; i < n; ++i) {
      const KeyBlock k = walk.current();
      // K then V of block i, each into its own stage buffer once the consumers have released it.
      mbarrier_wait(&sm.k_empty[stage], phase ^ 1);
      load_block(p, k, kv_bh, &p.k_video, &p.k_text, sm.k[stage], &sm.k_full[stage]);
      mbarrier_wait(&sm.v_empty[stage], phase ^ 1);
      load_block(p, k, kv_bh, &p.v_video, &p.v_text, sm.v[stage], &sm.v_full[stage]);
      walk.advance();
      if (++stage == kStages) stage = 0, phase ^= 1;
    }
  }

  static __device__ __forceinline__ void load_block(const StaKernelParams& p, const KeyBlock& k, int bh,
                                                    const CUtensorMap* video_map, const CUtensorMap* text_map,
                                                    Element* dst, uint64_t* full) {
    mbarrier_arrive_expect_tx(full, kKeyTileBytes);
#pragma unroll
    for (int a = 0; a < kAtoms; ++a) {
      Element* atom = dst + a * kKeyAtomBytes / sizeof(Element);
      if (k.text)
        tma_load_3d(atom, text_map, full, a * 64, k.text_row, bh);
      else
        tma_load_5d(atom, video_map, full, a * 64, k.x1, k.x2, k.x3, bh);
    }
  }

  // ---- consumers ----
  struct Result {
    float o[kHeadDim / 2];
    float inverse_sum[2];
    float lse[2];
  };

  // `tiles` says how many key blocks there are and masks the scores of each (tiles.mask(sm, stage, s) is called
  // once per block, in order, before the block's K stage is released): StaKeyTiles below, FgKeyTiles for FG-Attn.
  template <class Storage, class KeyTiles>
  static __device__ void consume(Storage& sm, KeyTiles& tiles, float scale_log2, int warpgroup, Result& out) {
    const bool lane0 = threadIdx.x % 32 == 0;
    const uint32_t q_rows = smem_addr(sm.q) + warpgroup * 64 * 128;
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
    const int my_turn = Cfg::kBarrierSchedulerBase + warpgroup, other_turn = Cfg::kBarrierSchedulerBase + 1 - warpgroup;
    auto wait_turn = [&] {
      if constexpr (Cfg::kSchedulerBarrier) named_barrier_sync(my_turn, 256);
    };
    auto pass_turn = [&](bool last) {
      if constexpr (Cfg::kSchedulerBarrier)
        if (!(last && warpgroup == 1)) named_barrier_arrive(other_turn, 256);
    };
    if constexpr (Cfg::kSchedulerBarrier)
      if (warpgroup == 1) named_barrier_arrive(other_turn, 256);

    float s[kScores];
    uint32_t probs[kScores / 2];
#pragma unroll
    for (int i = 0; i < kHeadDim / 2; ++i) out.o[i] = 0.0f;
    OnlineSoftmax<kScores> softmax(scale_log2);
    float correction[2];

    const int n = tiles.count();
    int stage = 0;
    uint32_t phase = 0;

    mbarrier_wait(&sm.q_full, 0);
    mbarrier_wait(&sm.k_full[0], 0);
    wait_turn();
    wgmma_fence();
    gemm_qk(q_rows, k_tile(0), s);
    wgmma_commit();
    pass_turn(false);
    wgmma_wait<0>();
    fence_registers(s);
    tiles.mask(sm, 0, s);
    release_k(&sm.k_empty[0]);
    softmax.template update<true>(s, correction);
    pack_probabilities(s, probs);

    for (int i = 1; i < n; ++i) {
      const int prev_stage = stage;
      const uint32_t prev_phase = phase;
      if (++stage == kStages) stage = 0, phase ^= 1;
      mbarrier_wait(&sm.k_full[stage], phase);
      wait_turn();
      fence_registers(out.o);
      fence_registers(probs);
      wgmma_fence();
      gemm_qk(q_rows, k_tile(stage), s);
      wgmma_commit();
      mbarrier_wait(&sm.v_full[prev_stage], prev_phase);
      wgmma_fence();
      gemm_pv(probs, v_tile(prev_stage), out.o);
      wgmma_commit();
      pass_turn(false);
      wgmma_wait<1>();  // S of block i is ready; PV of block i-1 may still run
      fence_registers(s);
      tiles.mask(sm, stage, s);
      release_k(&sm.k_empty[stage]);
      softmax.template update<false>(s, correction);
      wgmma_wait<0>();
      fence_registers(out.o);
      fence_registers(probs);
      release(&sm.v_empty[prev_stage]);
      scale_rows(out.o, correction);
      pack_probabilities(s, probs);
    }
    mbarrier_wait(&sm.v_full[stage], phase);
    wait_turn();
    fence_registers(out.o);
    fence_registers(probs);
    wgmma_fence();
    gemm_pv(probs, v_tile(stage), out.o);
    wgmma_commit();
    pass_turn(true);
    wgmma_wait<0>();
    fence_registers(out.o);
    fence_registers(probs);
    release(&sm.v_empty[stage]);
    softmax.finish(out.inverse_sum, out.lse);
  }
};


// The STA consumers' view of the plan: the key blocks of the query block's window (KeyBlockWalker), masking only the
// blocks the walker flags (edge tiles, partial text).
template <int kBlockN>
struct StaKeyTiles {
  static constexpr int kScores = kBlockN / 2;
  static constexpr bool kEveryThreadReleasesK = false;
  const StaKernelParams& p;
  KeyBlockWalker<kBlockN> walk;

  __device__ __forceinline__ StaKeyTiles(const StaKernelParams& params, const QueryBlock& q) : p(params), walk(params, q) {}
  __device__ __forceinline__ int count() const { return walk.count(); }
  template <class Storage>
  __device__ __forceinline__ void mask(Storage&, int, float (&s)[kScores]) {
    const KeyBlock k = walk.current();
    if (k.masked) mask_keys(k, s);
    walk.advance();
  }

  // Sets the scores of key rows outside the video / the valid text to -inf. Runs only for the few blocks the walker
  // flags; still kept cheap (no division: tile planes are powers of two), since every such block stalls the
  // warpgroup's softmax. Thread column of score e: 8 * (e / 4) + 2 * (lane % 4) + e % 2.
  __device__ __forceinline__ void mask_keys(const KeyBlock& k, float (&s)[kScores]) const {
    const int lane_col = 2 * (threadIdx.x % 4);
    if (k.text) {
#pragma unroll
      for (int e = 0; e < kScores; ++e)
        if (8 * (e / 4) + lane_col + (e % 2) >= k.text_count) s[e] = -INFINITY;
      return;
    }
    const int valid_w = p.extent1 - k.x1, valid_h = p.extent2 - k.x2, valid_t = p.extent3 - k.x3;
#pragma unroll
    for (int e = 0; e < kScores; ++e) {
      const int col = 8 * (e / 4) + lane_col + (e % 2);
      const int w = col & (p.tile_w - 1), h = (col >> p.log2_tile_w) & (p.tile_h - 1), t = col >> p.log2_tile_plane;
      if (w >= valid_w || h >= valid_h || t >= valid_t) s[e] = -INFINITY;
    }
  }
};

}  // namespace tileattn::sm90

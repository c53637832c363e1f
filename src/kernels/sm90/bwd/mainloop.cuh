#pragma once
// Mainloop of the STA backward kernel (FA3 structure, transposed so that a CTA's key rows are the wgmma M side).
//  Producer (one thread of warpgroup 0): loads the CTA's K and V block once, then for every query block that visits
//  it (QueryBlockWalker, bwd/query_walk.cuh) issues TMA loads of Q and dO (64 rows) into a ring of `kStages` stages
//  guarded by full/empty mbarriers. Each consumer thread reads the LSE and dot(dO, O) of its 16 query columns from the
//  workspace itself.
//  Consumers (warpgroups 1..2, 64 key rows each), per query block:
//    S^T  = K Q^T            (SS)     P^T = exp2(S^T * scale_log2 - lse_log2)   (rows of invalid keys: 0)
//    dP^T = V dO^T           (SS)     dS^T = P^T * (dP^T - dsum)
//    dV  += P^T dO           (RS)     dK  += dS^T Q                              (registers, whole walk)
//    dQ_half = dS K[:, half]  (SS, dS^T through shared memory, both warpgroups' rows)
//  and add dQ_half (64 x D/2 fp32) into the workspace: one bulk reduction (fast mode) or a turn-ordered
//  read-modify-write (deterministic mode). Masks are per CTA: a key row is valid or not for the whole walk, and
//  rows of query blocks past the video edge carry lse = +inf (so P = 0), so no per-block masking is needed.
#include "kernels/sm90/bwd/query_walk.cuh"
#include "kernels/sm90/bwd/tile_scheduler.cuh"
#include "kernels/sm90/common/barriers.cuh"
#include "kernels/sm90/common/fragment.cuh"
#include "kernels/sm90/common/gemm.cuh"
#include "kernels/sm90/common/hopper_primitives.cuh"
#include "kernels/sm90/common/softmax.cuh"

namespace tileattn::sm90 {

// Where element pair `pair` (of 64 * D / 4 pairs) of a dQ half-chunk sits: the wgmma accumulator order of a 64 x D/2
// tile, pair = register pair * 128 + thread, so a warpgroup writes and reduces it contiguously.
template <int kHeadDim>
__device__ __forceinline__ void dq_fragment_position(int pair, int& row, int& col) {
  using Fragment = AccFragment<kHeadDim / 2>;
  const int register_pair = pair / 128, thread = pair % 128;
  row = Fragment::pair_row(register_pair, thread);
  col = Fragment::pair_col(register_pair, thread);
}

template <class Cfg>
struct BackwardMainloop {
  using Element = typename Cfg::Element;
  static constexpr int kHeadDim = Cfg::kHeadDim;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kAtoms = kHeadDim / 64;
  static constexpr int kQueryAtomBytes = kBwdQueryRows * 128;  // one atom of a 64-row Q / dO tile
  static constexpr int kKeyAtomBytes = kBwdKeyRows * 128;      // one atom of the 128-row K / V tile
  static constexpr int kQueryTileBytes = kAtoms * kQueryAtomBytes;
  static constexpr int kKeyTileBytes = kAtoms * kKeyAtomBytes;
  static constexpr int kScores = kBwdQueryRows / 2;  // S^T elements per thread (64 x 64 per warpgroup)
  static constexpr int kAcc = kHeadDim / 2;          // dK / dV elements per thread (64 x D)
  static constexpr int kDq = kHeadDim / 4;           // dQ half elements per thread (64 x D/2)
  static constexpr int kDqHalfBytes = kBwdQueryRows * (kHeadDim / 2) * 4;
  using ScoreMma = typename MmaSS<Element, kBwdQueryRows>::Op;           // S^T, dP^T
  using AccumulateMma = typename MmaRS<Element, kHeadDim>::Op;           // dV, dK
  using DqMma = typename MmaSSTransposed<Element, kHeadDim / 2>::Op;     // dQ half
  using ScoreFragment = AccFragment<kBwdQueryRows>;  // S^T, dP^T: key rows x query columns
  using DqFragment = AccFragment<kHeadDim / 2>;      // a dQ half: query rows x D/2 columns

  // ---- producer: one thread ----
  template <class Storage>
  static __device__ void produce(const StaBackwardParams& p, Storage& sm, const KeyBlockTask& kb) {
    const int kv_bh = kb.batch * p.kv_heads + kb.kv_head;
    mbarrier_arrive_expect_tx(&sm.kv_full, 2 * kKeyTileBytes);
#pragma unroll
    for (int a = 0; a < kAtoms; ++a) {
      Element* k_dst = sm.k + a * kKeyAtomBytes / sizeof(Element);
      Element* v_dst = sm.v + a * kKeyAtomBytes / sizeof(Element);
      if (kb.text) {
        tma_load_3d(k_dst, &p.k_tokens, &sm.kv_full, a * 64, kb.text_row, kv_bh);
        tma_load_3d(v_dst, &p.v_tokens, &sm.kv_full, a * 64, kb.text_row, kv_bh);
      } else {
        tma_load_5d(k_dst, &p.k_video, &sm.kv_full, a * 64, kb.x1, kb.x2, kb.x3, kv_bh);
        tma_load_5d(v_dst, &p.v_video, &sm.kv_full, a * 64, kb.x1, kb.x2, kb.x3, kv_bh);
      }
    }
    int stage = 0;
    uint32_t phase = 0;
    for (QueryBlockWalker walk(p, kb); !walk.done(); walk.advance()) {
      const QueryStep s = walk.current();
      const int q_bh = kb.batch * p.q_heads + s.head;
      mbarrier_wait(&sm.q_empty[stage], phase ^ 1);
      uint64_t* full = &sm.q_full[stage];
      mbarrier_arrive_expect_tx(full, 2 * kQueryTileBytes);
#pragma unroll
      for (int a = 0; a < kAtoms; ++a) {
        Element* q_dst = sm.q[stage] + a * kQueryAtomBytes / sizeof(Element);
        Element* do_dst = sm.dout[stage] + a * kQueryAtomBytes / sizeof(Element);
        if (s.text) {
          tma_load_3d(q_dst, &p.q_tokens, full, a * 64, s.text_row, q_bh);
          tma_load_3d(do_dst, &p.do_tokens, full, a * 64, s.text_row, q_bh);
        } else {
          tma_load_5d(q_dst, &p.q_video, full, a * 64, s.x1, s.x2, s.x3, q_bh);
          tma_load_5d(do_dst, &p.do_video, full, a * 64, s.x1, s.x2, s.x3, q_bh);
        }
      }
      if (++stage == kStages) stage = 0, phase ^= 1;
    }
  }

  // ---- consumers ----
  // S^T or dP^T (64 key rows of this warpgroup x 64 query rows) = rows (K or V) x cols (Q or dO)^T.
  static __device__ __forceinline__ void gemm_scores(uint32_t rows, uint32_t cols, float (&s)[kScores]) {
#pragma unroll
    for (int kk = 0; kk < kHeadDim / 16; ++kk) {
      const uint32_t chunk = (kk % 4) * 32;
      mma_ss<ScoreMma>(smem_desc_k_major(rows + (kk / 4) * kKeyAtomBytes + chunk),
                       smem_desc_k_major(cols + (kk / 4) * kQueryAtomBytes + chunk), s,
                       kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One, std::make_index_sequence<kScores>{});
    }
  }
  // acc (64 x D) += fragment (64 x 64 query rows, registers) x tile (64 query rows x D, Q or dO).
  static __device__ __forceinline__ void gemm_accumulate(const uint32_t (&a)[kScores / 2], uint32_t tile,
                                                         float (&acc)[kAcc]) {
#pragma unroll
    for (int kk = 0; kk < kBwdQueryRows / 16; ++kk)
      mma_rs<AccumulateMma>(&a[4 * kk], smem_desc_mn_major(tile + kk * 16 * 128, kQueryAtomBytes), acc,
                            std::make_index_sequence<kAcc>{});
  }
  // dQ half (64 query rows x D/2) = dS (64 x 128 keys; stored as dS^T, query rows contiguous) x K[:, half].
  static __device__ __forceinline__ void gemm_dq(uint32_t ds, uint32_t k_tile, int half, float (&dq)[kDq]) {
    const uint32_t k_cols = k_tile + (half * kHeadDim / 2 / 64) * kKeyAtomBytes + (half * kHeadDim / 2 % 64) * 2;
#pragma unroll
    for (int kk = 0; kk < kBwdKeyRows / 16; ++kk)
      mma_ss<DqMma>(smem_desc_mn_major(ds + kk * 16 * 128, 0), smem_desc_mn_major(k_cols + kk * 16 * 128, 0), dq,
                    kk == 0 ? gmma::ScaleOut::Zero : gmma::ScaleOut::One, std::make_index_sequence<kDq>{});
  }

  struct Result {
    float dk[kAcc];
    float dv[kAcc];
  };

  template <class Storage>
  static __device__ void consume(const StaBackwardParams& p, Storage& sm, const KeyBlockTask& kb, int warpgroup,
                                 Result& r) {
    const int thread = threadIdx.x % 128, lane = thread % 32;
    const int row0 = ScoreFragment::row0();  // this thread's key rows within the warpgroup: row0, row0 + 8
    const int lane_col = ScoreFragment::lane_col();
#pragma unroll
    for (int i = 0; i < kAcc; ++i) r.dk[i] = r.dv[i] = 0.0f;

    QueryBlockWalker walk(p, kb);
    const bool valid[2] = {key_row_valid(p, kb, warpgroup * 64 + row0, walk.text_valid()),
                           key_row_valid(p, kb, warpgroup * 64 + row0 + 8, walk.text_valid())};
    const uint32_t k_rows = smem_addr(sm.k) + warpgroup * 64 * 128;
    const uint32_t v_rows = smem_addr(sm.v) + warpgroup * 64 * 128;
    uint8_t* dq_stage = reinterpret_cast<uint8_t*>(sm.dq[warpgroup]);
    float s[kScores], dp[kScores], dq[kDq];
    uint32_t pb[kScores / 2], dsb[kScores / 2];
    int stage = 0, iteration = 0;
    uint32_t phase = 0;
    mbarrier_wait(&sm.kv_full, 0);
    for (; !walk.done(); walk.advance(), ++iteration) {
      const QueryStep step = walk.current();
      const int64_t chunk =
          (int64_t(p.batch_offset + kb.batch) * p.q_heads + step.head) * p.num_query_blocks + step.qblock;
      // This thread's 16 query columns of LSE and dsum, straight from the workspace (written by the preprocess
      // launch, read-only here); the loads complete while the first GEMMs run.
      float2 lse[ScoreFragment::kColGroups], dsum[ScoreFragment::kColGroups];
#pragma unroll
      for (int j = 0; j < ScoreFragment::kColGroups; ++j) {
        lse[j] = __ldg(reinterpret_cast<const float2*>(p.lse_log2 + chunk * kBwdQueryRows + 8 * j + lane_col));
        dsum[j] = __ldg(reinterpret_cast<const float2*>(p.dsum + chunk * kBwdQueryRows + 8 * j + lane_col));
      }
      mbarrier_wait(&sm.q_full[stage], phase);
      const uint32_t q_tile = smem_addr(sm.q[stage]), do_tile = smem_addr(sm.dout[stage]);
      wgmma_fence();
      gemm_scores(k_rows, q_tile, s);
      wgmma_commit();
      gemm_scores(v_rows, do_tile, dp);
      wgmma_commit();
      wgmma_wait<1>();
      fence_registers(s);
      // P^T: column c of this thread's scores is query row c of the block; lse[j] holds this thread's two columns
      // of column group j.
#pragma unroll
      for (int e = 0; e < kScores; ++e) {
        const float2 group_lse = lse[ScoreFragment::col_group(e)];
        const float row_lse = ScoreFragment::col_parity(e) ? group_lse.y : group_lse.x;
        const float p_val = fast_exp2(fmaf(s[e], p.scale_log2, -row_lse));
        s[e] = valid[ScoreFragment::row_half(e)] ? p_val : 0.0f;
      }
      pack_fragment<Element>(s, pb);
      fence_registers(r.dv);
      fence_registers(pb);
      wgmma_fence();
      gemm_accumulate(pb, do_tile, r.dv);
      wgmma_commit();
      wgmma_wait<1>();
      fence_registers(dp);
#pragma unroll
      for (int e = 0; e < kScores; ++e) {
        const float2 group_dsum = dsum[ScoreFragment::col_group(e)];
        const float row_dsum = ScoreFragment::col_parity(e) ? group_dsum.y : group_dsum.x;
        dp[e] = s[e] * (dp[e] - row_dsum);
      }
      pack_fragment<Element>(dp, dsb);
      // dS^T rows of this warpgroup into the shared dS tile (query rows contiguous: the MN-major A of the dQ GEMM).
      uint8_t* ds_tile = reinterpret_cast<uint8_t*>(sm.ds[iteration % 2]);
#pragma unroll
      for (int i = 0; i < ScoreFragment::kPairs; ++i) {
        const int e = 2 * i;
        const int row = warpgroup * 64 + ScoreFragment::row(e), col = ScoreFragment::col(e);
        *reinterpret_cast<uint32_t*>(ds_tile + swizzled_offset(row, col, 0)) = dsb[i];
      }
      fence_registers(r.dk);
      fence_registers(dsb);
      wgmma_fence();
      gemm_accumulate(dsb, q_tile, r.dk);
      wgmma_commit();
      fence_proxy_async_smem();
      named_barrier_sync(NamedBarrier::kDsReady, 256);  // both warpgroups' dS^T rows are in place
      wgmma_fence();
      gemm_dq(smem_addr(ds_tile), smem_addr(sm.k), warpgroup, dq);
      wgmma_commit();
      wgmma_wait<0>();
      fence_registers(r.dk);
      fence_registers(r.dv);
      fence_registers(pb);
      fence_registers(dsb);
      fence_registers(dq);
      if (lane == 0) mbarrier_arrive(&sm.q_empty[stage]);
      float* dq_global = p.dq_accum + chunk * kBwdQueryRows * kHeadDim + warpgroup * kBwdQueryRows * kHeadDim / 2;
      if constexpr (Cfg::kDeterministic) {
        add_dq_in_turn(dq, dq_global, p.dq_turn + chunk * 2 + warpgroup, walk.rank(step), warpgroup);
      } else {
        // Stage the fragment in its own order (conflict-free 8-byte stores) and add it with one bulk reduction.
        if (thread == 0) tma_store_wait_read();  // the previous reduction has finished reading the stage
        named_barrier_sync(NamedBarrier::kDqStage, 128, warpgroup);
#pragma unroll
        for (int pair = 0; pair < DqFragment::kPairs; ++pair)
          *reinterpret_cast<float2*>(dq_stage + (pair * 128 + thread) * 8) =
              make_float2(dq[2 * pair], dq[2 * pair + 1]);
        fence_proxy_async_smem();
        named_barrier_sync(NamedBarrier::kDqStage, 128, warpgroup);
        if (thread == 0) {
          bulk_reduce_add_f32(dq_global, dq_stage, kDqHalfBytes);
          tma_store_commit();
        }
      }
      if (++stage == kStages) stage = 0, phase ^= 1;
    }
    if constexpr (!Cfg::kDeterministic)
      if (thread == 0) tma_store_wait_read();
  }

  // Deterministic dQ: wait until `rank` earlier key blocks have added their part, add ours (plain loads and stores
  // through L2), then pass the turn on.
  static __device__ __forceinline__ void add_dq_in_turn(const float (&dq)[kDq], float* dq_global, int32_t* turn,
                                                        int rank, int warpgroup) {
    const int thread = threadIdx.x % 128;
    if (thread == 0) {
      int seen;
      do {
        asm volatile("ld.acquire.gpu.global.b32 %0, [%1];" : "=r"(seen) : "l"(turn) : "memory");
      } while (seen != rank);
    }
    named_barrier_sync(NamedBarrier::kDqStage, 128, warpgroup);
    float2* dst = reinterpret_cast<float2*>(dq_global);
#pragma unroll
    for (int pair = 0; pair < DqFragment::kPairs; ++pair) {
      float2 old = __ldcg(dst + pair * 128 + thread);
      old.x += dq[2 * pair];
      old.y += dq[2 * pair + 1];
      __stcg(dst + pair * 128 + thread, old);
    }
    __threadfence();
    named_barrier_sync(NamedBarrier::kDqStage, 128, warpgroup);
    if (thread == 0) asm volatile("st.release.gpu.global.b32 [%0], %1;" ::"l"(turn), "r"(rank + 1) : "memory");
  }
};

}  // namespace tileattn::sm90

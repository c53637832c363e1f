#pragma once
// The STA side of the forward pipeline (common/consumer.cuh): what is loaded, and the consumers' view of it.
//  Producer (one thread of warpgroup 0): loads the Q tile, then walks the plan (KeyBlockWalker) and issues TMA loads
//  of K and V blocks into the ring of stages, each once the consumers have released it.
//  StaKeyTiles: the consumers' walker over the same plan; only blocks the walker flags as `masked` (edge tiles,
//  partial text) evaluate a mask.
#include "kernels/sm90/common/consumer.cuh"
#include "kernels/sm90/common/fragment.cuh"
#include "kernels/sm90/common/hopper_primitives.cuh"
#include "kernels/sm90/sta/tile_scheduler.cuh"
#include "kernels/sm90/sta/window_walk.cuh"

namespace tileattn::sm90 {

// The producer's walk over a query block's key blocks through the ring of stages: for each block, load_k(block,
// stage) once the consumers have released that stage's K buffer, then load_v(block, stage) once they have released
// its V buffer. Shared by the bf16 and e4m3 producers, which differ only in what a load is.
template <int kStages, int kBlockN, class Storage, class LoadK, class LoadV>
__device__ __forceinline__ void walk_key_stages(KeyBlockWalker<kBlockN>& walk, Storage& sm, LoadK&& load_k,
                                                LoadV&& load_v) {
  const int n = walk.count();
  int stage = 0;
  uint32_t phase = 0;
  for (int i = 0; i < n; ++i) {
    const KeyBlock k = walk.current();
    mbarrier_wait(&sm.k_empty[stage], phase ^ 1);
    load_k(k, stage);
    mbarrier_wait(&sm.v_empty[stage], phase ^ 1);
    load_v(k, stage);
    walk.advance();
    if (++stage == kStages) stage = 0, phase ^= 1;
  }
}

template <class Cfg>
struct StaProducer {
  using Element = typename Cfg::Element;
  using Tiles = ForwardTiles<Cfg>;
  static constexpr int kStages = Cfg::kStages;

  // ---- one thread ----
  template <class Storage>
  static __device__ void produce(const StaKernelParams& p, Storage& sm, const QueryBlock& q) {
    const AttentionParams& a = p.attention;
    const int q_bh = q.batch * a.q_heads + q.head;
    const int kv_bh = q.batch * (a.q_heads / a.kv_group) + q.head / a.kv_group;
    mbarrier_arrive_expect_tx(&sm.q_full, Tiles::kQueryTileBytes);
#pragma unroll
    for (int atom = 0; atom < Tiles::kAtoms; ++atom) {
      void* dst = sm.q + atom * Tiles::kQueryAtomBytes / sizeof(Element);
      if (q.text)
        tma_load_3d(dst, &a.q_tokens, &sm.q_full, atom * 64, q.text_row, q_bh);
      else
        tma_load_5d(dst, &p.q_video, &sm.q_full, atom * 64, q.x1, q.x2, q.x3, q_bh);
    }
    KeyBlockWalker<Cfg::kBlockN> walk(p.sta, q, a.batch_offset);
    walk_key_stages<kStages>(
        walk, sm,
        [&](const KeyBlock& k, int stage) {
          load_block(k, kv_bh, &p.k_video, &p.k_tokens, sm.k[stage], &sm.k_full[stage]);
        },
        [&](const KeyBlock& k, int stage) {
          load_block(k, kv_bh, &p.v_video, &p.v_tokens, sm.v[stage], &sm.v_full[stage]);
        });
  }

  static __device__ __forceinline__ void load_block(const KeyBlock& k, int bh, const CUtensorMap* video_map,
                                                    const CUtensorMap* token_map, Element* dst, uint64_t* full) {
    mbarrier_arrive_expect_tx(full, Tiles::kKeyTileBytes);
#pragma unroll
    for (int atom = 0; atom < Tiles::kAtoms; ++atom) {
      Element* atom_dst = dst + atom * Tiles::kKeyAtomBytes / sizeof(Element);
      if (k.text)
        tma_load_3d(atom_dst, token_map, full, atom * 64, k.text_row, bh);
      else
        tma_load_5d(atom_dst, video_map, full, atom * 64, k.x1, k.x2, k.x3, bh);
    }
  }
};

// The STA consumers' view of the plan: the key blocks of the query block's window (KeyBlockWalker), masking only the
// blocks the walker flags (edge tiles, partial text).
template <int kBlockN>
struct StaKeyTiles {
  using Fragment = AccFragment<kBlockN>;
  static constexpr int kScores = Fragment::kRegs;
  static constexpr bool kEveryThreadReleasesK = false;
  const StaGeometryParams& g;
  KeyBlockWalker<kBlockN> walk;

  __device__ __forceinline__ StaKeyTiles(const StaKernelParams& p, const QueryBlock& q)
      : g(p.sta), walk(p.sta, q, p.attention.batch_offset) {}
  __device__ __forceinline__ int count() const { return walk.count(); }
  template <class Storage>
  __device__ __forceinline__ void mask(Storage&, int, float (&s)[kScores]) {
    const KeyBlock k = walk.current();
    if (k.masked) mask_keys(k, s);
    walk.advance();
  }

  // Sets the scores of key rows outside the video / the valid text to -inf. Runs only for the few blocks the walker
  // flags; still kept cheap (no division: tile planes are powers of two), since every such block stalls the
  // warpgroup's softmax. Score e is key row Fragment::col(e) of the block.
  __device__ __forceinline__ void mask_keys(const KeyBlock& k, float (&s)[kScores]) const {
    if (k.text) {
#pragma unroll
      for (int e = 0; e < kScores; ++e)
        if (Fragment::col(e) >= k.text_count) s[e] = -INFINITY;
      return;
    }
    const int valid_w = g.extents.x1 - k.x1, valid_h = g.extents.x2 - k.x2, valid_t = g.extents.x3 - k.x3;
#pragma unroll
    for (int e = 0; e < kScores; ++e) {
      const detail::TileCoord r = g.grid.row_in_tile(Fragment::col(e));
      if (r.w >= valid_w || r.h >= valid_h || r.t >= valid_t) s[e] = -INFINITY;
    }
  }
};

}  // namespace tileattn::sm90

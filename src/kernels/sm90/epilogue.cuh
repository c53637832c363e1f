#pragma once
// Epilogue: normalise O, write it in the input dtype into this warpgroup's rows of the (now free) Q tile in the
// 128-byte-swizzled layout TMA expects, and store it with one TMA box per head-dim atom; the box is clipped at the
// tensor's edges, so partial tiles and the text tail need no special case. LSE rows go straight to global memory.
#include "kernels/sm90/gemm.cuh"
#include "kernels/sm90/hopper_primitives.cuh"
#include "kernels/sm90/sta_scheduler.cuh"

namespace tileattn::sm90 {

template <class Cfg, class Mainloop>
struct Epilogue {
  using Element = typename Cfg::Element;
  static constexpr int kHeadDim = Cfg::kHeadDim;

  template <class Storage>
  static __device__ void store(const StaKernelParams& p, Storage& sm, const QueryBlock& q, int warpgroup,
                               typename Mainloop::Result& r) {
    const int lane = threadIdx.x % 32, warp = (threadIdx.x / 32) % 4;
    // Rows of this thread within the 128-row block.
    const int row0 = warpgroup * 64 + warp * 16 + lane / 4;
    uint8_t* tile = reinterpret_cast<uint8_t*>(sm.q);
#pragma unroll
    for (int e = 0; e < kHeadDim / 2; e += 2) {
      const int row = row0 + 8 * ((e >> 1) & 1);
      const int col = 8 * (e / 4) + 2 * (lane % 4);
      const float f = r.inverse_sum[(e >> 1) & 1];
      const float normalised[2] = {r.o[e] * f, r.o[e + 1] * f};
      uint32_t packed[1];
      pack_fragment<Element>(normalised, packed);
      *reinterpret_cast<uint32_t*>(tile + swizzled_offset(row, col, Mainloop::kQueryAtomBytes)) = packed[0];
    }
    fence_proxy_async_smem();
    named_barrier_sync(Cfg::kBarrierEpilogueBase + warpgroup, 128);
    if (threadIdx.x % 128 == 0) {
      const int bh = q.batch * p.q_heads + q.head;
#pragma unroll
      for (int a = 0; a < Mainloop::kAtoms; ++a) {
        const void* src = tile + a * Mainloop::kQueryAtomBytes + warpgroup * 64 * 128;
        if (q.text)
          tma_store_3d(&p.o_text, src, a * 64, q.text_row + warpgroup * 64, bh);
        else
          tma_store_5d(&p.o_video, src, a * 64, q.x1, q.x2, q.x3 + warpgroup * (p.query_frames / 2), bh);
      }
      tma_store_commit();
    }
    if (p.lse != nullptr && lane % 4 == 0) {
      const int64_t base = (int64_t(p.batch_offset + q.batch) * p.q_heads + q.head) * p.num_tokens;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        const int row = row0 + 8 * i;
        int64_t token;
        bool valid;
        if (q.text) {
          token = q.text_row + row;
          valid = token < p.num_tokens;
        } else {
          const int w = row & (p.tile_w - 1), h = (row >> p.log2_tile_w) & (p.tile_h - 1), t = row >> p.log2_tile_plane;
          valid = q.x1 + w < p.extent1 && q.x2 + h < p.extent2 && q.x3 + t < p.extent3;
          token = (int64_t(q.x3 + t) * p.extent2 + (q.x2 + h)) * p.extent1 + (q.x1 + w);
        }
        if (valid) p.lse[base + token] = r.lse[i];
      }
    }
    if (threadIdx.x % 128 == 0) tma_store_wait_read();
  }
};

}  // namespace tileattn::sm90

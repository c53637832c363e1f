#pragma once
// Epilogue of the forward kernels: normalise O, write it in the input dtype into this warpgroup's rows of the (now
// free) Q tile in the 128-byte-swizzled layout TMA expects, and store it with one TMA box per head-dim atom; the box
// is clipped at the tensor's edges, so partial tiles and the text tail need no special case. LSE rows go straight to
// global memory. Where the rows go is the query block's `Output`: TokenRowsOutput for a block of consecutive tokens
// (FG, STA's text blocks), StaQueryOutput (sta/sta_fwd_kernel.cuh) for STA's video blocks too.
#include "kernels/attention_params.hpp"
#include "kernels/sm90/common/barriers.cuh"
#include "kernels/sm90/common/consumer.cuh"
#include "kernels/sm90/common/fragment.cuh"
#include "kernels/sm90/common/gemm.cuh"
#include "kernels/sm90/common/hopper_primitives.cuh"

namespace tileattn::sm90 {

using kernels::AttentionParams;

// A query block of 128 consecutive token rows of one (batch, head), addressed through the attention part's
// (d, token, batch*heads) maps.
struct TokenRowsOutput {
  const AttentionParams& a;
  int batch, head;  // batch within the launch
  int first_row;

  // TMA store of one head-dim atom of this warpgroup's 64 rows (`src` in shared memory).
  __device__ __forceinline__ void store(const void* src, int atom, int warpgroup) const {
    tma_store_3d(&a.o_tokens, src, atom * 64, first_row + warpgroup * 64, batch * a.q_heads + head);
  }
  // The token of row `row` of the 128; false past the tokens.
  __device__ __forceinline__ bool token(int row, int64_t& token) const {
    token = first_row + row;
    return token < a.num_tokens;
  }
};

// Where the epilogue stages O: a storage's own `o` tile if it has one (the e4m3 kernel, whose Q tile is smaller than
// O), else the Q tile, free once the last QK^T has run (each warpgroup overwrites only its own Q rows).
template <class Storage>
__device__ __forceinline__ uint8_t* output_staging(Storage& sm) {
  if constexpr (requires { sm.o; })
    return reinterpret_cast<uint8_t*>(sm.o);
  else
    return reinterpret_cast<uint8_t*>(sm.q);
}

template <class Cfg>
struct Epilogue {
  using Element = typename Cfg::Element;
  using Tiles = ForwardTiles<Cfg>;
  using Fragment = AccFragment<Cfg::kHeadDim>;

  template <class Storage, class Output, class Result>
  static __device__ void store(const AttentionParams& a, Storage& sm, const Output& out, int warpgroup, Result& r) {
    // Rows of this thread within the 128-row block.
    const int row0 = warpgroup * 64 + Fragment::row0();
    uint8_t* tile = output_staging(sm);
#pragma unroll
    for (int e = 0; e < Fragment::kRegs; e += 2) {
      const float f = r.inverse_sum[Fragment::row_half(e)];
      const float normalised[2] = {r.o[e] * f, r.o[e + 1] * f};
      uint32_t packed[1];
      pack_fragment<Element>(normalised, packed);
      const int offset = swizzled_offset(warpgroup * 64 + Fragment::row(e), Fragment::col(e), Tiles::kQueryAtomBytes);
      *reinterpret_cast<uint32_t*>(tile + offset) = packed[0];
    }
    fence_proxy_async_smem();
    named_barrier_sync(NamedBarrier::kEpilogue, 128, warpgroup);
    if (threadIdx.x % 128 == 0) {
#pragma unroll
      for (int atom = 0; atom < Tiles::kAtoms; ++atom)
        out.store(tile + atom * Tiles::kQueryAtomBytes + warpgroup * 64 * 128, atom, warpgroup);
      tma_store_commit();
    }
    if (a.lse != nullptr && threadIdx.x % 4 == 0) {
      const int64_t base = (int64_t(a.batch_offset + out.batch) * a.q_heads + out.head) * a.num_tokens;
#pragma unroll
      for (int i = 0; i < 2; ++i) {
        int64_t token;
        if (out.token(row0 + 8 * i, token)) a.lse[base + token] = r.lse[i];
      }
    }
    if (threadIdx.x % 128 == 0) tma_store_wait_read();
  }
};

}  // namespace tileattn::sm90

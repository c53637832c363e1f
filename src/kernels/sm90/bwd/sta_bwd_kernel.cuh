#pragma once
// The STA backward kernels for Hopper:
//  1. preprocess (one CTA per query block of 64 rows): dsum = rowsum(dO * O) in fp32 and the LSE in log2 units,
//     into the workspace in query-block order (+inf / 0 for rows that hold no token);
//  2. the main kernel: warp-specialised like the forward (1 producer + 2 consumer warpgroups); see bwd/mainloop.cuh;
//  3. postprocess: dQ = scale * dq_accum, converted to the input dtype and written in the layout's token order.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "kernels/sm90/bwd/mainloop.cuh"
#include "kernels/sm90/bwd/tile_scheduler.cuh"
#include "kernels/sm90/common/barriers.cuh"
#include "kernels/sm90/common/fragment.cuh"
#include "kernels/sm90/common/launch.cuh"
#include "tileattn/error.hpp"

namespace tileattn::sm90 {

template <class Element_, int HeadDim, bool Deterministic>
struct StaBackwardConfig {
  using Element = Element_;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kStages = 2;
  static constexpr bool kDeterministic = Deterministic;
  static constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
};

template <class Cfg>
struct BackwardStorage {
  using Element = typename Cfg::Element;
  static constexpr int kKeyElems = kBwdKeyRows * Cfg::kHeadDim;
  static constexpr int kQueryElems = kBwdQueryRows * Cfg::kHeadDim;
  alignas(1024) Element k[kKeyElems];  // K block; dK in the epilogue
  alignas(1024) Element v[kKeyElems];  // V block; dV in the epilogue
  alignas(1024) Element q[Cfg::kStages][kQueryElems];
  alignas(1024) Element dout[Cfg::kStages][kQueryElems];
  alignas(1024) Element ds[2][kBwdKeyRows * kBwdQueryRows];       // dS^T, double-buffered
  alignas(128) float dq[2][kBwdQueryRows * Cfg::kHeadDim / 2];    // per consumer warpgroup: dQ half staging
  uint64_t kv_full;
  uint64_t q_full[Cfg::kStages], q_empty[Cfg::kStages];
};

template <class Element>
__device__ __forceinline__ float2 to_float2(uint32_t packed) {
  if constexpr (std::is_same_v<Element, __half>) return __half22float2(*reinterpret_cast<__half2*>(&packed));
  else return __bfloat1622float2(*reinterpret_cast<__nv_bfloat162*>(&packed));
}

// dK (scaled) and dV of this warpgroup's 64 key rows -> the K / V tiles (swizzled) -> TMA stores, clipped at the
// tensor edges.
template <class Cfg, class Loop, class Storage>
__device__ void store_key_gradients(const StaBackwardParams& p, Storage& sm, const KeyBlockTask& kb, int warpgroup,
                                    typename Loop::Result& r) {
  using Fragment = AccFragment<Cfg::kHeadDim>;  // dK, dV: key rows x head-dim columns
  const int thread = threadIdx.x % 128;
  named_barrier_sync(NamedBarrier::kDsReady, 256);  // both warpgroups are done reading K and V
  uint8_t* dk_tile = reinterpret_cast<uint8_t*>(sm.k);
  uint8_t* dv_tile = reinterpret_cast<uint8_t*>(sm.v);
#pragma unroll
  for (int e = 0; e < Fragment::kRegs; e += 2) {
    const int row = warpgroup * 64 + Fragment::row(e);
    const int col = Fragment::col(e);
    const int offset = swizzled_offset(row, col, Loop::kKeyAtomBytes);
    float dk2[2] = {r.dk[e] * p.scale, r.dk[e + 1] * p.scale}, dv2[2] = {r.dv[e], r.dv[e + 1]};
    uint32_t dk_packed[1], dv_packed[1];
    pack_fragment<typename Cfg::Element>(dk2, dk_packed);
    pack_fragment<typename Cfg::Element>(dv2, dv_packed);
    *reinterpret_cast<uint32_t*>(dk_tile + offset) = dk_packed[0];
    *reinterpret_cast<uint32_t*>(dv_tile + offset) = dv_packed[0];
  }
  fence_proxy_async_smem();
  named_barrier_sync(NamedBarrier::kDqStage, 128, warpgroup);
  if (thread == 0) {
    const int kv_bh = kb.batch * p.kv_heads + kb.kv_head;
#pragma unroll
    for (int a = 0; a < Loop::kAtoms; ++a) {
      const int offset = a * Loop::kKeyAtomBytes + warpgroup * 64 * 128;
      if (kb.text) {
        tma_store_3d(&p.dk_tokens, dk_tile + offset, a * 64, kb.text_row + warpgroup * 64, kv_bh);
        tma_store_3d(&p.dv_tokens, dv_tile + offset, a * 64, kb.text_row + warpgroup * 64, kv_bh);
      } else {
        const int x3 = kb.x3 + warpgroup * (p.sta.key.frames / 2);
        tma_store_5d(&p.dk_video, dk_tile + offset, a * 64, kb.x1, kb.x2, x3, kv_bh);
        tma_store_5d(&p.dv_video, dv_tile + offset, a * 64, kb.x1, kb.x2, x3, kv_bh);
      }
    }
    tma_store_commit();
    tma_store_wait_read();
  }
}

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1) sta_backward_kernel(const __grid_constant__ StaBackwardParams p) {
  using Loop = BackwardMainloop<Cfg>;
  auto& sm = shared_storage<BackwardStorage<Cfg>>();
  const KeyBlockTask kb = key_block_of(p, blockIdx.x);
  if (kb.empty) return;  // uniform across the CTA, before any barrier
  if (threadIdx.x == 0) {
    mbarrier_init(&sm.kv_full, 1);
    for (int s = 0; s < Cfg::kStages; ++s) {
      mbarrier_init(&sm.q_full[s], 1);
      mbarrier_init(&sm.q_empty[s], 8);  // one arrival per consumer warp
    }
    fence_barrier_init();
  }
  __syncthreads();
  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    registers_decrease<Cfg::kProducerRegisters>();
    if (threadIdx.x == 0) Loop::produce(p, sm, kb);
  } else {
    registers_increase<Cfg::kConsumerRegisters>();
    typename Loop::Result r;
    Loop::consume(p, sm, kb, warpgroup - 1, r);
    store_key_gradients<Cfg, Loop>(p, sm, kb, warpgroup - 1, r);
  }
}

// One thread per row of a 64-row query block.
template <class Element, int HeadDim>
__global__ void __launch_bounds__(kBwdQueryRows) sta_backward_preprocess(const __grid_constant__ StaBackwardParams p) {
  const int64_t chunk_in_launch = blockIdx.x;
  const int qblock = int(chunk_in_launch % p.num_query_blocks);
  const int64_t bh = chunk_in_launch / p.num_query_blocks;
  const int batch = p.batch_offset + int(bh / p.q_heads), head = int(bh % p.q_heads);
  const int64_t chunk = (int64_t(batch) * p.q_heads + head) * p.num_query_blocks + qblock;
  const int row = threadIdx.x;
  int64_t token;
  float dsum = 0.0f, lse_log2 = INFINITY;
  if (query_row_token(p, qblock, row, token)) {
    const auto* o = reinterpret_cast<const uint4*>(static_cast<const Element*>(p.out) + batch * p.out_strides[0] +
                                                   head * p.out_strides[1] + token * p.out_strides[2]);
    const auto* d = reinterpret_cast<const uint4*>(static_cast<const Element*>(p.grad_out) +
                                                   batch * p.grad_out_strides[0] + head * p.grad_out_strides[1] +
                                                   token * p.grad_out_strides[2]);
#pragma unroll
    for (int i = 0; i < HeadDim / 8; ++i) {
      const uint4 a = o[i], b = d[i];
      const uint32_t av[4] = {a.x, a.y, a.z, a.w}, bv[4] = {b.x, b.y, b.z, b.w};
#pragma unroll
      for (int j = 0; j < 4; ++j) {
        const float2 x = to_float2<Element>(av[j]), y = to_float2<Element>(bv[j]);
        dsum = fmaf(x.x, y.x, fmaf(x.y, y.y, dsum));
      }
    }
    const float lse = p.lse[(int64_t(batch) * p.q_heads + head) * p.num_tokens + token];
    lse_log2 = lse == -INFINITY ? INFINITY : lse * 1.4426950408889634f;  // a row that saw no key has no gradient
  }
  p.dsum[chunk * kBwdQueryRows + row] = dsum;
  p.lse_log2[chunk * kBwdQueryRows + row] = lse_log2;
}

// One CTA per query block: 128 threads walk the two dQ halves in fragment order.
template <class Element, int HeadDim>
__global__ void __launch_bounds__(128) sta_backward_postprocess(const __grid_constant__ StaBackwardParams p) {
  const int64_t chunk_in_launch = blockIdx.x;
  const int qblock = int(chunk_in_launch % p.num_query_blocks);
  const int64_t bh = chunk_in_launch / p.num_query_blocks;
  const int batch = p.batch_offset + int(bh / p.q_heads), head = int(bh % p.q_heads);
  const int64_t chunk = (int64_t(batch) * p.q_heads + head) * p.num_query_blocks + qblock;
  const float2* acc = reinterpret_cast<const float2*>(p.dq_accum + chunk * kBwdQueryRows * HeadDim);
  Element* dq = static_cast<Element*>(p.grad_q) + batch * p.grad_q_strides[0] + head * p.grad_q_strides[1];
  constexpr int kPairsPerHalf = kBwdQueryRows * HeadDim / 4;
#pragma unroll 4
  for (int pair = threadIdx.x; pair < 2 * kPairsPerHalf; pair += 128) {
    const int half = pair / kPairsPerHalf;
    int row, col;
    dq_fragment_position<HeadDim>(pair % kPairsPerHalf, row, col);
    int64_t token;
    if (!query_row_token(p, qblock, row, token)) continue;
    const float2 v = acc[pair];
    float f[2] = {v.x * p.scale, v.y * p.scale};
    uint32_t packed[1];
    pack_fragment<Element>(f, packed);
    *reinterpret_cast<uint32_t*>(dq + token * p.grad_q_strides[2] + half * HeadDim / 2 + col) = packed[0];
  }
}

template <class Element, int HeadDim, bool Deterministic>
void launch_backward(const kernels::StaBackwardLaunch& l, cudaStream_t stream) {
  using Cfg = StaBackwardConfig<Element, HeadDim, Deterministic>;
  launch_kernel("sta_backward: preprocess", sta_backward_preprocess<Element, HeadDim>, l.num_query_chunks,
                kBwdQueryRows, 0, stream, l.params);
  launch_with_storage<BackwardStorage<Cfg>>("sta_backward: main", sta_backward_kernel<Cfg>, l.num_key_ctas,
                                            Cfg::kThreads, stream, l.params);
  launch_kernel("sta_backward: postprocess", sta_backward_postprocess<Element, HeadDim>, l.num_query_chunks, 128, 0,
                stream, l.params);
}

}  // namespace tileattn::sm90

// Defines launch_sta_backward_sm90<DTYPE, HEAD_DIM> (fast and deterministic variants) for one (dtype, head dim).
#define TILEATTN_STA_BACKWARD_INSTANCE(DTYPE, ELEMENT, HEAD_DIM)                                                  \
  namespace tileattn::kernels {                                                                                 \
  template <>                                                                                                   \
  void launch_sta_backward_sm90<DType::DTYPE, HEAD_DIM>(const StaBackwardLaunch& launch, bool deterministic,    \
                                                        CUstream_st* stream) {                                  \
    if (deterministic) sm90::launch_backward<ELEMENT, HEAD_DIM, true>(launch, stream);                          \
    else sm90::launch_backward<ELEMENT, HEAD_DIM, false>(launch, stream);                                       \
  }                                                                                                             \
  }

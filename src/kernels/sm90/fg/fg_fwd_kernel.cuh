#pragma once
// The FG-Attn forward kernel for Hopper: the STA forward's structure (1 producer + 2 consumer warpgroups, mbarrier
// pipeline, wgmma, online softmax, TMA epilogue) with a gathering producer (fg/producer.cuh). One CTA per
// (batch, head, 128 query rows), heads outermost so CTAs resident together read the same K/V.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <string>

#include "kernels/sm90/common/consumer.cuh"
#include "kernels/sm90/common/epilogue.cuh"
#include "kernels/sm90/common/launch.cuh"
#include "kernels/sm90/fg/producer.cuh"
#include "tileattn/error.hpp"

namespace tileattn::sm90 {

template <class Element_, int HeadDim, int Stages>
struct FgForwardConfig {
  using Element = Element_;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kBlockN = kFgKeyRows;
  static constexpr int kStages = Stages;
  static constexpr bool kSchedulerBarrier = true;
  static constexpr int kThreads = 384;
  // The gathering warps compute addresses and need more than the STA producer's 24 registers. A CTA owns the
  // 384 x 168 registers it was launched with: 128 x 40 + 256 x 232 must not exceed them, or setmaxnreg.inc waits forever.
  static constexpr int kProducerRegisters = 40;
  static constexpr int kConsumerRegisters = 232;
  static_assert(128 * kProducerRegisters + 256 * kConsumerRegisters <= 384 * 168,
                "setmaxnreg: the warpgroups' registers must fit the 384 x 168 the CTA is launched with");
};

template <class Cfg>
struct FgSharedStorage {
  static constexpr int kQueryElems = kernels::kQueryBlockRows * Cfg::kHeadDim;
  static constexpr int kKeyElems = Cfg::kBlockN * Cfg::kHeadDim;
  alignas(1024) typename Cfg::Element q[kQueryElems];
  alignas(1024) typename Cfg::Element k[Cfg::kStages][kKeyElems];
  alignas(1024) typename Cfg::Element v[Cfg::kStages][kKeyElems];
  alignas(16) uint8_t member[Cfg::kStages][Cfg::kBlockN];  // per gathered row: the sub-blocks that may see it
  alignas(4) uint8_t mask_flag[Cfg::kStages][4];  // per producer warp: some row of its slice is not seen by every sub-block
  uint64_t q_full;
  uint64_t k_full[Cfg::kStages], k_empty[Cfg::kStages];
  uint64_t v_full[Cfg::kStages], v_empty[Cfg::kStages];
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1) fg_forward_kernel(const __grid_constant__ FgKernelParams p) {
  using Consumer = ForwardConsumer<Cfg>;
  auto& sm = shared_storage<FgSharedStorage<Cfg>>();
  const FgQueryBlock q = fg_query_block(p, blockIdx.x);

  // K full: the TMA bytes and lane 0's arrival, or the 128 producer threads' cp.async arrivals + each warp's lane 0
  // releasing its membership bytes; V full: likewise without the bytes. K empty: every consumer thread (they read those bytes).
  const bool tma = p.gather.tma_rows != 0;
  init_pipeline_barriers<Cfg::kStages>(sm, tma ? 1 : 4 * 33, tma ? 1 : 128, 256);

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    registers_decrease<Cfg::kProducerRegisters>();
    FgProducer<Cfg>::produce(p, sm, q);
  } else {
    registers_increase<Cfg::kConsumerRegisters>();
    typename Consumer::Result r;
    FgKeyTiles<Cfg::kBlockN> tiles(p, q, warpgroup - 1);
    Consumer::consume(sm, tiles, p.attention.scale_log2, warpgroup - 1, r);
    const TokenRowsOutput out{p.attention, q.batch, q.head, q.first_row()};
    Epilogue<Cfg>::store(p.attention, sm, out, warpgroup - 1, r);
  }
}

template <class Cfg>
void launch_fg(const FgKernelParams& params, int64_t num_ctas, cudaStream_t stream) {
  launch_with_storage<FgSharedStorage<Cfg>>("fg_forward", fg_forward_kernel<Cfg>, num_ctas, Cfg::kThreads, stream,
                                            params);
}

}  // namespace tileattn::sm90

// Defines launch_fg_forward_sm90<DTYPE, HEAD_DIM>: head dim 128 has three stages of 128 gathered key rows (224 KB of
// shared memory with the Q tile), head dim 64 four.
#define TILEATTN_FG_FORWARD_INSTANCE(DTYPE, ELEMENT, HEAD_DIM)                                                     \
  namespace tileattn::kernels {                                                                                 \
  template <>                                                                                                   \
  void launch_fg_forward_sm90<DType::DTYPE, HEAD_DIM>(const FgKernelParams& params, int64_t num_ctas,           \
                                                      CUstream_st* stream) {                                    \
    sm90::launch_fg<sm90::FgForwardConfig<ELEMENT, HEAD_DIM, HEAD_DIM == 128 ? 3 : 4>>(params, num_ctas, stream); \
  }                                                                                                             \
  }

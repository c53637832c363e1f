#pragma once
// The STA forward kernel for Hopper: warp-specialised (1 producer + 2 consumer warpgroups), TMA + mbarrier
// pipeline, wgmma, exp2 online softmax. See mainloop.cuh for the pipeline and sta_scheduler.cuh for the plan walk.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/sm90/epilogue.cuh"
#include "kernels/sm90/launch.cuh"
#include "kernels/sm90/mainloop.cuh"
#include "tileattn/error.hpp"

namespace tileattn::sm90 {

template <class Element_, int HeadDim, int BlockN, int Stages, bool SchedulerBarrier>
struct StaForwardConfig {
  using Element = Element_;
  static constexpr int kHeadDim = HeadDim;
  static constexpr int kBlockN = BlockN;  // key rows per pipeline stage
  static constexpr int kStages = Stages;
  static constexpr bool kSchedulerBarrier = SchedulerBarrier;
  static constexpr int kThreads = 384;  // producer warpgroup + 2 consumer warpgroups
  static constexpr int kProducerRegisters = 24;
  static constexpr int kConsumerRegisters = 240;
  static constexpr int kBarrierEpilogueBase = 1;   // named barriers 1, 2
  static constexpr int kBarrierSchedulerBase = 3;  // named barriers 3, 4
  static_assert(128 * kProducerRegisters + 256 * kConsumerRegisters <= 384 * 168,
                "setmaxnreg: the warpgroups' registers must fit the 384 x 168 the CTA is launched with");
};

template <class Cfg>
struct SharedStorage {
  static constexpr int kQueryElems = kernels::kQueryBlockRows * Cfg::kHeadDim;
  static constexpr int kKeyElems = Cfg::kBlockN * Cfg::kHeadDim;
  alignas(1024) typename Cfg::Element q[kQueryElems];  // Q tile; reused for O in the epilogue
  alignas(1024) typename Cfg::Element k[Cfg::kStages][kKeyElems];
  alignas(1024) typename Cfg::Element v[Cfg::kStages][kKeyElems];
  uint64_t q_full;
  uint64_t k_full[Cfg::kStages], k_empty[Cfg::kStages];
  uint64_t v_full[Cfg::kStages], v_empty[Cfg::kStages];
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1) sta_forward_kernel(const __grid_constant__ StaKernelParams p) {
  using Loop = Mainloop<Cfg>;
  extern __shared__ uint8_t smem_raw[];
  auto& sm = *reinterpret_cast<SharedStorage<Cfg>*>((reinterpret_cast<uintptr_t>(smem_raw) + 1023) & ~uintptr_t(1023));

  const QueryBlock q = query_block_of(p, blockIdx.x);
  if (q.empty) return;  // uniform across the CTA, before any barrier

  Loop::init_barriers(sm);  // full: the producer (TMA bytes); empty: the 8 consumer warps

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    registers_decrease<Cfg::kProducerRegisters>();
    if (threadIdx.x == 0) Loop::produce(p, sm, q);
  } else {
    registers_increase<Cfg::kConsumerRegisters>();
    typename Loop::Result r;
    StaKeyTiles<Cfg::kBlockN> tiles(p, q);
    Loop::consume(sm, tiles, p.scale_log2, warpgroup - 1, r);
    Epilogue<Cfg, Loop>::store(p, sm, q, warpgroup - 1, r);
  }
}

template <class Cfg>
void launch(const StaKernelParams& params, int64_t num_ctas, cudaStream_t stream) {
  constexpr int kSmem = sizeof(SharedStorage<Cfg>) + 1024;  // + alignment slack
  static_assert(kSmem <= 227 * 1024, "shared memory of the configuration exceeds the 227 KB an H100 CTA can have");
  launch_kernel("sta_forward", sta_forward_kernel<Cfg>, num_ctas, Cfg::kThreads, kSmem, stream, params);
}

}  // namespace tileattn::sm90

// Defines launch_sta_forward_sm90<DTYPE, HEAD_DIM> for one (dtype, head dim); each sta_fwd_*.cu holds one, so the
// instantiations compile in parallel. Head dim 128 has 192-row key blocks where the tile allows (see choose_block_n)
// and 128-row ones elsewhere; head dim 64 has 128-row key blocks and 4 stages (its tiles are half the size).
#define TILEATTN_STA_FORWARD_INSTANCE(DTYPE, ELEMENT, HEAD_DIM)                                                   \
  namespace tileattn::kernels {                                                                                 \
  template <>                                                                                                   \
  void launch_sta_forward_sm90<DType::DTYPE, HEAD_DIM>(const StaKernelParams& params, int64_t num_ctas,         \
                                                       int block_n, CUstream_st* stream) {                      \
    using Wide = sm90::StaForwardConfig<ELEMENT, HEAD_DIM, 192, 2, true>;                                        \
    using Narrow = sm90::StaForwardConfig<ELEMENT, HEAD_DIM, 128, HEAD_DIM == 128 ? 2 : 4, true>;               \
    if constexpr (HEAD_DIM == 128) {                                                                            \
      if (block_n == 192) return sm90::launch<Wide>(params, num_ctas, stream);                                  \
    }                                                                                                           \
    if (block_n == 128) return sm90::launch<Narrow>(params, num_ctas, stream);                                  \
    throw CudaError("sta_forward: no kernel for head dim " #HEAD_DIM " with key blocks of " +                 \
                      std::to_string(block_n) + " rows");                                                       \
  }                                                                                                             \
  }


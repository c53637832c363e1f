#pragma once
// The STA forward kernel for Hopper: warp-specialised (1 producer + 2 consumer warpgroups), TMA + mbarrier
// pipeline, wgmma, exp2 online softmax. See common/consumer.cuh for the pipeline, sta/producer.cuh for what it
// loads, sta/tile_scheduler.cuh for the CTA order and sta/window_walk.cuh for the plan walk.
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include "kernels/sm90/common/consumer.cuh"
#include "kernels/sm90/common/epilogue.cuh"
#include "kernels/sm90/common/launch.cuh"
#include "kernels/sm90/sta/producer.cuh"
#include "kernels/sm90/sta/tile_scheduler.cuh"
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

// Where a query block's output rows go: text blocks are consecutive tokens; video blocks are whole tile planes of
// the video map, a warpgroup's 64 rows starting query_frames / 2 frames further.
struct StaQueryOutput {
  const StaKernelParams& p;
  const QueryBlock& q;
  int batch, head;

  __device__ __forceinline__ StaQueryOutput(const StaKernelParams& params, const QueryBlock& block)
      : p(params), q(block), batch(block.batch), head(block.head) {}
  __device__ __forceinline__ TokenRowsOutput token_rows() const { return {p.attention, batch, head, q.text_row}; }
  __device__ __forceinline__ void store(const void* src, int atom, int warpgroup) const {
    if (q.text)
      token_rows().store(src, atom, warpgroup);
    else
      tma_store_5d(&p.o_video, src, atom * 64, q.x1, q.x2, q.x3 + warpgroup * (p.sta.query.frames / 2),
                   batch * p.attention.q_heads + head);
  }
  __device__ __forceinline__ bool token(int row, int64_t& token) const {
    if (q.text) return token_rows().token(row, token);
    const detail::TileCoord r = p.sta.grid.row_in_tile(row);
    const detail::VideoMapExtents& e = p.sta.extents;
    const bool valid = q.x1 + r.w < e.x1 && q.x2 + r.h < e.x2 && q.x3 + r.t < e.x3;
    token = e.token(q.x1 + r.w, q.x2 + r.h, q.x3 + r.t);
    return valid;
  }
};

template <class Cfg>
__global__ void __launch_bounds__(Cfg::kThreads, 1) sta_forward_kernel(const __grid_constant__ StaKernelParams p) {
  using Consumer = ForwardConsumer<Cfg>;
  auto& sm = shared_storage<SharedStorage<Cfg>>();

  const QueryBlock q = query_block_of(p, blockIdx.x);
  if (q.empty) return;  // uniform across the CTA, before any barrier

  init_pipeline_barriers<Cfg::kStages>(sm);  // full: the producer (TMA bytes); empty: the 8 consumer warps

  const int warpgroup = threadIdx.x / 128;
  if (warpgroup == 0) {
    registers_decrease<Cfg::kProducerRegisters>();
    if (threadIdx.x == 0) StaProducer<Cfg>::produce(p, sm, q);
  } else {
    registers_increase<Cfg::kConsumerRegisters>();
    typename Consumer::Result r;
    StaKeyTiles<Cfg::kBlockN> tiles(p, q);
    Consumer::consume(sm, tiles, p.attention.scale_log2, warpgroup - 1, r);
    Epilogue<Cfg>::store(p.attention, sm, StaQueryOutput(p, q), warpgroup - 1, r);
  }
}

template <class Cfg>
void launch(const StaKernelParams& params, int64_t num_ctas, cudaStream_t stream) {
  launch_with_storage<SharedStorage<Cfg>>("sta_forward", sta_forward_kernel<Cfg>, num_ctas, Cfg::kThreads, stream,
                                          params);
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


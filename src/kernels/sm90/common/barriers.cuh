#pragma once
// The named hardware barriers (bar.sync ids) of the kernels, in one place so that no two uses of an id in one kernel
// can collide. Id 0 is __syncthreads. The forward kernels (STA, FG) and the backward kernel are separate launches,
// so their ids overlap; a "per warpgroup" barrier takes id base + consumer warpgroup (0 or 1).
#include "kernels/sm90/common/hopper_primitives.cuh"

namespace tileattn::sm90 {

enum class NamedBarrier : int {
  // Forward.
  kEpilogue = 1,       // per warpgroup (1, 2), 128 threads: its O rows are in shared memory
  kSchedulerTurn = 3,  // per warpgroup (3, 4), 256 threads: the consumer warpgroups take turns issuing GEMMs
  // Backward.
  kDsReady = 1,        // 256 threads: both warpgroups' dS^T rows are in shared memory / both are done with K and V
  kDqStage = 2,        // per warpgroup (2, 3), 128 threads: its dQ staging buffer / dK, dV tiles
};

__device__ __forceinline__ int barrier_id(NamedBarrier b, int warpgroup = 0) { return int(b) + warpgroup; }

__device__ __forceinline__ void named_barrier_sync(NamedBarrier b, int threads, int warpgroup = 0) {
  named_barrier_sync(barrier_id(b, warpgroup), threads);
}
__device__ __forceinline__ void named_barrier_arrive(NamedBarrier b, int threads, int warpgroup = 0) {
  named_barrier_arrive(barrier_id(b, warpgroup), threads);
}

}  // namespace tileattn::sm90

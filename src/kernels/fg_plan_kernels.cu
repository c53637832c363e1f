// GPU kernels on fine-grained plans: the sub-block merge of fg_forward (M < 128) and the synthetic mask builder.
// Both write ascending rows with a block-wide scan, so no sort is needed.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/fg_kernel_params.hpp"
#include "kernels/fg_plan_kernels.hpp"
#include "kernels/synthetic_mask_rule.hpp"
#include "tileattn/error.hpp"

namespace tileattn::kernels {
namespace {

constexpr int kThreads = 256;
constexpr int kMergeChunk = 16384;  // key groups per pass of the merge (one membership byte each in shared memory)

void check_launch(const char* what) {
  const cudaError_t err = cudaGetLastError();
  if (err != cudaSuccess) throw CudaError(std::string(what) + ": launch failed: " + cudaGetErrorString(err));
}

// Index of the first entry >= value in the ascending list [first, first + n).
__device__ int64_t lower_bound(const int32_t* first, int64_t n, int64_t value) {
  int64_t lo = 0, hi = n;
  while (lo < hi) {
    const int64_t mid = (lo + hi) / 2;
    if (first[mid] < value) lo = mid + 1; else hi = mid;
  }
  return lo;
}

// One CTA per merged row, over the group range in chunks: the sub-blocks OR their bits into a byte per group in
// shared memory, then a block scan compacts the non-zero bytes in order.
__global__ void __launch_bounds__(kThreads) merge_subblock_rows(const DeviceColumnPlan plan, const FgMergedPlan out,
                                                                int query_blocks_128) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  __shared__ uint32_t member[kMergeChunk / 4];
  __shared__ int64_t begin[8], end[8];
  const int subblocks = kQueryBlockRows / int(plan.shape.query_block);
  const int64_t row = blockIdx.x, head = row / query_blocks_128, block = row % query_blocks_128;
  const int64_t plan_blocks = (plan.shape.tokens + plan.shape.query_block - 1) / plan.shape.query_block;
  const int64_t groups = (plan.shape.tokens + plan.shape.key_group - 1) / plan.shape.key_group;
  int64_t written = 0;
  for (int64_t c0 = 0; c0 < groups; c0 += kMergeChunk) {
    for (int i = threadIdx.x; i < kMergeChunk / 4; i += kThreads) member[i] = 0;
    if (threadIdx.x < subblocks) {
      const int j = threadIdx.x;
      const int64_t qb = block * subblocks + j;
      begin[j] = end[j] = 0;
      if (qb < plan_blocks) {
        const int64_t r = head * plan_blocks + qb;
        const int32_t* list = plan.table + r * plan.capacity;
        int64_t n = plan.counts[r];
        n = n < 0 ? 0 : (n > plan.capacity ? plan.capacity : n);
        // One chunk covers every group: take the whole row (a malformed, non-ascending row then loses nothing).
        const bool whole = groups <= kMergeChunk;
        begin[j] = r * plan.capacity + (whole ? 0 : lower_bound(list, n, c0));
        end[j] = r * plan.capacity + (whole ? n : lower_bound(list, n, c0 + kMergeChunk));
      }
    }
    __syncthreads();
    for (int j = 0; j < subblocks; ++j)
      for (int64_t e = begin[j] + threadIdx.x; e < end[j]; e += kThreads) {
        const int64_t g = plan.table[e] - c0;
        if (g >= 0 && g < kMergeChunk && g + c0 < groups) atomicOr(&member[g / 4], 1u << (8 * (g % 4) + j));
      }
    __syncthreads();
    // Thread t owns bytes [t * 64, t * 64 + 64) of the chunk.
    constexpr int kPerThread = kMergeChunk / kThreads;
    const uint8_t* bytes = reinterpret_cast<const uint8_t*>(member) + threadIdx.x * kPerThread;
    int mine = 0;
    for (int b = 0; b < kPerThread; ++b) mine += bytes[b] != 0;
    int offset, total;
    Scan(scan).ExclusiveSum(mine, offset, total);
    int64_t slot = row * out.capacity + written + offset;
    for (int b = 0; b < kPerThread; ++b) {
      const int64_t g = c0 + threadIdx.x * kPerThread + b;
      if (bytes[b] != 0 && written + offset < out.capacity) {
        out.table[slot] = int32_t(g);
        out.membership[slot] = bytes[b];
        ++slot, ++offset;
      }
    }
    written += total;
    __syncthreads();  // before the next chunk clears `member` and reuses `scan`
  }
  if (threadIdx.x == 0) out.counts[row] = int32_t(written < out.capacity ? written : out.capacity);
}

// One warp per plan row (kRowsPerCta rows per CTA), no block-wide synchronisation. local: the row's runs of kept
// groups straight from the box (SyntheticRule::local_row_runs), O(box lines + kept groups). random: every group's
// hash, compacted in order with a warp ballot. Then -1 up to the capacity and the count.
constexpr int kRowsPerCta = kThreads / 32;

__global__ void __launch_bounds__(kThreads) synthetic_plan(const SyntheticRule s, const DeviceColumnPlan plan, int64_t rows) {
  const int lane = int(threadIdx.x & 31);
  const int64_t row = int64_t(blockIdx.x) * kRowsPerCta + (threadIdx.x >> 5);
  if (row >= rows) return;
  const int64_t blocks = (s.tokens + s.query_block - 1) / s.query_block, groups = s.groups();
  const int64_t head = row / blocks, qb = row % blocks;
  const int64_t capacity = plan.capacity;
  int32_t* out = plan.table + row * capacity;
  int64_t written = 0;
  if (s.kind == int(SyntheticMask::local)) {
    written = s.local_row_runs(qb, [&](int64_t first, int64_t end, int64_t slot) {
      const int64_t stop = end - first < capacity - slot ? end - first : capacity - slot;  // may be <= 0
      for (int64_t j = lane; j < stop; j += 32) out[slot + j] = int32_t(first + j);
    });
  } else {
    const SyntheticRule::Row r = s.row(qb);
    const uint32_t below = (1u << lane) - 1u;
    for (int64_t g0 = 0; g0 < groups && written < capacity; g0 += 32) {
      const int64_t g = g0 + lane;
      const bool keep = g < groups && s.keeps(head, r, qb, g);
      const uint32_t mask = __ballot_sync(0xffffffffu, keep);
      const int64_t slot = written + __popc(mask & below);
      if (keep && slot < capacity) out[slot] = int32_t(g);
      written += __popc(mask);
    }
  }
  const int64_t count = written < capacity ? written : capacity;
  for (int64_t i = count + lane; i < capacity; i += 32) out[i] = -1;
  if (lane == 0) plan.counts[row] = int32_t(count);
}

}  // namespace

FgMergedPlan fg_merged_plan(void* workspace, const FgWorkspaceLayout& l) {
  char* base = static_cast<char*>(workspace);
  return {reinterpret_cast<int32_t*>(base + l.table_offset), reinterpret_cast<uint8_t*>(base + l.membership_offset),
          reinterpret_cast<int32_t*>(base + l.counts_offset), l.capacity};
}

void launch_merge_subblock_rows(const DeviceColumnPlan& plan, const FgMergedPlan& out, cudaStream_t stream) {
  const int64_t blocks_128 = (plan.shape.tokens + kQueryBlockRows - 1) / kQueryBlockRows;
  const int64_t rows = plan.shape.heads * blocks_128;
  if (rows <= 0) return;
  merge_subblock_rows<<<dim3(unsigned(rows)), kThreads, 0, stream>>>(plan, out, int(blocks_128));
  check_launch("fg_forward: sub-block merge");
}

}  // namespace tileattn::kernels

namespace tileattn {

void build_synthetic_column_plan(const DeviceColumnPlan& plan, const SyntheticMaskOptions& o, StreamHandle stream) {
  validate_device_column_plan(plan);
  const kernels::SyntheticRule s = kernels::make_synthetic_rule(plan.shape, o);
  const int64_t ctas = (plan.shape.num_rows() + kernels::kRowsPerCta - 1) / kernels::kRowsPerCta;
  if (ctas >= (int64_t{1} << 31)) throw_argument_error("tokens", "too many plan rows for one launch");
  if (ctas == 0) return;
  kernels::synthetic_plan<<<dim3(unsigned(ctas)), kernels::kThreads, 0, static_cast<cudaStream_t>(stream)>>>(
      s, plan, plan.shape.num_rows());
  kernels::check_launch("build_synthetic_column_plan");
}

}  // namespace tileattn

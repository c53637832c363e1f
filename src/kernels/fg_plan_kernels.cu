// GPU kernels on fine-grained plans: the sub-block merge of fg_forward (M < 128) and the synthetic mask builder.
// Both write ascending rows with a block-wide scan, so no sort is needed.
#include <cub/block/block_scan.cuh>

#include <algorithm>
#include <cmath>
#include <string>

#include "kernels/fg_kernel_params.hpp"
#include "kernels/fg_plan_kernels.hpp"
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

__device__ __forceinline__ uint64_t mix64(uint64_t x) {  // splitmix64 finaliser
  x += 0x9E3779B97F4A7C15ull;
  x = (x ^ (x >> 30)) * 0xBF58476D1CE4E5B9ull;
  x = (x ^ (x >> 27)) * 0x94D049BB133111EBull;
  return x ^ (x >> 31);
}

struct SyntheticParams {
  DeviceColumnPlan plan;
  int kind;
  double keep;  // 1 - sparsity
  uint64_t seed;
  int64_t video_t, video_h, video_w, num_video;
  int64_t box_t, box_h, box_w;
  bool keep_diagonal;
};

__device__ bool synthetic_keeps(const SyntheticParams& s, int64_t head, int64_t qb, int64_t g, int64_t box0_t,
                                int64_t box0_h, int64_t box0_w, bool text_query) {
  const int64_t M = s.plan.shape.query_block, N = s.plan.shape.key_group, tokens = s.plan.shape.tokens;
  const int64_t first = g * N, last = (first + N < tokens ? first + N : tokens) - 1;  // the group's positions
  const int64_t q_first = qb * M, q_last = (q_first + M < tokens ? q_first + M : tokens) - 1;
  if (s.keep_diagonal && first <= q_last && q_first <= last) return true;
  if (s.kind == int(SyntheticMask::random)) {
    const uint64_t h = mix64(s.seed ^ mix64((uint64_t(head) << 40) ^ (uint64_t(qb) << 20) ^ mix64(uint64_t(g))));
    return double(h >> 11) * 0x1.0p-53 < s.keep;
  }
  if (text_query || last >= s.num_video) return true;  // text queries see all; every group holding text is kept
  for (int64_t p = first; p <= last; ++p) {
    const int64_t w = p % s.video_w, h = (p / s.video_w) % s.video_h, t = p / (s.video_w * s.video_h);
    if (t >= box0_t && t < box0_t + s.box_t && h >= box0_h && h < box0_h + s.box_h && w >= box0_w && w < box0_w + s.box_w)
      return true;
  }
  return false;
}

__device__ int64_t box_start(int64_t centre, int64_t side, int64_t extent) {
  int64_t start = centre - side / 2;
  start = start < 0 ? 0 : start;
  return start + side > extent ? extent - side : start;
}

// One CTA per plan row: groups in chunks of kThreads, compacted in order by a block scan.
__global__ void __launch_bounds__(kThreads) synthetic_plan(const SyntheticParams s) {
  using Scan = cub::BlockScan<int, kThreads>;
  __shared__ typename Scan::TempStorage scan;
  const int64_t blocks = (s.plan.shape.tokens + s.plan.shape.query_block - 1) / s.plan.shape.query_block;
  const int64_t groups = (s.plan.shape.tokens + s.plan.shape.key_group - 1) / s.plan.shape.key_group;
  const int64_t row = blockIdx.x, head = row / blocks, qb = row % blocks;
  const int64_t M = s.plan.shape.query_block, tokens = s.plan.shape.tokens;
  const int64_t centre = qb * M + ((qb * M + M < tokens ? M : tokens - qb * M) / 2);
  const bool text_query = centre >= s.num_video;
  int64_t b_t = 0, b_h = 0, b_w = 0;
  if (s.kind == int(SyntheticMask::local) && !text_query) {
    const int64_t w = centre % s.video_w, h = (centre / s.video_w) % s.video_h, t = centre / (s.video_w * s.video_h);
    b_t = box_start(t, s.box_t, s.video_t), b_h = box_start(h, s.box_h, s.video_h), b_w = box_start(w, s.box_w, s.video_w);
  }
  int32_t* out = s.plan.table + row * s.plan.capacity;
  int64_t written = 0;
  for (int64_t g0 = 0; g0 < groups && written < s.plan.capacity; g0 += kThreads) {
    const int64_t g = g0 + threadIdx.x;
    const int keep = g < groups && synthetic_keeps(s, head, qb, g, b_t, b_h, b_w, text_query) ? 1 : 0;
    int offset, total;
    Scan(scan).ExclusiveSum(keep, offset, total);
    if (keep && written + offset < s.plan.capacity) out[written + offset] = int32_t(g);
    written += total;
    __syncthreads();
  }
  const int64_t count = written < s.plan.capacity ? written : s.plan.capacity;
  for (int64_t i = count + threadIdx.x; i < s.plan.capacity; i += kThreads) out[i] = -1;
  if (threadIdx.x == 0) s.plan.counts[row] = int32_t(count);
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
  if (!(o.sparsity >= 0.0 && o.sparsity < 1.0))
    throw_argument_error("sparsity", "must be in [0, 1), got " + std::to_string(o.sparsity));
  if (o.kind != SyntheticMask::random && o.kind != SyntheticMask::local)
    throw_argument_error("kind", "must be SyntheticMask::random or SyntheticMask::local");
  kernels::SyntheticParams s{};
  s.plan = plan, s.kind = int(o.kind), s.keep = 1.0 - o.sparsity, s.seed = o.seed, s.keep_diagonal = o.keep_diagonal;
  s.video_t = std::max<int64_t>(o.video.t, 1), s.video_h = std::max<int64_t>(o.video.h, 1);
  s.video_w = std::max<int64_t>(o.video.w, 1);
  s.num_video = plan.shape.tokens;
  if (o.kind == SyntheticMask::local) {
    if (o.video.t < 1 || o.video.h < 1 || o.video.w < 1)
      throw_argument_error("video", "the local mask needs a video shape with every side >= 1");
    if (o.text_len < 0 || o.video.volume() + o.text_len != plan.shape.tokens)
      throw_argument_error("video", "video volume + text_len must equal the plan's tokens (" +
                                        std::to_string(plan.shape.tokens) + ")");
    s.num_video = o.video.volume();
    const double f = std::cbrt(1.0 - o.sparsity);
    auto side = [&](int64_t extent) { return std::clamp<int64_t>(std::llround(f * double(extent)), 1, extent); };
    s.box_t = side(o.video.t), s.box_h = side(o.video.h), s.box_w = side(o.video.w);
  }
  const int64_t rows = plan.shape.num_rows();
  if (rows >= (int64_t{1} << 31)) throw_argument_error("tokens", "too many plan rows for one launch");
  kernels::synthetic_plan<<<dim3(unsigned(rows)), kernels::kThreads, 0, static_cast<cudaStream_t>(stream)>>>(s);
  kernels::check_launch("build_synthetic_column_plan");
}

}  // namespace tileattn

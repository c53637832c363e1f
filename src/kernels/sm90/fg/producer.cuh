#pragma once
// The FG-Attn side of the forward mainloop: what differs from STA is only what is loaded and how.
//  Producer (warpgroup 0): warp 0 loads the Q tile by TMA. The key rows of the CTA's list are gathered by all four
//  producer warps together, tile by tile, warp w copying rows [32 w, 32 w + 32) of each 128-row tile with 16-byte
//  cp.async copies straight into the 128-byte-swizzled layout wgmma reads (the layout TMA would write). Rows no query
//  of the CTA may see (past the list, past the tokens, or in no sub-block's list) are zero-filled and flagged. Each
//  lane's copies arrive on the stage's full barrier when they land (cp.async.mbarrier.arrive.noinc), so a warp never
//  waits for its own copies; as in CUTLASS's cp.async + wgmma mainloops, the consumers read the tiles with wgmma right
//  after the barrier. With N a multiple of 8 the rows come in 8-row runs of one group each, and warps
//  0 .. kStages-1 each own one stage and issue one TMA box of 8 rows per run and head-dim atom instead (16 lanes x 2
//  atoms per tile), which keeps far more bytes in flight than the LSU path.
//  Consumers: the forward's (common/consumer.cuh), with FgKeyTiles as their view of the plan: a tile is masked
//  only when the producer flagged it.
#include "kernels/fg_kernel_params.hpp"
#include "kernels/sm90/common/consumer.cuh"
#include "kernels/sm90/common/fragment.cuh"
#include "kernels/sm90/common/gemm.cuh"
#include "kernels/sm90/common/hopper_primitives.cuh"

namespace tileattn::sm90 {

using kernels::AttentionParams;
using kernels::FgGatherParams;
using kernels::FgKernelParams;
using kernels::kFgKeyRows;

// One CTA's query block: 128 consecutive token rows of one (batch, head); CTAs are numbered head-major, so CTAs
// resident together read the same K/V.
struct FgQueryBlock {
  int batch;  // within the launch
  int head;
  int index;  // 128-row query block within (batch, head)
  __device__ __forceinline__ int first_row() const { return index * kernels::kQueryBlockRows; }
};

__device__ __forceinline__ FgQueryBlock fg_query_block(const FgKernelParams& p, int64_t cta) {
  const int blocks = p.gather.query_blocks;
  const int64_t bh = cta / blocks;
  return {int(bh / p.attention.q_heads), int(bh % p.attention.q_heads), int(cta % blocks)};
}

// One CTA's gather list: row i of it is key position groups[i / N] * N + i % N, for i < length.
struct FgRow {
  const int32_t* groups;
  const uint8_t* membership;  // null: every row of the CTA visits every listed group
  int length;  // capped at tiles * 128 (rows past the tokens are masked in any case)
  int tiles;  // >= 1: a row that visits nothing still runs one fully masked tile (O = 0, LSE = -inf)
};

__device__ __forceinline__ FgRow fg_row(const FgGatherParams& g, int head, int query_block) {
  const int64_t r = int64_t(head) * g.query_blocks + query_block;
  int64_t count = __ldg(g.counts + r);
  count = count < 0 ? 0 : (count > g.capacity ? g.capacity : count);
  FgRow row;
  row.groups = g.table + r * g.capacity;
  row.membership = g.membership != nullptr ? g.membership + r * g.capacity : nullptr;
  int64_t length = count * g.key_group;
  if (count > 0 && __ldg(row.groups + count - 1) == g.num_key_groups - 1) length -= g.key_group - g.last_group_size;
  const int64_t cap = int64_t(g.num_key_groups) * g.key_group;  // no ascending list is longer
  row.length = int(length < cap ? length : cap);
  row.tiles = row.length < 1 ? 1 : (row.length + kFgKeyRows - 1) / kFgKeyRows;
  return row;
}

template <class Cfg>
struct FgProducer {
  using Tiles = ForwardTiles<Cfg>;
  static constexpr int kStages = Cfg::kStages;
  static constexpr int kChunksPerRow = Cfg::kHeadDim * 2 / 16;  // 16-byte chunks of a K/V row
  static constexpr int kRowsPerCopy = 32 / kChunksPerRow;        // rows one warp-wide cp.async covers
  static constexpr int kKeyAtomBytes = Tiles::kKeyAtomBytes;
  static constexpr int kAtoms = Tiles::kAtoms;
  static_assert(kStages <= 4, "TMA path: one producer warp per stage");

  template <class Storage>
  static __device__ void produce(const FgKernelParams& params, Storage& sm, const FgQueryBlock& q) {
    const AttentionParams& p = params.attention;
    const FgGatherParams& g = params.gather;
    const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
    if (warp == 0 && lane == 0) {
      mbarrier_arrive_expect_tx(&sm.q_full, Tiles::kQueryTileBytes);
      for (int a = 0; a < kAtoms; ++a)
        tma_load_3d(sm.q + a * Tiles::kQueryAtomBytes / sizeof(*sm.q), &p.q_tokens, &sm.q_full, a * 64,
                    q.first_row(), q.batch * p.q_heads + q.head);
    }
    const int kv_head = q.head / p.kv_group;
    const FgRow row = fg_row(g, q.head, q.index);
    if (g.tma_rows != 0) {
      if (warp < kStages) produce_tma(p, g, sm, row, q.batch * (p.q_heads / p.kv_group) + kv_head, warp, lane);
      return;
    }
    const char* k_base = g.k + q.batch * g.k_batch_stride + kv_head * g.k_head_stride;
    const char* v_base = g.v + q.batch * g.v_batch_stride + kv_head * g.v_head_stride;
    const int tokens = p.num_tokens;
    const uint32_t all_rows = g.membership != nullptr ? (1u << (kernels::kQueryBlockRows / g.query_block)) - 1 : 1u;
    // The whole warpgroup gathers every tile, warp w rows [32 w, 32 w + 32): a released stage is refilled by 128
    // threads at once instead of by one warp's serial chain of 128 copies per lane.
    for (int i = 0; i < row.tiles; ++i) {
      const int stage = i % kStages;
      const uint32_t phase = (i / kStages) & 1;
      // The row's position first: this load does not need the stage, so its latency hides behind the wait.
      const int index = i * kFgKeyRows + 32 * warp + lane;
      uint32_t member = 0;
      int position = -1;
      if (index < row.length) {
        const int entry = index / g.key_group;
        const int group = __ldg(row.groups + entry);
        const int64_t pos = int64_t(group) * g.key_group + (index - entry * g.key_group);
        if (group >= 0 && group < g.num_key_groups && pos < tokens) {
          member = row.membership != nullptr ? __ldg(row.membership + entry) : 1u;
          if (member != 0) position = int(pos);
        }
      }
      const bool partial = __any_sync(0xffffffffu, member != all_rows);
      mbarrier_wait(&sm.k_empty[stage], phase ^ 1);
      sm.member[stage][32 * warp + lane] = uint8_t(member);
      if (lane == 0) sm.mask_flag[stage][warp] = partial ? 1 : 0;
      gather(k_base, g.k_token_stride, position, smem_addr(sm.k[stage]) + warp * 32 * 128);
      cp_async_arrive(&sm.k_full[stage]);
      __syncwarp();  // the membership bytes and the flag, released by lane 0's ordinary arrival
      if (lane == 0) mbarrier_arrive(&sm.k_full[stage]);
      mbarrier_wait(&sm.v_empty[stage], phase ^ 1);
      gather(v_base, g.v_token_stride, position, smem_addr(sm.v[stage]) + warp * 32 * 128);
      cp_async_arrive(&sm.v_full[stage]);
    }
    cp_async_wait_all();  // no copy outlives its issuing thread
  }

  // N a multiple of 8: warp `stage` owns one pipeline stage and loads every kStages-th tile, one TMA box of 8 rows per
  // run (lane l < 16: rows [8 l, 8 l + 8) of the tile, one run of one group; an unused run reads past the tokens,
  // which TMA fills with zeros).
  template <class Storage>
  static __device__ void produce_tma(const AttentionParams& p, const FgGatherParams& g, Storage& sm, const FgRow& row,
                                     int kv_bh, int stage, int lane) {
    const int tokens = p.num_tokens;
    const uint32_t all_rows = g.membership != nullptr ? (1u << (kernels::kQueryBlockRows / g.query_block)) - 1 : 1u;
    for (int i = stage; i < row.tiles; i += kStages) {
      const uint32_t phase = (i / kStages) & 1;
      int position[4];
      uint32_t member[4];
      bool partial = false;
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int index = i * kFgKeyRows + lane + 32 * m;
        member[m] = 0;
        position[m] = -1;
        if (index < row.length) {
          const int entry = index / g.key_group;
          const int group = __ldg(row.groups + entry);
          const int64_t pos = int64_t(group) * g.key_group + (index - entry * g.key_group);
          if (group >= 0 && group < g.num_key_groups && pos < tokens) {
            member[m] = row.membership != nullptr ? __ldg(row.membership + entry) : 1u;
            if (member[m] != 0) position[m] = int(pos);
          }
        }
        partial |= member[m] != all_rows;
      }
      partial = __any_sync(0xffffffffu, partial);
      mbarrier_wait(&sm.k_empty[stage], phase ^ 1);
#pragma unroll
      for (int m = 0; m < 4; ++m) sm.member[stage][lane + 32 * m] = uint8_t(member[m]);
      if (lane == 0) *reinterpret_cast<uint32_t*>(sm.mask_flag[stage]) = partial ? 1u : 0u;
      int run = -1;
#pragma unroll
      for (int m = 0; m < 4; ++m) {
        const int v = __shfl_sync(0xffffffffu, position[m], (8 * lane) % 32);
        if ((8 * lane) / 32 == m) run = v;
      }
      const int row_coord = run >= 0 ? run : tokens;
      __syncwarp();  // the membership bytes, released by lane 0's arrival
      if (lane == 0) mbarrier_arrive_expect_tx(&sm.k_full[stage], kAtoms * kKeyAtomBytes);
      __syncwarp();
      if (lane < 16)
        for (int a = 0; a < kAtoms; ++a)
          tma_load_3d(sm.k[stage] + (a * kKeyAtomBytes + lane * 8 * 128) / sizeof(*sm.k[stage]), &g.k_rows,
                      &sm.k_full[stage], a * 64, row_coord, kv_bh);
      mbarrier_wait(&sm.v_empty[stage], phase ^ 1);
      if (lane == 0) mbarrier_arrive_expect_tx(&sm.v_full[stage], kAtoms * kKeyAtomBytes);
      __syncwarp();
      if (lane < 16)
        for (int a = 0; a < kAtoms; ++a)
          tma_load_3d(sm.v[stage] + (a * kKeyAtomBytes + lane * 8 * 128) / sizeof(*sm.v[stage]), &g.v_rows,
                      &sm.v_full[stage], a * 64, row_coord, kv_bh);
    }
  }

  // Copies the warp's 32 rows of a tile (`slice` = the tile's address + 32 rows; row r32 at lane r32's position,
  // -1: zero row). The slice starts on an 8-row boundary, so the swizzle phase is the row within the slice.
  static __device__ __forceinline__ void gather(const char* base, int64_t token_stride, int position, uint32_t slice) {
    const int lane = threadIdx.x % 32, chunk = lane % kChunksPerRow;
    const uint32_t column_bytes = swizzled_offset(0, chunk * 8, kKeyAtomBytes);  // the row-independent part
#pragma unroll 4
    for (int it = 0; it < 32 / kRowsPerCopy; ++it) {
      const int r32 = it * kRowsPerCopy + lane / kChunksPerRow;  // row within this 32-row slice
      const int pos = __shfl_sync(0xffffffffu, position, r32);
      const char* src = base + (pos >= 0 ? int64_t(pos) * token_stride + chunk * 16 : 0);
      // 128-byte swizzle: the 16-byte chunk index is XORed with the row within its 8-row group.
      const uint32_t dst = slice + r32 * 128 + (column_bytes ^ ((r32 % 8) * 16));
      cp_async_16(dst, src, pos >= 0 ? 16u : 0u);
    }
  }
};

// The consumers' view of an FG plan: the CTA's tile count, and the producer's per-tile flags and membership bytes.
template <int kBlockN>
struct FgKeyTiles {
  using Fragment = AccFragment<kBlockN>;
  static constexpr int kScores = Fragment::kRegs;
  static constexpr bool kEveryThreadReleasesK = true;
  int tiles;
  uint32_t bit;  // this thread's sub-block (both its rows lie in the same 16-row slice, and M >= 16)

  __device__ __forceinline__ FgKeyTiles(const FgKernelParams& p, const FgQueryBlock& q, int warpgroup) {
    static_assert(kBlockN == kFgKeyRows, "FG tiles are the gathered 128-row tiles");
    tiles = fg_row(p.gather, q.head, q.index).tiles;
    const int warp_rows = warpgroup * 64 + (threadIdx.x % 128) / 32 * 16;  // the 16-row slice of this thread's warp
    bit = p.gather.membership != nullptr ? 1u << (warp_rows / p.gather.query_block) : 1u;
  }
  __device__ __forceinline__ int count() const { return tiles; }
  template <class Storage>
  __device__ __forceinline__ void mask(Storage& sm, int stage, float (&s)[kScores]) const {
    if (*reinterpret_cast<const uint32_t*>(sm.mask_flag[stage]) == 0) return;
    const uint8_t* member = sm.member[stage];
#pragma unroll
    for (int j = 0; j < Fragment::kPairs; ++j) {  // scores 2j, 2j + 1: columns c, c + 1 of both rows
      const int col = Fragment::pair_col(j);
      const uint32_t pair = *reinterpret_cast<const uint16_t*>(member + col);
      if (!(pair & bit)) s[2 * j] = -INFINITY;
      if (!((pair >> 8) & bit)) s[2 * j + 1] = -INFINITY;
    }
  }
};

}  // namespace tileattn::sm90

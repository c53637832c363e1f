#pragma once
// The GPU dynamic-mask builder's tiling constants and workspace layout, shared by the CUDA launcher and the host
// validation (ops/dynamic_mask_problem.hpp). Host code, no CUDA.
#include <cstdint>

#include "tileattn/dynamic_mask_gpu.hpp"

namespace tileattn::kernels {

inline constexpr int64_t kDynRowTile = 128;      // pooled rows per score CTA
inline constexpr int64_t kDynKeyTile = 64;       // keys per score tile
inline constexpr int64_t kDynMaxSplits = 32;     // key splits of the statistics pass
inline constexpr int64_t kDynTargetCtas = 1024;  // score passes split the keys until about this many CTAs
inline constexpr int64_t kDynBins = 2048;        // radix histogram bins (first level: 11 bits)

// Per head of a pass, target_sparsity's search state (device struct, plain data).
struct DynHeadState {
  unsigned long long forced_pairs;  // pairs the always-kept groups visit
  double remaining;                 // pairs still needed below the bins already decided
  uint32_t prefix;                  // key bits decided so far
  int32_t mode;                     // 0 searching, 1 no other group, 2 every eligible group, 3 cut found
  uint32_t cut_key;                 // mode 3: the density key of the cut-off
  uint32_t tie_count;               // mode 3: how many (row, group) pairs of the head have that key
};
// Per head of a pass: the weighted histogram of one radix level.
struct DynHeadHist {
  uint32_t count[kDynBins];
  unsigned long long weight[kDynBins];
};
// Per row of a pass (target_sparsity): the row's pairs at the cut-off key.
struct DynRowTies {
  uint32_t ties;
  uint32_t keep;  // how many of them the row keeps (the first, by group index)
  unsigned long long weight;
};

struct DynamicMaskLayout {
  int64_t heads_per_pass = 0;  // query heads whose masses are resident at once
  int64_t stats_splits = 1;    // key splits of the statistics pass (a multiple of kDynKeyTile keys each)
  int64_t stats_split_keys = 0;
  // byte offsets into the workspace, each 256-byte aligned
  int64_t pooled = 0;   // [batch, q_heads, query blocks, head_dim] in the input dtype
  int64_t lse = 0;      // [batch, q_heads, query blocks] fp32, log2 domain, + log2(batch)
  int64_t partial = 0;  // [stats_splits, batch, q_heads, query blocks] float2 (max, sum)
  int64_t fixed_bytes = 0;  // end of the part that does not depend on heads_per_pass
  int64_t mass = 0;         // [heads_per_pass, query blocks, key groups] fp32
  int64_t row_ties = 0;     // [heads_per_pass * query blocks] DynRowTies
  int64_t head_state = 0;   // [heads_per_pass] DynHeadState
  int64_t head_hist = 0;    // [heads_per_pass] DynHeadHist
  int64_t total = 0;
};

// Layout for `heads_per_pass` (already one of the allowed values, >= 1).
DynamicMaskLayout dynamic_mask_layout(const DynamicMaskArgs& args, const ColumnPlanShape& shape,
                                      int64_t heads_per_pass);
// The allowed heads per pass, in [1, q_heads]: the largest multiple or divisor of q_heads / kv_heads <= `wanted`.
int64_t round_heads_per_pass(const DynamicMaskArgs& args, int64_t wanted);

// The float threshold the GPU compares fp32 masses with: the bits of the smallest float f with double(f) >=
// threshold, capped at 2^30 (no mass reaches it).
uint32_t threshold_key(double threshold);

}  // namespace tileattn::kernels

#pragma once
// Training-free dynamic fine-grained masks on the GPU (FG-Attn): build_dynamic_column_plan (dynamic_mask.hpp) on the
// device, writing the fixed-capacity DeviceColumnPlan (fg.hpp) that fg_forward reads.
//
// Semantics are the CPU oracle's (estimate_column_mass, then select_columns), with these differences:
//  - Precision. Pooled queries are the fp32 mean of the block's rows (summed in row order), rounded to the input
//    dtype so the scores can run on tensor cores (bf16/fp16 inputs, fp32 accumulation); exponentials use ex2.approx;
//    masses are fp32 (the oracle: fp64 throughout). Near-ties may therefore be ordered differently, and a rule's
//    cut-off may move by a group whose mass is within rounding of it. top_p sums masses in 2^-40 fixed point.
//    target_sparsity ranks by the fp32 quotient mass / group size.
//  - Capacity. A row the rule would make longer than out.capacity keeps the out.capacity groups of highest
//    priority, still ascending: the always-kept groups first (by descending mass), then the others in the rule's
//    order (descending mass; for target_sparsity descending mass per key), ties to the lower index. Size the
//    capacity from the rule (top_k: k + the always-kept groups) to avoid it.
//  - Window. ColumnSelection::window (a host plan) must be null; DynamicMaskArgs::window (a device plan of the
//    output's shape) lists the eligible groups instead. Its counts are clamped to [0, capacity] and listed groups
//    outside [0, num_key_groups) are ignored, as fg_forward does.
//
// Algorithm (see docs/DESIGN.md, "GPU mask builder"):
//  1. pool: the mean query of every (batch, head, query block) -> workspace, in the input dtype.
//  2. statistics: scores of every pooled query against every key of its kv head (mma.sync m16n8k16, fp32
//     accumulation), online max and sum of exponentials per row, split over the keys, then combined into a
//     log-sum-exp per (batch, head, query block).
//  3. masses, per pass of `heads_per_pass` query heads: the scores again, p = exp(s - lse) / batch, summed per key
//     group (and over the batch) into an fp32 [heads_per_pass, query blocks, key groups] buffer in the workspace.
//     Nothing of size [rows, tokens] exists unless N = 1, where the masses are the probabilities.
//     Batch 1 runs 2 and 3 as one score pass: the online max/sum per row and, per group, log2 of its sum of
//     exponentials; the selection turns those into masses with the combined log-sum-exp as it reads them.
//  4. selection, per row (one CTA per row): a radix select on the 31-bit priority key (float bits of the mass, bit
//     30 set for always-kept groups) in three histogram passes (11, 10, 10 bits) finds the rule's cut-off, and an
//     ordered compaction writes the row's groups ascending, then -1 up to the capacity. target_sparsity runs the
//     same radix select per head over mass per key, weighted by pairs, with histograms in global memory.
//  Cost: two score passes (batch 1: one) of 2 * rows * tokens * head_dim FLOPs each (rows = batch * heads * query
//  blocks), one write of the masses, one read of them per row for the selection when a row's keys fit in 64 KB of
//  shared memory (key groups <= 16,384), else 3 to 6, and 4 more for target_sparsity's per-head search.
//
// No host synchronization and no device allocation: a call can be captured in a CUDA graph. Results do not depend
// on heads_per_pass (the masses are bit-identical), and repeated calls give identical plans.
//
// Reuse across denoising steps (MaskCache's policy, dynamic_mask.hpp): allocate the DeviceColumnPlan and the
// workspace once, and call build_dynamic_column_plan_gpu into that plan only at the steps where MaskCache would
// rebuild (step 0, R, 2R, ..., and when the step goes back); the other steps pass the same plan to fg_forward.
//
// Throws ArgumentError naming the argument / CudaError.
#include <cstdint>

#include "tileattn/column_plan.hpp"
#include "tileattn/dynamic_mask.hpp"
#include "tileattn/fg.hpp"
#include "tileattn/types.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

struct DynamicMaskArgs {
  DType dtype = DType::bf16;
  int64_t batch = 1;
  int64_t q_heads = 1;
  int64_t kv_heads = 1;    // q_heads must be a multiple (GQA: query head h reads kv head h / (q_heads / kv_heads))
  int64_t head_dim = 128;  // 64 or 128
  // [batch, heads, tokens, head_dim], element strides, head_dim contiguous, in the plan's token order. k: 16-byte
  // aligned data and strides that are multiples of 8 elements; q: 2-byte aligned.
  DeviceTensor q, k;
  float scale = 0.0f;  // 0: 1 / sqrt(head_dim)
  ColumnSelection selection;                 // selection.window must be null (use `window`)
  const DeviceColumnPlan* window = nullptr;  // optional: eligible groups per row, the output's shape
  // dynamic_mask_workspace_bytes(args, shape, heads_per_pass) bytes or more, 256-byte aligned; its content is
  // overwritten. The builder keeps as many heads' masses resident as the given size allows.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// Workspace bytes for masses of `heads_per_pass` query heads resident at once (0: all heads, the fastest). It is
// rounded down to a multiple or a divisor of q_heads / kv_heads; 1 gives the least the builder accepts. The bulk is
// heads_per_pass * num_query_blocks * num_key_groups * 4 bytes (hunyuan-720p, M = 128: 415 MB per head at N = 1,
// 26 MB at N = 16) plus the pooled queries (batch * q_heads * num_query_blocks * head_dim * 2 bytes).
int64_t dynamic_mask_workspace_bytes(const DynamicMaskArgs& args, const ColumnPlanShape& shape,
                                     int64_t heads_per_pass = 0);

// Writes out.table / out.counts (every row, every slot: unused slots -1) for the plan of shape out.shape
// (out.shape.heads = q_heads). out.capacity may be anything >= 0 (see "Capacity" above).
void build_dynamic_column_plan_gpu(const DynamicMaskArgs& args, const DeviceColumnPlan& out, StreamHandle stream);

// Steps 1-3 alone: writes the estimated masses, fp32 [q_heads, num_query_blocks, num_key_groups] contiguous, to
// `mass` (device memory, 4-byte aligned), bit-identical to what build_dynamic_column_plan_gpu selects from. Needs
// the workspace of dynamic_mask_workspace_bytes(args, shape, 1) (only its pooled-query and statistics part is
// used); args.selection and args.window are ignored.
void estimate_column_mass_gpu(const DynamicMaskArgs& args, const ColumnPlanShape& shape, float* mass,
                              StreamHandle stream);

}  // namespace tileattn
TILEATTN_PUBLIC_END

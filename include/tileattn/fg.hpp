#pragma once
// Fine-grained sparse attention (FG-Attn) forward on the GPU (Hopper, sm_90a).
//
// q/k/v/out are [batch, heads, tokens, head_dim] device tensors (any element strides, head_dim contiguous) in any
// token order; the plan is a fixed-capacity column plan (column_plan.hpp) over the same positions, in device memory:
// for each (query head, query block of M rows) the ascending key groups (N consecutive positions each) it visits. One
// plan serves every batch element; query head h reads kv head h / (q_heads / kv_heads).
//
// The kernel runs one CTA per (batch, head, 128 query rows). Its producer warps gather the listed K and V rows with
// 16-byte cp.async copies into the 128-byte-swizzled tiles the consumers' wgmma reads (three or four stages of 128
// key rows); the consumers are the STA forward's (wgmma, online softmax, epilogue). Only tiles that hold rows a query
// may not see evaluate a mask: the last, partially filled tile of a row, and for M < 128 the tiles in which the 128/M
// query sub-blocks of the CTA visit different keys (see fg_forward_workspace_bytes).
//
// No host synchronization and no device allocation: a call can be captured in a CUDA graph. The plan's content is
// not checked on the host (it lives on the device); the kernel clamps counts to [0, capacity] and skips group indices
// outside [0, num_key_groups), so a malformed plan cannot read out of bounds. check_device_column_plan checks it
// fully (synchronizing). Throws ArgumentError / CudaError.
#include <cstdint>

#include "tileattn/column_plan.hpp"
#include "tileattn/types.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

// A FixedColumnPlan in device memory. Row r = head * shape.num_query_blocks() + query block lists counts[r] key
// groups in table[r * capacity, r * capacity + counts[r]), strictly ascending.
struct DeviceColumnPlan {
  ColumnPlanShape shape;
  int64_t capacity = 0;
  int32_t* table = nullptr;   // [num_rows, capacity]
  int32_t* counts = nullptr;  // [num_rows]
};

struct FgForwardArgs {
  DType dtype = DType::bf16;
  int64_t batch = 1;
  int64_t q_heads = 1;
  int64_t kv_heads = 1;    // q_heads must be a multiple (GQA)
  int64_t head_dim = 128;  // 64 or 128
  DeviceTensor q, k, v, out;
  float* lse = nullptr;  // optional [batch, q_heads, tokens] fp32, contiguous; -inf for queries that see no key
  float scale = 0.0f;    // 0: 1 / sqrt(head_dim)
  DeviceColumnPlan plan;  // plan.shape.tokens = tokens, plan.shape.heads = q_heads
  // Needed when plan.shape.query_block < 128: fg_forward_workspace_bytes(args) bytes, 256-byte aligned.
  void* workspace = nullptr;
  int64_t workspace_bytes = 0;
};

// For M = query_block < 128 a preprocessing kernel merges, per 128 query rows, the 128 / M rows of the plan into one
// ascending list of key groups with a bit per sub-block (which sub-blocks visit the group); the attention kernel
// gathers the union and masks per sub-block. The cost of a finer M is therefore the union: a CTA computes every key
// group any of its sub-blocks visits. Returns the bytes of that merged plan (0 for M = 128).
int64_t fg_forward_workspace_bytes(const FgForwardArgs& args);
void fg_forward(const FgForwardArgs& args, StreamHandle stream);

// Copies the plan to the host and validates it as ColumnPlan::from_fixed does (ArgumentError naming "counts" or
// "table"). Synchronizes `stream`; for tests and debugging.
void check_device_column_plan(const DeviceColumnPlan& plan, StreamHandle stream);

// Synthetic masks written on the GPU into a device plan (benchmarks and tests): every row keeps about
// (1 - sparsity) of the key groups.
//  random:  each (row, group) is kept independently with probability 1 - sparsity (a hash of seed, head, row, group).
//  local:   natural-order video of `video` tokens followed by text: a query block keeps the key groups that intersect
//           a 3D box of tokens around its centre, the box's sides being (1 - sparsity)^(1/3) of the video's, shifted
//           inside the video (NATTEN-style), plus every text group; text query blocks keep every group.
// A row that would exceed plan.capacity keeps its first capacity groups. The diagonal group(s) of each query block
// are always kept when keep_diagonal is set.
enum class SyntheticMask : int32_t { random = 0, local = 1 };
struct SyntheticMaskOptions {
  SyntheticMask kind = SyntheticMask::random;
  double sparsity = 0.7;  // in [0, 1)
  uint64_t seed = 0;
  Extent3 video;          // local: the video shape (video.volume() + text_len = plan tokens)
  int64_t text_len = 0;
  bool keep_diagonal = true;
};
void build_synthetic_column_plan(const DeviceColumnPlan& plan, const SyntheticMaskOptions& options,
                                 StreamHandle stream);

}  // namespace tileattn
TILEATTN_PUBLIC_END

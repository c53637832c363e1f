#pragma once
// What the host launcher hands the FG-Attn forward kernel: the forward's shared attention part (every query block is
// 128 consecutive rows of its token maps, so the consumers and the epilogue are the STA forward's) plus a gather list
// per CTA for the key side.
#include <cuda.h>

#include <cstdint>

#include "kernels/attention_params.hpp"
#include "tileattn/types.hpp"

struct CUstream_st;

namespace tileattn::kernels {

inline constexpr int kFgKeyRows = 128;  // key rows per gathered tile (one pipeline stage)

// The key groups each CTA (batch, head, 128 query rows) gathers: a fixed-capacity table with one row per
// (head, 128-row query block), row r = head * query_blocks + block. With M = 128 this is the caller's plan itself;
// with M < 128 it is the merged plan in the workspace, and `membership` holds for each listed group a byte whose bit j
// says whether sub-block j (rows [j M, j M + M) of the 128) visits it.
struct FgGatherParams {
  // key_group a multiple of 8: K/V as 3D maps (d, token, batch*kv_heads) with boxes of 8 rows, one TMA copy per
  // 8-row run of the list (a run never straddles two groups); otherwise 16-byte cp.async copies per row.
  CUtensorMap k_rows, v_rows;
  int tma_rows = 0;  // 8: the TMA path; 0: cp.async
  const char* k = nullptr;  // this launch's first batch element
  const char* v = nullptr;
  int64_t k_batch_stride = 0, k_head_stride = 0, k_token_stride = 0;  // bytes
  int64_t v_batch_stride = 0, v_head_stride = 0, v_token_stride = 0;
  const int32_t* table = nullptr;
  const int32_t* counts = nullptr;
  const uint8_t* membership = nullptr;  // null: M = 128 (every listed group is visited by all 128 rows)
  int64_t capacity = 0;
  int query_blocks = 0;     // 128-row query blocks per head
  int key_group = 1;        // N
  int num_key_groups = 0;
  int last_group_size = 0;  // rows of the last key group (N, or fewer when N does not divide the tokens)
  int query_block = 128;    // M
};

struct FgKernelParams {
  AttentionParams attention;
  FgGatherParams gather;
};

// Implemented in the sm90 translation units, one per (dtype, head_dim).
template <DType Dtype, int HeadDim>
void launch_fg_forward_sm90(const FgKernelParams& params, int64_t num_ctas, CUstream_st* stream);

}  // namespace tileattn::kernels

#pragma once
// Well-formed C ABI argument structs for the CPU tests (host pointers: the calls under test fail, or only size
// things, before anything reads them). Shared by test_capi.cpp and test_capi_hardening.cpp.
#include "tileattn/tileattn.h"

namespace capi_fixtures {

inline tileattn_sta_forward_args valid_args() {
  alignas(16) static char buffer[1 << 12];
  tileattn_sta_forward_args a{};
  a.abi_version = TILEATTN_ABI_VERSION;
  a.dtype = TILEATTN_BF16;
  a.layout = TILEATTN_NATURAL;
  a.batch = 1, a.q_heads = 2, a.kv_heads = 1, a.head_dim = 128;
  a.video[0] = 6, a.video[1] = 8, a.video[2] = 8;
  a.tile[0] = 6, a.tile[1] = 8, a.tile[2] = 8;
  tileattn_tensor t{buffer, 0, 384 * 128, 128};
  a.q = a.k = a.v = a.out = t;
  return a;
}

// A well-formed FG call on 256 tokens, 2 query heads, 1 kv head, M = 128, N = 16 (pointers into host memory: the
// calls below fail before anything reads them).
inline tileattn_fg_forward_args valid_fg_args() {
  alignas(256) static char buffer[1 << 12];
  static int32_t table[4 * 16], counts[4];
  tileattn_fg_forward_args a{};
  a.abi_version = TILEATTN_ABI_VERSION;
  a.dtype = TILEATTN_BF16;
  a.batch = 1, a.q_heads = 2, a.kv_heads = 1, a.head_dim = 128;
  tileattn_tensor t{buffer, 0, 256 * 128, 128};
  a.q = a.k = a.v = a.out = t;
  a.plan = {256, 2, 128, 16, 16, table, counts};
  return a;
}

// A well-formed dynamic-mask call on 256 tokens, 2 query heads, 1 kv head, M = 128, N = 16 (host pointers: the calls
// below fail before anything reads them).
inline tileattn_dynamic_mask_args valid_dyn_args() {
  alignas(256) static char buffer[1 << 12];
  alignas(256) static char workspace[1 << 20];
  tileattn_dynamic_mask_args a{};
  a.abi_version = TILEATTN_ABI_VERSION;
  a.dtype = TILEATTN_BF16;
  a.batch = 1, a.q_heads = 2, a.kv_heads = 1, a.head_dim = 128;
  tileattn_tensor t{buffer, 0, 256 * 128, 128};
  a.q = a.k = t;
  a.rule = TILEATTN_RULE_TOP_K;
  a.p = 0.9, a.top_k = 4, a.threshold = 0.01, a.target_sparsity = 0.5;
  a.keep_diagonal = 1;
  a.workspace = workspace;
  a.workspace_bytes = sizeof workspace;
  return a;
}

}  // namespace capi_fixtures

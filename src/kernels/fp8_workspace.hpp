#pragma once
// The 8-bit STA forward's workspace (host-only header: builds without CUDA size it too): int8 Q and K, e4m3 V^T. What it holds and why:
// docs/DESIGN.md "FP8 STA forward". Operands are in the padded tile-major row order: per (batch, head) `rows` rows,
// first tiles * tile volume video rows (tile by tile, each tile's rows (t, h, w) with w fastest; rows past the video
// edge are zeros), then the text; `rows` is rounded up so that any key block a plan can visit lies inside it.
#include <cstdint>

#include "tileattn/checked.hpp"

namespace tileattn::kernels {

inline constexpr int kFp8GroupRows = 64;        // rows sharing one Q or K scale (a consumer warpgroup's rows)
inline constexpr int kFp8ScaleWindow = 4;       // K scales a key block reads (16 bytes, a bulk copy's unit); >= 192 / 64
inline constexpr int kFp8StatisticsRows = 1024; // token rows per CTA of the statistics pass
inline constexpr float kE4m3Max = 448.0f;       // largest finite e4m3 value (V, P)
inline constexpr float kInt8Max = 127.0f;       // Q and K: symmetric int8, round to nearest even

struct Fp8Workspace {
  int64_t video_rows = 0;  // tiles * tile volume
  int64_t rows = 0;        // rows per (batch, head): a multiple of 256
  int64_t groups = 0;      // rows / kFp8GroupRows
  int64_t chunks = 0;      // statistics chunks per (batch, kv head)
  int64_t q_bh = 0, kv_bh = 0, head_dim = 0;
  // Byte offsets.
  int64_t q8 = 0, k8 = 0, v8t = 0;                 // int8 [q_bh][rows][d], int8 [kv_bh][rows][d], e4m3 [kv_bh][d][rows]
  int64_t q_scale = 0;                             // fp32 [q_bh][groups]
  // fp32 [kv_bh][groups][kFp8ScaleWindow]: entry [g][i] is the scale of group g + i (1 past the last group), so a
  // key block starting at group g copies its scales with one aligned 16-byte bulk copy.
  int64_t k_scale = 0;
  int64_t v_scale = 0, k_mean = 0, v_mean = 0;     // fp32 [kv_bh][d]; v8t holds (v - v_mean) / v_scale
  int64_t balance = 0;                             // fp32 [kv_bh][d]: q8 holds q / balance, k8 (k - k_mean) * balance
  int64_t lse_shift = 0;                           // fp32 [q_bh][rows]: softmax_scale * (q . k_mean)
  // fp32 [kv_bh][chunks][d] each: per statistics chunk, K's and V's channel sums, maxima and minima (over the valid
  // keys) and max |Q| (every query of the kv head's group of q heads).
  int64_t k_sum_partial = 0, k_max_partial = 0, k_min_partial = 0;
  int64_t v_sum_partial = 0, v_max_partial = 0, v_min_partial = 0, q_max_partial = 0;
  int64_t total = 0;
};

// Checked arithmetic: a size that does not fit int64_t throws ArgumentError naming "batch".
inline Fp8Workspace fp8_workspace_layout(int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                                         int64_t video_rows, int64_t num_tokens, int64_t text_len) {
  constexpr const char* kArg = "batch";
  auto align = [](int64_t x) { return checked_align_up(x, 256, kArg); };
  auto bytes = [](std::initializer_list<int64_t> f) { return checked_product(f, kArg); };
  Fp8Workspace w;
  w.video_rows = video_rows;
  // Text key blocks are up to 192 rows and the last one may start at the last text row.
  const int64_t needed = checked_add(checked_add(video_rows, text_len, kArg), 192, kArg);
  w.rows = checked_align_up(needed, 256, kArg);
  w.groups = w.rows / kFp8GroupRows;
  w.chunks = checked_ceil_div(num_tokens, int64_t{kFp8StatisticsRows}, kArg);
  w.q_bh = checked_mul(batch, q_heads, kArg);
  w.kv_bh = checked_mul(batch, kv_heads, kArg);
  w.head_dim = head_dim;
  int64_t at = 0;
  auto take = [&](int64_t& field, int64_t size) {
    field = at;
    at = align(checked_add(at, size, kArg));
  };
  take(w.q8, bytes({w.q_bh, w.rows, head_dim}));
  take(w.k8, bytes({w.kv_bh, w.rows, head_dim}));
  take(w.v8t, bytes({w.kv_bh, w.rows, head_dim}));
  take(w.q_scale, bytes({w.q_bh, w.groups, 4}));
  take(w.k_scale, bytes({w.kv_bh, w.groups, kFp8ScaleWindow, 4}));
  take(w.v_scale, bytes({w.kv_bh, head_dim, 4}));
  take(w.k_mean, bytes({w.kv_bh, head_dim, 4}));
  take(w.v_mean, bytes({w.kv_bh, head_dim, 4}));
  take(w.balance, bytes({w.kv_bh, head_dim, 4}));
  take(w.lse_shift, bytes({w.q_bh, w.rows, 4}));
  take(w.k_sum_partial, bytes({w.kv_bh, w.chunks, head_dim, 4}));
  take(w.k_max_partial, bytes({w.kv_bh, w.chunks, head_dim, 4}));
  take(w.k_min_partial, bytes({w.kv_bh, w.chunks, head_dim, 4}));
  take(w.v_sum_partial, bytes({w.kv_bh, w.chunks, head_dim, 4}));
  take(w.v_max_partial, bytes({w.kv_bh, w.chunks, head_dim, 4}));
  take(w.v_min_partial, bytes({w.kv_bh, w.chunks, head_dim, 4}));
  take(w.q_max_partial, bytes({w.kv_bh, w.chunks, head_dim, 4}));
  w.total = at;
  return w;
}

}  // namespace tileattn::kernels

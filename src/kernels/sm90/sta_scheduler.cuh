#pragma once
// Work decomposition of the STA forward kernel, and its plan walker.
//
// Scheduler: one CTA per (batch, head, query block of 128 rows). Text query blocks (which visit every key) come first so that the
// longest CTAs start first; video query blocks follow, head by head, tile by tile, so that CTAs resident together
// share most of their key tiles in L2.
//
// Plan walker: the STA plan of a query block, produced on the fly from the window table with the same window rule
// (detail::window_start) that builds the CPU plan. Producer and consumers each run one walker in lockstep.
#include "kernels/sta_kernel_params.hpp"
#include "tileattn/detail/window_rule.hpp"

namespace tileattn::sm90 {

using kernels::StaKernelParams;

struct QueryBlock {
  bool empty = false;  // an empty slice of a partial tile: nothing to do
  bool text = false;
  int batch = 0;       // within this launch
  int head = 0;
  int tile_t = 0, tile_h = 0, tile_w = 0;  // video: query tile
  int x1 = 0, x2 = 0, x3 = 0;              // video: map coordinates of the block's first row
  int text_row = 0;                        // text: first token
};

__device__ __forceinline__ QueryBlock query_block_of(const StaKernelParams& p, int64_t cta) {
  QueryBlock q;
  const int64_t bh_count = int64_t(p.batch_in_launch) * p.q_heads;
  const int64_t text_ctas = bh_count * p.num_text_query_blocks;
  int64_t bh;
  if (cta < text_ctas) {
    bh = cta / p.num_text_query_blocks;
    q.text = true;
    q.text_row = p.num_video_tokens + int(cta % p.num_text_query_blocks) * kernels::kQueryBlockRows;
  } else {
    cta -= text_ctas;
    const int64_t per_bh = int64_t(p.grid_t) * p.grid_h * p.grid_w * p.query_blocks_per_tile;
    bh = cta / per_bh;
    const int block = int(cta % per_bh);
    const int tile = block / p.query_blocks_per_tile, sub = block % p.query_blocks_per_tile;
    q.tile_w = tile % p.grid_w;
    q.tile_h = (tile / p.grid_w) % p.grid_h;
    q.tile_t = tile / (p.grid_w * p.grid_h);
    q.empty = q.tile_t == p.grid_t - 1 && sub >= p.last_tile_query_blocks;
    if (p.tile_major) {
      q.x1 = 0;
      q.x2 = 0;
      q.x3 = tile * p.tile_t + sub * p.query_frames;
    } else {
      q.x1 = q.tile_w * p.tile_w;
      q.x2 = q.tile_h * p.tile_h;
      q.x3 = q.tile_t * p.tile_t + sub * p.query_frames;
    }
  }
  q.batch = int(bh / p.q_heads);
  q.head = int(bh % p.q_heads);
  return q;
}

struct KeyBlock {
  bool text;
  bool masked;     // some rows of the block are past the video edge / the valid text
  int x1, x2, x3;  // video: map coordinates of the first row
  int text_row;    // text: first token
  int text_count;  // text: valid rows
};

// Walks the key blocks (kBlockN rows each) of one query block: the window's tiles, then the valid text.
template <int kBlockN>
class KeyBlockWalker {
 public:
  __device__ __forceinline__ KeyBlockWalker(const StaKernelParams& p, const QueryBlock& q) : p_(p) {
    if (q.text) {
      win_t_ = p.grid_t, win_h_ = p.grid_h, win_w_ = p.grid_w;
      start_t_ = start_h_ = start_w_ = 0;
    } else {
      win_t_ = p.windows[q.head][0], win_h_ = p.windows[q.head][1], win_w_ = p.windows[q.head][2];
      start_t_ = int(detail::window_start(q.tile_t, p.grid_t, win_t_));
      start_h_ = int(detail::window_start(q.tile_h, p.grid_h, win_h_));
      start_w_ = int(detail::window_start(q.tile_w, p.grid_w, win_w_));
    }
    const bool covers_last_t = start_t_ + win_t_ == p.grid_t;
    num_video_ = win_h_ * win_w_ *
                 ((win_t_ - (covers_last_t ? 1 : 0)) * p.key_blocks_per_tile +
                  (covers_last_t ? p.last_tile_key_blocks : 0));
    text_valid_ = p.text_len;
    if (p.text_valid != nullptr) {
      int v = p.text_valid[p.batch_offset + q.batch];
      text_valid_ = v < 0 ? 0 : (v > p.text_len ? p.text_len : v);
    }
    num_text_ = (text_valid_ + kBlockN - 1) / kBlockN;
    kt_ = start_t_, kh_ = start_h_, kw_ = start_w_, sub_ = 0, index_ = 0;
  }

  __device__ __forceinline__ int count() const { return num_video_ + num_text_; }

  __device__ __forceinline__ KeyBlock current() const {
    KeyBlock k;
    if (index_ < num_video_) {
      k.text = false;
      k.text_row = 0;
      k.text_count = 0;
      if (p_.tile_major) {
        k.x1 = 0;
        k.x2 = 0;
        k.x3 = ((kt_ * p_.grid_h + kh_) * p_.grid_w + kw_) * p_.tile_t + sub_ * p_.key_frames;
        k.masked = false;  // tile-major input has only full tiles
      } else {
        k.x1 = kw_ * p_.tile_w;
        k.x2 = kh_ * p_.tile_h;
        k.x3 = kt_ * p_.tile_t + sub_ * p_.key_frames;
        k.masked = k.x1 + p_.tile_w > p_.extent1 || k.x2 + p_.tile_h > p_.extent2 || k.x3 + p_.key_frames > p_.extent3;
      }
    } else {
      const int j = index_ - num_video_;
      k.text = true;
      k.x1 = k.x2 = k.x3 = 0;
      k.text_row = p_.num_video_tokens + j * kBlockN;
      const int left = text_valid_ - j * kBlockN;
      k.text_count = left < kBlockN ? left : kBlockN;
      k.masked = k.text_count < kBlockN;
    }
    return k;
  }

  __device__ __forceinline__ void advance() {
    ++index_;
    if (index_ >= num_video_) return;
    const int subs = kt_ == p_.grid_t - 1 ? p_.last_tile_key_blocks : p_.key_blocks_per_tile;
    if (++sub_ < subs) return;
    sub_ = 0;
    if (++kw_ < start_w_ + win_w_) return;
    kw_ = start_w_;
    if (++kh_ < start_h_ + win_h_) return;
    kh_ = start_h_;
    ++kt_;
  }

 private:
  const StaKernelParams& p_;
  int win_t_, win_h_, win_w_;
  int start_t_, start_h_, start_w_;
  int kt_, kh_, kw_, sub_;
  int index_;
  int num_video_, num_text_, text_valid_;
};

}  // namespace tileattn::sm90

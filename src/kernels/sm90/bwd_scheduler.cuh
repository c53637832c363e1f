#pragma once
// Work decomposition of the STA backward pass.
//
// Main kernel: one CTA per (batch, kv head, key block of 128 rows). Text key blocks (visited by every query) come
// first, so the longest CTAs start first; video key blocks follow tile by tile. A CTA walks, for each query head of
// its GQA group, the query blocks (64 rows) that visit its key block: the plan's transpose, produced on the fly.
// Along each axis the query tiles whose clamped window covers key tile k form one contiguous range (window_start is
// monotone in the query tile), found by scanning the axis with the same window rule the forward and the CPU plan use.
// Text queries visit every key, and video queries every valid text key, so text blocks are visited by everyone.
//
// Deterministic mode adds a query block's dQ contributions in CTA order; rank() is this key block's position in that
// order among the key blocks the query block visits.
#include "kernels/sta_backward_params.hpp"
#include "tileattn/detail/window_rule.hpp"

namespace tileattn::sm90 {

using kernels::kBwdKeyRows;
using kernels::kBwdQueryRows;
using kernels::StaBackwardParams;

__device__ __forceinline__ int valid_text_count(const StaBackwardParams& p, int batch) {
  if (p.text_valid == nullptr) return p.text_len;
  const int v = p.text_valid[p.batch_offset + batch];
  return v < 0 ? 0 : (v > p.text_len ? p.text_len : v);
}

struct KeyBlockTask {
  bool empty = false;  // an empty slice of a partial tile: no rows
  bool text = false;
  int batch = 0, kv_head = 0;
  int tile_t = 0, tile_h = 0, tile_w = 0, sub = 0;  // video
  int x1 = 0, x2 = 0, x3 = 0;                       // video: map coordinates of the first row
  int text_index = 0, text_row = 0;                 // text
};

__device__ __forceinline__ KeyBlockTask key_block_of(const StaBackwardParams& p, int64_t cta) {
  KeyBlockTask k;
  const int64_t text_ctas = int64_t(p.batch_in_launch) * p.kv_heads * p.num_text_key_blocks;
  int64_t bh;
  if (cta < text_ctas) {
    bh = cta / p.num_text_key_blocks;
    k.text = true;
    k.text_index = int(cta % p.num_text_key_blocks);
    k.text_row = p.num_video_tokens + k.text_index * kBwdKeyRows;
  } else {
    cta -= text_ctas;
    const int64_t per_bh = int64_t(p.grid_t) * p.grid_h * p.grid_w * p.key_blocks_per_tile;
    bh = cta / per_bh;
    const int block = int(cta % per_bh);
    const int tile = block / p.key_blocks_per_tile;
    k.sub = block % p.key_blocks_per_tile;
    k.tile_w = tile % p.grid_w;
    k.tile_h = (tile / p.grid_w) % p.grid_h;
    k.tile_t = tile / (p.grid_w * p.grid_h);
    k.empty = k.tile_t == p.grid_t - 1 && k.sub >= p.last_tile_key_blocks;
    if (p.tile_major) {
      k.x3 = tile * p.tile_t + k.sub * p.key_frames;
    } else {
      k.x1 = k.tile_w * p.tile_w;
      k.x2 = k.tile_h * p.tile_h;
      k.x3 = k.tile_t * p.tile_t + k.sub * p.key_frames;
    }
  }
  k.batch = int(bh / p.kv_heads);
  k.kv_head = int(bh % p.kv_heads);
  return k;
}

// True if row `row` of the key block holds a key that can be attended (inside the video / a valid text token).
__device__ __forceinline__ bool key_row_valid(const StaBackwardParams& p, const KeyBlockTask& k, int row,
                                              int text_valid) {
  if (k.text) return k.text_index * kBwdKeyRows + row < text_valid;
  const int w = row & (p.tile_w - 1), h = (row >> p.log2_tile_w) & (p.tile_h - 1), t = row >> p.log2_tile_plane;
  return k.x1 + w < p.extent1 && k.x2 + h < p.extent2 && k.x3 + t < p.extent3;
}

// Map coordinates and token of row `row` of query block `qblock`; false if the row holds no token.
__device__ __forceinline__ bool query_row_token(const StaBackwardParams& p, int qblock, int row, int64_t& token) {
  const int video_blocks = p.grid_t * p.grid_h * p.grid_w * p.query_blocks_per_tile;
  if (qblock >= video_blocks) {
    token = p.num_video_tokens + int64_t(qblock - video_blocks) * kBwdQueryRows + row;
    return token < p.num_tokens;
  }
  const int tile = qblock / p.query_blocks_per_tile, sub = qblock % p.query_blocks_per_tile;
  const int tw = tile % p.grid_w, th = (tile / p.grid_w) % p.grid_h, tt = tile / (p.grid_w * p.grid_h);
  const int w = row & (p.tile_w - 1), h = (row >> p.log2_tile_w) & (p.tile_h - 1), t = row >> p.log2_tile_plane;
  int x1, x2, x3;
  if (p.tile_major) {
    x1 = w, x2 = h, x3 = tile * p.tile_t + sub * p.query_frames + t;
  } else {
    x1 = tw * p.tile_w + w, x2 = th * p.tile_h + h, x3 = tt * p.tile_t + sub * p.query_frames + t;
  }
  token = (int64_t(x3) * p.extent2 + x2) * p.extent1 + x1;
  return x1 < p.extent1 && x2 < p.extent2 && x3 < p.extent3 && (tt < p.grid_t - 1 || sub < p.last_tile_query_blocks);
}

struct QueryStep {
  bool text;
  int head;        // query head (within the launch's heads)
  int qblock;      // query block index within (batch, head)
  int x1, x2, x3;  // video: map coordinates of the first row
  int text_row;    // text: first token
  int qt, qh, qw;  // video: query tile
};

// The query blocks that visit one key block, head by head of the GQA group: video query tiles whose window covers
// the key tile (row-major over the covering box, every non-empty sub-block), then every text query block.
class QueryBlockWalker {
 public:
  __device__ __forceinline__ QueryBlockWalker(const StaBackwardParams& p, const KeyBlockTask& k) : p_(p), k_(k) {
    text_valid_ = valid_text_count(p, k.batch);
    done_ = k.empty || (k.text && k.text_index * kBwdKeyRows >= text_valid_);
    group_index_ = 0;
    if (!done_) begin_head();
  }

  __device__ __forceinline__ bool done() const { return done_; }
  __device__ __forceinline__ int text_valid() const { return text_valid_; }

  __device__ __forceinline__ QueryStep current() const {
    QueryStep s;
    s.head = k_.kv_head * p_.kv_group + group_index_;
    s.text = in_text_;
    s.qt = qt_, s.qh = qh_, s.qw = qw_;
    s.x1 = s.x2 = s.x3 = 0;
    s.text_row = 0;
    const int video_blocks = p_.grid_t * p_.grid_h * p_.grid_w * p_.query_blocks_per_tile;
    if (in_text_) {
      s.qblock = video_blocks + text_j_;
      s.text_row = p_.num_video_tokens + text_j_ * kBwdQueryRows;
    } else {
      const int tile = (qt_ * p_.grid_h + qh_) * p_.grid_w + qw_;
      s.qblock = tile * p_.query_blocks_per_tile + sub_;
      if (p_.tile_major) {
        s.x3 = tile * p_.tile_t + sub_ * p_.query_frames;
      } else {
        s.x1 = qw_ * p_.tile_w, s.x2 = qh_ * p_.tile_h, s.x3 = qt_ * p_.tile_t + sub_ * p_.query_frames;
      }
    }
    return s;
  }

  __device__ __forceinline__ void advance() {
    if (!in_text_) {
      const int subs = qt_ == p_.grid_t - 1 ? p_.last_tile_query_blocks : p_.query_blocks_per_tile;
      if (++sub_ < subs) return;
      sub_ = 0;
      if (++qw_ <= hi_w_) return;
      qw_ = lo_w_;
      if (++qh_ <= hi_h_) return;
      qh_ = lo_h_;
      if (++qt_ <= hi_t_) return;
      in_text_ = true;
      text_j_ = 0;
      if (text_j_ < p_.num_text_query_blocks) return;
    } else if (++text_j_ < p_.num_text_query_blocks) {
      return;
    }
    if (++group_index_ < p_.kv_group) begin_head();
    else done_ = true;
  }

  // Position of this key block among the key blocks that query step `s` visits, in CTA order (text key blocks
  // first, then video key blocks in tile order).
  __device__ __forceinline__ int rank(const QueryStep& s) const {
    if (k_.text) return k_.text_index;
    const int text_blocks = (text_valid_ + kBwdKeyRows - 1) / kBwdKeyRows;
    int wt = p_.grid_t, wh = p_.grid_h, ww = p_.grid_w, st = 0, sh = 0, sw = 0;
    if (!s.text) {
      wt = p_.windows[s.head][0], wh = p_.windows[s.head][1], ww = p_.windows[s.head][2];
      st = int(detail::window_start(s.qt, p_.grid_t, wt));
      sh = int(detail::window_start(s.qh, p_.grid_h, wh));
      sw = int(detail::window_start(s.qw, p_.grid_w, ww));
    }
    const int per_tile = k_.tile_t == p_.grid_t - 1 ? p_.last_tile_key_blocks : p_.key_blocks_per_tile;
    return text_blocks + (k_.tile_t - st) * wh * ww * p_.key_blocks_per_tile +
           ((k_.tile_h - sh) * ww + (k_.tile_w - sw)) * per_tile + k_.sub;
  }

 private:
  // Query tiles along one axis whose window covers key tile `key`: [lo, hi].
  static __device__ __forceinline__ void covering(int key, int grid, int window, int& lo, int& hi) {
    lo = grid, hi = -1;
    for (int c = 0; c < grid; ++c) {
      const int s = int(detail::window_start(c, grid, window));
      if (s <= key && key < s + window) {
        lo = c < lo ? c : lo;
        hi = c;
      }
    }
  }

  __device__ __forceinline__ void begin_head() {
    const int head = k_.kv_head * p_.kv_group + group_index_;
    if (k_.text) {
      lo_t_ = lo_h_ = lo_w_ = 0;
      hi_t_ = p_.grid_t - 1, hi_h_ = p_.grid_h - 1, hi_w_ = p_.grid_w - 1;
    } else {
      covering(k_.tile_t, p_.grid_t, p_.windows[head][0], lo_t_, hi_t_);
      covering(k_.tile_h, p_.grid_h, p_.windows[head][1], lo_h_, hi_h_);
      covering(k_.tile_w, p_.grid_w, p_.windows[head][2], lo_w_, hi_w_);
    }
    qt_ = lo_t_, qh_ = lo_h_, qw_ = lo_w_, sub_ = 0;
    in_text_ = false;
    text_j_ = 0;
  }

  const StaBackwardParams& p_;
  const KeyBlockTask& k_;
  int text_valid_;
  bool done_, in_text_;
  int group_index_;
  int lo_t_, hi_t_, lo_h_, hi_h_, lo_w_, hi_w_;
  int qt_, qh_, qw_, sub_, text_j_;
};

// Where element pair `pair` (of 64 * D / 4 pairs) of a dQ half-chunk sits: the wgmma accumulator order of a 64 x D/2
// tile, pair = e2 * 128 + thread, so a warpgroup writes and reduces it contiguously.
__device__ __forceinline__ void dq_fragment_position(int pair, int& row, int& col) {
  const int e2 = pair / 128, thread = pair % 128, warp = thread / 32, lane = thread % 32;
  row = 16 * warp + lane / 4 + 8 * (e2 & 1);
  col = 8 * (e2 >> 1) + 2 * (lane % 4);
}

}  // namespace tileattn::sm90

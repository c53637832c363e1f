#pragma once
// The plan walk of the STA backward: for each query head of the key block's GQA group, the query blocks (64 rows)
// that visit the key block, i.e. the plan's transpose, produced on the fly. Along each axis the query tiles whose
// clamped window covers key tile k form one contiguous range (window_start is monotone in the query tile), found by
// scanning the axis with the same window rule the forward and the CPU plan use. Text queries visit every key, and
// video queries every valid text key, so text blocks are visited by everyone.
//
// Deterministic mode adds a query block's dQ contributions in CTA order; rank() is this key block's position in that
// order among the key blocks the query block visits.
#include "kernels/sm90/bwd/tile_scheduler.cuh"
#include "kernels/sm90/sta/geometry.cuh"
#include "tileattn/detail/window_rule.hpp"

namespace tileattn::sm90 {

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
  __device__ __forceinline__ QueryBlockWalker(const StaBackwardParams& p, const KeyBlockTask& k)
      : p_(p), g_(p.sta), k_(k) {
    text_valid_ = valid_text_count(p.sta, p.batch_offset + k.batch);
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
    const int video_blocks = g_.grid.grid_t * g_.grid.grid_h * g_.grid.grid_w * g_.query.per_tile;
    if (in_text_) {
      s.qblock = video_blocks + text_j_;
      s.text_row = g_.num_video_tokens + text_j_ * kBwdQueryRows;
    } else {
      const int tile = g_.grid.tile_index(qt_, qh_, qw_);
      s.qblock = tile * g_.query.per_tile + sub_;
      if (g_.tile_major) {
        s.x3 = tile * g_.grid.tile_t + sub_ * g_.query.frames;
      } else {
        s.x1 = qw_ * g_.grid.tile_w, s.x2 = qh_ * g_.grid.tile_h, s.x3 = qt_ * g_.grid.tile_t + sub_ * g_.query.frames;
      }
    }
    return s;
  }

  __device__ __forceinline__ void advance() {
    if (!in_text_) {
      if (++sub_ < g_.query.in_tile(g_.grid, qt_)) return;
      sub_ = 0;
      if (++qw_ <= hi_w_) return;
      qw_ = lo_w_;
      if (++qh_ <= hi_h_) return;
      qh_ = lo_h_;
      if (++qt_ <= hi_t_) return;
      in_text_ = true;
      text_j_ = 0;
      if (text_j_ < g_.num_text_query_blocks) return;
    } else if (++text_j_ < g_.num_text_query_blocks) {
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
    int wt = g_.grid.grid_t, wh = g_.grid.grid_h, ww = g_.grid.grid_w, st = 0, sh = 0, sw = 0;
    if (!s.text) {
      wt = g_.windows[s.head][0], wh = g_.windows[s.head][1], ww = g_.windows[s.head][2];
      st = int(detail::window_start(s.qt, g_.grid.grid_t, wt));
      sh = int(detail::window_start(s.qh, g_.grid.grid_h, wh));
      sw = int(detail::window_start(s.qw, g_.grid.grid_w, ww));
    }
    const int per_tile = g_.key.in_tile(g_.grid, k_.tile_t);
    return text_blocks + (k_.tile_t - st) * wh * ww * g_.key.per_tile +
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
      hi_t_ = g_.grid.grid_t - 1, hi_h_ = g_.grid.grid_h - 1, hi_w_ = g_.grid.grid_w - 1;
    } else {
      covering(k_.tile_t, g_.grid.grid_t, g_.windows[head][0], lo_t_, hi_t_);
      covering(k_.tile_h, g_.grid.grid_h, g_.windows[head][1], lo_h_, hi_h_);
      covering(k_.tile_w, g_.grid.grid_w, g_.windows[head][2], lo_w_, hi_w_);
    }
    qt_ = lo_t_, qh_ = lo_h_, qw_ = lo_w_, sub_ = 0;
    in_text_ = false;
    text_j_ = 0;
  }

  const StaBackwardParams& p_;
  const StaGeometryParams& g_;
  const KeyBlockTask& k_;
  int text_valid_;
  bool done_, in_text_;
  int group_index_;
  int lo_t_, hi_t_, lo_h_, hi_h_, lo_w_, hi_w_;
  int qt_, qh_, qw_, sub_, text_j_;
};

}  // namespace tileattn::sm90

#pragma once
// The plan walk of the STA forward: the key blocks one query block visits, produced on the fly from the window table
// with the same window rule (detail::window_start) that builds the CPU plan. The producer and the consumers each run
// one walker in lockstep.
#include "kernels/sm90/sta/geometry.cuh"
#include "kernels/sm90/sta/tile_scheduler.cuh"
#include "tileattn/detail/window_rule.hpp"

namespace tileattn::sm90 {

struct KeyBlock {
  bool text;
  bool masked;     // some rows of the block are past the video edge / the valid text
  int x1, x2, x3;  // video: map coordinates of the first row
  int text_row;    // text: first token
  int text_count;  // text: valid rows
  int row;         // first row in the padded tile-major order of the e4m3 kernel's operands (fp8/)
};

// Walks the key blocks (kBlockN rows each) of one query block: the window's tiles, then the valid text.
template <int kBlockN>
class KeyBlockWalker {
 public:
  // `batch_offset`: the launch's first batch element (text validity is indexed globally).
  __device__ __forceinline__ KeyBlockWalker(const StaGeometryParams& g, const QueryBlock& q, int batch_offset)
      : g_(g) {
    if (q.text) {
      win_t_ = g.grid.grid_t, win_h_ = g.grid.grid_h, win_w_ = g.grid.grid_w;
      start_t_ = start_h_ = start_w_ = 0;
    } else {
      win_t_ = g.windows[q.head][0], win_h_ = g.windows[q.head][1], win_w_ = g.windows[q.head][2];
      start_t_ = int(detail::window_start(q.tile_t, g.grid.grid_t, win_t_));
      start_h_ = int(detail::window_start(q.tile_h, g.grid.grid_h, win_h_));
      start_w_ = int(detail::window_start(q.tile_w, g.grid.grid_w, win_w_));
    }
    const bool covers_last_t = start_t_ + win_t_ == g.grid.grid_t;
    num_video_ = win_h_ * win_w_ *
                 ((win_t_ - (covers_last_t ? 1 : 0)) * g.key.per_tile + (covers_last_t ? g.key.last_tile : 0));
    text_valid_ = valid_text_count(g, batch_offset + q.batch);
    num_text_ = (text_valid_ + kBlockN - 1) / kBlockN;
    kt_ = start_t_, kh_ = start_h_, kw_ = start_w_, sub_ = 0, index_ = 0;
  }

  __device__ __forceinline__ int count() const { return num_video_ + num_text_; }

  __device__ __forceinline__ KeyBlock current() const {
    const detail::TileGrid& grid = g_.grid;
    KeyBlock k;
    if (index_ < num_video_) {
      k.text = false;
      k.text_row = 0;
      k.text_count = 0;
      if (g_.tile_major) {
        k.x1 = 0;
        k.x2 = 0;
        k.x3 = grid.tile_index(kt_, kh_, kw_) * grid.tile_t + sub_ * g_.key.frames;
        k.masked = false;  // tile-major input has only full tiles
      } else {
        k.x1 = kw_ * grid.tile_w;
        k.x2 = kh_ * grid.tile_h;
        k.x3 = kt_ * grid.tile_t + sub_ * g_.key.frames;
        k.masked = k.x1 + grid.tile_w > g_.extents.x1 || k.x2 + grid.tile_h > g_.extents.x2 ||
                   k.x3 + g_.key.frames > g_.extents.x3;
      }
      k.row = (grid.tile_index(kt_, kh_, kw_) * grid.tile_t + sub_ * g_.key.frames) << grid.log2_tile_plane;
    } else {
      const int j = index_ - num_video_;
      k.text = true;
      k.x1 = k.x2 = k.x3 = 0;
      k.text_row = g_.num_video_tokens + j * kBlockN;
      const int left = text_valid_ - j * kBlockN;
      k.text_count = left < kBlockN ? left : kBlockN;
      k.masked = k.text_count < kBlockN;
      k.row = g_.padded_video_rows + j * kBlockN;
    }
    return k;
  }

  __device__ __forceinline__ void advance() {
    ++index_;
    if (index_ >= num_video_) return;
    if (++sub_ < g_.key.in_tile(g_.grid, kt_)) return;
    sub_ = 0;
    if (++kw_ < start_w_ + win_w_) return;
    kw_ = start_w_;
    if (++kh_ < start_h_ + win_h_) return;
    kh_ = start_h_;
    ++kt_;
  }

 private:
  const StaGeometryParams& g_;
  int win_t_, win_h_, win_w_;
  int start_t_, start_h_, start_w_;
  int kt_, kh_, kw_, sub_;
  int index_;
  int num_video_, num_text_, text_valid_;
};

}  // namespace tileattn::sm90

#pragma once
// TMA tensor maps over tileattn's [batch, heads, tokens, head_dim] tensors, shared by the STA forward, STA backward
// and FG forward launchers. Video tokens are seen as a 5D tensor (d, x1, x2, x3, batch*heads): natural order
// (d, w, h, t, bh), tile-major order (d, w in tile, h in tile, tile * tile_t + t in tile, bh); boxes are 64 head-dim
// elements (one 128-byte swizzle atom) by whole tile planes by `frames`. All tokens are also seen as a 3D tensor
// (d, token, bh) for text rows (and FG's query rows), with boxes of `rows` tokens.
#include <cuda.h>

#include <bit>
#include <cstdint>

#include "kernels/sta_kernel_params.hpp"
#include "ops/sta_problem.hpp"

namespace tileattn::kernels {

class TensorMapFactory {
 public:
  // Token-row maps only (FG): `tokens` rows of head_dim elements per (batch, head).
  TensorMapFactory(DType dtype, int64_t head_dim, int64_t tokens, int64_t batch_per_launch)
      : dtype_(dtype), head_dim_(head_dim), tokens_(tokens), batch_per_launch_(batch_per_launch) {}
  // Video and token-row maps (STA) over the resolved shape.
  TensorMapFactory(const ops::StaShape& sta, int64_t batch_per_launch)
      : TensorMapFactory(sta.args->dtype, sta.args->head_dim, sta.geometry.num_tokens(), batch_per_launch) {
    sta_ = &sta;
  }
  CUtensorMap video(const char* name, const DeviceTensor& t, int64_t heads, int64_t launch, int64_t frames) const;
  CUtensorMap text(const char* name, const DeviceTensor& t, int64_t heads, int64_t launch, int64_t rows) const;

 private:
  DType dtype_;
  int64_t head_dim_, tokens_, batch_per_launch_;
  const ops::StaShape* sta_ = nullptr;
};

// The kernels' per-query-head window table (in tiles), from the resolved per-head windows.
void fill_window_table(const ops::StaShape& sta, int16_t (&table)[kMaxHeads][3]);

// Fills what the forward and backward parameter blocks share (same field names): windows, map extents, tile and
// grid shape, the two block kinds' geometry, token counts, heads, text validity, LSE and the softmax scale in log2
// units.
template <class Params>
void fill_shared_params(Params& p, const ops::StaShape& sta, const ops::TiledBlocks& query,
                        const ops::TiledBlocks& key) {
  const StaForwardArgs& a = *sta.args;
  const VideoGeometry& geo = sta.geometry;
  fill_window_table(sta, p.windows);
  p.extent1 = sta.extent1(), p.extent2 = sta.extent2(), p.extent3 = sta.extent3();
  p.tile_t = int(a.tile.t), p.tile_h = int(a.tile.h), p.tile_w = int(a.tile.w);
  p.log2_tile_w = std::countr_zero(uint64_t(a.tile.w));
  p.log2_tile_plane = std::countr_zero(uint64_t(a.tile.h * a.tile.w));
  p.grid_t = int(geo.grid().t), p.grid_h = int(geo.grid().h), p.grid_w = int(geo.grid().w);
  p.query_frames = query.frames, p.query_blocks_per_tile = query.blocks_per_tile;
  p.last_tile_query_blocks = query.last_tile_blocks;
  p.key_frames = key.frames, p.key_blocks_per_tile = key.blocks_per_tile, p.last_tile_key_blocks = key.last_tile_blocks;
  p.tile_major = a.layout == TokenLayout::tile_major;
  p.num_video_tokens = int(geo.num_video_tokens());
  p.num_tokens = int(geo.num_tokens());
  p.text_len = int(a.text_len);
  p.num_text_query_blocks = int((a.text_len + query.rows - 1) / query.rows);
  p.q_heads = int(a.q_heads);
  p.kv_group = int(a.q_heads / a.kv_heads);
  p.text_valid = a.text_valid;
  p.lse = a.lse;
  p.scale_log2 = ops::softmax_scale_log2(a.scale, a.head_dim);
}

// Launch `launch`'s Q, K, V maps, which the forward and backward parameter blocks share (same field names): video
// boxes of the block kinds' frames, text boxes of their rows.
template <class Params>
void fill_qkv_maps(Params& p, const TensorMapFactory& maps, const StaForwardArgs& a, int64_t launch,
                   const ops::TiledBlocks& query, const ops::TiledBlocks& key) {
  p.q_video = maps.video("q", a.q, a.q_heads, launch, query.frames);
  p.k_video = maps.video("k", a.k, a.kv_heads, launch, key.frames);
  p.v_video = maps.video("v", a.v, a.kv_heads, launch, key.frames);
  p.q_text = maps.text("q", a.q, a.q_heads, launch, query.rows);
  p.k_text = maps.text("k", a.k, a.kv_heads, launch, key.rows);
  p.v_text = maps.text("v", a.v, a.kv_heads, launch, key.rows);
}

// True if the current device has compute capability 9.0 (cached per device).
bool current_device_is_hopper();

}  // namespace tileattn::kernels

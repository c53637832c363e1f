#pragma once
// TMA tensor maps over tileattn's [batch, heads, tokens, head_dim] tensors, shared by the STA forward, STA backward
// and FG forward launchers. Video tokens are seen as a 5D tensor (d, x1, x2, x3, batch*heads): natural order
// (d, w, h, t, bh), tile-major order (d, w in tile, h in tile, tile * tile_t + t in tile, bh); boxes are 64 head-dim
// elements (one 128-byte swizzle atom) by whole tile planes by `frames`. All tokens are also seen as a 3D tensor
// (d, token, bh) for text rows (and FG's query rows), with boxes of `rows` tokens.
#include <cuda.h>

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

// A map over a contiguous buffer (the e4m3 forward's workspace): `outer` blocks of `rows` rows of `row_bytes` bytes,
// boxes of box_bytes x box_rows.
CUtensorMap byte_rows_map(const char* name, void* base, uint64_t row_bytes, uint64_t rows, uint64_t outer,
                          uint32_t box_rows, uint32_t box_bytes, CUtensorMapSwizzle swizzle);

// The kernels' per-query-head window table (in tiles), from the resolved per-head windows.
void fill_window_table(const ops::StaShape& sta, int16_t (&table)[kMaxHeads][3]);

// Fills the STA geometry the forward and backward parameter blocks share: windows, map extents, tile and grid
// shape, the two block kinds' geometry, the video token count and text validity.
inline void fill_sta_geometry(StaGeometryParams& p, const ops::StaShape& sta, const detail::TileBlocks& query,
                              const detail::TileBlocks& key) {
  const StaForwardArgs& a = *sta.args;
  fill_window_table(sta, p.windows);
  p.extents = sta.extents;
  p.grid = sta.grid;
  p.query = query;
  p.key = key;
  p.tile_major = a.layout == TokenLayout::tile_major;
  p.num_video_tokens = int(sta.geometry.num_video_tokens());
  p.padded_video_rows = int(sta.geometry.num_tiles() * sta.geometry.tile().volume());
  p.text_len = int(a.text_len);
  p.num_text_query_blocks = int(detail::ceil_div(a.text_len, int64_t{query.rows(sta.grid)}));
  p.text_valid = a.text_valid;
}

// Fills the head, token, LSE and scale fields (same names in AttentionParams and StaBackwardParams) from a call's
// arguments (StaForwardArgs or FgForwardArgs).
template <class Params, class Args>
void fill_attention_heads(Params& p, const Args& a, int64_t num_tokens) {
  p.num_tokens = int(num_tokens);
  p.q_heads = int(a.q_heads);
  p.kv_group = int(a.q_heads / a.kv_heads);
  p.lse = a.lse;
  p.scale_log2 = ops::softmax_scale_log2(a.scale, a.head_dim);
}

// Launch `launch`'s Q, K, V maps, which the forward and backward parameter blocks share (same field names; Q's
// token map is passed, since the forward keeps it in its attention part): video boxes of the block kinds' frames,
// text boxes of their rows.
template <class Params>
void fill_qkv_maps(Params& p, CUtensorMap& q_tokens, const TensorMapFactory& maps, const ops::StaShape& sta,
                   int64_t launch, const detail::TileBlocks& query, const detail::TileBlocks& key) {
  const StaForwardArgs& a = *sta.args;
  const detail::TileGrid& grid = sta.grid;
  p.q_video = maps.video("q", a.q, a.q_heads, launch, query.frames);
  p.k_video = maps.video("k", a.k, a.kv_heads, launch, key.frames);
  p.v_video = maps.video("v", a.v, a.kv_heads, launch, key.frames);
  q_tokens = maps.text("q", a.q, a.q_heads, launch, query.rows(grid));
  p.k_tokens = maps.text("k", a.k, a.kv_heads, launch, key.rows(grid));
  p.v_tokens = maps.text("v", a.v, a.kv_heads, launch, key.rows(grid));
}

// True if the current device has compute capability 9.0 (cached per device).
bool current_device_is_hopper();

}  // namespace tileattn::kernels

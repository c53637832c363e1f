// Shape constraints of the GPU kernels, checked on the host (also in builds without CUDA, so the CLI and the
// Python package can report them anywhere).
#include <fmt/format.h>

#include <cmath>

#include "kernels/backward_workspace.hpp"
#include "kernels/sta_validation.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/error.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {

void validate_device_tensor(const char* name, const DeviceTensor& t, int64_t batch, int64_t heads, int64_t head_dim,
                            int64_t align_bytes, const char* why) {
  if (t.data == nullptr) throw_argument_error(name, "data pointer is null");
  if (reinterpret_cast<uintptr_t>(t.data) % align_bytes != 0)
    throw_argument_error(name, fmt::format("data pointer must be {}-byte aligned ({})", align_bytes, why));
  const int64_t multiple = align_bytes / 2;  // elements
  const std::pair<const char*, int64_t> strides[] = {
      {"token_stride", t.token_stride}, {"head_stride", t.head_stride}, {"batch_stride", t.batch_stride}};
  for (auto [what, s] : strides) {
    if (s < 0 || s % multiple != 0)
      throw_argument_error(name, multiple == 1 ? fmt::format("{} must be >= 0, got {}", what, s)
                                               : fmt::format("{} must be a non-negative multiple of {} elements ({} "
                                                             "bytes, {}), got {}", what, multiple, align_bytes, why, s));
  }
  if (t.token_stride < head_dim)
    throw_argument_error(name, fmt::format("token_stride {} is smaller than head_dim {} (head_dim must be contiguous "
                                           "and rows must not overlap)", t.token_stride, head_dim));
  if (heads > 1 && t.head_stride == 0) throw_argument_error(name, "head_stride is 0 with more than one head");
  if (batch > 1 && t.batch_stride == 0) throw_argument_error(name, "batch_stride is 0 with more than one batch element");
}

void validate_head_shape(DType dtype, int64_t batch, int64_t q_heads, int64_t kv_heads, int64_t head_dim,
                         int64_t max_q_heads) {
  if (dtype != DType::bf16 && dtype != DType::fp16) throw_argument_error("dtype", "must be bf16 or fp16");
  if (head_dim != 64 && head_dim != 128)
    throw_argument_error("head_dim", fmt::format("must be 64 or 128, got {}", head_dim));
  if (batch < 1) throw_argument_error("batch", fmt::format("must be >= 1, got {}", batch));
  if (q_heads < 1 || q_heads > max_q_heads)
    throw_argument_error("q_heads", max_q_heads == INT64_MAX
                                        ? fmt::format("must be >= 1, got {}", q_heads)
                                        : fmt::format("must be in [1, {}], got {}", max_q_heads, q_heads));
  if (kv_heads < 1 || q_heads % kv_heads != 0)
    throw_argument_error("kv_heads", fmt::format("must divide q_heads = {}, got {}", q_heads, kv_heads));
}

void validate_gpu_tile(const Extent3& tile) {
  const int64_t plane = tile.h * tile.w;
  if (plane != 16 && plane != 32 && plane != 64)
    throw_argument_error("tile", fmt::format("the GPU kernel needs tile_h * tile_w in {{16, 32, 64}} (a 128-row block is "
                                             "128 / (tile_h * tile_w) whole frames of a tile), got {}", to_string(tile)));
  const int64_t frames = 128 / plane;
  if (tile.t % frames != 0)
    throw_argument_error("tile", fmt::format("the GPU kernel needs tile_t to be a multiple of {} (frames per 128-row "
                                             "block for a {}x{} tile plane), got {}", frames, tile.h, tile.w,
                                             to_string(tile)));
  if (tile.h > 256 || tile.w > 256) throw_argument_error("tile", "tile_h and tile_w must be <= 256 (TMA box)");
}

void validate_sta_forward_args(const StaForwardArgs& a) {
  // ---- shapes ----
  validate_head_shape(a.dtype, a.batch, a.q_heads, a.kv_heads, a.head_dim, kMaxQueryHeads);
  const VideoGeometry geo(a.video, a.tile, a.text_len);
  validate_gpu_tile(a.tile);
  if (a.layout == TokenLayout::tile_major && !geo.tiles_exact())
    throw_argument_error("layout", fmt::format("tile-major input needs a video shape that is a multiple of the tile "
                                               "({} vs {}); use the natural layout for partial tiles",
                                               to_string(a.video), to_string(a.tile)));
  const Extent3 grid = geo.grid();
  if (grid.t > 32767 || grid.h > 32767 || grid.w > 32767)
    throw_argument_error("video_shape", "more than 32767 tiles along one axis");
  if (checked_product({a.batch, a.q_heads, geo.num_tokens()}, "batch") >= (int64_t{1} << 40))
    throw_argument_error("batch", "batch * heads * tokens is too large");

  // ---- windows ----
  const int64_t nw = static_cast<int64_t>(a.windows.size());
  if (nw != 0 && nw != 1 && nw != a.q_heads)
    throw_argument_error("windows", fmt::format("expected 0 (dense), 1 (all heads) or q_heads = {} windows, got {}",
                                                a.q_heads, nw));
  for (int64_t h = 0; h < a.q_heads; ++h) {
    Window w = nw == 0 ? grid : a.windows[nw == 1 ? 0 : h];
    validate_window(w, grid, nw == 1 ? std::string("windows[0]") : fmt::format("windows[{}]", h));
  }

  // ---- tensors ----
  validate_device_tensor("q", a.q, a.batch, a.q_heads, a.head_dim, 16, "TMA");
  validate_device_tensor("k", a.k, a.batch, a.kv_heads, a.head_dim, 16, "TMA");
  validate_device_tensor("v", a.v, a.batch, a.kv_heads, a.head_dim, 16, "TMA");
  validate_device_tensor("out", a.out, a.batch, a.q_heads, a.head_dim, 16, "TMA");
  if (a.lse != nullptr && reinterpret_cast<uintptr_t>(a.lse) % 4 != 0)
    throw_argument_error("lse", "must be 4-byte aligned");
  if (!std::isfinite(a.scale) || a.scale < 0.0f)
    throw_argument_error("scale", fmt::format("must be finite and >= 0 (0 = 1/sqrt(head_dim)), got {}", a.scale));
}

int64_t sta_backward_workspace_bytes(const StaForwardArgs& f) {
  validate_sta_forward_args(f);
  const VideoGeometry geo(f.video, f.tile, f.text_len);
  const int64_t rows = kernels::kBwdQueryRows;
  const int64_t frames = rows / (f.tile.h * f.tile.w);  // validate_gpu_tile: the tile plane divides 64
  const int64_t query_blocks = checked_add(checked_mul(geo.num_tiles(), f.tile.t / frames, "video_shape"),
                                           detail::ceil_div(f.text_len, rows), "video_shape");
  return kernels::backward_workspace_layout(checked_product({f.batch, f.q_heads, query_blocks}, "batch"), f.head_dim)
      .total;
}

void validate_sta_backward_args(const StaBackwardArgs& a) {
  const StaForwardArgs& f = a.forward;
  validate_sta_forward_args(f);
  if (f.lse == nullptr) throw_argument_error("lse", "the backward needs the forward's LSE (got a null pointer)");
  validate_device_tensor("grad_out", a.grad_out, f.batch, f.q_heads, f.head_dim, 16, "TMA");
  validate_device_tensor("grad_q", a.grad_q, f.batch, f.q_heads, f.head_dim, 16, "TMA");
  validate_device_tensor("grad_k", a.grad_k, f.batch, f.kv_heads, f.head_dim, 16, "TMA");
  validate_device_tensor("grad_v", a.grad_v, f.batch, f.kv_heads, f.head_dim, 16, "TMA");
  const int64_t needed = sta_backward_workspace_bytes(f);
  if (a.workspace == nullptr) throw_argument_error("workspace", "is null");
  if (reinterpret_cast<uintptr_t>(a.workspace) % 256 != 0)
    throw_argument_error("workspace", "must be 256-byte aligned");
  if (a.workspace_bytes < needed)
    throw_argument_error("workspace", fmt::format("holds {} bytes; this call needs {} "
                                                  "(sta_backward_workspace_bytes)", a.workspace_bytes, needed));
}

}  // namespace tileattn

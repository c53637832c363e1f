// Host side of the STA forward kernel: validates arguments, builds the TMA tensor maps and launches. No host
// synchronization and no device allocation, so a call can be captured in a CUDA graph.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <array>
#include <cmath>
#include <mutex>

#include "kernels/sta_kernel_params.hpp"
#include "kernels/sta_validation.hpp"
#include "tileattn/error.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {
namespace {

using kernels::StaKernelParams;

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status);
    if (err != cudaSuccess || status != cudaDriverEntryPointSuccess || ptr == nullptr)
      throw CudaError("sta_forward: cuTensorMapEncodeTiled is not available from the CUDA driver");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

template <int Rank>
CUtensorMap make_tensor_map(const char* name, void* base, CUtensorMapDataType dtype, std::array<uint64_t, Rank> dims,
                            std::array<uint64_t, Rank - 1> strides_bytes, std::array<uint32_t, Rank> box) {
  CUtensorMap map;
  std::array<uint32_t, Rank> element_strides;
  element_strides.fill(1);
  CUresult r = tensor_map_encoder()(&map, dtype, Rank, base, dims.data(), strides_bytes.data(), box.data(),
                                    element_strides.data(), CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw CudaError(fmt::format("sta_forward: cuTensorMapEncodeTiled failed for '{}' (CUresult {})", name, int(r)));
  return map;
}

bool device_supported() {
  int device = 0;
  if (cudaGetDevice(&device) != cudaSuccess) return false;
  static std::mutex mutex;
  static std::array<int, 64> cache{};  // 0 unknown, 1 yes, 2 no
  std::lock_guard lock(mutex);
  if (device < 0 || device >= static_cast<int>(cache.size())) return false;
  if (cache[device] == 0) {
    int major = 0, minor = 0;
    bool ok = cudaDeviceGetAttribute(&major, cudaDevAttrComputeCapabilityMajor, device) == cudaSuccess &&
              cudaDeviceGetAttribute(&minor, cudaDevAttrComputeCapabilityMinor, device) == cudaSuccess &&
              major == 9 && minor == 0;
    cache[device] = ok ? 1 : 2;
  }
  return cache[device] == 1;
}

}  // namespace

bool gpu_kernels_available() {
  int count = 0;
  if (cudaGetDeviceCount(&count) != cudaSuccess || count == 0) {
    cudaGetLastError();  // clear the sticky "no device" error
    return false;
  }
  return device_supported();
}

void sta_forward(const StaForwardArgs& a, StreamHandle stream) {
  validate_sta_forward_args(a);
  const VideoGeometry geo(a.video, a.tile, a.text_len);
  const Extent3 grid = geo.grid();
  const int64_t nw = static_cast<int64_t>(a.windows.size());
  StaKernelParams p{};
  for (int64_t h = 0; h < a.q_heads; ++h) {
    const Window w = nw == 0 ? grid : a.windows[nw == 1 ? 0 : h];
    p.windows[h][0] = static_cast<int16_t>(w.t);
    p.windows[h][1] = static_cast<int16_t>(w.h);
    p.windows[h][2] = static_cast<int16_t>(w.w);
  }

  if (!gpu_kernels_available())
    throw CudaError("sta_forward: no GPU of compute capability 9.0 (Hopper) is available to this process");

  // ---- kernel parameters ----
  const Extent3 tile = a.tile;
  const int64_t frames = 128 / (tile.h * tile.w);
  p.tile_t = int(tile.t), p.tile_h = int(tile.h), p.tile_w = int(tile.w);
  p.grid_t = int(grid.t), p.grid_h = int(grid.h), p.grid_w = int(grid.w);
  p.frames_per_block = int(frames);
  p.blocks_per_tile = int(tile.t / frames);
  const int64_t last_frames = a.video.t - (grid.t - 1) * tile.t;
  p.last_tile_t_blocks = int((last_frames + frames - 1) / frames);
  p.tile_major = a.layout == TokenLayout::tile_major;
  if (p.tile_major) {
    p.extent1 = int(tile.w), p.extent2 = int(tile.h), p.extent3 = int(geo.num_tiles() * tile.t);
  } else {
    p.extent1 = int(a.video.w), p.extent2 = int(a.video.h), p.extent3 = int(a.video.t);
  }
  p.num_video_tokens = int(geo.num_video_tokens());
  p.num_tokens = int(geo.num_tokens());
  p.text_len = int(a.text_len);
  p.num_text_query_blocks = int((a.text_len + kernels::kBlockRows - 1) / kernels::kBlockRows);
  p.q_heads = int(a.q_heads);
  p.kv_group = int(a.q_heads / a.kv_heads);
  p.text_valid = a.text_valid;
  p.lse = a.lse;
  const double scale = a.scale != 0.0f ? a.scale : 1.0 / std::sqrt(double(a.head_dim));
  p.scale_log2 = float(scale * 1.4426950408889634);

  // Batch folds into the maps' last dimension when every tensor's batch stride is heads * head_stride.
  auto folds = [&](const DeviceTensor& t, int64_t heads) { return t.batch_stride == heads * t.head_stride; };
  const bool fold = a.batch == 1 || (folds(a.q, a.q_heads) && folds(a.k, a.kv_heads) && folds(a.v, a.kv_heads) &&
                                     folds(a.out, a.q_heads));
  const int64_t launches = fold ? 1 : a.batch;
  const int64_t batch_per_launch = fold ? a.batch : 1;
  p.batch_in_launch = int(batch_per_launch);

  const CUtensorMapDataType dtype =
      a.dtype == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
  const uint64_t D = uint64_t(a.head_dim);
  auto video_map = [&](const char* name, const DeviceTensor& t, int64_t heads, int64_t batch_index, uint32_t box_t) {
    const uint64_t ts = uint64_t(t.token_stride) * 2, hs = uint64_t(t.head_stride) * 2;
    void* base = static_cast<char*>(t.data) + batch_index * t.batch_stride * 2;
    std::array<uint64_t, 4> strides = p.tile_major
        ? std::array<uint64_t, 4>{ts, uint64_t(tile.w) * ts, uint64_t(tile.h * tile.w) * ts, hs}
        : std::array<uint64_t, 4>{ts, uint64_t(a.video.w) * ts, uint64_t(a.video.h * a.video.w) * ts, hs};
    return make_tensor_map<5>(name, base, dtype,
                              {D, uint64_t(p.extent1), uint64_t(p.extent2), uint64_t(p.extent3),
                               uint64_t(heads * batch_per_launch)},
                              strides, {64, uint32_t(tile.w), uint32_t(tile.h), box_t});
  };
  auto text_map = [&](const char* name, const DeviceTensor& t, int64_t heads, int64_t batch_index, uint32_t rows) {
    void* base = static_cast<char*>(t.data) + batch_index * t.batch_stride * 2;
    return make_tensor_map<3>(name, base, dtype, {D, uint64_t(geo.num_tokens()), uint64_t(heads * batch_per_launch)},
                              {uint64_t(t.token_stride) * 2, uint64_t(t.head_stride) * 2}, {64, rows, 1});
  };

  const int64_t blocks_per_bh = geo.num_tiles() * p.blocks_per_tile + p.num_text_query_blocks;
  const int64_t ctas = batch_per_launch * a.q_heads * blocks_per_bh;
  if (ctas >= (int64_t{1} << 31)) throw_argument_error("batch", "too many query blocks for one launch");
  for (int64_t l = 0; l < launches; ++l) {
    p.batch_offset = int(l * batch_per_launch);
    p.q_video = video_map("q", a.q, a.q_heads, l, uint32_t(frames));
    p.k_video = video_map("k", a.k, a.kv_heads, l, uint32_t(frames));
    p.v_video = video_map("v", a.v, a.kv_heads, l, uint32_t(frames));
    p.o_video = video_map("out", a.out, a.q_heads, l, uint32_t(frames / 2));
    p.q_text = text_map("q", a.q, a.q_heads, l, kernels::kBlockRows);
    p.k_text = text_map("k", a.k, a.kv_heads, l, kernels::kTextBlockRows);
    p.v_text = text_map("v", a.v, a.kv_heads, l, kernels::kTextBlockRows);
    p.o_text = text_map("out", a.out, a.q_heads, l, kernels::kBlockRows / 2);
    auto* s = static_cast<CUstream_st*>(stream);
    if (a.dtype == DType::bf16)
      a.head_dim == 128 ? kernels::launch_sta_forward_sm90<DType::bf16, 128>(p, ctas, s)
                        : kernels::launch_sta_forward_sm90<DType::bf16, 64>(p, ctas, s);
    else
      a.head_dim == 128 ? kernels::launch_sta_forward_sm90<DType::fp16, 128>(p, ctas, s)
                        : kernels::launch_sta_forward_sm90<DType::fp16, 64>(p, ctas, s);
  }
}

}  // namespace tileattn

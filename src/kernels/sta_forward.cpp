// Host side of the STA forward kernel: validates arguments, builds the TMA tensor maps and launches. No host
// synchronization and no device allocation, so a call can be captured in a CUDA graph.
#include <cuda.h>
#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <array>
#include <bit>
#include <cmath>
#include <mutex>

#include "kernels/sta_kernel_params.hpp"
#include "kernels/sta_validation.hpp"
#include "tileattn/error.hpp"
#include "tileattn/sta.hpp"

namespace tileattn {
namespace {

using kernels::StaKernelParams;
using kernels::kQueryBlockRows;

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
  for (int i = 0; i < Rank; ++i)
    if (dims[i] == 0 || box[i] == 0 || box[i] > 256)
      throw CudaError(fmt::format("sta_forward: tensor map '{}': dimension {} has extent {} and box {}", name, i,
                                  dims[i], box[i]));
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

namespace kernels {

int choose_block_n(const StaForwardArgs& a) {
  // 192-row key blocks halve the per-block softmax/rescale overhead relative to the MMA work (FA3 uses 176 for head
  // dim 128); they need whole frames: tile_t must be a multiple of 192 / (tile_h * tile_w).
  const int64_t plane = a.tile.h * a.tile.w;
  if (a.head_dim == 128 && 192 % plane == 0 && a.tile.t % (192 / plane) == 0) return 192;
  return 128;
}

std::vector<StaLaunch> prepare_sta_launches(const StaForwardArgs& a, int block_n) {
  validate_sta_forward_args(a);
  if (!gpu_kernels_available())
    throw CudaError("sta_forward: no GPU of compute capability 9.0 (Hopper) is available to this process");
  const VideoGeometry geo(a.video, a.tile, a.text_len);
  const Extent3 grid = geo.grid(), tile = a.tile;
  const int64_t plane = tile.h * tile.w;
  if (block_n % plane != 0 || tile.t % (block_n / plane) != 0)
    throw_argument_error("tile", fmt::format("key blocks of {} rows need tile_t to be a multiple of {}, got {}",
                                             block_n, block_n / plane, to_string(tile)));
  StaKernelParams p{};
  const int64_t nw = static_cast<int64_t>(a.windows.size());
  for (int64_t h = 0; h < a.q_heads; ++h) {
    const Window w = nw == 0 ? grid : a.windows[nw == 1 ? 0 : h];
    p.windows[h][0] = static_cast<int16_t>(w.t);
    p.windows[h][1] = static_cast<int16_t>(w.h);
    p.windows[h][2] = static_cast<int16_t>(w.w);
  }
  const int64_t last_frames = a.video.t - (grid.t - 1) * tile.t;
  const int64_t query_frames = kQueryBlockRows / plane, key_frames = block_n / plane;
  p.tile_t = int(tile.t), p.tile_h = int(tile.h), p.tile_w = int(tile.w);
  p.log2_tile_w = std::countr_zero(uint64_t(tile.w));
  p.log2_tile_plane = std::countr_zero(uint64_t(plane));
  p.grid_t = int(grid.t), p.grid_h = int(grid.h), p.grid_w = int(grid.w);
  p.query_frames = int(query_frames);
  p.query_blocks_per_tile = int(tile.t / query_frames);
  p.last_tile_query_blocks = int((last_frames + query_frames - 1) / query_frames);
  p.key_frames = int(key_frames);
  p.key_blocks_per_tile = int(tile.t / key_frames);
  p.last_tile_key_blocks = int((last_frames + key_frames - 1) / key_frames);
  p.tile_major = a.layout == TokenLayout::tile_major;
  if (p.tile_major) {
    p.extent1 = int(tile.w), p.extent2 = int(tile.h), p.extent3 = int(geo.num_tiles() * tile.t);
  } else {
    p.extent1 = int(a.video.w), p.extent2 = int(a.video.h), p.extent3 = int(a.video.t);
  }
  p.num_video_tokens = int(geo.num_video_tokens());
  p.num_tokens = int(geo.num_tokens());
  p.text_len = int(a.text_len);
  p.num_text_query_blocks = int((a.text_len + kQueryBlockRows - 1) / kQueryBlockRows);
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
  auto video_map = [&](const char* name, const DeviceTensor& t, int64_t heads, int64_t batch_index, int64_t frames) {
    const uint64_t ts = uint64_t(t.token_stride) * 2, hs = uint64_t(t.head_stride) * 2;
    void* base = static_cast<char*>(t.data) + batch_index * t.batch_stride * 2;
    std::array<uint64_t, 4> strides = p.tile_major
        ? std::array<uint64_t, 4>{ts, uint64_t(tile.w) * ts, uint64_t(tile.h * tile.w) * ts, hs}
        : std::array<uint64_t, 4>{ts, uint64_t(a.video.w) * ts, uint64_t(a.video.h * a.video.w) * ts, hs};
    return make_tensor_map<5>(name, base, dtype,
                              {D, uint64_t(p.extent1), uint64_t(p.extent2), uint64_t(p.extent3),
                               uint64_t(heads * batch_per_launch)},
                              strides, {64, uint32_t(tile.w), uint32_t(tile.h), uint32_t(frames), 1});
  };
  auto text_map = [&](const char* name, const DeviceTensor& t, int64_t heads, int64_t batch_index, int64_t rows) {
    void* base = static_cast<char*>(t.data) + batch_index * t.batch_stride * 2;
    return make_tensor_map<3>(name, base, dtype, {D, uint64_t(geo.num_tokens()), uint64_t(heads * batch_per_launch)},
                              {uint64_t(t.token_stride) * 2, uint64_t(t.head_stride) * 2},
                              {64, uint32_t(rows), 1});
  };

  const int64_t blocks_per_bh = geo.num_tiles() * p.query_blocks_per_tile + p.num_text_query_blocks;
  const int64_t ctas = batch_per_launch * a.q_heads * blocks_per_bh;
  if (ctas >= (int64_t{1} << 31)) throw_argument_error("batch", "too many query blocks for one launch");
  std::vector<StaLaunch> out;
  for (int64_t l = 0; l < launches; ++l) {
    p.batch_offset = int(l * batch_per_launch);
    p.q_video = video_map("q", a.q, a.q_heads, l, query_frames);
    p.k_video = video_map("k", a.k, a.kv_heads, l, key_frames);
    p.v_video = video_map("v", a.v, a.kv_heads, l, key_frames);
    p.o_video = video_map("out", a.out, a.q_heads, l, query_frames / 2);
    p.q_text = text_map("q", a.q, a.q_heads, l, kQueryBlockRows);
    p.k_text = text_map("k", a.k, a.kv_heads, l, block_n);
    p.v_text = text_map("v", a.v, a.kv_heads, l, block_n);
    p.o_text = text_map("out", a.out, a.q_heads, l, kQueryBlockRows / 2);
    out.push_back({p, ctas});
  }
  return out;
}

}  // namespace kernels

void sta_forward(const StaForwardArgs& a, StreamHandle stream) {
  const int block_n = kernels::choose_block_n(a);
  const std::vector<kernels::StaLaunch> launches = kernels::prepare_sta_launches(a, block_n);
  for (const kernels::StaLaunch& l : launches) {
    auto* s = static_cast<CUstream_st*>(stream);
    if (a.dtype == DType::bf16)
      a.head_dim == 128 ? kernels::launch_sta_forward_sm90<DType::bf16, 128>(l.params, l.num_ctas, block_n, s)
                        : kernels::launch_sta_forward_sm90<DType::bf16, 64>(l.params, l.num_ctas, block_n, s);
    else
      a.head_dim == 128 ? kernels::launch_sta_forward_sm90<DType::fp16, 128>(l.params, l.num_ctas, block_n, s)
                        : kernels::launch_sta_forward_sm90<DType::fp16, 64>(l.params, l.num_ctas, block_n, s);
  }
}

}  // namespace tileattn

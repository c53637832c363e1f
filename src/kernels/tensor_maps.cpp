// TMA tensor maps and block geometry shared by the STA forward and backward launchers.
#include "kernels/tensor_maps.hpp"

#include <cudaTypedefs.h>
#include <cuda_runtime.h>
#include <fmt/format.h>

#include <array>
#include <mutex>

#include "tileattn/error.hpp"

namespace tileattn::kernels {
namespace {

PFN_cuTensorMapEncodeTiled_v12000 tensor_map_encoder() {
  static PFN_cuTensorMapEncodeTiled_v12000 fn = [] {
    void* ptr = nullptr;
    cudaDriverEntryPointQueryResult status{};
    cudaError_t err = cudaGetDriverEntryPointByVersion("cuTensorMapEncodeTiled", &ptr, 12000, cudaEnableDefault, &status);
    if (err != cudaSuccess || status != cudaDriverEntryPointSuccess || ptr == nullptr)
      throw CudaError("tileattn: cuTensorMapEncodeTiled is not available from the CUDA driver");
    return reinterpret_cast<PFN_cuTensorMapEncodeTiled_v12000>(ptr);
  }();
  return fn;
}

template <int Rank>
CUtensorMap make_tensor_map(const char* name, void* base, CUtensorMapDataType dtype, std::array<uint64_t, Rank> dims,
                            std::array<uint64_t, Rank - 1> strides_bytes, std::array<uint32_t, Rank> box) {
  for (int i = 0; i < Rank; ++i)
    if (dims[i] == 0 || box[i] == 0 || box[i] > 256)
      throw CudaError(fmt::format("tileattn: tensor map '{}': dimension {} has extent {} and box {}", name, i,
                                  dims[i], box[i]));
  CUtensorMap map;
  std::array<uint32_t, Rank> element_strides;
  element_strides.fill(1);
  CUresult r = tensor_map_encoder()(&map, dtype, Rank, base, dims.data(), strides_bytes.data(), box.data(),
                                    element_strides.data(), CU_TENSOR_MAP_INTERLEAVE_NONE, CU_TENSOR_MAP_SWIZZLE_128B,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw CudaError(fmt::format("tileattn: cuTensorMapEncodeTiled failed for '{}' (CUresult {})", name, int(r)));
  return map;
}

CUtensorMapDataType map_dtype(DType d) {
  return d == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

}  // namespace

TiledBlocks tiled_blocks(const StaForwardArgs& a, int rows) {
  const int64_t plane = a.tile.h * a.tile.w;
  if (rows % plane != 0 || a.tile.t % (rows / plane) != 0)
    throw_argument_error("tile", fmt::format("blocks of {} rows need tile_t to be a multiple of {}, got {}", rows,
                                             rows / std::max<int64_t>(plane, 1), to_string(a.tile)));
  const int64_t frames = rows / plane;
  const int64_t grid_t = (a.video.t + a.tile.t - 1) / a.tile.t;
  const int64_t last_frames = a.video.t - (grid_t - 1) * a.tile.t;
  return {int(frames), int(a.tile.t / frames), int((last_frames + frames - 1) / frames)};
}

VideoExtents video_extents(const StaForwardArgs& a) {
  if (a.layout == TokenLayout::tile_major) {
    const VideoGeometry geo(a.video, a.tile, a.text_len);
    return {int(a.tile.w), int(a.tile.h), int(geo.num_tiles() * a.tile.t)};
  }
  return {int(a.video.w), int(a.video.h), int(a.video.t)};
}

void fill_window_table(const StaForwardArgs& a, int16_t (&table)[kMaxHeads][3]) {
  const Extent3 grid = VideoGeometry(a.video, a.tile, a.text_len).grid();
  const int64_t nw = static_cast<int64_t>(a.windows.size());
  for (int64_t h = 0; h < a.q_heads; ++h) {
    const Window w = nw == 0 ? grid : a.windows[nw == 1 ? 0 : h];
    table[h][0] = static_cast<int16_t>(w.t);
    table[h][1] = static_cast<int16_t>(w.h);
    table[h][2] = static_cast<int16_t>(w.w);
  }
}

bool batch_folds(int64_t batch, std::initializer_list<std::pair<const DeviceTensor&, int64_t>> tensors) {
  if (batch == 1) return true;
  for (const auto& [t, heads] : tensors)
    if (t.batch_stride != heads * t.head_stride) return false;
  return true;
}

CUtensorMap TensorMapFactory::video(const char* name, const DeviceTensor& t, int64_t heads, int64_t launch,
                                    int64_t frames) const {
  const uint64_t ts = uint64_t(t.token_stride) * 2, hs = uint64_t(t.head_stride) * 2;
  void* base = static_cast<char*>(t.data) + launch * t.batch_stride * 2;
  const VideoExtents e = video_extents(a_);
  const bool tiled = a_.layout == TokenLayout::tile_major;
  const std::array<uint64_t, 4> strides =
      tiled ? std::array<uint64_t, 4>{ts, uint64_t(a_.tile.w) * ts, uint64_t(a_.tile.h * a_.tile.w) * ts, hs}
            : std::array<uint64_t, 4>{ts, uint64_t(a_.video.w) * ts, uint64_t(a_.video.h * a_.video.w) * ts, hs};
  return make_tensor_map<5>(name, base, map_dtype(a_.dtype),
                            {uint64_t(a_.head_dim), uint64_t(e.x1), uint64_t(e.x2), uint64_t(e.x3),
                             uint64_t(heads * batch_per_launch_)},
                            strides, {64, uint32_t(a_.tile.w), uint32_t(a_.tile.h), uint32_t(frames), 1});
}

CUtensorMap TensorMapFactory::text(const char* name, const DeviceTensor& t, int64_t heads, int64_t launch,
                                   int64_t rows) const {
  void* base = static_cast<char*>(t.data) + launch * t.batch_stride * 2;
  const int64_t tokens = a_.video.volume() + a_.text_len;
  return make_tensor_map<3>(name, base, map_dtype(a_.dtype),
                            {uint64_t(a_.head_dim), uint64_t(tokens), uint64_t(heads * batch_per_launch_)},
                            {uint64_t(t.token_stride) * 2, uint64_t(t.head_stride) * 2}, {64, uint32_t(rows), 1});
}

bool current_device_is_hopper() {
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

}  // namespace tileattn::kernels

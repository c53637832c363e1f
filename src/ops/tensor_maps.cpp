// TMA tensor maps shared by the STA forward, STA backward and FG forward launchers.
#include "ops/tensor_maps.hpp"

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
                            std::array<uint64_t, Rank - 1> strides_bytes, std::array<uint32_t, Rank> box,
                            CUtensorMapSwizzle swizzle = CU_TENSOR_MAP_SWIZZLE_128B) {
  for (int i = 0; i < Rank; ++i)
    if (dims[i] == 0 || box[i] == 0 || box[i] > 256)
      throw CudaError(fmt::format("tileattn: tensor map '{}': dimension {} has extent {} and box {}", name, i,
                                  dims[i], box[i]));
  CUtensorMap map;
  std::array<uint32_t, Rank> element_strides;
  element_strides.fill(1);
  CUresult r = tensor_map_encoder()(&map, dtype, Rank, base, dims.data(), strides_bytes.data(), box.data(),
                                    element_strides.data(), CU_TENSOR_MAP_INTERLEAVE_NONE, swizzle,
                                    CU_TENSOR_MAP_L2_PROMOTION_L2_256B, CU_TENSOR_MAP_FLOAT_OOB_FILL_NONE);
  if (r != CUDA_SUCCESS)
    throw CudaError(fmt::format("tileattn: cuTensorMapEncodeTiled failed for '{}' (CUresult {})", name, int(r)));
  return map;
}

CUtensorMapDataType map_dtype(DType d) {
  return d == DType::bf16 ? CU_TENSOR_MAP_DATA_TYPE_BFLOAT16 : CU_TENSOR_MAP_DATA_TYPE_FLOAT16;
}

}  // namespace

CUtensorMap byte_rows_map(const char* name, void* base, uint64_t row_bytes, uint64_t rows, uint64_t outer,
                          uint32_t box_rows, uint32_t box_bytes, CUtensorMapSwizzle swizzle) {
  return make_tensor_map<3>(name, base, CU_TENSOR_MAP_DATA_TYPE_UINT8, {row_bytes, rows, outer},
                            {row_bytes, row_bytes * rows}, {box_bytes, box_rows, 1}, swizzle);
}

void fill_window_table(const ops::StaShape& sta, int16_t (&table)[kMaxHeads][3]) {
  for (size_t h = 0; h < sta.windows.size(); ++h) {
    table[h][0] = static_cast<int16_t>(sta.windows[h].t);
    table[h][1] = static_cast<int16_t>(sta.windows[h].h);
    table[h][2] = static_cast<int16_t>(sta.windows[h].w);
  }
}

CUtensorMap TensorMapFactory::video(const char* name, const DeviceTensor& t, int64_t heads, int64_t launch,
                                    int64_t frames) const {
  if (sta_ == nullptr) throw CudaError(fmt::format("tileattn: tensor map '{}': a video map needs the STA shape", name));
  const detail::VideoMapExtents& e = sta_->extents;  // a token is row-major over (x3, x2, x1): VideoMapExtents::token
  const detail::TileGrid& g = sta_->grid;
  const uint64_t ts = uint64_t(t.token_stride) * 2, hs = uint64_t(t.head_stride) * 2;
  void* base = static_cast<char*>(t.data) + launch * t.batch_stride * 2;
  return make_tensor_map<5>(name, base, map_dtype(dtype_),
                            {uint64_t(head_dim_), uint64_t(e.x1), uint64_t(e.x2), uint64_t(e.x3),
                             uint64_t(heads * batch_per_launch_)},
                            {ts, uint64_t(e.x1) * ts, uint64_t(e.x2) * uint64_t(e.x1) * ts, hs},
                            {64, uint32_t(g.tile_w), uint32_t(g.tile_h), uint32_t(frames), 1});
}

CUtensorMap TensorMapFactory::text(const char* name, const DeviceTensor& t, int64_t heads, int64_t launch,
                                   int64_t rows) const {
  void* base = static_cast<char*>(t.data) + launch * t.batch_stride * 2;
  return make_tensor_map<3>(name, base, map_dtype(dtype_),
                            {uint64_t(head_dim_), uint64_t(tokens_), uint64_t(heads * batch_per_launch_)},
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

#pragma once
// The basic types every GPU entry point shares (STA, FG-Attn, the GPU mask builder, the test helpers), and whether
// those entry points can run here. No CUDA headers: StreamHandle is a cudaStream_t by its opaque name.
#include <cstdint>
#include "tileattn/export.hpp"


struct CUstream_st;

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

using StreamHandle = CUstream_st*;  // a cudaStream_t

enum class DType : int32_t { bf16 = 0, fp16 = 1 };
enum class TokenLayout : int32_t { natural = 0, tile_major = 1 };
// What the tensor cores multiply. native: the inputs' dtype (bf16 / fp16). fp8: 8-bit operands quantized by a
// pre-pass, SageAttention 2's recipe: int8 Q K^T (per-64-row scales, K smoothed, Q / K channels balanced), e4m3 P V
// (V per-channel scales, P scaled); docs/DESIGN.md "FP8 STA". The output keeps the inputs' dtype.
enum class Precision : int32_t { native = 0, fp8 = 1 };

struct DeviceTensor {
  void* data = nullptr;
  int64_t batch_stride = 0;  // in elements
  int64_t head_stride = 0;
  int64_t token_stride = 0;
};

// True if this build has the kernels and the current device can run them (compute capability 9.0).
bool gpu_kernels_available();

}  // namespace tileattn
TILEATTN_PUBLIC_END

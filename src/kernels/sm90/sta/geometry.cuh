#pragma once
// Device-side helpers over the STA geometry the forward and backward kernels share.
#include "kernels/sta_kernel_params.hpp"

namespace tileattn::sm90 {

using kernels::StaGeometryParams;

// Valid text tokens of batch element `batch` (global index): all of them unless the call passed text_valid.
__device__ __forceinline__ int valid_text_count(const StaGeometryParams& g, int batch) {
  if (g.text_valid == nullptr) return g.text_len;
  const int v = g.text_valid[batch];
  return v < 0 ? 0 : (v > g.text_len ? g.text_len : v);
}

}  // namespace tileattn::sm90

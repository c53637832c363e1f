#pragma once
// The kernels are instantiated per (dtype, head_dim) (one sm90 translation unit each); this picks the instantiation
// for a validated call: launch.template operator()<DType, HeadDim>().
#include <cstdint>

#include "tileattn/types.hpp"

namespace tileattn::ops {

template <class Launch>
void dispatch_dtype_head_dim(DType dtype, int64_t head_dim, Launch&& launch) {
  if (dtype == DType::bf16)
    head_dim == 128 ? launch.template operator()<DType::bf16, 128>() : launch.template operator()<DType::bf16, 64>();
  else
    head_dim == 128 ? launch.template operator()<DType::fp16, 128>() : launch.template operator()<DType::fp16, 64>();
}

}  // namespace tileattn::ops

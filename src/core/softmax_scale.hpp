#pragma once
// The softmax scale of a call, the one rule every operation (GPU kernels, reference, mask builders) applies: the
// call's `scale`, or 1 / sqrt(head_dim) for 0. Computed in T: the reference's accumulator type, fp64 elsewhere.
#include <cmath>
#include <cstdint>

namespace tileattn::detail {

template <class T>
T softmax_scale(float scale, int64_t head_dim) {
  return scale != 0.0f ? T(scale) : T(1) / std::sqrt(T(head_dim));
}

}  // namespace tileattn::detail

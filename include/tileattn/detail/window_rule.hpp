#pragma once
// The Sliding Tile Attention window rule, shared by host code (plan builders, reference) and device code (kernels),
// so the CPU plan and the GPU kernels cannot disagree on which key tiles a query tile visits.
#include <cstdint>
#include "tileattn/export.hpp"

#if defined(__CUDACC__)
#define TILEATTN_HOST_DEVICE __host__ __device__ __forceinline__
#else
#define TILEATTN_HOST_DEVICE inline
#endif

TILEATTN_PUBLIC_BEGIN
namespace tileattn {
namespace detail {

// ceil(a / b) for a >= 0 and b >= 1, without forming a + b - 1 (which wraps for a near INT64_MAX).
TILEATTN_HOST_DEVICE constexpr int64_t ceil_div(int64_t a, int64_t b) { return a / b + (a % b != 0 ? 1 : 0); }

// First key tile visited along one axis by the query tile at `center` when the axis has `grid` tiles and the window
// spans `window` tiles: clamp(center - floor(window / 2), 0, grid - window). The visited tiles are
// [start, start + window). Requires 1 <= window <= grid (validated by the caller).
TILEATTN_HOST_DEVICE constexpr int64_t window_start(int64_t center, int64_t grid, int64_t window) {
  int64_t s = center - window / 2;
  if (s > grid - window) s = grid - window;
  if (s < 0) s = 0;
  return s;
}

}  // namespace detail
}  // namespace tileattn
TILEATTN_PUBLIC_END

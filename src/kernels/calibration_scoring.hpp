#pragma once
// GPU scoring for calibration: dense attention and one STA launch per candidate window (the same window for every
// head) on a capture's q/k/v, with ||O_c - O_dense||^2 and ||O_dense||^2 reduced per head on the device.
#include <cstdint>
#include <functional>
#include <span>
#include <vector>

#include "tileattn/geometry.hpp"

namespace tileattn::kernels {

struct WindowErrors {
  std::vector<double> dense_norm2;  // [head]
  std::vector<double> diff2;        // [candidate * heads + head]
};

// q/k/v: host bf16 bit patterns, [batch, heads, tokens, head_dim], natural order. after_candidate(c) is called when
// candidate c is done (the dense pass reports c = -1). Throws CudaError without a usable GPU (or without CUDA).
WindowErrors gpu_window_errors(const VideoGeometry& geometry, int64_t batch, int64_t heads, int64_t head_dim,
                               std::span<const uint16_t> q, std::span<const uint16_t> k, std::span<const uint16_t> v,
                               std::span<const Window> candidates, const std::function<void(int)>& after_candidate);

}  // namespace tileattn::kernels

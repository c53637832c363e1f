#pragma once
// The key order inside V^T's 32-key slices (docs/DESIGN.md "FP8 STA forward", fp8/operands.cuh): position k of a
// slice holds key value_key_at(k), so that the e4m3 consumer packs P from its S accumulator with no data exchange.
// Host and device: the pre-pass writes V^T with it, tests check it is a permutation.
#include "tileattn/detail/window_rule.hpp"  // TILEATTN_HOST_DEVICE

namespace tileattn::kernels {

// A thread t of a quad holds S columns {2t, 2t+1, 8+2t, 9+2t} of each 16 and the A operand wants them at k
// positions 4t .. 4t+3.
TILEATTN_HOST_DEVICE constexpr int value_key_at(int position) {
  const int half = position / 16, j = position % 16, t = j / 4, i = j % 4;
  return 16 * half + 2 * t + (i % 2) + 8 * (i / 2);
}
TILEATTN_HOST_DEVICE constexpr int value_position_of(int key) {
  const int half = key / 16, j = key % 16;
  return 16 * half + 4 * ((j % 8) / 2) + (j % 2) + 2 * (j / 8);
}

}  // namespace tileattn::kernels

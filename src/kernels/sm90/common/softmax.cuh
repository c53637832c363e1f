#pragma once
// Online softmax over an S tile in the wgmma accumulator layout (AccFragment): each thread holds two rows, spread
// over the 4 threads of a quad. Scores are kept unscaled; the softmax scale is folded into one exp2 FMA. Row sums
// stay per thread until the end (one quad reduction). kLog2Scale > 0 produces the probabilities as 2^kLog2Scale * P
// (the e4m3 consumer's range, fp8/operands.cuh); sums carry the same factor, so O / sum is unchanged and only the LSE
// takes it out again.
#include <cstdint>

#include "kernels/sm90/common/fragment.cuh"

namespace tileattn::sm90 {

__device__ __forceinline__ float fast_exp2(float x) {
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
}

template <int kScores, int kLog2Scale = 0>
struct OnlineSoftmax {
  using Fragment = AccFragment<2 * kScores>;
  float row_max[2];  // unscaled running max of each row
  float row_sum[2];  // this thread's part of each row's running sum of exp2
  float scale_log2;

  __device__ __forceinline__ explicit OnlineSoftmax(float scale) : scale_log2(scale) {}

  // Turns scores into unnormalised probabilities in place. First block: no history. Later blocks: returns in
  // `correction` the factor by which the output accumulated so far must be multiplied.
  template <bool kFirst>
  __device__ __forceinline__ void update(float (&s)[kScores], float (&correction)[2]) {
    float block_max[2] = {-INFINITY, -INFINITY};
    Fragment::thread_row_max(s, block_max);
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float new_max = kFirst ? quad_max(block_max[r]) : fmaxf(row_max[r], quad_max(block_max[r]));
      // A row whose keys are all masked so far keeps max = -inf; use 0 so that exp2 gives 0 rather than NaN.
      const float max_scaled = new_max == -INFINITY ? 0.0f : new_max * scale_log2;
      correction[r] = kFirst ? 1.0f : fast_exp2(row_max[r] * scale_log2 - max_scaled);
      row_max[r] = new_max;
      block_max[r] = max_scaled;  // reuse as the subtrahend
      if constexpr (kLog2Scale != 0) block_max[r] -= float(kLog2Scale);
    }
    float block_sum[2] = {0.0f, 0.0f};
#pragma unroll
    for (int e = 0; e < kScores; ++e) {
      const int r = Fragment::row_half(e);
      s[e] = fast_exp2(fmaf(s[e], scale_log2, -block_max[r]));
      block_sum[r] += s[e];
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) row_sum[r] = kFirst ? block_sum[r] : row_sum[r] * correction[r] + block_sum[r];
  }

  // After the last block: full row sums and natural-log LSE of the scaled scores.
  static constexpr float kLn2 = 0.69314718055994530942f;
  __device__ __forceinline__ void finish(float (&inverse_sum)[2], float (&lse)[2]) {
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float sum = quad_sum(row_sum[r]);
      inverse_sum[r] = sum > 0.0f ? 1.0f / sum : 0.0f;
      float log2_sum = __log2f(sum);
      if constexpr (kLog2Scale != 0) log2_sum -= float(kLog2Scale);
      lse[r] = sum > 0.0f ? (row_max[r] * scale_log2 + log2_sum) * kLn2 : -INFINITY;
    }
  }
};

}  // namespace tileattn::sm90

#pragma once
// Online softmax over an S tile in the wgmma accumulator layout (AccFragment): each thread holds two rows, spread
// over the 4 threads of a quad. Scores are kept raw; their scale (and offset) is folded into one exp2 FMA. Row sums
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

// How a block's raw accumulator values become scores in log2 units: x = s * scale(g) + offset(g) for the g-th of
// kGroups equal runs of the thread's registers (consecutive key columns). The native kernels use one scale;
// the 8-bit kernel one per 64 keys (its K scales) and an offset (its int32 -> fp32 conversion).
struct UniformScoreScale {
  static constexpr int kGroups = 1;
  float scale_log2;
  __device__ __forceinline__ float scale(int) const { return scale_log2; }
  __device__ __forceinline__ float offset(int) const { return 0.0f; }
};

// kLazyRescaleEighths > 0: a row's maximum is only raised when a block's maximum exceeds it by more than that many
// eighths of a log2 unit (FA4's conditional rescaling), so after the first blocks the output is rarely rescaled;
// probabilities then reach 2^(kLog2Scale + that), which the caller's format must hold.
template <int kScores, int kLog2Scale = 0, int kLazyRescaleEighths = 0>
struct OnlineSoftmax {
  using Fragment = AccFragment<2 * kScores>;
  static constexpr float kLazyRescale = kLazyRescaleEighths / 8.0f;
  static constexpr int kChains = 4;
  // Registers come in fours (two columns of each row half, AccFragment): consecutive fours feed different chains.
  static __device__ __forceinline__ constexpr int chain(int e) { return (e / 4) % kChains; }
  // Whether register e (counted from the start of its run of 16) is the first of its (row half, chain): the chains
  // start from it rather than from -inf or 0, which the compiler cannot fold away (NaN and -0 rules).
  static __device__ __forceinline__ constexpr bool starts_chain(int e) { return e < 16 && e % 2 == 0; }
  float row_max[2];  // running max of each row, in log2 units
  float row_sum[2];  // this thread's part of each row's running sum of exp2

  // Turns raw scores into unnormalised probabilities in place. First block: no history. Later blocks: returns in
  // `correction` the factor by which the output accumulated so far must be multiplied (exactly 1 when the maximum
  // stays).
  template <bool kFirst, class ScoreScale>
  __device__ __forceinline__ void update(float (&s)[kScores], const ScoreScale& sc, float (&correction)[2]) {
    constexpr int kGroups = ScoreScale::kGroups, kPerGroup = kScores / kGroups;
    static_assert(kScores % kGroups == 0 && kPerGroup % 16 == 0, "score groups are equal runs of 16k registers");
    // Maxima and sums in kChains independent chains per row: one warp per scheduler cannot hide a 48-long chain of
    // dependent 4-cycle instructions, and the scores' column order does not matter.
    float block_max[2] = {-INFINITY, -INFINITY};
#pragma unroll
    for (int g = 0; g < kGroups; ++g) {
      float m[2][kChains];
#pragma unroll
      for (int e = g * kPerGroup; e < (g + 1) * kPerGroup; ++e) {
        float& chain_max = m[Fragment::row_half(e)][chain(e)];
        chain_max = starts_chain(e - g * kPerGroup) ? s[e] : fmaxf(chain_max, s[e]);
      }
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float x = m[r][0];
#pragma unroll
        for (int c = 1; c < kChains; ++c) x = fmaxf(x, m[r][c]);
        block_max[r] = fmaxf(block_max[r], fmaf(x, sc.scale(g), sc.offset(g)));
      }
    }
    float bias[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      const float bm = quad_max(block_max[r]);
      float new_max = kFirst ? bm : fmaxf(row_max[r], bm);
      if constexpr (!kFirst && kLazyRescaleEighths > 0)
        if (new_max <= row_max[r] + kLazyRescale) new_max = row_max[r];
      // A row whose keys are all masked so far keeps max = -inf; use 0 so that exp2 gives 0 rather than NaN.
      const float base = new_max == -INFINITY ? 0.0f : new_max;
      correction[r] = kFirst ? 1.0f : (new_max == row_max[r] ? 1.0f : fast_exp2(row_max[r] - base));
      row_max[r] = new_max;
      bias[r] = base - float(kLog2Scale);
    }
    float offset[kGroups][2];
#pragma unroll
    for (int g = 0; g < kGroups; ++g)
#pragma unroll
      for (int r = 0; r < 2; ++r) offset[g][r] = sc.offset(g) - bias[r];
    float sums[2][kChains];
#pragma unroll
    for (int e = 0; e < kScores; ++e) {
      const int g = e / kPerGroup, r = Fragment::row_half(e);
      s[e] = fast_exp2(fmaf(s[e], sc.scale(g), offset[g][r]));
      float& chain_sum = sums[r][chain(e)];
      chain_sum = starts_chain(e) ? s[e] : chain_sum + s[e];
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      float block_sum = sums[r][0];
#pragma unroll
      for (int c = 1; c < kChains; ++c) block_sum += sums[r][c];
      row_sum[r] = kFirst ? block_sum : row_sum[r] * correction[r] + block_sum;
    }
  }

  // Whether any row of this warp needs its output rescaled (always, without lazy rescaling).
  __device__ __forceinline__ static bool any_rescale(const float (&correction)[2]) {
    if constexpr (kLazyRescaleEighths == 0)
      return true;
    else
      return __any_sync(0xffffffffu, correction[0] != 1.0f || correction[1] != 1.0f);
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
      lse[r] = sum > 0.0f ? (row_max[r] + log2_sum) * kLn2 : -INFINITY;
    }
  }
};

}  // namespace tileattn::sm90

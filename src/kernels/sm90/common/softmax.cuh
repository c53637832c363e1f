#pragma once
// Online softmax over an S tile in the wgmma accumulator layout (AccFragment): each thread holds two rows, spread
// over the 4 threads of a quad. Scores are kept raw; their scale (and offset) is folded into one exp2 FMA. Row sums
// stay per thread until the end (one quad reduction), unless the caller makes them by a GEMM of its own (kSumsByGemm:
// P x ones, fp8/operands.cuh), which takes one add per score off the softmax; the caller then adds each block's sums
// (add_sums) and rescales them with its output (scale_sums). kLog2Scale > 0 produces the probabilities as
// 2^kLog2Scale * P (the e4m3 consumer's range); sums carry the same factor, so O / sum is unchanged and only the LSE
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
  static constexpr bool kMaxOnBits = false;  // scores of either sign: their bits do not order as integers
  float scale_log2;
  __device__ __forceinline__ float scale(int) const { return scale_log2; }
  __device__ __forceinline__ float offset(int) const { return 0.0f; }
};

// kLazyRescaleEighths > 0: a row's maximum is only raised when a block's maximum exceeds it by more than that many
// eighths of a log2 unit (FA4's conditional rescaling), so after the first blocks the output is rarely rescaled;
// probabilities then reach 2^(kLog2Scale + that), which the caller's format must hold.
template <int kScores, int kLog2Scale = 0, int kLazyRescaleEighths = 0, bool kSumsByGemm = false>
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
  float row_sum[2];  // running sum of exp2 of each row: this thread's part (whole rows with kSumsByGemm)

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
      float m[2];
      if constexpr (ScoreScale::kMaxOnBits)
        group_max_on_bits(s, g * kPerGroup, kPerGroup, m);
      else
        group_max(s, g * kPerGroup, kPerGroup, m);
#pragma unroll
      for (int r = 0; r < 2; ++r) block_max[r] = fmaxf(block_max[r], fmaf(m[r], sc.scale(g), sc.offset(g)));
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
      if constexpr (!kSumsByGemm) {
        float& chain_sum = sums[r][chain(e)];
        chain_sum = starts_chain(e) ? s[e] : chain_sum + s[e];
      }
    }
    if constexpr (kSumsByGemm) {
      if constexpr (kFirst) row_sum[0] = row_sum[1] = 0.0f;
    } else {
#pragma unroll
      for (int r = 0; r < 2; ++r) {
        float block_sum = sums[r][0];
#pragma unroll
        for (int c = 1; c < kChains; ++c) block_sum += sums[r][c];
        row_sum[r] = kFirst ? block_sum : row_sum[r] * correction[r] + block_sum;
      }
    }
  }

  // kSumsByGemm: a block's row sums (whole rows), added once their GEMM has run, before the output is rescaled.
  __device__ __forceinline__ void add_sums(const float (&block_sums)[2]) {
    static_assert(kSumsByGemm);
    row_sum[0] += block_sums[0];
    row_sum[1] += block_sums[1];
  }
  __device__ __forceinline__ void scale_sums(const float (&correction)[2]) {
    static_assert(kSumsByGemm);
    row_sum[0] *= correction[0];
    row_sum[1] *= correction[1];
  }

  // The maximum of each row half over registers [first, first + count): kChains chains of FMNMX per row half.
  static __device__ __forceinline__ void group_max(const float (&s)[kScores], int first, int count, float (&m)[2]) {
    float chains[2][kChains];
#pragma unroll
    for (int e = first; e < first + count; ++e) {
      float& chain_max = chains[Fragment::row_half(e)][chain(e)];
      chain_max = starts_chain(e - first) ? s[e] : fmaxf(chain_max, s[e]);
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      m[r] = chains[r][0];
#pragma unroll
      for (int c = 1; c < kChains; ++c) m[r] = fmaxf(m[r], chains[r][c]);
    }
  }
  // The same for scores that are all >= 0 or -inf, whose bits order as signed integers (the 8-bit kernel's biased
  // int32 sums, fp8/sta_fp8_kernel.cuh): Hopper's three-input integer max (VIMNMX3) takes two scores per instruction,
  // one chain per row half (the groups and row halves give the chains their independence).
  static __device__ __forceinline__ void group_max_on_bits(const float (&s)[kScores], int first, int count,
                                                           float (&m)[2]) {
    int chains[2];
#pragma unroll
    for (int r = 0; r < 2; ++r) {
      // Registers of row half r in this run: first + 4i + 2r and first + 4i + 2r + 1.
      auto bits = [&](int j) { return __float_as_int(s[first + 4 * (j / 2) + 2 * r + (j % 2)]); };
      const int n = count / 2;  // registers of this row half
      int x = __vimax3_s32(bits(0), bits(1), bits(2));
      int j = 3;
#pragma unroll
      for (; j + 1 < n; j += 2) x = __vimax3_s32(x, bits(j), bits(j + 1));
#pragma unroll
      for (; j < n; ++j) x = max(x, bits(j));
      chains[r] = x;
    }
#pragma unroll
    for (int r = 0; r < 2; ++r) m[r] = __int_as_float(chains[r]);
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
      const float sum = kSumsByGemm ? row_sum[r] : quad_sum(row_sum[r]);
      inverse_sum[r] = sum > 0.0f ? 1.0f / sum : 0.0f;
      float log2_sum = __log2f(sum);
      if constexpr (kLog2Scale != 0) log2_sum -= float(kLog2Scale);
      lse[r] = sum > 0.0f ? (row_max[r] + log2_sum) * kLn2 : -INFINITY;
    }
  }
};

}  // namespace tileattn::sm90

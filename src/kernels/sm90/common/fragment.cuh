#pragma once
// The wgmma accumulator layout of a 64 x kCols fp32 tile held by one warpgroup (kCols / 2 registers per thread).
// A thread holds two rows, 16 * warp + lane / 4 and 8 below it; register e sits in row half (e / 2) % 2 and column
// 8 * (e / 4) + 2 * (lane % 4) + e % 2, so a row is spread over the 4 threads of a quad and registers 2i, 2i + 1 are
// adjacent columns of one row. The same layout, packed in pairs, is the A operand of a register-sourced wgmma whose
// K is those kCols columns. Only layout arithmetic lives here; the registers stay plain float arrays so that wgmma
// and the register fences take them as they are.
#include <cstdint>

namespace tileattn::sm90 {

template <int kCols>
struct AccFragment {
  static constexpr int kRegs = kCols / 2;  // registers per thread
  static constexpr int kPairs = kRegs / 2;  // adjacent-column pairs per thread
  static constexpr int kColGroups = kCols / 8;  // groups of 8 columns; a thread holds 2 adjacent columns of each

  // This thread's index within its warpgroup.
  static __device__ __forceinline__ int thread() { return threadIdx.x % 128; }
  // 0: the thread's upper row (row0), 1: the row 8 below it.
  static __device__ __forceinline__ constexpr int row_half(int e) { return (e >> 1) & 1; }
  // The thread's upper row within the warpgroup's 64 rows.
  static __device__ __forceinline__ int row0(int t = thread()) { return 16 * (t / 32) + (t % 32) / 4; }
  // Row of register e within the warpgroup's 64 rows.
  static __device__ __forceinline__ int row(int e, int t = thread()) { return row0(t) + 8 * row_half(e); }
  // The thread's column offset within each group of 8 columns.
  static __device__ __forceinline__ int lane_col(int t = thread()) { return 2 * (t % 4); }
  // Register e holds column 8 * col_group(e) + lane_col() + col_parity(e) of its row.
  static __device__ __forceinline__ constexpr int col_group(int e) { return e / 4; }
  static __device__ __forceinline__ constexpr int col_parity(int e) { return e % 2; }
  static __device__ __forceinline__ int col(int e, int t = thread()) {
    return 8 * col_group(e) + lane_col(t) + col_parity(e);
  }
  // Pair i holds registers 2i, 2i + 1: adjacent columns of one row. Bit operations rather than division, since i
  // may be a run-time index (the dQ workspace order, bwd/mainloop.cuh).
  static __device__ __forceinline__ int pair_row(int i, int t = thread()) { return row0(t) + 8 * (i & 1); }
  static __device__ __forceinline__ int pair_col(int i, int t = thread()) { return 8 * (i >> 1) + lane_col(t); }
};

// Reductions of one row over the 4 threads of its quad.
__device__ __forceinline__ float quad_max(float x) {
  x = fmaxf(x, __shfl_xor_sync(0xffffffff, x, 1));
  return fmaxf(x, __shfl_xor_sync(0xffffffff, x, 2));
}
__device__ __forceinline__ float quad_sum(float x) {
  x += __shfl_xor_sync(0xffffffff, x, 1);
  return x + __shfl_xor_sync(0xffffffff, x, 2);
}

// Multiplies each row of an accumulator fragment by its factor (factor[row_half]).
template <int kRegs>
__device__ __forceinline__ void scale_rows(float (&acc)[kRegs], const float (&factor)[2]) {
#pragma unroll
  for (int e = 0; e < kRegs; ++e) acc[e] *= factor[AccFragment<2 * kRegs>::row_half(e)];
}

}  // namespace tileattn::sm90

#pragma once
// The wgmma instructions the kernels use (CuTe's SM90 GMMA atoms), packing accumulator fragments (fragment.cuh) into
// the A operand of a register-sourced wgmma, and the 128-byte-swizzled shared-memory layout the operands live in.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cute/arch/mma_sm90_gmma.hpp>
#include <type_traits>
#include <utility>

namespace tileattn::sm90 {

namespace gmma = cute::SM90::GMMA;

// The wgmma instructions: S = Q K^T (64 x BlockN, both operands K-major in shared memory) and O += P V
// (64 x HeadDim, P in registers, V MN-major in shared memory).
template <class Element, int N>
struct MmaSS;
template <class Element, int N>
struct MmaRS;
template <class Element, int N>
struct MmaSSTransposed;  // both operands MN-major in shared memory
#define TILEATTN_GMMA(N)                                                           \
  template <>                                                                                 \
  struct MmaSS<__nv_bfloat16, N> {                                                            \
    using Op = gmma::MMA_64x##N##x16_F32BF16BF16_SS<gmma::Major::K, gmma::Major::K>;          \
  };                                                                                          \
  template <>                                                                                 \
  struct MmaSS<__half, N> {                                                                   \
    using Op = gmma::MMA_64x##N##x16_F32F16F16_SS<gmma::Major::K, gmma::Major::K>;            \
  };                                                                                          \
  template <>                                                                                 \
  struct MmaRS<__nv_bfloat16, N> {                                                            \
    using Op = gmma::MMA_64x##N##x16_F32BF16BF16_RS<gmma::Major::K, gmma::Major::MN>;         \
  };                                                                                          \
  template <>                                                                                 \
  struct MmaRS<__half, N> {                                                                   \
    using Op = gmma::MMA_64x##N##x16_F32F16F16_RS<gmma::Major::K, gmma::Major::MN>;           \
  };
TILEATTN_GMMA(64)
TILEATTN_GMMA(128)
TILEATTN_GMMA(192)
#undef TILEATTN_GMMA

#define TILEATTN_GMMA_TRANSPOSED(N)                                                    \
  template <>                                                                          \
  struct MmaSSTransposed<__nv_bfloat16, N> {                                           \
    using Op = gmma::MMA_64x##N##x16_F32BF16BF16_SS<gmma::Major::MN, gmma::Major::MN>; \
  };                                                                                   \
  template <>                                                                          \
  struct MmaSSTransposed<__half, N> {                                                  \
    using Op = gmma::MMA_64x##N##x16_F32F16F16_SS<gmma::Major::MN, gmma::Major::MN>;   \
  };
TILEATTN_GMMA_TRANSPOSED(32)
TILEATTN_GMMA_TRANSPOSED(64)
#undef TILEATTN_GMMA_TRANSPOSED

// int8 x int8 -> int32 (exact), k = 32 per instruction, both operands K-major: S = Q K^T of the 8-bit forward.
template <int N>
struct MmaS8SS;
#define TILEATTN_GMMA_S8(N)                        \
  template <>                                     \
  struct MmaS8SS<N> {                             \
    using Op = gmma::MMA_64x##N##x32_S32S8S8_SS_TN; \
  };
TILEATTN_GMMA_S8(64)
TILEATTN_GMMA_S8(128)
TILEATTN_GMMA_S8(192)
#undef TILEATTN_GMMA_S8

template <class Op, int N, size_t... I>
__device__ __forceinline__ void mma_ss(uint64_t a, uint64_t b, float (&d)[N], gmma::ScaleOut scale,
                                       std::index_sequence<I...>) {
  Op::fma(a, b, d[I]..., scale);
}
// The same into int32 accumulators, held in the fp32 registers' bits (the caller converts them).
template <class Op, int N, size_t... I>
__device__ __forceinline__ void mma_ss_s32(uint64_t a, uint64_t b, float (&d)[N], gmma::ScaleOut scale,
                                           std::index_sequence<I...>) {
  Op::fma(a, b, reinterpret_cast<uint32_t&>(d[I])..., scale);
}
template <class Op, int N, size_t... I>
__device__ __forceinline__ void mma_rs(const uint32_t* a, uint64_t b, float (&d)[N], gmma::ScaleOut scale,
                                       std::index_sequence<I...>) {
  Op::fma(a[0], a[1], a[2], a[3], b, d[I]..., scale);
}
// Accumulating into d (the P V GEMMs).
template <class Op, int N, size_t... I>
__device__ __forceinline__ void mma_rs(const uint32_t* a, uint64_t b, float (&d)[N], std::index_sequence<I...> seq) {
  mma_rs<Op>(a, b, d, gmma::ScaleOut::One, seq);
}

// fp32 accumulator fragment -> packed 16-bit pairs (the A operand of an RS wgmma).
template <class Element, int N>
__device__ __forceinline__ void pack_fragment(const float (&s)[N], uint32_t (&p)[N / 2]) {
#pragma unroll
  for (int i = 0; i < N / 2; ++i) {
    if constexpr (std::is_same_v<Element, __half>) {
      __half2 h = __floats2half2_rn(s[2 * i], s[2 * i + 1]);
      p[i] = *reinterpret_cast<uint32_t*>(&h);
    } else {
      __nv_bfloat162 h = __floats2bfloat162_rn(s[2 * i], s[2 * i + 1]);
      p[i] = *reinterpret_cast<uint32_t*>(&h);
    }
  }
}

// Byte offset of element (row, col) of a tile stored as 128-byte-swizzled atoms of 64 columns x `rows` rows (the
// layout TMA writes with SWIZZLE_128B and wgmma reads through smem_desc_*).
__device__ __forceinline__ int swizzled_offset(int row, int col, int atom_bytes) {
  const int atom = col / 64, chunk = (col % 64) / 8;
  return atom * atom_bytes + row * 128 + ((chunk ^ (row % 8)) * 16) + (col % 8) * 2;
}

}  // namespace tileattn::sm90

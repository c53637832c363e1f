// bf16 / fp16 <-> fp32 on the host, bit-exact round-to-nearest-even (for tests, the CLI and I/O).
#include <bit>
#include <cmath>
#include <cstdint>

#include "tileattn/detail/testing.hpp"

namespace tileattn::detail {
namespace {

float fp16_to_float(uint16_t h) {
  const uint32_t sign = uint32_t(h & 0x8000) << 16;
  const int exp = (h >> 10) & 0x1F;
  const uint32_t mant = h & 0x3FF;
  if (exp == 0) {  // zero / subnormal
    float f = std::ldexp(static_cast<float>(mant), -24);
    return sign ? -f : f;
  }
  if (exp == 31) return std::bit_cast<float>(sign | 0x7F800000u | (mant << 13));
  return std::bit_cast<float>(sign | (uint32_t(exp - 15 + 127) << 23) | (mant << 13));
}

uint16_t float_to_fp16(float f) {
  const uint32_t x = std::bit_cast<uint32_t>(f);
  const uint16_t sign = static_cast<uint16_t>((x >> 16) & 0x8000);
  if (std::isnan(f)) return sign | 0x7E00;
  const float a = std::fabs(f);
  if (a >= 65520.0f) return sign | 0x7C00;  // rounds to infinity
  if (a < 6.103515625e-05f) {               // subnormal range: quantise to 2^-24 with RNE
    return sign | static_cast<uint16_t>(std::nearbyint(a * 16777216.0f));
  }
  uint32_t bits = std::bit_cast<uint32_t>(a);
  uint32_t exp = (bits >> 23) - 127 + 15;
  uint32_t mant = bits & 0x7FFFFF;
  uint32_t rounded = (exp << 10) | (mant >> 13);
  const uint32_t rest = mant & 0x1FFF;
  if (rest > 0x1000 || (rest == 0x1000 && (rounded & 1))) ++rounded;
  return sign | static_cast<uint16_t>(rounded);
}

}  // namespace

float half_bits_to_float(uint16_t bits, DType dtype) {
  if (dtype == DType::bf16) return std::bit_cast<float>(uint32_t(bits) << 16);
  return fp16_to_float(bits);
}

uint16_t float_to_half_bits(float value, DType dtype) {
  if (dtype == DType::fp16) return float_to_fp16(value);
  uint32_t x = std::bit_cast<uint32_t>(value);
  if (std::isnan(value)) return static_cast<uint16_t>((x >> 16) | 0x40);
  x += 0x7FFF + ((x >> 16) & 1);
  return static_cast<uint16_t>(x >> 16);
}

}  // namespace tileattn::detail

#pragma once
// Helpers for tests, the CLI benchmark and tools (not part of the attention API): fill a device buffer with
// reproducible pseudo-random values, convert between 16-bit floats and fp32 on the host.
#include <cstdint>
#include <vector>

#include "tileattn/types.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {
namespace detail {

// Fills `count` elements of `dtype` at `data` with values uniform in [-amplitude, amplitude), from `seed`.
void fill_random_device(void* data, int64_t count, DType dtype, uint64_t seed, float amplitude, StreamHandle stream);
// Fills `count` 16-bit elements with one bit pattern (e.g. 0xFFFF, a NaN, to find unwritten outputs).
void fill_pattern_device(void* data, int64_t count, uint16_t pattern, StreamHandle stream);

float half_bits_to_float(uint16_t bits, DType dtype);
uint16_t float_to_half_bits(float value, DType dtype);  // round to nearest even

}  // namespace detail
}  // namespace tileattn
TILEATTN_PUBLIC_END

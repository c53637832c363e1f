#pragma once
// Checked size arithmetic and the named input limits (docs/LIMITS.md).
//
// Every size, count, offset and byte computation on untrusted values (shapes, counts, file headers, C ABI structs)
// goes through these helpers: the exact result or an ArgumentError naming the argument, never a wrapped value.
#include <cstdint>
#include <initializer_list>
#include <string>
#include <string_view>

#include "tileattn/error.hpp"
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

// ---- limits (each named in the error that enforces it) ----
namespace limits {
inline constexpr int64_t kMaxTokens = (int64_t{1} << 31) - 1;      // video + text tokens of one sequence (int32 indices)
inline constexpr int64_t kMaxTextLen = kMaxTokens;                 // text tokens (counted in kMaxTokens too)
inline constexpr int64_t kMaxHeads = int64_t{1} << 16;             // heads of one layer (CLI, synth, strategies)
inline constexpr int64_t kMaxStepsOrLayers = int64_t{1} << 20;     // steps, layers, prompts, dense steps
inline constexpr int64_t kMaxJsonDepth = 64;                       // nesting of any JSON file tileattn reads
inline constexpr int64_t kMaxStrategyBytes = int64_t{64} << 20;    // a mask-strategy file
inline constexpr int64_t kMaxCaptureHeaderBytes = int64_t{100} << 20;  // a safetensors header (safetensors' own)
inline constexpr int64_t kMaxHostBytes = int64_t{1} << 40;         // one host buffer tileattn allocates (1 TiB)
inline constexpr int64_t kMaxTiles = int64_t{1} << 26;             // tiles of one video (host plans and geometry)
inline constexpr int64_t kMaxPlanEntries = int64_t{1} << 28;       // (query block, key block) pairs of a host plan
inline constexpr int64_t kMaxSynthTensorBytes = int64_t{4} << 30;  // one tensor of a synthetic capture (4 GiB)
inline constexpr int64_t kMaxMessageValueChars = 80;               // user text quoted in an error message
}  // namespace limits

[[noreturn]] void throw_overflow(std::string_view argument, std::string_view op, int64_t a, int64_t b);

// a + b, a * b, a - b; throw ArgumentError naming `argument` if the result does not fit int64_t. Plain C++ (no
// compiler builtins), so every front end that sees this header (nvcc's included) accepts it.
inline constexpr int64_t kInt64Max = INT64_MAX, kInt64Min = INT64_MIN;
constexpr int64_t checked_add(int64_t a, int64_t b, std::string_view argument) {
  if ((b > 0 && a > kInt64Max - b) || (b < 0 && a < kInt64Min - b)) throw_overflow(argument, "+", a, b);
  return a + b;
}
constexpr int64_t checked_sub(int64_t a, int64_t b, std::string_view argument) {
  if ((b < 0 && a > kInt64Max + b) || (b > 0 && a < kInt64Min + b)) throw_overflow(argument, "-", a, b);
  return a - b;
}
constexpr int64_t checked_mul(int64_t a, int64_t b, std::string_view argument) {
  const bool overflow = a > 0 ? (b > 0 ? a > kInt64Max / b : b < kInt64Min / a)
                              : (b > 0 ? a < kInt64Min / b : (a != 0 && b < kInt64Max / a));
  if (overflow) throw_overflow(argument, "*", a, b);
  return a * b;
}
// The product of all factors (1 for none).
constexpr int64_t checked_product(std::initializer_list<int64_t> factors, std::string_view argument) {
  int64_t r = 1;
  for (int64_t f : factors) r = checked_mul(r, f, argument);
  return r;
}
// ceil(a / b) for a >= 0, b >= 1, without forming a + b - 1.
constexpr int64_t checked_ceil_div(int64_t a, int64_t b, std::string_view argument) {
  if (a < 0 || b < 1) throw_overflow(argument, "ceil_div", a, b);
  return a / b + (a % b != 0 ? 1 : 0);
}
// x rounded up to a multiple of `alignment` (>= 1).
constexpr int64_t checked_align_up(int64_t x, int64_t alignment, std::string_view argument) {
  return checked_mul(checked_ceil_div(x, alignment, argument), alignment, argument);
}
// Bytes of a host buffer: checked product, then bounded by limits::kMaxHostBytes (named in the error).
int64_t checked_host_bytes(std::initializer_list<int64_t> factors, std::string_view argument);

// `text` cut to limits::kMaxMessageValueChars characters ("..." and the full length appended when cut), for quoting
// user input in error messages.
std::string quote_truncated(std::string_view text);

}  // namespace tileattn
TILEATTN_PUBLIC_END

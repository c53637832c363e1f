#include "tileattn/error.hpp"

#include <fmt/format.h>

namespace tileattn {

ArgumentError::ArgumentError(std::string argument, const std::string& message)
    : Error(fmt::format("invalid argument '{}': {}", argument, message)), argument_(std::move(argument)) {}

void throw_argument_error(std::string_view argument, std::string_view message) {
  throw ArgumentError(std::string(argument), std::string(message));
}

}  // namespace tileattn

// ---- checked.hpp ----
#include "tileattn/checked.hpp"

namespace tileattn {

void throw_overflow(std::string_view argument, std::string_view op, int64_t a, int64_t b) {
  if (op == "ceil_div")
    throw_argument_error(argument, fmt::format("ceil({} / {}) is undefined (needs a >= 0 and b >= 1)", a, b));
  throw_argument_error(argument, fmt::format("size arithmetic overflows 64 bits ({} {} {})", a, op, b));
}

int64_t checked_host_bytes(std::initializer_list<int64_t> factors, std::string_view argument) {
  for (int64_t f : factors)
    if (f < 0) throw_argument_error(argument, fmt::format("a negative size factor ({})", f));
  const int64_t bytes = checked_product(factors, argument);
  if (bytes > limits::kMaxHostBytes)
    throw_argument_error(argument, fmt::format("needs {} bytes of host memory, more than the limit of {} "
                                               "(limits::kMaxHostBytes, 1 TiB)", bytes, limits::kMaxHostBytes));
  return bytes;
}

std::string quote_truncated(std::string_view text) {
  const size_t n = static_cast<size_t>(limits::kMaxMessageValueChars);
  if (text.size() <= n) return std::string(text);
  size_t cut = n;  // not inside a UTF-8 sequence: messages stay valid UTF-8 (Python decodes tileattn_last_error())
  while (cut > 0 && (static_cast<unsigned char>(text[cut]) & 0xC0) == 0x80) --cut;
  return fmt::format("{}... ({} characters)", text.substr(0, cut), text.size());
}

}  // namespace tileattn

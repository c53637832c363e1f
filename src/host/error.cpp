#include "tileattn/error.hpp"

#include <fmt/format.h>

namespace tileattn {

ArgumentError::ArgumentError(std::string argument, const std::string& message)
    : Error(fmt::format("invalid argument '{}': {}", argument, message)), argument_(std::move(argument)) {}

void throw_argument_error(std::string_view argument, std::string_view message) {
  throw ArgumentError(std::string(argument), std::string(message));
}

}  // namespace tileattn

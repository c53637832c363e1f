#pragma once
// Errors thrown by tileattn. Every public entry point validates its arguments and throws ArgumentError, whose
// message names the argument, the value received and the accepted range.
#include <stdexcept>
#include <string>
#include <string_view>
#include "tileattn/export.hpp"

TILEATTN_PUBLIC_BEGIN
namespace tileattn {

// Base class of every error tileattn throws on purpose.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A caller passed a bad value. argument() is the parameter's name as the API or CLI spells it.
class ArgumentError : public Error {
 public:
  ArgumentError(std::string argument, const std::string& message);
  const std::string& argument() const noexcept { return argument_; }

 private:
  std::string argument_;
};

// A file could not be read or parsed; the message names the file, the key (if any) and what is wrong.
class FileError : public Error {
 public:
  using Error::Error;
};

// A CUDA call failed, or a GPU feature was asked of a build/device that does not have it.
class CudaError : public Error {
 public:
  using Error::Error;
};

[[noreturn]] void throw_argument_error(std::string_view argument, std::string_view message);

}  // namespace tileattn
TILEATTN_PUBLIC_END

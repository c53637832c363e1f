#pragma once
// Shared by the libFuzzer harnesses: an input written to a per-process file (the readers take paths), and the rule
// every harness checks: tileattn may refuse an input only with tileattn::Error (ArgumentError or FileError); any
// other exception, a crash, a sanitizer report or a hang is a finding.
#include <unistd.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tileattn/error.hpp"

namespace fuzz {

inline const std::string& scratch_path(const char* name) {
  static const std::string path = [&] {
    const char* dir = std::getenv("TMPDIR");
    return std::string(dir ? dir : "/tmp") + "/tileattn-fuzz-" + name + "-" + std::to_string(::getpid());
  }();
  return path;
}

inline const std::string& write_scratch(const char* name, const uint8_t* data, size_t size) {
  const std::string& path = scratch_path(name);
  FILE* f = std::fopen(path.c_str(), "wb");
  if (f == nullptr) std::abort();
  if (size != 0 && std::fwrite(data, 1, size, f) != size) std::abort();
  if (std::fclose(f) != 0) std::abort();
  return path;
}

// Runs f; tileattn::Error is an accepted refusal, and its message must stay bounded (no dump of the input).
template <class F>
void expect_clean(F&& f) {
  try {
    f();
  } catch (const tileattn::Error& e) {
    if (std::string(e.what()).size() > 4096) {
      std::fprintf(stderr, "unbounded error message (%zu characters)\n", std::string(e.what()).size());
      std::abort();
    }
  }
}

}  // namespace fuzz

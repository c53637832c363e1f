#pragma once
// Small helpers shared by CPU tests: a seeded generator, random integers and tensors, ArgumentError checks.
#include <gtest/gtest.h>

#include <cstdint>
#include <random>
#include <string>
#include <vector>

#include "tileattn/error.hpp"

namespace tileattn::testing {

inline std::mt19937& rng() {
  static std::mt19937 r(707);
  return r;
}
inline int64_t rand_in(int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng()); }
inline std::vector<float> random_vector(size_t n, float sigma = 1.0f) {
  std::normal_distribution<float> d(0.0f, sigma);
  std::vector<float> v(n);
  for (float& x : v) x = d(rng());
  return v;
}

// Runs f and expects an ArgumentError naming `argument`.
template <class F>
void expect_argument_error(F&& f, const std::string& argument) {
  try {
    f();
    ADD_FAILURE() << "no ArgumentError, expected one naming " << argument;
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), argument) << e.what();
  }
}

}  // namespace tileattn::testing

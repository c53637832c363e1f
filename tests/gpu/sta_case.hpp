#pragma once
// Shared by the GPU kernel tests: the test seed, a test case (shape, windows, layout, dtype...) and a problem that
// holds random inputs on the host (rounded to the dtype, [B, H, S, D] natural order) and moves tensors to and from
// the device in the case's token order and memory layout.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <ostream>
#include <random>
#include <string>
#include <vector>

#include "tileattn/detail/testing.hpp"
#include "tileattn/plan.hpp"
#include "tileattn/sta.hpp"

namespace tileattn::testing {

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

// From TILEATTN_TEST_SEED or std::random_device; printed so a failure can be replayed.
inline uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("TILEATTN_TEST_SEED");
    uint64_t s = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
    std::printf("[ seed ] TILEATTN_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

struct Case {
  std::string name;
  int64_t batch = 1, q_heads = 2, kv_heads = 2, head_dim = 128;
  Extent3 video, tile{6, 8, 8};
  int64_t text_len = 0;
  std::vector<Window> windows;  // empty: dense; one: all heads
  TokenLayout layout = TokenLayout::natural;
  DType dtype = DType::bf16;
  std::vector<int32_t> text_valid;  // empty: all text valid
  bool bshd = false;  // tensors stored as [B, S, H, D] (strided view), as diffusers produces them
  float scale = 0.0f;
  Precision precision = Precision::native;
  // Inputs shaped like real DiT activations (SageAttention's observations): K with large per-channel offsets, Q and
  // K with a few outlier channels, the same ones in both (logits of std ~20) or, with dit_disjoint, others in K.
  // Otherwise standard normal.
  bool dit_like = false;
  bool dit_disjoint = false;
};

inline std::ostream& operator<<(std::ostream& os, const Case& c) {
  os << c.name << ": B=" << c.batch << " Hq=" << c.q_heads << " Hkv=" << c.kv_heads << " D=" << c.head_dim << " video "
     << to_string(c.video) << " tile " << to_string(c.tile) << " text " << c.text_len << " windows";
  for (auto& w : c.windows) os << " " << to_string(w);
  if (c.windows.empty()) os << " dense";
  if (!c.text_valid.empty()) {
    os << " text_valid";
    for (int32_t v : c.text_valid) os << " " << v;
  }
  return os << (c.layout == TokenLayout::tile_major ? " tile-major" : "") << (c.dtype == DType::fp16 ? " fp16" : " bf16")
            << (c.bshd ? " bshd" : "") << (c.precision == Precision::fp8 ? " precision fp8" : "")
            << (c.dit_like ? (c.dit_disjoint ? " dit-like inputs (disjoint outliers)" : " dit-like inputs") : "");
}

// One case per feature the kernels expose: exact and partial tiles, 1-tile axes, dense, text 1/77/256/333, per-head
// windows, GQA, batch with text_valid, tile-major, BSHD strides, other tile shapes, head dim 64, fp16, custom scale.
inline std::vector<Case> feature_cases() {
  std::vector<Case> cases;
  cases.push_back({.name = "exact tiles", .video = {12, 16, 24}, .windows = {{1, 1, 3}, {1, 1, 1}}});
  cases.push_back({.name = "partial tiles + text 77", .video = {7, 9, 17}, .text_len = 77,
                   .windows = {{1, 1, 1}, {2, 2, 3}}});
  cases.push_back({.name = "1-tile dims, D64 fp16, text 1", .head_dim = 64, .video = {6, 8, 40}, .text_len = 1,
                   .windows = {{1, 1, 3}}, .dtype = DType::fp16});
  cases.push_back({.name = "dense + text 256", .video = {6, 16, 16}, .text_len = 256});
  cases.push_back({.name = "text 333, per-head, GQA 4:2", .q_heads = 4, .kv_heads = 2, .video = {12, 24, 24},
                   .text_len = 333, .windows = {{1, 1, 1}, {1, 3, 3}, {2, 1, 3}, {1, 3, 1}}});
  cases.push_back({.name = "batch 2, text_valid, GQA 3:1", .batch = 2, .q_heads = 3, .kv_heads = 1,
                   .video = {13, 16, 16}, .text_len = 200, .windows = {{3, 1, 1}}, .text_valid = {5, 300}});
  cases.push_back({.name = "tile-major", .video = {12, 16, 24}, .text_len = 20, .windows = {{1, 1, 3}},
                   .layout = TokenLayout::tile_major});
  cases.push_back({.name = "BSHD strided, batch 2", .batch = 2, .video = {7, 10, 9}, .text_len = 64,
                   .windows = {{1, 1, 1}}, .bshd = true});
  cases.push_back({.name = "tile 4x4x8, D64", .head_dim = 64, .video = {8, 12, 17}, .tile = {4, 4, 8},
                   .text_len = 3, .windows = {{1, 3, 1}}});
  cases.push_back({.name = "tile 8x4x4, fp16, scale", .video = {16, 8, 12}, .tile = {8, 4, 4}, .windows = {{1, 1, 3}},
                   .dtype = DType::fp16, .scale = 0.05f});
  return cases;
}

// A random case: tile shapes the kernels support, partial tiles, text 0..512, head dim 64/128, bf16/fp16, GQA,
// batch 1-2, shared or per-head odd/full windows, text_valid, BSHD strides, tile-major order.
inline Case random_case(std::mt19937_64& rng, const std::string& name) {
  auto r = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const Extent3 tiles[] = {{6, 8, 8}, {2, 8, 8}, {4, 4, 8}, {8, 4, 4}, {4, 8, 4}};
  const int64_t texts[] = {0, 1, 77, 256, 333, 512};
  Case c;
  c.name = name;
  c.tile = tiles[r(0, 4)];
  c.video = {r(1, 3 * c.tile.t), r(1, 3 * c.tile.h), r(1, 4 * c.tile.w)};
  c.text_len = texts[r(0, 5)];
  c.head_dim = r(0, 1) ? 128 : 64;
  c.dtype = r(0, 3) ? DType::bf16 : DType::fp16;
  c.kv_heads = r(1, 2);
  c.q_heads = c.kv_heads * r(1, 2);
  c.batch = r(1, 2);
  const Extent3 grid = VideoGeometry(c.video, c.tile).grid();
  auto axis = [&](int64_t n) { return r(0, 3) == 0 ? n : std::min(n, 2 * r(0, (n - 1) / 2) + 1); };
  const int64_t nw = r(0, 1) ? 1 : c.q_heads;
  for (int64_t h = 0; h < nw; ++h) c.windows.push_back({axis(grid.t), axis(grid.h), axis(grid.w)});
  if (c.text_len > 0 && r(0, 1))
    for (int64_t b = 0; b < c.batch; ++b) c.text_valid.push_back(int32_t(r(-3, c.text_len + 3)));
  c.bshd = r(0, 3) == 0;
  if (VideoGeometry(c.video, c.tile).tiles_exact() && r(0, 1)) c.layout = TokenLayout::tile_major;
  return c;
}

// The case's plan for the CPU reference: one window per query head.
inline BlockPlan case_plan(const Case& c) {
  const VideoGeometry geo(c.video, c.tile, c.text_len);
  std::vector<Window> per_head(c.q_heads, geo.grid());
  for (int64_t h = 0; h < c.q_heads; ++h)
    if (!c.windows.empty()) per_head[h] = c.windows[c.windows.size() == 1 ? 0 : h];
  return build_sta_plan(BlockPartition(geo), per_head);
}

// Random 16-bit host tensors and their device copies in the case's layout.
class Problem {
 public:
  Problem(const Case& c, uint64_t seed) : c_(c), geo_(c.video, c.tile, c.text_len), rng_(seed) {}
  const VideoGeometry& geometry() const { return geo_; }
  int64_t tokens() const { return geo_.num_tokens(); }
  int64_t elems(int64_t heads) const { return c_.batch * heads * tokens() * c_.head_dim; }

  // Standard-normal values rounded to the dtype: fills `values` (what the reference sees) and returns the bits.
  std::vector<uint16_t> random(int64_t heads, std::vector<float>& values) {
    std::normal_distribution<float> normal;
    std::vector<uint16_t> bits(elems(heads));
    values.resize(bits.size());
    for (size_t i = 0; i < bits.size(); ++i) {
      bits[i] = detail::float_to_half_bits(normal(rng_), c_.dtype);
      values[i] = detail::half_bits_to_float(bits[i], c_.dtype);
    }
    return bits;
  }
  // What random() gives for a tensor of the case: for dit_like inputs, Q and K (role 'q' / 'k') get channels
  // 3, 17, 40 scaled by 10 (K 5, 29, 61 with dit_disjoint) and K a per-channel offset of N(0, 1) x 8 (the same for
  // every token of a head).
  std::vector<uint16_t> random_input(char role, int64_t heads, std::vector<float>& values) {
    std::vector<uint16_t> bits = random(heads, values);
    if (!c_.dit_like || role == 'v') return bits;
    const int64_t d = c_.head_dim;
    std::normal_distribution<float> normal;
    std::vector<float> offset(c_.batch * heads * d);
    for (float& o : offset) o = role == 'k' ? 8.0f * normal(rng_) : 0.0f;
    for (size_t i = 0; i < values.size(); ++i) {
      const int64_t channel = int64_t(i) % d, bh = int64_t(i) / (tokens() * d);
      float x = values[i];
      const bool other = role == 'k' && c_.dit_disjoint;
      if (other ? (channel == 5 || channel == 29 || channel == 61) : (channel == 3 || channel == 17 || channel == 40))
        x *= 10.0f;
      x += offset[bh * d + channel];
      bits[i] = detail::float_to_half_bits(x, c_.dtype);
      values[i] = detail::half_bits_to_float(bits[i], c_.dtype);
    }
    return bits;
  }
  // Host [B, H, S, D] natural-order bits -> the case's token order and memory layout.
  std::vector<uint16_t> to_layout(const std::vector<uint16_t>& src, int64_t heads) const {
    const int64_t n = tokens(), d = c_.head_dim;
    std::vector<uint16_t> ordered(src.size());
    if (c_.layout == TokenLayout::tile_major)
      tileattn::tile<uint16_t>(geo_, src, ordered, c_.batch * heads, d);
    else
      ordered = src;
    if (!c_.bshd) return ordered;
    std::vector<uint16_t> bshd(src.size());
    for (int64_t b = 0; b < c_.batch; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t s = 0; s < n; ++s)
          std::copy_n(&ordered[((b * heads + h) * n + s) * d], d, &bshd[((b * n + s) * heads + h) * d]);
    return bshd;
  }
  // The inverse, to floats.
  std::vector<float> from_layout(const std::vector<uint16_t>& src, int64_t heads) const {
    const int64_t n = tokens(), d = c_.head_dim;
    std::vector<uint16_t> bhsd = src;
    if (c_.bshd)
      for (int64_t b = 0; b < c_.batch; ++b)
        for (int64_t h = 0; h < heads; ++h)
          for (int64_t s = 0; s < n; ++s)
            std::copy_n(&src[((b * n + s) * heads + h) * d], d, &bhsd[((b * heads + h) * n + s) * d]);
    std::vector<float> out(bhsd.size());
    for (size_t i = 0; i < out.size(); ++i) out[i] = detail::half_bits_to_float(bhsd[i], c_.dtype);
    if (c_.layout != TokenLayout::tile_major) return out;
    std::vector<float> nat(out.size());
    untile<float>(geo_, out, nat, c_.batch * heads, d);
    return nat;
  }
  DeviceTensor tensor(void* p, int64_t heads) const {
    const int64_t n = tokens(), d = c_.head_dim;
    return c_.bshd ? DeviceTensor{p, n * heads * d, d, heads * d} : DeviceTensor{p, heads * n * d, n * d, d};
  }
  // Forward arguments for the case with the given device tensors.
  StaForwardArgs forward_args(void* q, void* k, void* v, void* out, float* lse, const int32_t* text_valid) const {
    StaForwardArgs a;
    a.dtype = c_.dtype, a.batch = c_.batch, a.q_heads = c_.q_heads, a.kv_heads = c_.kv_heads, a.head_dim = c_.head_dim;
    a.video = c_.video, a.tile = c_.tile, a.text_len = c_.text_len, a.layout = c_.layout;
    a.q = tensor(q, c_.q_heads), a.k = tensor(k, c_.kv_heads), a.v = tensor(v, c_.kv_heads);
    a.out = tensor(out, c_.q_heads);
    a.lse = lse, a.text_valid = text_valid, a.windows = c_.windows, a.scale = c_.scale;
    a.precision = c_.precision;
    return a;
  }

 private:
  const Case& c_;
  VideoGeometry geo_;
  std::mt19937_64 rng_;
};

// Relative L2 error of `got` against `want`; non-finite entries of `got` are counted, not summed.
struct Comparison {
  double rel_l2 = 0;
  double cosine = 0;  // cosine similarity of the whole tensors
  int64_t non_finite = 0;
};
inline Comparison compare(const std::vector<float>& got, const std::vector<float>& want) {
  Comparison r;
  double diff2 = 0, ref2 = 0, got2 = 0, dot = 0;
  for (size_t i = 0; i < got.size(); ++i) {
    if (!std::isfinite(got[i])) {
      ++r.non_finite;
      continue;
    }
    diff2 += double(got[i] - want[i]) * (got[i] - want[i]);
    ref2 += double(want[i]) * want[i];
    got2 += double(got[i]) * got[i];
    dot += double(got[i]) * want[i];
  }
  r.rel_l2 = std::sqrt(diff2 / std::max(ref2, 1e-30));
  r.cosine = dot / std::max(std::sqrt(got2 * ref2), 1e-30);
  return r;
}

}  // namespace tileattn::testing

// STA forward kernel vs the CPU reference on fresh random inputs. Skips cleanly without a Hopper GPU.
// The seed comes from TILEATTN_TEST_SEED or std::random_device and is printed, so a failure can be replayed.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <random>

#include "tileattn/detail/testing.hpp"
#include "tileattn/error.hpp"
#include "tileattn/reference.hpp"
#include "tileattn/sta.hpp"

using namespace tileattn;

namespace {

uint64_t test_seed() {
  static const uint64_t seed = [] {
    const char* env = std::getenv("TILEATTN_TEST_SEED");
    uint64_t s = env ? std::strtoull(env, nullptr, 10) : std::random_device{}();
    std::printf("[ seed ] TILEATTN_TEST_SEED=%llu\n", static_cast<unsigned long long>(s));
    return s;
  }();
  return seed;
}

#define CUDA_OK(expr) ASSERT_EQ((expr), cudaSuccess) << #expr << ": " << cudaGetErrorString(cudaGetLastError())

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
};

std::ostream& operator<<(std::ostream& os, const Case& c) {
  os << c.name << ": B=" << c.batch << " Hq=" << c.q_heads << " Hkv=" << c.kv_heads << " D=" << c.head_dim << " video "
     << to_string(c.video) << " tile " << to_string(c.tile) << " text " << c.text_len << " windows";
  for (auto& w : c.windows) os << " " << to_string(w);
  if (c.windows.empty()) os << " dense";
  return os << (c.layout == TokenLayout::tile_major ? " tile-major" : "") << (c.dtype == DType::fp16 ? " fp16" : " bf16")
            << (c.bshd ? " bshd" : "");
}

struct Errors {
  double rel_l2 = 0, lse_max_abs = 0;
  int64_t non_finite = 0;
};

// Runs one case; returns the errors against the fp64-accumulated CPU reference.
void run_case(const Case& c, uint64_t seed, Errors& errors) {
  const VideoGeometry geo(c.video, c.tile, c.text_len);
  const int64_t n = geo.num_tokens(), d = c.head_dim;
  const int64_t q_elems = c.batch * c.q_heads * n * d, kv_elems = c.batch * c.kv_heads * n * d;

  // Host inputs in [B, H, S, D] natural order, rounded to the input dtype.
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> normal;
  auto make = [&](int64_t count, std::vector<float>& values, std::vector<uint16_t>& bits) {
    values.resize(count), bits.resize(count);
    for (int64_t i = 0; i < count; ++i) {
      bits[i] = detail::float_to_half_bits(normal(rng), c.dtype);
      values[i] = detail::half_bits_to_float(bits[i], c.dtype);
    }
  };
  std::vector<float> q, k, v;
  std::vector<uint16_t> qb, kb, vb;
  make(q_elems, q, qb), make(kv_elems, k, kb), make(kv_elems, v, vb);

  // Device copies in the case's token order and memory layout.
  auto to_layout = [&](const std::vector<uint16_t>& src, int64_t heads) {
    std::vector<uint16_t> ordered(src.size());
    if (c.layout == TokenLayout::tile_major)
      tileattn::tile<uint16_t>(geo, src, ordered, c.batch * heads, d);
    else
      ordered = src;
    if (!c.bshd) return ordered;
    std::vector<uint16_t> bshd(src.size());
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t h = 0; h < heads; ++h)
        for (int64_t s = 0; s < n; ++s)
          std::copy_n(&ordered[((b * heads + h) * n + s) * d], d, &bshd[((b * n + s) * heads + h) * d]);
    return bshd;
  };
  auto tensor = [&](void* p, int64_t heads) {
    return c.bshd ? DeviceTensor{p, n * heads * d, d, heads * d} : DeviceTensor{p, heads * n * d, n * d, d};
  };
  void *dq, *dk, *dv, *dout;
  float* dlse;
  int32_t* dvalid = nullptr;
  CUDA_OK(cudaMalloc(&dq, q_elems * 2));
  CUDA_OK(cudaMalloc(&dk, kv_elems * 2));
  CUDA_OK(cudaMalloc(&dv, kv_elems * 2));
  CUDA_OK(cudaMalloc(&dout, q_elems * 2));
  CUDA_OK(cudaMalloc(&dlse, c.batch * c.q_heads * n * 4));
  for (auto [dst, src, heads] : {std::tuple{dq, &qb, c.q_heads}, {dk, &kb, c.kv_heads}, {dv, &vb, c.kv_heads}}) {
    auto h = to_layout(*src, heads);
    CUDA_OK(cudaMemcpy(dst, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  }
  detail::fill_pattern_device(dout, q_elems, 0xFFFF, nullptr);  // NaN: every element must be overwritten
  CUDA_OK(cudaMemset(dlse, 0xFF, c.batch * c.q_heads * n * 4));
  if (!c.text_valid.empty()) {
    CUDA_OK(cudaMalloc(&dvalid, c.batch * 4));
    CUDA_OK(cudaMemcpy(dvalid, c.text_valid.data(), c.batch * 4, cudaMemcpyHostToDevice));
  }

  StaForwardArgs a;
  a.dtype = c.dtype, a.batch = c.batch, a.q_heads = c.q_heads, a.kv_heads = c.kv_heads, a.head_dim = d;
  a.video = c.video, a.tile = c.tile, a.text_len = c.text_len, a.layout = c.layout;
  a.q = tensor(dq, c.q_heads), a.k = tensor(dk, c.kv_heads), a.v = tensor(dv, c.kv_heads);
  a.out = tensor(dout, c.q_heads);
  a.lse = dlse, a.text_valid = dvalid, a.windows = c.windows, a.scale = c.scale;
  sta_forward(a, nullptr);
  CUDA_OK(cudaDeviceSynchronize());

  // Back to [B, H, S, D] natural order.
  std::vector<uint16_t> out_bits(q_elems);
  CUDA_OK(cudaMemcpy(out_bits.data(), dout, q_elems * 2, cudaMemcpyDeviceToHost));
  std::vector<float> lse_dev(c.batch * c.q_heads * n);
  CUDA_OK(cudaMemcpy(lse_dev.data(), dlse, lse_dev.size() * 4, cudaMemcpyDeviceToHost));
  for (void* p : {dq, dk, dv, dout, static_cast<void*>(dlse), static_cast<void*>(dvalid)}) cudaFree(p);
  if (c.bshd) {
    std::vector<uint16_t> bhsd(q_elems);
    for (int64_t b = 0; b < c.batch; ++b)
      for (int64_t h = 0; h < c.q_heads; ++h)
        for (int64_t s = 0; s < n; ++s)
          std::copy_n(&out_bits[((b * n + s) * c.q_heads + h) * d], d, &bhsd[((b * c.q_heads + h) * n + s) * d]);
    out_bits = bhsd;
  }
  std::vector<float> out(q_elems);
  for (int64_t i = 0; i < q_elems; ++i) out[i] = detail::half_bits_to_float(out_bits[i], c.dtype);
  if (c.layout == TokenLayout::tile_major) {
    std::vector<float> nat(q_elems), lse_nat(lse_dev.size());
    untile<float>(geo, out, nat, c.batch * c.q_heads, d);
    untile<float>(geo, lse_dev, lse_nat, c.batch * c.q_heads, 1);
    out = nat, lse_dev = lse_nat;
  }

  // Reference through the plan.
  std::vector<Window> per_head(c.q_heads, geo.grid());
  for (int64_t h = 0; h < c.q_heads; ++h)
    if (!c.windows.empty()) per_head[h] = c.windows[c.windows.size() == 1 ? 0 : h];
  const BlockPlan plan = build_sta_plan(BlockPartition(geo), per_head);
  std::vector<float> ref(q_elems), ref_lse(lse_dev.size());
  ReferenceOptions opts;
  opts.scale = c.scale;
  opts.accumulation = Accumulation::fp64;
  reference_attention_plan({c.batch, c.q_heads, c.kv_heads, n, d}, plan, c.text_valid, q, k, v, ref, ref_lse, opts);

  double diff2 = 0, ref2 = 0;
  for (int64_t i = 0; i < q_elems; ++i) {
    if (!std::isfinite(out[i])) {
      ++errors.non_finite;
      continue;
    }
    diff2 += double(out[i] - ref[i]) * (out[i] - ref[i]);
    ref2 += double(ref[i]) * ref[i];
  }
  errors.rel_l2 = std::sqrt(diff2 / std::max(ref2, 1e-30));
  for (size_t i = 0; i < ref_lse.size(); ++i) {
    if (!std::isfinite(lse_dev[i])) {
      ++errors.non_finite;
      continue;
    }
    errors.lse_max_abs = std::max(errors.lse_max_abs, double(std::fabs(lse_dev[i] - ref_lse[i])));
  }
}

class StaForwardGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_kernels_available()) GTEST_SKIP() << "no Hopper (sm_90) GPU: STA kernel tests skipped";
  }
  void expect_matches_reference(const Case& c, uint64_t salt) {
    Errors e;
    run_case(c, test_seed() * 1000003 + salt, e);
    if (HasFatalFailure()) return;
    const double tol = c.dtype == DType::bf16 ? 1e-2 : 2e-3;
    EXPECT_EQ(e.non_finite, 0) << c;
    EXPECT_LT(e.rel_l2, tol) << c;
    EXPECT_LT(e.lse_max_abs, 2e-3) << c;
    std::printf("  %-28s rel L2 %.2e, LSE max |err| %.2e\n", c.name.c_str(), e.rel_l2, e.lse_max_abs);
  }
};

TEST_F(StaForwardGpu, SmallFixedShapes) {
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
  for (size_t i = 0; i < cases.size(); ++i) expect_matches_reference(cases[i], i);
}

TEST_F(StaForwardGpu, RandomizedShapes) {
  std::mt19937_64 rng(test_seed());
  auto r = [&](int64_t lo, int64_t hi) { return std::uniform_int_distribution<int64_t>(lo, hi)(rng); };
  const Extent3 tiles[] = {{6, 8, 8}, {2, 8, 8}, {4, 4, 8}, {8, 4, 4}, {4, 8, 4}};
  const int64_t texts[] = {0, 1, 77, 256, 333, 512};
  for (int trial = 0; trial < 24; ++trial) {
    Case c;
    c.name = "random #" + std::to_string(trial);
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
    expect_matches_reference(c, 100 + trial);
  }
}

TEST_F(StaForwardGpu, HunyuanShapeOneHead) {
  // The real shape (tile 6x8x8, grid 5x6x10, text 256), one head, 3x3x3: checks border clamping at full scale.
  Case c{.name = "hunyuan 1 head", .q_heads = 1, .kv_heads = 1, .video = {30, 48, 80}, .text_len = 256,
         .windows = {{3, 3, 3}}};
  expect_matches_reference(c, 999);
}

// The call allocates nothing and never synchronises: it can be captured in a CUDA graph, and replays give the
// direct call's output bit for bit.
TEST_F(StaForwardGpu, CapturesInCudaGraph) {
  const VideoGeometry geo({12, 16, 24}, {6, 8, 8}, 77);
  const int64_t heads = 2, d = 128, n = geo.num_tokens(), elems = heads * n * d;
  void *q, *k, *v, *direct, *graphed;
  for (void** p : {&q, &k, &v, &direct, &graphed}) CUDA_OK(cudaMalloc(p, elems * 2));
  detail::fill_random_device(q, elems, DType::bf16, test_seed() + 1, 1.0f, nullptr);
  detail::fill_random_device(k, elems, DType::bf16, test_seed() + 2, 1.0f, nullptr);
  detail::fill_random_device(v, elems, DType::bf16, test_seed() + 3, 1.0f, nullptr);
  detail::fill_pattern_device(graphed, elems, 0xFFFF, nullptr);
  const std::vector<Window> windows = {{1, 1, 3}, {1, 1, 1}};
  StaForwardArgs a;
  a.q_heads = a.kv_heads = heads, a.head_dim = d, a.video = geo.video(), a.text_len = geo.text_len();
  a.q = {q, elems, n * d, d}, a.k = {k, elems, n * d, d}, a.v = {v, elems, n * d, d};
  a.windows = windows;
  a.out = {direct, elems, n * d, d};
  sta_forward(a, nullptr);
  CUDA_OK(cudaDeviceSynchronize());

  cudaStream_t stream;
  CUDA_OK(cudaStreamCreateWithFlags(&stream, cudaStreamNonBlocking));
  a.out = {graphed, elems, n * d, d};
  cudaGraph_t graph;
  cudaGraphExec_t exec;
  CUDA_OK(cudaStreamBeginCapture(stream, cudaStreamCaptureModeGlobal));
  sta_forward(a, stream);
  CUDA_OK(cudaStreamEndCapture(stream, &graph));
  CUDA_OK(cudaGraphInstantiate(&exec, graph, 0));
  for (int i = 0; i < 2; ++i) CUDA_OK(cudaGraphLaunch(exec, stream));
  CUDA_OK(cudaStreamSynchronize(stream));
  std::vector<uint16_t> x(elems), y(elems);
  CUDA_OK(cudaMemcpy(x.data(), direct, elems * 2, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(y.data(), graphed, elems * 2, cudaMemcpyDeviceToHost));
  EXPECT_EQ(x, y);
  cudaGraphExecDestroy(exec);
  cudaGraphDestroy(graph);
  cudaStreamDestroy(stream);
  for (void* p : {q, k, v, direct, graphed}) cudaFree(p);
}

TEST_F(StaForwardGpu, RejectsBadArgumentsBeforeLaunching) {
  StaForwardArgs a;
  a.video = {6, 8, 8};
  a.head_dim = 96;
  try {
    sta_forward(a, nullptr);
    FAIL();
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "head_dim");
  }
}

}  // namespace

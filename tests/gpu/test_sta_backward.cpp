// STA backward kernels vs the CPU reference gradients (fp64) on fresh random inputs: every feature the forward
// exposes (partial and border tiles, per-head windows, text 0..512 with text_valid, GQA, head dim 64/128, bf16/fp16,
// tile-major, BSHD strides, custom scale), both dQ modes, and bitwise determinism of the deterministic mode.
// Skips cleanly without a Hopper GPU.
#include <cuda_runtime.h>
#include <gtest/gtest.h>

#include <cmath>
#include <random>

#include "sta_case.hpp"
#include "tileattn/error.hpp"
#include "tileattn/reference.hpp"
#include "tileattn/sta.hpp"

using namespace tileattn;
using namespace tileattn::testing;

namespace {

struct Gradients {
  std::vector<uint16_t> dq, dk, dv;  // device bits, case layout
};

// Device buffers of one case: inputs, forward outputs, gradients, workspace.
class BackwardRun {
 public:
  BackwardRun(const Case& c, uint64_t seed) : c_(c), problem_(c, seed) {}
  ~BackwardRun() {
    for (void* p : buffers_) cudaFree(p);
  }

  void setup() {
    const int64_t nq = problem_.elems(c_.q_heads), nkv = problem_.elems(c_.kv_heads);
    qb_ = problem_.random(c_.q_heads, q_), kb_ = problem_.random(c_.kv_heads, k_);
    vb_ = problem_.random(c_.kv_heads, v_), gb_ = problem_.random(c_.q_heads, grad_out_);
    dq_ = upload(qb_, c_.q_heads), dk_ = upload(kb_, c_.kv_heads), dv_ = upload(vb_, c_.kv_heads);
    dgo_ = upload(gb_, c_.q_heads);
    dout_ = alloc(nq * 2), gq_ = alloc(nq * 2), gk_ = alloc(nkv * 2), gv_ = alloc(nkv * 2);
    lse_ = static_cast<float*>(alloc(c_.batch * c_.q_heads * problem_.tokens() * 4));
    if (!c_.text_valid.empty()) {
      valid_ = static_cast<int32_t*>(alloc(c_.batch * 4));
      cudaMemcpy(valid_, c_.text_valid.data(), c_.batch * 4, cudaMemcpyHostToDevice);
    }
    StaBackwardArgs a = args(false);
    workspace_bytes_ = sta_backward_workspace_bytes(a.forward);
    workspace_ = alloc(workspace_bytes_);
    sta_forward(a.forward, nullptr);
  }

  StaBackwardArgs args(bool deterministic) const {
    StaBackwardArgs a;
    a.forward = problem_.forward_args(dq_, dk_, dv_, dout_, lse_, valid_);
    a.grad_out = problem_.tensor(dgo_, c_.q_heads);
    a.grad_q = problem_.tensor(gq_, c_.q_heads);
    a.grad_k = problem_.tensor(gk_, c_.kv_heads);
    a.grad_v = problem_.tensor(gv_, c_.kv_heads);
    a.workspace = workspace_, a.workspace_bytes = workspace_bytes_;
    a.deterministic = deterministic;
    return a;
  }

  // Runs the backward (gradients NaN-poisoned first: every element must be written) and downloads the gradients.
  Gradients backward(bool deterministic) {
    const int64_t nq = problem_.elems(c_.q_heads), nkv = problem_.elems(c_.kv_heads);
    detail::fill_pattern_device(gq_, nq, 0xFFFF, nullptr);
    detail::fill_pattern_device(gk_, nkv, 0xFFFF, nullptr);
    detail::fill_pattern_device(gv_, nkv, 0xFFFF, nullptr);
    sta_backward(args(deterministic), nullptr);
    Gradients g{std::vector<uint16_t>(nq), std::vector<uint16_t>(nkv), std::vector<uint16_t>(nkv)};
    if (cudaDeviceSynchronize() != cudaSuccess) {
      ADD_FAILURE() << "backward failed: " << cudaGetErrorString(cudaGetLastError());
      return g;
    }
    cudaMemcpy(g.dq.data(), gq_, nq * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(g.dk.data(), gk_, nkv * 2, cudaMemcpyDeviceToHost);
    cudaMemcpy(g.dv.data(), gv_, nkv * 2, cudaMemcpyDeviceToHost);
    return g;
  }

  // Relative L2 errors of dQ, dK, dV against the fp64 reference.
  std::array<Comparison, 3> check(const Gradients& g) const {
    const int64_t n = problem_.tokens(), d = c_.head_dim;
    std::vector<float> rq(q_.size()), rk(k_.size()), rv(v_.size());
    ReferenceOptions opts;
    opts.scale = c_.scale;
    opts.accumulation = Accumulation::fp64;
    reference_attention_plan_backward({c_.batch, c_.q_heads, c_.kv_heads, n, d}, case_plan(c_), c_.text_valid, q_, k_,
                                      v_, grad_out_, rq, rk, rv, opts);
    return {compare(problem_.from_layout(g.dq, c_.q_heads), rq), compare(problem_.from_layout(g.dk, c_.kv_heads), rk),
            compare(problem_.from_layout(g.dv, c_.kv_heads), rv)};
  }

 private:
  void* alloc(int64_t bytes) {
    void* p = nullptr;
    if (cudaMalloc(&p, bytes) != cudaSuccess) throw CudaError("test: cudaMalloc failed");
    buffers_.push_back(p);
    return p;
  }
  void* upload(const std::vector<uint16_t>& bits, int64_t heads) {
    const std::vector<uint16_t> h = problem_.to_layout(bits, heads);
    void* p = alloc(h.size() * 2);
    cudaMemcpy(p, h.data(), h.size() * 2, cudaMemcpyHostToDevice);
    return p;
  }

  const Case& c_;
  Problem problem_;
  std::vector<float> q_, k_, v_, grad_out_;
  std::vector<uint16_t> qb_, kb_, vb_, gb_;
  void *dq_ = nullptr, *dk_ = nullptr, *dv_ = nullptr, *dgo_ = nullptr, *dout_ = nullptr;
  void *gq_ = nullptr, *gk_ = nullptr, *gv_ = nullptr, *workspace_ = nullptr;
  float* lse_ = nullptr;
  int32_t* valid_ = nullptr;
  int64_t workspace_bytes_ = 0;
  std::vector<void*> buffers_;
};

class StaBackwardGpu : public ::testing::Test {
 protected:
  void SetUp() override {
    if (!gpu_kernels_available()) GTEST_SKIP() << "no Hopper (sm_90) GPU: STA kernel tests skipped";
  }
  // Both dQ modes against the reference; the deterministic mode twice, bit for bit.
  void expect_matches_reference(const Case& c, uint64_t salt, bool check_determinism = false) {
    BackwardRun run(c, test_seed() * 1000003 + salt);
    run.setup();
    // bf16 gradients: inputs and O/dO are rounded to 8 mantissa bits and P, dS to bf16 before the GEMMs.
    const double tol = c.dtype == DType::bf16 ? 2.5e-2 : 4e-3;
    for (bool deterministic : {false, true}) {
      const Gradients g = run.backward(deterministic);
      if (HasFailure()) return;
      const auto e = run.check(g);
      const char* names[] = {"dQ", "dK", "dV"};
      for (int i = 0; i < 3; ++i) {
        EXPECT_EQ(e[i].non_finite, 0) << names[i] << " " << c;
        EXPECT_LT(e[i].rel_l2, tol) << names[i] << (deterministic ? " (deterministic) " : " ") << c;
      }
      std::printf("  %-30s %s dQ %.2e  dK %.2e  dV %.2e\n", c.name.c_str(), deterministic ? "det " : "fast",
                  e[0].rel_l2, e[1].rel_l2, e[2].rel_l2);
      std::fflush(stdout);
      if (deterministic && check_determinism) {
        const Gradients again = run.backward(true);
        EXPECT_TRUE(g.dq == again.dq && g.dk == again.dk && g.dv == again.dv)
            << "deterministic mode gave different bits on a second run: " << c;
      }
    }
  }
};

TEST_F(StaBackwardGpu, SmallFixedShapes) {
  std::vector<Case> cases = feature_cases();
  // Border tiles (clamped windows: a key tile at the border is visited by more query tiles) and text keys with
  // text_valid 0 (no text key visible) and exactly one 128-row key block visible.
  cases.push_back({.name = "border tiles 3x1x3 of 5x2x5", .q_heads = 1, .kv_heads = 1, .video = {30, 16, 40},
                   .windows = {{3, 1, 3}}});
  cases.push_back({.name = "text_valid 0 and 128", .batch = 2, .q_heads = 2, .kv_heads = 2, .video = {6, 8, 24},
                   .text_len = 256, .windows = {{1, 1, 1}}, .text_valid = {0, 128}});
  for (size_t i = 0; i < cases.size(); ++i) expect_matches_reference(cases[i], i, i < 3);
}

// Small enough for compute-sanitizer (memcheck, racecheck, synccheck run it in tools/device_run.sh): partial tiles
// with text and text_valid, GQA with per-head windows, head dim 64 fp16, tile-major.
TEST_F(StaBackwardGpu, SanitizerSubset) {
  const std::vector<Case> cases = {
      {.name = "partial + text + text_valid", .batch = 2, .q_heads = 2, .kv_heads = 1, .video = {7, 9, 17},
       .text_len = 77, .windows = {{1, 1, 1}, {2, 2, 3}}, .text_valid = {5, 77}},
      {.name = "D64 fp16 tile-major", .head_dim = 64, .video = {12, 16, 16}, .text_len = 130, .windows = {{1, 1, 1}},
       .layout = TokenLayout::tile_major, .dtype = DType::fp16}};
  for (size_t i = 0; i < cases.size(); ++i) expect_matches_reference(cases[i], 500 + i, true);
}

TEST_F(StaBackwardGpu, RandomizedShapes) {
  std::mt19937_64 rng(test_seed() + 7);
  for (int trial = 0; trial < 16; ++trial) expect_matches_reference(random_case(rng, "random #" + std::to_string(trial)), 100 + trial);
}

TEST_F(StaBackwardGpu, HunyuanGridOneHead) {
  // Hunyuan's tile grid (5x6x10) and text (256) with one head at 3x3x3: border clamping of the transposed plan at
  // full grid size (smaller 8x4x4 tiles keep the fp64 reference quick).
  Case c{.name = "hunyuan grid 1 head", .q_heads = 1, .kv_heads = 1, .video = {40, 24, 40}, .tile = {8, 4, 4},
         .text_len = 256, .windows = {{3, 3, 3}}};
  expect_matches_reference(c, 999, true);
}

// Validation runs before anything touches the GPU, so this runs (and must pass) on machines without one.
TEST(StaBackwardValidation, RejectsBadArguments) {
  StaBackwardArgs a;
  a.forward.video = {6, 8, 8};
  a.forward.q = a.forward.k = a.forward.v = a.forward.out = {reinterpret_cast<void*>(256), 0, 0, 128};
  try {
    sta_backward(a, nullptr);
    FAIL() << "no error for a missing LSE";
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "lse");
  }
  a.forward.lse = reinterpret_cast<float*>(256);
  a.grad_out = a.grad_q = a.grad_k = a.grad_v = a.forward.q;
  try {
    sta_backward(a, nullptr);
    FAIL() << "no error for a missing workspace";
  } catch (const ArgumentError& e) {
    EXPECT_EQ(e.argument(), "workspace");
  }
}

}  // namespace

// Times kernel configurations of the STA forward side by side on the hunyuan-720p workload, in one process on the
// same inputs, and checks each against the production kernel's output. A tuning tool, not part of the library:
// cmake -DTILEATTN_BUILD_VARIANTS=ON, then build/tools/sta_variants [reps].
#include <cuda_runtime.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <functional>
#include <string>
#include <vector>

#include "kernels/sm90/sta/sta_fwd_kernel.cuh"
#include "ops/sta_problem.hpp"
#include "tileattn/detail/testing.hpp"

using namespace tileattn;

namespace {

#define CHECK(x)                                                                        \
  do {                                                                                  \
    cudaError_t e = (x);                                                                \
    if (e != cudaSuccess) {                                                             \
      std::fprintf(stderr, "%s: %s\n", #x, cudaGetErrorString(e));                      \
      std::exit(1);                                                                     \
    }                                                                                   \
  } while (0)

struct Variant {
  std::string name;
  int block_n;
  std::function<void(const kernels::StaKernelParams&, int64_t, cudaStream_t)> launch;
};

template <int BlockN, int Stages, bool Sched>
Variant variant(const char* name) {
  using Cfg = sm90::StaForwardConfig<__nv_bfloat16, 128, BlockN, Stages, Sched>;
  return {name, BlockN, [](const kernels::StaKernelParams& p, int64_t n, cudaStream_t s) { sm90::launch<Cfg>(p, n, s); }};
}

}  // namespace

int main(int argc, char** argv) {
  const int reps = argc > 1 ? std::atoi(argv[1]) : 10;
  const std::string mode = argc > 2 ? argv[2] : "all";
  const bool sweep = mode == "all";
  const Extent3 video{30, 48, 80};
  const int64_t heads = 24, d = 128, n = video.volume();
  const int64_t elems = heads * n * d;
  void *q, *k, *v, *out, *ref;
  CHECK(cudaMalloc(&q, elems * 2));
  CHECK(cudaMalloc(&k, elems * 2));
  CHECK(cudaMalloc(&v, elems * 2));
  CHECK(cudaMalloc(&out, elems * 2));
  CHECK(cudaMalloc(&ref, elems * 2));
  detail::fill_random_device(q, elems, DType::bf16, 11, 1.0f, nullptr);
  detail::fill_random_device(k, elems, DType::bf16, 12, 1.0f, nullptr);
  detail::fill_random_device(v, elems, DType::bf16, 13, 1.0f, nullptr);
  const std::vector<Variant> variants = {
      variant<128, 2, true>("N128 stages2 sched"),  variant<128, 3, true>("N128 stages3 sched"),
      variant<128, 2, false>("N128 stages2 nosched"), variant<192, 2, true>("N192 stages2 sched"),
      variant<192, 2, false>("N192 stages2 nosched"),
  };
  cudaEvent_t a, b;
  CHECK(cudaEventCreate(&a));
  CHECK(cudaEventCreate(&b));
  auto time_once = [&](const std::function<void()>& launch) {  // one launch, CUDA events, milliseconds
    CHECK(cudaEventRecord(a));
    launch();
    CHECK(cudaEventRecord(b));
    CHECK(cudaEventSynchronize(b));
    float ms;
    CHECK(cudaEventElapsedTime(&ms, a, b));
    return ms;
  };
  std::vector<uint16_t> h_out(elems), h_ref(elems);
  for (const Window w : {Window{3, 3, 3}, Window{5, 5, 5}, Window{5, 6, 10}}) {
    if (!sweep) break;
    StaForwardArgs args;
    args.batch = 1, args.q_heads = heads, args.kv_heads = heads, args.head_dim = d, args.video = video;
    args.q = {q, elems, n * d, d}, args.k = {k, elems, n * d, d}, args.v = {v, elems, n * d, d};
    args.windows = std::span<const Window>(&w, 1);
    args.out = {ref, elems, n * d, d};
    sta_forward(args, nullptr);
    CHECK(cudaDeviceSynchronize());
    CHECK(cudaMemcpy(h_ref.data(), ref, elems * 2, cudaMemcpyDeviceToHost));
    const double pairs = double(n) * double(w.volume()) * 384.0 * heads;
    std::printf("\nwindow %s (%.3g useful TFLOP)\n", to_string(w).c_str(), 4.0 * d * pairs / 1e12);
    for (const Variant& var : variants) {
      args.out = {out, elems, n * d, d};
      auto launches = kernels::initialize_sta_forward(ops::resolve_sta_forward(args, var.block_n));
      auto run = [&] {
        for (auto& l : launches) var.launch(l.params, l.num_ctas, nullptr);
      };
      for (int i = 0; i < 3; ++i) run();
      std::vector<float> t;
      for (int r = 0; r < reps; ++r) t.push_back(time_once(run));
      std::sort(t.begin(), t.end());
      CHECK(cudaMemcpy(h_out.data(), out, elems * 2, cudaMemcpyDeviceToHost));
      double diff = 0, norm = 0;
      for (int64_t i = 0; i < elems; i += 7) {
        const double x = detail::half_bits_to_float(h_out[i], DType::bf16), y = detail::half_bits_to_float(h_ref[i], DType::bf16);
        diff += (x - y) * (x - y), norm += y * y;
      }
      const float med = t[t.size() / 2];
      std::printf("  %-24s %9.3f ms  (min %8.3f)  %6.1f TFLOP/s  rel diff vs production %.1e\n", var.name.c_str(), med,
                  t.front(), 4.0 * d * pairs / (med * 1e9), std::sqrt(diff / norm));
    }
  }
  // Where does the time of text tokens go? Window 3x3x3, video-query CTAs only (the text-query CTAs run apart).
  // "profile TEXT VALID": one warm-up and one timed launch of the production config (for ncu: -s 1 -c 1).
  // "text": text configurations timed in interleaved rounds (video-query CTAs only, window 3x3x3).
  const bool profile = mode == "profile";
  if (profile || mode == "text" || mode == "all") {
    std::vector<std::pair<int64_t, int>> cases = {{0, 0}, {384, 384}, {256, 256}, {256, 192}, {256, 64}, {320, 320}};
    if (profile) cases = {{std::atoll(argv[3]), std::atoi(argv[4])}};
    const Variant& var = variants[3];
    struct Prepared {
      std::string name;
      kernels::StaKernelParams params;
      int64_t ctas;
      std::vector<float> times;
    };
    std::vector<Prepared> runs;
    const Window w{3, 3, 3};
    for (auto [text, valid] : cases) {
      const int64_t nt = n + text, te = heads * nt * d;
      void *tq, *tk, *tv, *to;
      int32_t* valid_dev;
      CHECK(cudaMalloc(&tq, te * 2));
      CHECK(cudaMalloc(&tk, te * 2));
      CHECK(cudaMalloc(&tv, te * 2));
      CHECK(cudaMalloc(&to, te * 2));
      CHECK(cudaMalloc(&valid_dev, 4));
      CHECK(cudaMemcpy(valid_dev, &valid, 4, cudaMemcpyHostToDevice));
      detail::fill_random_device(tq, te, DType::bf16, 21, 1.0f, nullptr);
      detail::fill_random_device(tk, te, DType::bf16, 22, 1.0f, nullptr);
      detail::fill_random_device(tv, te, DType::bf16, 23, 1.0f, nullptr);
      StaForwardArgs args;
      args.batch = 1, args.q_heads = heads, args.kv_heads = heads, args.head_dim = d, args.video = video;
      args.text_len = text, args.text_valid = valid_dev;
      args.q = {tq, te, nt * d, d}, args.k = {tk, te, nt * d, d}, args.v = {tv, te, nt * d, d};
      args.out = {to, te, nt * d, d};
      args.windows = std::span<const Window>(&w, 1);
      auto l = kernels::initialize_sta_forward(ops::resolve_sta_forward(args, var.block_n)).front();
      const int64_t text_ctas = int64_t(heads) * l.params.sta.num_text_query_blocks;
      l.params.sta.num_text_query_blocks = 0;
      char name[96];
      std::snprintf(name, sizeof name, "text %4lld valid %4d (%d text key blocks, last %s)", static_cast<long long>(text),
                    valid, (valid + var.block_n - 1) / var.block_n,
                    valid % var.block_n ? (valid == text ? "partial, past the end" : "partial, masked") : "full");
      runs.push_back({name, l.params, l.num_ctas - text_ctas, {}});
    }
    for (auto& r : runs) var.launch(r.params, r.ctas, nullptr);
    const int rounds = profile ? 1 : reps;
    for (int round = 0; round < rounds; ++round)
      for (size_t i = 0; i < runs.size(); ++i) {
        auto& r = runs[(i + round) % runs.size()];
        r.times.push_back(time_once([&] { var.launch(r.params, r.ctas, nullptr); }));
      }
    std::printf("\nvideo-query CTAs only, window 3x3x3, %s, %d interleaved rounds\n", var.name.c_str(), rounds);
    for (auto& r : runs) {
      std::sort(r.times.begin(), r.times.end());
      std::printf("  %-60s %8.3f ms\n", r.name.c_str(), r.times[r.times.size() / 2]);
    }
  }
  return 0;
}

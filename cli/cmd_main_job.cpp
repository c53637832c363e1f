// The main job (tileattn with no arguments): the hunyuan-720p workload. Prints its plan, then on a Hopper GPU runs
// the benchmark table (STA windows and dense through the same kernel); without one, runs a scaled-down CPU check of
// the STA plan against attention masked straight from the window definition.
#include <fmt/format.h>

#include <cmath>
#include <random>

#include "commands.hpp"
#include "tileattn/plan.hpp"
#include "tileattn/reference.hpp"
#include "tileattn/sta.hpp"

namespace tileattn::cli {

namespace {

// STA on a small video: plan-driven reference vs a reference masked by the window rule token by token.
int cpu_check() {
  const VideoGeometry geo({10, 12, 16}, {2, 4, 4}, 16);
  const std::vector<Window> windows = {{3, 3, 3}, {1, 3, 1}};
  const BlockPlan plan = build_sta_plan(BlockPartition(geo), windows);
  AttentionShape shape{1, 2, 1, geo.num_tokens(), 32};
  const int64_t nq = shape.q_heads * shape.tokens * shape.head_dim, nkv = shape.kv_heads * shape.tokens * shape.head_dim;
  std::mt19937 rng(20261123);
  std::normal_distribution<float> normal;
  std::vector<float> q(nq), k(nkv), v(nkv);
  for (auto* x : {&q, &k, &v})
    for (float& e : *x) e = normal(rng);
  std::vector<float> out_plan(nq), lse_plan(shape.q_heads * shape.tokens), out_mask(nq), lse_mask(lse_plan.size());
  reference_attention_plan(shape, plan, {}, q, k, v, out_plan, lse_plan);
  const Extent3 grid = geo.grid(), tile = geo.tile();
  auto allowed = [&](int64_t, int64_t h, int64_t i, int64_t j) {
    const int64_t nv = geo.num_video_tokens();
    if (i >= nv || j >= nv) return true;
    Extent3 a = geo.token_coord(i), b = geo.token_coord(j);
    const int64_t qt[3] = {a.t / tile.t, a.h / tile.h, a.w / tile.w}, kt[3] = {b.t / tile.t, b.h / tile.h, b.w / tile.w};
    for (int ax = 0; ax < 3; ++ax) {
      const int64_t s = detail::window_start(qt[ax], grid[ax], windows[h][ax]);
      if (kt[ax] < s || kt[ax] >= s + windows[h][ax]) return false;
    }
    return true;
  };
  reference_attention_masked(shape, allowed, q, k, v, out_mask, lse_mask);
  double max_diff = 0;
  for (size_t i = 0; i < out_plan.size(); ++i) max_diff = std::max(max_diff, double(std::fabs(out_plan[i] - out_mask[i])));
  for (size_t i = 0; i < lse_plan.size(); ++i) max_diff = std::max(max_diff, double(std::fabs(lse_plan[i] - lse_mask[i])));
  const bool ok = max_diff < 1e-4;
  fmt::print("CPU check (video {}, tile {}, windows 3x3x3 / 1x3x1, text 16): STA plan vs token-wise window mask: "
             "max |difference| = {:.2e} -> {}\n", to_string(geo.video()), to_string(geo.tile()), max_diff,
             ok ? "OK" : "MISMATCH");
  return ok ? 0 : 1;
}

}  // namespace

int run_main_job() {
  const Workload w;
  const VideoGeometry geo(w.video, w.tile, w.text_len);
  fmt::print("tileattn main job: workload {} (video {}, tile {}, {} heads, head dim {}, text {})\n", w.name,
             to_string(w.video), to_string(w.tile), w.heads, w.head_dim, w.text_len);
  for (const Window& win : {Window{3, 3, 3}, Window{5, 3, 5}, Window{5, 5, 5}}) {
    const BlockPlan plan = build_sta_plan(BlockPartition(geo), std::vector<Window>{win});
    fmt::print("  STA {}: grid {}, {} of {} key tiles per query tile, sparsity {:.4f} (text included)\n",
               to_string(win), to_string(geo.grid()), win.volume(), geo.num_tiles(), plan.sparsity().total);
  }
  if (!gpu_kernels_available()) {
    fmt::print("no Hopper (sm_90) GPU available: running the scaled-down CPU check instead of the benchmark\n");
    return cpu_check();
  }
  int rc = 0;
  for (int64_t text : {int64_t{0}, w.text_len}) {
    BenchOptions options;
    options.text = text;
    rc |= run_bench(options);
  }
  return rc;
}

}  // namespace tileattn::cli

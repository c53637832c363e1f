// tileattn bench: times the STA forward kernel (and with --backward the backward, both dQ modes) at several windows
// (and dense through the same kernels) with CUDA events on random inputs, median of --reps after --warmup. Baselines (cuDNN SDPA, FlexAttention) are timed in the
// same run by bench/bench_sta.py, which needs PyTorch.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>

#include "commands.hpp"
#include "tileattn/error.hpp"
#include "tileattn/plan.hpp"
#include "tileattn/sta.hpp"
#if TILEATTN_WITH_CUDA
#include <cuda_runtime.h>

#include "tileattn/detail/testing.hpp"
#endif

namespace tileattn::cli {

namespace {

struct BenchSetup {
  VideoGeometry geo;
  std::vector<Window> windows;
  DType dtype;
  int64_t kv_heads;
};

// Everything that can be checked without a GPU.
BenchSetup prepare(const BenchOptions& o) {
  if (o.text < 0) throw_argument_error("--text", "must be >= 0");
  const VideoGeometry geo(parse_extent3(o.shape, "--shape"), parse_extent3(o.tile, "--tile"), o.text);
  if (o.dtype != "bf16" && o.dtype != "fp16") throw_argument_error("--dtype", "must be bf16 or fp16, got " + o.dtype);
  if (o.layout != "natural" && o.layout != "tile-major")
    throw_argument_error("--layout", "must be natural or tile-major, got " + o.layout);
  if (o.reps < 1 || o.warmup < 0) throw_argument_error("--reps", "need --reps >= 1 and --warmup >= 0");
  const int64_t kv_heads = o.kv_heads == 0 ? o.heads : o.kv_heads;
  const DType dtype = o.dtype == "bf16" ? DType::bf16 : DType::fp16;
  std::vector<Window> windows;
  for (const std::string& part : split_list(o.windows)) {
    windows.push_back(part == "dense" ? geo.grid() : parse_extent3(part, "--windows"));
    validate_window(windows.back(), geo.grid(), "--windows");
  }
  if (o.batch < 1 || o.heads < 1 || kv_heads < 1 || o.heads % kv_heads != 0)
    throw_argument_error("--heads", "need --batch >= 1, --heads >= 1 and --kv-heads dividing --heads");
  return {geo, windows, dtype, kv_heads};
}

}  // namespace

#if TILEATTN_WITH_CUDA
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw CudaError(fmt::format("bench: {}: {}", what, cudaGetErrorString(err)));
}

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { check(cudaMalloc(&ptr, bytes), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

}  // namespace

int run_bench(const BenchOptions& o) {
  const BenchSetup setup = prepare(o);
  const Extent3 video = setup.geo.video(), tile = setup.geo.tile();
  const VideoGeometry& geo = setup.geo;
  const std::vector<Window>& windows = setup.windows;
  const DType dtype = setup.dtype;
  const int64_t kv_heads = setup.kv_heads;
  if (!gpu_kernels_available()) throw CudaError("bench: no Hopper (sm_90) GPU available");

  const int64_t n = geo.num_tokens(), d = o.head_dim;
  const int64_t q_elems = o.batch * o.heads * n * d, kv_elems = o.batch * kv_heads * n * d;
  DeviceBuffer q(q_elems * 2), k(kv_elems * 2), v(kv_elems * 2), out(q_elems * 2), lse(o.batch * o.heads * n * 4);
  cudaStream_t stream;
  check(cudaStreamCreate(&stream), "cudaStreamCreate");
  detail::fill_random_device(q.ptr, q_elems, dtype, 1, 1.0f, stream);
  detail::fill_random_device(k.ptr, kv_elems, dtype, 2, 1.0f, stream);
  detail::fill_random_device(v.ptr, kv_elems, dtype, 3, 1.0f, stream);
  cudaEvent_t start, stop;
  check(cudaEventCreate(&start), "cudaEventCreate");
  check(cudaEventCreate(&stop), "cudaEventCreate");

  auto tensor = [&](void* p, int64_t heads) { return DeviceTensor{p, heads * n * d, n * d, d}; };
  StaForwardArgs args;
  args.dtype = dtype;
  args.batch = o.batch, args.q_heads = o.heads, args.kv_heads = kv_heads, args.head_dim = d;
  args.video = video, args.tile = tile, args.text_len = o.text;
  args.layout = o.layout == "natural" ? TokenLayout::natural : TokenLayout::tile_major;
  args.q = tensor(q.ptr, o.heads), args.k = tensor(k.ptr, kv_heads), args.v = tensor(v.ptr, kv_heads);
  args.out = tensor(out.ptr, o.heads);
  args.lse = static_cast<float*>(lse.ptr);

  fmt::print("\nbench: video {} tile {} text {} | B={} heads={} kv_heads={} D={} {} {} | median of {} after {} "
             "warm-up\n", to_string(video), to_string(tile), o.text, o.batch, o.heads, kv_heads, d, o.dtype, o.layout,
             o.reps, o.warmup);
  fmt::print("{:<10} {:>9} {:>11} {:>10} {:>10}\n", "window", "sparsity", "time (ms)", "TFLOP/s", "min (ms)");
  nlohmann::json results = nlohmann::json::object();
  int rc = 0;
  // Median and minimum of --reps timed calls after --warmup untimed ones.
  auto time_ms = [&](auto&& call) {
    for (int64_t i = 0; i < o.warmup; ++i) call();
    std::vector<float> times;
    for (int64_t i = 0; i < o.reps; ++i) {
      check(cudaEventRecord(start, stream), "cudaEventRecord");
      call();
      check(cudaEventRecord(stop, stream), "cudaEventRecord");
      check(cudaEventSynchronize(stop), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start, stop), "cudaEventElapsedTime");
      times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    return std::pair{times[times.size() / 2], times.front()};
  };
  std::optional<DeviceBuffer> grad_out, grad_q, grad_k, grad_v, workspace;
  StaBackwardArgs bwd;
  if (o.backward) {
    grad_out.emplace(q_elems * 2), grad_q.emplace(q_elems * 2), grad_k.emplace(kv_elems * 2);
    grad_v.emplace(kv_elems * 2), workspace.emplace(sta_backward_workspace_bytes(args));
    detail::fill_random_device(grad_out->ptr, q_elems, dtype, 4, 1.0f, stream);
    bwd.grad_out = tensor(grad_out->ptr, o.heads), bwd.grad_q = tensor(grad_q->ptr, o.heads);
    bwd.grad_k = tensor(grad_k->ptr, kv_heads), bwd.grad_v = tensor(grad_v->ptr, kv_heads);
    bwd.workspace = workspace->ptr, bwd.workspace_bytes = sta_backward_workspace_bytes(args);
  }
  for (const Window& w : windows) {
    args.windows = std::span<const Window>(&w, 1);
    const BlockPlan plan = build_sta_plan(BlockPartition(geo), std::vector<Window>{w});
    const SparsityReport s = plan.sparsity();
    const auto [median, fastest] = time_ms([&] { sta_forward(args, stream); });
    // The plan above has one head: scale its visited pairs to all heads and batch elements.
    const double flops = 4.0 * double(d) * double(s.visited_pairs) * double(o.heads) * double(o.batch);
    // Output sanity: no NaN/Inf anywhere (inputs are random, never zeros).
    std::vector<uint16_t> host(q_elems);
    check(cudaMemcpy(host.data(), out.ptr, q_elems * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
    const bool finite = std::all_of(host.begin(), host.end(), [&](uint16_t b) {
      return std::isfinite(detail::half_bits_to_float(b, dtype));
    });
    if (!finite) rc = 1;
    const std::string label = window_label(w, geo.grid());
    fmt::print("{:<10} {:>9.4f} {:>11.3f} {:>10.1f} {:>10.3f}{}\n", label, s.total, median, flops / (median * 1e9),
               fastest, finite ? "" : "  OUTPUT HAS NaN/Inf");
    results[fmt::format("tileattn_sta_{}_fwd_ms", label)] = median;
    if (!o.backward) continue;
    // The backward does 5 GEMMs over the visited pairs where the forward does 2.
    bwd.forward = args;
    for (bool deterministic : {false, true}) {
      bwd.deterministic = deterministic;
      const auto [b_median, b_fastest] = time_ms([&] { sta_backward(bwd, stream); });
      std::vector<uint16_t> grads(kv_elems);
      check(cudaMemcpy(grads.data(), grad_k->ptr, kv_elems * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
      const bool grads_finite = std::all_of(grads.begin(), grads.end(), [&](uint16_t b) {
        return std::isfinite(detail::half_bits_to_float(b, dtype));
      });
      if (!grads_finite) rc = 1;
      const std::string what = deterministic ? "bwd-det" : "bwd";
      fmt::print("{:<10} {:>9} {:>11.3f} {:>10.1f} {:>10.3f}{}\n", "  " + what, "", b_median,
                 2.5 * flops / (b_median * 1e9), b_fastest, grads_finite ? "" : "  GRADIENTS HAVE NaN/Inf");
      results[fmt::format("tileattn_sta_{}_{}_ms", label, deterministic ? "bwd_deterministic" : "bwd")] = b_median;
    }
  }
  check(cudaStreamDestroy(stream), "cudaStreamDestroy");
  if (!o.json_path.empty()) {
    std::ofstream f(o.json_path);
    f << results.dump(1) << "\n";
    if (!f) throw FileError(fmt::format("--json '{}': cannot write the file", o.json_path));
  }
  return rc;
}
#else
int run_bench(const BenchOptions& o) {
  prepare(o);
  throw CudaError("bench: this build of tileattn has no CUDA kernels");
}
#endif

Action add_bench_command(CLI::App& app) {
  auto o = std::make_shared<BenchOptions>();
  CLI::App* cmd = app.add_subcommand("bench", "Time the STA forward kernel on the GPU (random inputs, CUDA events)");
  cmd->add_option("--shape", o->shape, "latent video T x H x W")->capture_default_str();
  cmd->add_option("--tile", o->tile, "tile shape")->capture_default_str();
  cmd->add_option("--windows", o->windows, "comma-separated windows in tiles, 'dense' for the full grid")
      ->capture_default_str();
  cmd->add_option("--text", o->text, "text tokens")->capture_default_str();
  cmd->add_option("--batch", o->batch, "batch size")->capture_default_str();
  cmd->add_option("--heads", o->heads, "query heads")->capture_default_str();
  cmd->add_option("--kv-heads", o->kv_heads, "key/value heads (GQA); 0 = --heads")->capture_default_str();
  cmd->add_option("--head-dim", o->head_dim, "64 or 128")->capture_default_str();
  cmd->add_option("--dtype", o->dtype, "bf16 or fp16")->capture_default_str();
  cmd->add_option("--layout", o->layout, "natural or tile-major")->capture_default_str();
  cmd->add_option("--warmup", o->warmup, "untimed runs first")->capture_default_str();
  cmd->add_option("--reps", o->reps, "timed runs (median reported)")->capture_default_str();
  cmd->add_flag("--backward", o->backward, "also time the backward (fast and deterministic dQ modes)");
  cmd->add_option("--json", o->json_path, "write the times (ms) as JSON");
  return [o] { return run_bench(*o); };
}

}  // namespace tileattn::cli

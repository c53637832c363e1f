// tileattn bench: times the STA forward kernel (and with --backward the backward, both dQ modes) at several windows
// (and dense through the same kernels) with CUDA events on random inputs, median of --reps after --warmup;
// --precision fp8 times the FP8 forward (its quantizing pre-pass included, workspace allocated here). With --fg
// it times the FG-Attn forward instead, on synthetic column plans built on the GPU (random and local masks at several
// sparsities and key-group sizes), and the plan build itself. Baselines (cuDNN SDPA, FlexAttention) are timed in the
// same run by bench/bench_sta.py and bench/bench_fg.py, which need PyTorch.
#include <fmt/format.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <fstream>
#include <optional>
#include <nlohmann/json.hpp>
#include <span>

#include "commands.hpp"
#include "tileattn/column_plan.hpp"
#include "tileattn/detail/output_files.hpp"
#include "tileattn/error.hpp"
#include "tileattn/fg.hpp"
#include "tileattn/plan.hpp"
#include "tileattn/sta.hpp"
#if TILEATTN_WITH_CUDA
#include <cuda_runtime.h>

#include "tileattn/detail/testing.hpp"
#endif

namespace tileattn::cli {

namespace {

// One FG configuration of --fg: a mask kind at a sparsity, for a (query block, key group) shape.
struct FgCase {
  SyntheticMask kind;
  std::string kind_name;
  double sparsity;
};

struct BenchSetup {
  VideoGeometry geo;
  std::vector<Window> windows;
  DType dtype;
  int64_t kv_heads;
  Precision precision;
  std::vector<int64_t> fg_query_blocks, fg_key_groups;
  std::vector<FgCase> fg_cases;
};

template <class T>
T parse_number(const std::string& text, const char* argument) {
  T value{};
  auto [ptr, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
  if (text.empty() || ec != std::errc() || ptr != text.data() + text.size())
    throw_argument_error(argument, fmt::format("expected a comma-separated list of numbers, got '{}'", text));
  return value;
}

// --fg-*: sparsities in [0, 1), kinds random/local, key groups >= 1, query blocks 16/32/64/128.
void prepare_fg(const BenchOptions& o, BenchSetup& setup) {
  for (const std::string& part : split_list(o.fg_query_block)) {
    const int64_t m = parse_number<int64_t>(part, "--fg-query-block");
    if (m != 16 && m != 32 && m != 64 && m != 128)
      throw_argument_error("--fg-query-block", fmt::format("must be 16, 32, 64 or 128, got {}", m));
    setup.fg_query_blocks.push_back(m);
  }
  for (const std::string& part : split_list(o.fg_key_group)) {
    const int64_t n = parse_number<int64_t>(part, "--fg-key-group");
    if (n < 1 || n > setup.geo.num_tokens())
      throw_argument_error("--fg-key-group", fmt::format("must be in [1, tokens = {}], got {}",
                                                         setup.geo.num_tokens(), n));
    setup.fg_key_groups.push_back(n);
  }
  std::vector<double> sparsities;
  for (const std::string& part : split_list(o.fg_sparsity)) {
    const double s = parse_number<double>(part, "--fg-sparsity");
    if (!(s >= 0.0 && s < 1.0)) throw_argument_error("--fg-sparsity", fmt::format("must be in [0, 1), got {}", part));
    sparsities.push_back(s);
  }
  for (const std::string& kind : split_list(o.fg_kind)) {
    if (kind != "random" && kind != "local")
      throw_argument_error("--fg-kind", fmt::format("must be random or local, got '{}'", kind));
    for (double s : sparsities)
      setup.fg_cases.push_back({kind == "random" ? SyntheticMask::random : SyntheticMask::local, kind, s});
  }
}

// Everything that can be checked without a GPU.
BenchSetup prepare(const BenchOptions& o) {
  if (o.text < 0) throw_argument_error("--text", "must be >= 0");
  const VideoGeometry geo = cli_geometry(parse_extent3(o.shape, "--shape"), parse_extent3(o.tile, "--tile"), o.text);
  if (o.dtype != "bf16" && o.dtype != "fp16") throw_argument_error("--dtype", "must be bf16 or fp16, got " + o.dtype);
  if (o.layout != "natural" && o.layout != "tile-major")
    throw_argument_error("--layout", "must be natural or tile-major, got " + o.layout);
  if (o.reps < 1 || o.warmup < 0) throw_argument_error("--reps", "need --reps >= 1 and --warmup >= 0");
  const int64_t kv_heads = o.kv_heads == 0 ? o.heads : o.kv_heads;
  const DType dtype = o.dtype == "bf16" ? DType::bf16 : DType::fp16;
  if (o.precision != "native" && o.precision != "fp8")
    throw_argument_error("--precision", "must be native or fp8, got " + o.precision);
  const Precision precision = o.precision == "fp8" ? Precision::fp8 : Precision::native;
  if (precision == Precision::fp8 && (o.backward || o.fg))
    throw_argument_error("--precision", "fp8 is the STA forward's only: not with --backward or --fg");
  std::vector<Window> windows;
  for (const std::string& part : split_list(o.windows)) {
    windows.push_back(part == "dense" ? geo.grid() : parse_extent3(part, "--windows"));
    validate_window(windows.back(), geo.grid(), "--windows");
  }
  if (o.batch < 1) throw_argument_error("--batch", fmt::format("must be >= 1, got {}", o.batch));
  if (o.heads < 1 || o.heads > limits::kMaxHeads)
    throw_argument_error("--heads", fmt::format("must be in [1, {}] (limits::kMaxHeads), got {}", limits::kMaxHeads,
                                                o.heads));
  if (o.kv_heads < 0 || kv_heads < 1 || o.heads % kv_heads != 0)
    throw_argument_error("--kv-heads", fmt::format("must divide --heads = {} (0: same as --heads), got {}", o.heads,
                                                   o.kv_heads));
  // The host and device buffers: 2-byte q, k, v, out and fp32 LSE, sizes checked (and bounded) before any allocation.
  checked_host_bytes({o.batch, o.heads, geo.num_tokens(), std::max<int64_t>(o.head_dim, 1), 2}, "--batch");
  BenchSetup setup{geo, windows, dtype, kv_heads, precision, {}, {}, {}};
  if (o.fg) prepare_fg(o, setup);
  return setup;
}

// The (query, key) pairs a fixed-capacity column plan visits, from its counts alone: row r (head, query block) visits
// counts[r] key groups of key_group positions each, except that the last group of the sequence may be shorter;
// ends_with_last_group[r] says whether row r lists that group (rows ascend, so only as their last entry; ignored when
// the groups divide the tokens). Counts are clamped to [0, capacity] as the kernel does.
int64_t fg_visited_pairs(const ColumnPlanShape& shape, int64_t capacity, std::span<const int32_t> counts,
                         std::span<const uint8_t> ends_with_last_group) {
  const int64_t groups = shape.num_key_groups(), short_by = groups * shape.key_group - shape.tokens;
  int64_t visited = 0;
  for (int64_t r = 0; r < shape.num_rows(); ++r) {
    const int64_t count = std::clamp<int64_t>(counts[r], 0, capacity);
    int64_t keys = count * shape.key_group;
    if (short_by > 0 && count > 0 && ends_with_last_group[r]) keys -= short_by;
    visited += shape.query_block_size(r % shape.num_query_blocks()) * keys;
  }
  return visited;
}

}  // namespace

#if TILEATTN_WITH_CUDA
namespace {

void check(cudaError_t err, const char* what) {
  if (err != cudaSuccess) throw CudaError(fmt::format("bench: {}: {}", what, cudaGetErrorString(err)));
}

struct DeviceBuffer {
  void* ptr = nullptr;
  explicit DeviceBuffer(size_t bytes) { check(cudaMalloc(&ptr, std::max<size_t>(bytes, 1)), "cudaMalloc"); }
  ~DeviceBuffer() { cudaFree(ptr); }
  DeviceBuffer(const DeviceBuffer&) = delete;
  DeviceBuffer& operator=(const DeviceBuffer&) = delete;
};

// CUDA-event timing on one stream: the median and minimum of `reps` timed calls after `warmup` untimed ones.
class Timer {
 public:
  Timer(int64_t warmup, int64_t reps) : warmup_(warmup), reps_(reps) {
    check(cudaStreamCreate(&stream_), "cudaStreamCreate");
    check(cudaEventCreate(&start_), "cudaEventCreate");
    check(cudaEventCreate(&stop_), "cudaEventCreate");
  }
  ~Timer() {
    cudaEventDestroy(start_);
    cudaEventDestroy(stop_);
    cudaStreamDestroy(stream_);
  }
  Timer(const Timer&) = delete;
  Timer& operator=(const Timer&) = delete;
  cudaStream_t stream() const { return stream_; }

  template <class Call>
  std::pair<float, float> operator()(Call&& call) {
    for (int64_t i = 0; i < warmup_; ++i) call();
    std::vector<float> times;
    for (int64_t i = 0; i < reps_; ++i) {
      check(cudaEventRecord(start_, stream_), "cudaEventRecord");
      call();
      check(cudaEventRecord(stop_, stream_), "cudaEventRecord");
      check(cudaEventSynchronize(stop_), "cudaEventSynchronize");
      float ms = 0;
      check(cudaEventElapsedTime(&ms, start_, stop_), "cudaEventElapsedTime");
      times.push_back(ms);
    }
    std::sort(times.begin(), times.end());
    return {times[times.size() / 2], times.front()};
  }

 private:
  int64_t warmup_, reps_;
  cudaStream_t stream_;
  cudaEvent_t start_, stop_;
};

// Output sanity: no NaN/Inf in a device array of bf16/fp16 values (inputs are random, never zeros).
bool device_all_finite(const void* data, int64_t count, DType dtype) {
  std::vector<uint16_t> host(count);
  check(cudaMemcpy(host.data(), data, count * 2, cudaMemcpyDeviceToHost), "cudaMemcpy");
  return std::all_of(host.begin(), host.end(),
                     [&](uint16_t b) { return std::isfinite(detail::half_bits_to_float(b, dtype)); });
}

// Random q, k, v and the outputs, [batch, heads, tokens, head_dim] contiguous, shared by the STA and FG benches.
struct BenchTensors {
  int64_t tokens, head_dim, q_elems, kv_elems;
  DeviceBuffer q, k, v, out, lse;
  BenchTensors(const BenchOptions& o, const BenchSetup& setup, cudaStream_t stream)
      : tokens(setup.geo.num_tokens()), head_dim(o.head_dim), q_elems(o.batch * o.heads * tokens * head_dim),
        kv_elems(o.batch * setup.kv_heads * tokens * head_dim), q(q_elems * 2), k(kv_elems * 2), v(kv_elems * 2),
        out(q_elems * 2), lse(o.batch * o.heads * tokens * 4) {
    detail::fill_random_device(q.ptr, q_elems, setup.dtype, 1, o.amplitude, stream);
    detail::fill_random_device(k.ptr, kv_elems, setup.dtype, 2, o.amplitude, stream);
    detail::fill_random_device(v.ptr, kv_elems, setup.dtype, 3, o.amplitude, stream);
  }
  DeviceTensor tensor(void* p, int64_t heads) const {
    return {p, heads * tokens * head_dim, tokens * head_dim, head_dim};
  }
};

void print_header(const BenchOptions& o, const BenchSetup& setup, const char* what) {
  fmt::print("\nbench {}: video {} tile {} text {} | B={} heads={} kv_heads={} D={} {} {}{} | median of {} after {} "
             "warm-up\n", what, to_string(setup.geo.video()), to_string(setup.geo.tile()), o.text, o.batch, o.heads,
             setup.kv_heads, o.head_dim, o.dtype, o.layout, setup.precision == Precision::fp8 ? " fp8" : "", o.reps,
             o.warmup);
}

int run_sta_bench(const BenchOptions& o, const BenchSetup& setup, Timer& time_ms, BenchTensors& t,
                  nlohmann::json& results) {
  const VideoGeometry& geo = setup.geo;
  const DType dtype = setup.dtype;
  const int64_t kv_heads = setup.kv_heads, d = o.head_dim;
  const cudaStream_t stream = time_ms.stream();
  StaForwardArgs args;
  args.dtype = dtype;
  args.batch = o.batch, args.q_heads = o.heads, args.kv_heads = kv_heads, args.head_dim = d;
  args.video = geo.video(), args.tile = geo.tile(), args.text_len = o.text;
  args.layout = o.layout == "natural" ? TokenLayout::natural : TokenLayout::tile_major;
  args.q = t.tensor(t.q.ptr, o.heads), args.k = t.tensor(t.k.ptr, kv_heads), args.v = t.tensor(t.v.ptr, kv_heads);
  args.out = t.tensor(t.out.ptr, o.heads);
  args.lse = static_cast<float*>(t.lse.ptr);
  args.precision = setup.precision;

  print_header(o, setup, "STA");
  fmt::print("{:<10} {:>9} {:>11} {:>10} {:>10}\n", "window", "sparsity", "time (ms)", "TFLOP/s", "min (ms)");
  int rc = 0;
  std::optional<DeviceBuffer> grad_out, grad_q, grad_k, grad_v, workspace;
  StaBackwardArgs bwd;
  if (o.backward) {
    grad_out.emplace(t.q_elems * 2), grad_q.emplace(t.q_elems * 2), grad_k.emplace(t.kv_elems * 2);
    grad_v.emplace(t.kv_elems * 2), workspace.emplace(sta_backward_workspace_bytes(args));
    detail::fill_random_device(grad_out->ptr, t.q_elems, dtype, 4, 1.0f, stream);
    bwd.grad_out = t.tensor(grad_out->ptr, o.heads), bwd.grad_q = t.tensor(grad_q->ptr, o.heads);
    bwd.grad_k = t.tensor(grad_k->ptr, kv_heads), bwd.grad_v = t.tensor(grad_v->ptr, kv_heads);
    bwd.workspace = workspace->ptr, bwd.workspace_bytes = sta_backward_workspace_bytes(args);
  }
  for (const Window& w : setup.windows) {
    args.windows = std::span<const Window>(&w, 1);
    // fp8: the pre-pass's scratch (the quantized copies), allocated outside the timing like the backward's.
    std::optional<DeviceBuffer> forward_workspace;
    args.workspace_bytes = sta_forward_workspace_bytes(args);
    if (args.workspace_bytes > 0) forward_workspace.emplace(args.workspace_bytes);
    args.workspace = forward_workspace ? forward_workspace->ptr : nullptr;
    const BlockPlan plan = build_sta_plan(BlockPartition(geo), std::vector<Window>{w});
    const SparsityReport s = plan.sparsity();
    const auto [median, fastest] = time_ms([&] { sta_forward(args, stream); });
    // The plan above has one head: scale its visited pairs to all heads and batch elements.
    const double flops = 4.0 * double(d) * double(s.visited_pairs) * double(o.heads) * double(o.batch);
    const bool finite = device_all_finite(t.out.ptr, t.q_elems, dtype);
    if (!finite) rc = 1;
    const std::string label = window_label(w, geo.grid());
    // The JSON keys name the text length when there is text, so runs with and without it do not collide.
    const std::string key = label + (o.text > 0 ? fmt::format("_text{}", o.text) : "") +
                            (setup.precision == Precision::fp8 ? "_fp8" : "");
    fmt::print("{:<10} {:>9.4f} {:>11.3f} {:>10.1f} {:>10.3f}{}\n", label, s.total, median, flops / (median * 1e9),
               fastest, finite ? "" : "  OUTPUT HAS NaN/Inf");
    results[fmt::format("tileattn_sta_{}_fwd_ms", key)] = median;
    if (!o.backward) continue;
    // The backward does 5 GEMMs over the visited pairs where the forward does 2.
    bwd.forward = args;
    for (bool deterministic : {false, true}) {
      bwd.deterministic = deterministic;
      const auto [b_median, b_fastest] = time_ms([&] { sta_backward(bwd, stream); });
      const bool grads_finite = device_all_finite(grad_k->ptr, t.kv_elems, dtype);
      if (!grads_finite) rc = 1;
      const std::string what = deterministic ? "bwd-det" : "bwd";
      fmt::print("{:<10} {:>9} {:>11.3f} {:>10.1f} {:>10.3f}{}\n", "  " + what, "", b_median,
                 2.5 * flops / (b_median * 1e9), b_fastest, grads_finite ? "" : "  GRADIENTS HAVE NaN/Inf");
      results[fmt::format("tileattn_sta_{}_{}_ms", key, deterministic ? "bwd_deterministic" : "bwd")] = b_median;
    }
  }
  return rc;
}

// The exact visited pairs of a device plan: counts copied back once; when the last key group is partial, each
// non-empty row's last entry too (one small copy per row).
int64_t device_plan_visited_pairs(const DeviceColumnPlan& plan) {
  const ColumnPlanShape& shape = plan.shape;
  const int64_t rows = shape.num_rows();
  std::vector<int32_t> counts(rows);
  check(cudaMemcpy(counts.data(), plan.counts, rows * 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
  std::vector<uint8_t> ends_with_last_group(rows, 0);
  if (shape.tokens % shape.key_group != 0) {
    for (int64_t r = 0; r < rows; ++r) {
      const int64_t count = std::clamp<int64_t>(counts[r], 0, plan.capacity);
      if (count == 0) continue;
      int32_t last = -1;
      check(cudaMemcpy(&last, plan.table + r * plan.capacity + count - 1, 4, cudaMemcpyDeviceToHost), "cudaMemcpy");
      ends_with_last_group[r] = last == shape.num_key_groups() - 1;
    }
  }
  return fg_visited_pairs(shape, plan.capacity, counts, ends_with_last_group);
}

// --fg: for each (query block, key group), one plan with room for every key group (allocated, used for every kind
// and sparsity, then freed); for each mask, the GPU build and the forward are timed.
int run_fg_bench(const BenchOptions& o, const BenchSetup& setup, Timer& time_ms, BenchTensors& t,
                 nlohmann::json& results) {
  const int64_t tokens = t.tokens, d = o.head_dim;
  const cudaStream_t stream = time_ms.stream();
  FgForwardArgs args;
  args.dtype = setup.dtype;
  args.batch = o.batch, args.q_heads = o.heads, args.kv_heads = setup.kv_heads, args.head_dim = d;
  args.q = t.tensor(t.q.ptr, o.heads), args.k = t.tensor(t.k.ptr, setup.kv_heads);
  args.v = t.tensor(t.v.ptr, setup.kv_heads), args.out = t.tensor(t.out.ptr, o.heads);
  args.lse = static_cast<float*>(t.lse.ptr);

  print_header(o, setup, "FG-Attn");
  fmt::print("{:<24} {:>9} {:>11} {:>10} {:>10} {:>11}\n", "mask", "sparsity", "time (ms)", "TFLOP/s", "min (ms)",
             "build (ms)");
  int rc = 0;
  for (int64_t m : setup.fg_query_blocks) {
    for (int64_t n : setup.fg_key_groups) {
      DeviceColumnPlan& plan = args.plan;
      plan.shape = {tokens, o.heads, m, n};
      plan.shape.validate();
      plan.capacity = plan.shape.num_key_groups();
      DeviceBuffer table(size_t(plan.shape.num_rows()) * size_t(plan.capacity) * 4);
      DeviceBuffer counts(size_t(plan.shape.num_rows()) * 4);
      plan.table = static_cast<int32_t*>(table.ptr), plan.counts = static_cast<int32_t*>(counts.ptr);
      const int64_t workspace_bytes = fg_forward_workspace_bytes(args);
      std::optional<DeviceBuffer> workspace;
      if (workspace_bytes > 0) workspace.emplace(workspace_bytes);
      args.workspace = workspace ? workspace->ptr : nullptr, args.workspace_bytes = workspace_bytes;
      for (const FgCase& c : setup.fg_cases) {
        SyntheticMaskOptions options;
        options.kind = c.kind, options.sparsity = c.sparsity, options.seed = o.fg_seed;
        options.video = setup.geo.video(), options.text_len = o.text, options.keep_diagonal = true;
        // Building is deterministic in the seed, so every timed build leaves the same plan behind.
        const auto [build_ms, build_min] = time_ms([&] { build_synthetic_column_plan(plan, options, stream); });
        const int64_t visited = device_plan_visited_pairs(plan);
        const double sparsity = 1.0 - double(visited) / (double(o.heads) * double(tokens) * double(tokens));
        const auto [median, fastest] = time_ms([&] { fg_forward(args, stream); });
        const double flops = 4.0 * double(d) * double(visited) * double(o.batch);
        const bool finite = device_all_finite(t.out.ptr, t.q_elems, setup.dtype);
        if (!finite) rc = 1;
        const std::string label = fmt::format("{}{}_n{}_s{:.2f}", c.kind_name, m == 128 ? "" : fmt::format("_m{}", m),
                                              n, c.sparsity);
        fmt::print("{:<24} {:>9.4f} {:>11.3f} {:>10.1f} {:>10.3f} {:>11.3f}{}\n", label, sparsity, median,
                   flops / (median * 1e9), fastest, build_ms, finite ? "" : "  OUTPUT HAS NaN/Inf");
        results[fmt::format("tileattn_fg_{}_fwd_ms", label)] = median;
        results[fmt::format("tileattn_fg_{}_sparsity", label)] = sparsity;
        results[fmt::format("fg_mask_build_{}_ms", label)] = build_ms;
      }
    }
  }
  return rc;
}

}  // namespace

int run_bench(const BenchOptions& o) {
  const BenchSetup setup = prepare(o);
  if (!gpu_kernels_available()) throw CudaError("bench: no Hopper (sm_90) GPU available");
  Timer timer(o.warmup, o.reps);
  BenchTensors tensors(o, setup, timer.stream());
  nlohmann::json results = nlohmann::json::object();
  const int rc = o.fg ? run_fg_bench(o, setup, timer, tensors, results)
                      : run_sta_bench(o, setup, timer, tensors, results);
  if (!o.json_path.empty()) {
    detail::write_text_file_atomic(o.json_path, results.dump(1) + "\n", "--json");
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
  CLI::App* cmd = app.add_subcommand(
      "bench", "Time the STA (or with --fg the FG-Attn) forward kernel on the GPU (random inputs, CUDA events)");
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
  cmd->add_option("--amplitude", o->amplitude, "q, k, v uniform in [-a, a] (1.7 gives unit variance)")
      ->check(CLI::Range(1e-3, 100.0))
      ->capture_default_str();
  cmd->add_option("--reps", o->reps, "timed runs (median reported)")->capture_default_str();
  cmd->add_flag("--backward", o->backward, "also time the backward (fast and deterministic dQ modes)");
  cmd->add_option("--precision", o->precision, "the STA forward's precision: native or fp8 (int8 Q K^T, e4m3 "
                                               "P V; forward only)")->capture_default_str();
  cmd->add_option("--json", o->json_path, "write the times (ms) as JSON");
  CLI::Option* fg = cmd->add_flag("--fg", o->fg, "time the FG-Attn forward on synthetic GPU masks (and their build) "
                                                  "instead of STA");
  cmd->add_option("--fg-sparsity", o->fg_sparsity, "comma-separated target sparsities in [0, 1)")
      ->capture_default_str()->needs(fg);
  cmd->add_option("--fg-kind", o->fg_kind, "comma-separated synthetic masks (random, local)")
      ->capture_default_str()->needs(fg);
  cmd->add_option("--fg-key-group", o->fg_key_group, "comma-separated key-group sizes N")
      ->capture_default_str()->needs(fg);
  cmd->add_option("--fg-query-block", o->fg_query_block, "comma-separated query-block sizes M (16/32/64/128)")
      ->capture_default_str()->needs(fg);
  cmd->add_option("--fg-seed", o->fg_seed, "seed of the random masks")->capture_default_str()->needs(fg);
  return [o] { return run_bench(*o); };
}

}  // namespace tileattn::cli

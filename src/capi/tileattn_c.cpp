// The C ABI: a thin shell over the C++ API that turns exceptions into status codes.
#include "tileattn/tileattn.h"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <optional>
#include <utility>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "ops/attention_call.hpp"
#include "tileattn/capture.hpp"
#include "tileattn/checked.hpp"
#include "tileattn/dynamic_mask_gpu.hpp"
#include "tileattn/error.hpp"
#include "tileattn/fg.hpp"
#include "tileattn/mask_strategy.hpp"
#include "tileattn/plan.hpp"
#include "tileattn/reference.hpp"
#include "tileattn/sta.hpp"

namespace {

thread_local std::string g_last_error;

template <class F>
int guarded(F&& f) {
  try {
    f();
    g_last_error.clear();
    return TILEATTN_OK;
  } catch (const tileattn::ArgumentError& e) {
    g_last_error = e.what();
    return TILEATTN_ERROR_ARGUMENT;
  } catch (const tileattn::FileError& e) {
    g_last_error = e.what();
    return TILEATTN_ERROR_FILE;
  } catch (const tileattn::CudaError& e) {
    g_last_error = e.what();
    return TILEATTN_ERROR_CUDA;
  } catch (const std::exception& e) {
    g_last_error = e.what();
    return TILEATTN_ERROR_INTERNAL;
  } catch (...) {
    g_last_error = "unknown error";
    return TILEATTN_ERROR_INTERNAL;
  }
}

// The shared shape of the functions that return JSON text: validate, produce, size-check, copy.
template <class Produce>
int json_out(const char* path, char* buffer, int64_t capacity, int64_t* needed, const char* what, Produce&& produce) {
  return guarded([&] {
    using namespace tileattn;
    if (path == nullptr) throw_argument_error("path", "is NULL");
    if (needed == nullptr) throw_argument_error("needed", "is NULL");
    const std::string text = produce(std::string(path));
    *needed = static_cast<int64_t>(text.size()) + 1;
    if (buffer == nullptr || capacity < *needed)
      throw_argument_error("capacity", fmt::format("{} needs {} bytes, the buffer has {}", what, *needed,
                                                   buffer == nullptr ? 0 : capacity));
    std::copy(text.begin(), text.end(), buffer);
    buffer[text.size()] = '\0';
  });
}

tileattn::DeviceTensor tensor(const tileattn_tensor& t) { return {t.data, t.batch_stride, t.head_stride, t.token_stride}; }

// The checks every argument struct starts with: present, the caller's ABI version (check_abi), a known dtype.
template <class Args>
void check_abi(const Args* a) {
  using namespace tileattn;
  if (a == nullptr) throw_argument_error("args", "is NULL");
  if (a->abi_version != TILEATTN_ABI_VERSION)
    throw_argument_error("abi_version", fmt::format("this library speaks ABI {}, the caller {}", TILEATTN_ABI_VERSION,
                                                    a->abi_version));
}

template <class Args>
void check_header(const Args* a) {
  using namespace tileattn;
  check_abi(a);
  if (a->dtype != TILEATTN_BF16 && a->dtype != TILEATTN_FP16)
    throw_argument_error("dtype", fmt::format("must be TILEATTN_BF16 (0) or TILEATTN_FP16 (1), got {}", a->dtype));
}

// The fields every struct with q and k shares: dtype, shape, q, k, scale.
template <class CArgs, class Args>
void copy_qk(const CArgs* a, Args& args) {
  args.dtype = static_cast<tileattn::DType>(a->dtype);
  args.batch = a->batch;
  args.q_heads = a->q_heads;
  args.kv_heads = a->kv_heads;
  args.head_dim = a->head_dim;
  args.q = tensor(a->q);
  args.k = tensor(a->k);
  args.scale = a->scale;
}

// The fields the STA and FG forward structs share: those of copy_qk, v, out, LSE.
template <class CArgs, class Args>
void copy_common(const CArgs* a, Args& args) {
  copy_qk(a, args);
  args.v = tensor(a->v);
  args.out = tensor(a->out);
  args.lse = a->lse;
}

}  // namespace

extern "C" {

namespace {

// The C struct as StaForwardArgs; `windows` holds the window storage the result points into.
tileattn::StaForwardArgs forward_args(const tileattn_sta_forward_args* a, std::vector<tileattn::Window>& windows) {
  using namespace tileattn;
  check_header(a);
  if (a->layout != TILEATTN_NATURAL && a->layout != TILEATTN_TILE_MAJOR)
    throw_argument_error("layout", fmt::format("must be TILEATTN_NATURAL (0) or TILEATTN_TILE_MAJOR (1), got {}",
                                               a->layout));
  if (a->precision != TILEATTN_NATIVE && a->precision != TILEATTN_FP8)
    throw_argument_error("precision", fmt::format("must be TILEATTN_NATIVE (0) or TILEATTN_FP8 (1), got {}",
                                                  a->precision));
  // The count first: the triples are read from the caller's array only once it is known to hold that many.
  if (a->num_windows != 0 && a->num_windows != 1 && (a->num_windows != a->q_heads || a->q_heads > kMaxQueryHeads))
    throw_argument_error("num_windows", fmt::format("must be 0 (dense), 1 (all heads) or q_heads = {} (at most {}), "
                                                    "got {}", a->q_heads, kMaxQueryHeads, a->num_windows));
  if (a->num_windows > 0 && a->windows == nullptr)
    throw_argument_error("windows", fmt::format("num_windows = {} needs a non-NULL array", a->num_windows));
  windows.resize(static_cast<size_t>(a->num_windows));
  for (int64_t i = 0; i < a->num_windows; ++i)
    windows[i] = {a->windows[3 * i], a->windows[3 * i + 1], a->windows[3 * i + 2]};
  StaForwardArgs args;
  copy_common(a, args);
  args.video = {a->video[0], a->video[1], a->video[2]};
  args.tile = {a->tile[0], a->tile[1], a->tile[2]};
  args.text_len = a->text_len;
  args.layout = static_cast<TokenLayout>(a->layout);
  args.text_valid = a->text_valid;
  args.windows = windows;
  args.precision = static_cast<Precision>(a->precision);
  args.workspace = a->workspace;
  args.workspace_bytes = a->workspace_bytes;
  return args;
}

// The C plan as DeviceColumnPlan (its content stays on the device and is not read here).
tileattn::DeviceColumnPlan column_plan(const tileattn_column_plan* p) {
  if (p == nullptr) tileattn::throw_argument_error("plan", "is NULL");
  tileattn::DeviceColumnPlan plan;
  plan.shape = {p->tokens, p->heads, p->query_block, p->key_group};
  plan.capacity = p->capacity;
  plan.table = p->table;
  plan.counts = p->counts;
  return plan;
}

tileattn::FgForwardArgs fg_args(const tileattn_fg_forward_args* a) {
  using namespace tileattn;
  check_header(a);
  FgForwardArgs args;
  copy_common(a, args);
  args.plan = column_plan(&a->plan);
  args.workspace = a->workspace;
  args.workspace_bytes = a->workspace_bytes;
  return args;
}

// The C struct as DynamicMaskArgs; `window` holds the window plan the result points into.
tileattn::DynamicMaskArgs dynamic_mask_args(const tileattn_dynamic_mask_args* a, tileattn::DeviceColumnPlan& window) {
  using namespace tileattn;
  check_header(a);
  if (a->rule < TILEATTN_RULE_TOP_P || a->rule > TILEATTN_RULE_TARGET_SPARSITY)
    throw_argument_error("rule", fmt::format("must be TILEATTN_RULE_TOP_P (0), TILEATTN_RULE_TOP_K (1), "
                                             "TILEATTN_RULE_THRESHOLD (2) or TILEATTN_RULE_TARGET_SPARSITY (3), got {}",
                                             a->rule));
  DynamicMaskArgs args;
  copy_qk(a, args);
  ColumnSelection& s = args.selection;
  s.rule = static_cast<SelectionRule>(a->rule);
  s.p = a->p;
  s.k = a->top_k;
  s.threshold = a->threshold;
  s.target_sparsity = a->target_sparsity;
  s.keep_diagonal = a->keep_diagonal != 0;
  s.always_keep_text = a->always_keep_text != 0;
  s.text_len = a->text_len;
  if (a->window != nullptr) {
    window = column_plan(a->window);
    args.window = &window;
  }
  args.workspace = a->workspace;
  args.workspace_bytes = a->workspace_bytes;
  return args;
}

}  // namespace

int tileattn_sta_forward(const tileattn_sta_forward_args* a, void* stream) {
  return guarded([&] {
    std::vector<tileattn::Window> windows;
    tileattn::sta_forward(forward_args(a, windows), static_cast<tileattn::StreamHandle>(stream));
  });
}

int tileattn_sta_forward_workspace_bytes(const tileattn_sta_forward_args* a, int64_t* bytes) {
  return guarded([&] {
    if (bytes == nullptr) tileattn::throw_argument_error("bytes", "is NULL");
    std::vector<tileattn::Window> windows;
    *bytes = tileattn::sta_forward_workspace_bytes(forward_args(a, windows));
  });
}

int tileattn_sta_backward_workspace_bytes(const tileattn_sta_forward_args* forward, int64_t* bytes) {
  return guarded([&] {
    if (bytes == nullptr) tileattn::throw_argument_error("bytes", "is NULL");
    std::vector<tileattn::Window> windows;
    *bytes = tileattn::sta_backward_workspace_bytes(forward_args(forward, windows));
  });
}

int tileattn_sta_backward(const tileattn_sta_backward_args* a, void* stream) {
  return guarded([&] {
    using namespace tileattn;
    if (a == nullptr) throw_argument_error("args", "is NULL");
    std::vector<Window> windows;
    StaBackwardArgs args;
    args.forward = forward_args(&a->forward, windows);
    args.grad_out = tensor(a->grad_out);
    args.grad_q = tensor(a->grad_q);
    args.grad_k = tensor(a->grad_k);
    args.grad_v = tensor(a->grad_v);
    args.workspace = a->workspace;
    args.workspace_bytes = a->workspace_bytes;
    args.deterministic = a->deterministic != 0;
    sta_backward(args, static_cast<StreamHandle>(stream));
  });
}

int tileattn_fg_forward_workspace_bytes(const tileattn_fg_forward_args* a, int64_t* bytes) {
  return guarded([&] {
    if (bytes == nullptr) tileattn::throw_argument_error("bytes", "is NULL");
    *bytes = tileattn::fg_forward_workspace_bytes(fg_args(a));
  });
}

int tileattn_fg_forward(const tileattn_fg_forward_args* a, void* stream) {
  return guarded([&] { tileattn::fg_forward(fg_args(a), static_cast<tileattn::StreamHandle>(stream)); });
}

int tileattn_build_synthetic_column_plan(const tileattn_column_plan* plan, int32_t kind, double sparsity,
                                         uint64_t seed, const int64_t video[3], int64_t text_len,
                                         int32_t keep_diagonal, void* stream) {
  return guarded([&] {
    using namespace tileattn;
    const DeviceColumnPlan p = column_plan(plan);
    if (kind != TILEATTN_MASK_RANDOM && kind != TILEATTN_MASK_LOCAL)
      throw_argument_error("kind", fmt::format("must be TILEATTN_MASK_RANDOM (0) or TILEATTN_MASK_LOCAL (1), got {}",
                                               kind));
    if (kind == TILEATTN_MASK_LOCAL && video == nullptr)
      throw_argument_error("video", "is NULL; a local mask needs the video shape (T, H, W)");
    SyntheticMaskOptions options;
    options.kind = static_cast<SyntheticMask>(kind);
    options.sparsity = sparsity;
    options.seed = seed;
    if (video != nullptr) options.video = {video[0], video[1], video[2]};
    options.text_len = text_len;
    options.keep_diagonal = keep_diagonal != 0;
    build_synthetic_column_plan(p, options, static_cast<StreamHandle>(stream));
  });
}

int tileattn_check_column_plan(const tileattn_column_plan* plan, void* stream) {
  return guarded(
      [&] { tileattn::check_device_column_plan(column_plan(plan), static_cast<tileattn::StreamHandle>(stream)); });
}

int tileattn_dynamic_mask_workspace_bytes(const tileattn_dynamic_mask_args* a, const tileattn_column_plan* shape_plan,
                                          int64_t heads_per_pass, int64_t* bytes) {
  return guarded([&] {
    using namespace tileattn;
    if (bytes == nullptr) throw_argument_error("bytes", "is NULL");
    DeviceColumnPlan window;
    const DynamicMaskArgs args = dynamic_mask_args(a, window);
    if (shape_plan == nullptr) throw_argument_error("out_shape_plan", "is NULL");
    *bytes = dynamic_mask_workspace_bytes(args, column_plan(shape_plan).shape, heads_per_pass);
  });
}

int tileattn_build_dynamic_column_plan(const tileattn_dynamic_mask_args* a, const tileattn_column_plan* out,
                                       void* stream) {
  return guarded([&] {
    using namespace tileattn;
    DeviceColumnPlan window;
    const DynamicMaskArgs args = dynamic_mask_args(a, window);
    if (out == nullptr) throw_argument_error("out", "is NULL");
    build_dynamic_column_plan_gpu(args, column_plan(out), static_cast<StreamHandle>(stream));
  });
}

int tileattn_mask_strategy_read(const char* path, char* buffer, int64_t capacity, int64_t* needed) {
  return json_out(path, buffer, capacity, needed, "the normalised strategy", [](const std::string& p) {
    return tileattn::dump_mask_strategy(tileattn::read_mask_strategy(p), tileattn::MaskStrategyFormat::tileattn);
  });
}

int tileattn_capture_inspect(const char* path, char* buffer, int64_t capacity, int64_t* needed) {
  return json_out(path, buffer, capacity, needed, "the capture summary", [](const std::string& p) {
    using namespace tileattn;
    const CaptureInfo info = read_capture_info(p);
    nlohmann::json dtypes, norms;
    for (int i = 0; i < 3; ++i) {
      double sum = 0;
      for (float x : load_capture_tensor(info, i)) sum += double(x) * x;
      dtypes[kCaptureTensorNames[i]] = to_string(info.dtype[i]);
      norms[kCaptureTensorNames[i]] = std::sqrt(sum);
    }
    nlohmann::json doc = {{"video_shape", {info.video.t, info.video.h, info.video.w}}, {"text_len", info.text_len},
                          {"step", info.step}, {"layer", info.layer}, {"prompt", info.prompt},
                          {"metadata", info.metadata},
                          {"shape", {info.batch, info.heads, info.tokens, info.head_dim}},
                          {"dtypes", dtypes}, {"l2_norms", norms}};
    return doc.dump();
  });
}

namespace {

// The reference path's problem, resolved once: shape, the STA plan over the per-head windows, text_valid, options.
struct StaReferenceProblem {
  tileattn::AttentionShape shape;
  std::optional<tileattn::BlockPlan> plan;
  std::vector<int32_t> text_valid;
  tileattn::ReferenceOptions options;

  size_t q_elements() const {
    return size_t(tileattn::checked_product({shape.batch, shape.q_heads, shape.tokens, shape.head_dim}, "q"));
  }
  size_t kv_elements() const {
    return size_t(tileattn::checked_product({shape.batch, shape.kv_heads, shape.tokens, shape.head_dim}, "k"));
  }
};

StaReferenceProblem sta_reference_problem(const tileattn_sta_reference_args* a) {
  using namespace tileattn;
  check_abi(a);
  if (a->accumulation != 0 && a->accumulation != 1)
    throw_argument_error("accumulation", fmt::format("must be 0 (fp32) or 1 (fp64), got {}", a->accumulation));
  if (a->num_windows < 0 || a->num_windows > a->q_heads || (a->num_windows > 0 && a->windows == nullptr))
    throw_argument_error("windows", fmt::format("num_windows = {} must be 0, 1 or q_heads = {} with a non-NULL array",
                                                a->num_windows, a->q_heads));
  for (auto [name, p] : {std::pair{"q", a->q}, std::pair{"k", a->k}, std::pair{"v", a->v}})
    if (p == nullptr) throw_argument_error(name, "is NULL");
  const VideoGeometry geometry({a->video[0], a->video[1], a->video[2]}, {a->tile[0], a->tile[1], a->tile[2]},
                               a->text_len);
  StaReferenceProblem p;
  p.shape = {a->batch, a->q_heads, a->kv_heads, geometry.num_tokens(), a->head_dim};
  if (p.shape.batch < 1) throw_argument_error("batch", fmt::format("must be >= 1, got {}", p.shape.batch));
  if (p.shape.head_dim < 1) throw_argument_error("head_dim", fmt::format("must be >= 1, got {}", p.shape.head_dim));
  if (p.shape.kv_heads < 1 || p.shape.q_heads % p.shape.kv_heads != 0)
    throw_argument_error("kv_heads", fmt::format("must divide q_heads = {}, got {}", p.shape.q_heads, p.shape.kv_heads));
  std::vector<Window> given(static_cast<size_t>(a->num_windows));
  for (int64_t i = 0; i < a->num_windows; ++i)
    given[i] = {a->windows[3 * i], a->windows[3 * i + 1], a->windows[3 * i + 2]};
  p.plan.emplace(build_sta_plan(BlockPartition(geometry), per_head_windows(geometry.grid(), given, a->q_heads)));
  if (a->text_valid != nullptr) p.text_valid.assign(a->text_valid, a->text_valid + a->batch);
  p.options.scale = a->scale;
  p.options.accumulation = a->accumulation == 1 ? Accumulation::fp64 : Accumulation::fp32;
  p.options.threads = a->threads;
  return p;
}

}  // namespace

int tileattn_sta_reference_forward(const tileattn_sta_reference_args* a, float* out, float* lse) {
  return guarded([&] {
    using namespace tileattn;
    const StaReferenceProblem p = sta_reference_problem(a);
    if (out == nullptr) throw_argument_error("out", "is NULL");
    std::vector<float> lse_scratch;
    std::span<float> lse_span;
    const size_t rows = size_t(p.shape.batch * p.shape.q_heads * p.shape.tokens);
    if (lse == nullptr) {
      lse_scratch.resize(rows);
      lse_span = lse_scratch;
    } else {
      lse_span = {lse, rows};
    }
    reference_attention_plan(p.shape, *p.plan, p.text_valid, {a->q, p.q_elements()}, {a->k, p.kv_elements()},
                             {a->v, p.kv_elements()}, {out, p.q_elements()}, lse_span, p.options);
  });
}

int tileattn_sta_reference_backward(const tileattn_sta_reference_args* a, const float* grad_out, float* grad_q,
                                    float* grad_k, float* grad_v) {
  return guarded([&] {
    using namespace tileattn;
    const StaReferenceProblem p = sta_reference_problem(a);
    for (auto [name, ptr] : {std::pair{"grad_out", static_cast<const void*>(grad_out)},
                             std::pair{"grad_q", static_cast<const void*>(grad_q)},
                             std::pair{"grad_k", static_cast<const void*>(grad_k)},
                             std::pair{"grad_v", static_cast<const void*>(grad_v)}})
      if (ptr == nullptr) throw_argument_error(name, "is NULL");
    reference_attention_plan_backward(p.shape, *p.plan, p.text_valid, {a->q, p.q_elements()},
                                      {a->k, p.kv_elements()}, {a->v, p.kv_elements()},
                                      {grad_out, p.q_elements()}, {grad_q, p.q_elements()},
                                      {grad_k, p.kv_elements()}, {grad_v, p.kv_elements()}, p.options);
  });
}

int tileattn_gpu_kernels_available(void) {
  try {
    return tileattn::gpu_kernels_available() ? 1 : 0;
  } catch (...) {
    return 0;
  }
}

int64_t tileattn_struct_size(const char* name) {
  if (name == nullptr) return -1;
  const std::string n(name);
#define TILEATTN_SIZE_OF(type) \
  if (n == #type) return static_cast<int64_t>(sizeof(type));
  TILEATTN_SIZE_OF(tileattn_tensor)
  TILEATTN_SIZE_OF(tileattn_sta_forward_args)
  TILEATTN_SIZE_OF(tileattn_sta_backward_args)
  TILEATTN_SIZE_OF(tileattn_column_plan)
  TILEATTN_SIZE_OF(tileattn_fg_forward_args)
  TILEATTN_SIZE_OF(tileattn_dynamic_mask_args)
  TILEATTN_SIZE_OF(tileattn_sta_reference_args)
#undef TILEATTN_SIZE_OF
  return -1;
}

const char* tileattn_last_error(void) { return g_last_error.c_str(); }
const char* tileattn_version(void) { return TILEATTN_VERSION_STRING; }  // CMake's project(VERSION)
int tileattn_abi_version(void) { return TILEATTN_ABI_VERSION; }

}  // extern "C"
